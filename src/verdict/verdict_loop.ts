/**
 * The verdict loop as the agent sees it: takes the Worker that owns the queue (verdict_worker.ts,
 * started with its own permissions by worker_spawn.ts), forwards every state event to its engine
 * replica in order, feeds the Prometheus metrics from the worker's reports (packets, and the /proc
 * readings only the worker can make), and hands verdict records to a RecordSink (the DenyLog in
 * the agent; see deny_log.ts, which owns their rate limit and format).
 */
import type { Logger } from "../log.ts";
import type { AgentMetrics } from "../metrics.ts";
import type { StateEvent } from "../state/events.ts";
import {
  CONTROL_BYTES,
  type FromWorker,
  HEARTBEAT_BYTE_OFFSET,
  SLOT_POSTED_SEQ,
  SLOT_STOP,
  SLOT_SYNCED,
  type ToWorker,
  type VerdictLoopOptions,
  type VerdictRecord,
} from "./verdict_protocol.ts";
import { recordSnapshot } from "./verdict_stats.ts";
import { type NfqueueStats, recordNfqueueStats } from "./nfqueue_stats.ts";
import { recordProcessStats } from "./process_stats.ts";
import type { SystemStats, SystemStatsSource } from "./system_stats.ts";
import { type SpawnedVerdictWorker, spawnVerdictWorker } from "./worker_spawn.ts";
import type { RecordSink } from "./deny_log.ts";
import { recordHeldStats } from "./held_verdicts.ts";
import { recordStrictReport } from "./strict_report.ts";

export type { RecordSink, VerdictLoopOptions, VerdictRecord };

/** How long stop() waits for the worker to unbind the queue before terminating it. */
const STOP_TIMEOUT_MS = 3000;

export class VerdictLoop {
  private readonly control: Int32Array;
  private readonly heartbeat: Float64Array;
  private seq = 0;
  private stopping?: Promise<void>;
  private closed?: () => void;
  /** The worker ended on its own (failure): nothing to wait for at stop(). */
  private dead = false;
  /** /proc sources whose failure was logged (once each; recovery is logged too). */
  private readonly failingSources = new Set<SystemStatsSource>();
  /** The latest counters of our queue from /proc and when the Worker read them (Date.now()). */
  latestQueue?: { stats: NfqueueStats; readAt: number; received: number };
  /** State events up to this one are applied and flushed out of the verdict cache. */
  private cacheCurrentSeq = 0;
  private cacheWaiters: (() => void)[] = [];

  private constructor(
    private readonly worker: Worker,
    shared: SharedArrayBuffer,
    private readonly metrics: AgentMetrics,
    private readonly records: RecordSink,
    private readonly log: Logger,
  ) {
    this.control = new Int32Array(shared, 0, 4);
    this.heartbeat = new Float64Array(shared, HEARTBEAT_BYTE_OFFSET, 1);
  }

  /**
   * Resolves once the queue is bound; rejects (and cleans up) if it cannot be. `spawned` is the
   * Worker the agent started early (main.ts); without it one is started here, which also revokes
   * FFI from the calling thread.
   */
  static start(
    opts: VerdictLoopOptions,
    metrics: AgentMetrics,
    records: RecordSink,
    log: Logger,
    spawned: SpawnedVerdictWorker = spawnVerdictWorker(),
  ): Promise<VerdictLoop> {
    const shared = new SharedArrayBuffer(CONTROL_BYTES);
    const { worker } = spawned;
    if (spawned.earlyError !== undefined) {
      worker.terminate();
      return Promise.reject(new Error(`verdict loop worker: ${spawned.earlyError}`));
    }
    const loop = new VerdictLoop(
      worker,
      shared,
      metrics,
      records,
      log.with({ queue: opts.queueId }),
    );
    return new Promise((resolve, reject) => {
      let bound = false;
      worker.onmessage = (e: MessageEvent<FromWorker>) => {
        const msg = e.data;
        if (msg.type === "ready") {
          bound = true;
          loop.log.info("verdict worker bound the queue", {
            // "granted" would mean this thread could still load libraries: worker_spawn.ts
            // revokes FFI here ("prompt", which --no-prompt turns into a refusal).
            mainThreadFfi: Deno.permissions.querySync({ name: "ffi" }).state,
          });
          resolve(loop);
        } else if (msg.type === "fatal") {
          if (!bound) {
            worker.terminate();
            reject(new Error(`verdict loop: ${msg.message}`));
          } else {
            loop.dead = true;
            loop.log.error("verdict loop failed; packets are no longer judged", {
              error: msg.message,
            });
          }
        } else loop.onMessage(msg);
      };
      worker.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        if (!bound) {
          worker.terminate();
          reject(new Error(`verdict loop worker: ${e.message}`));
        } else loop.log.error("verdict loop worker crashed", { error: e.message });
      };
      worker.postMessage({ type: "init", opts, control: shared } satisfies ToWorker);
    });
  }

  private onMessage(msg: FromWorker): void {
    if (msg.type === "closed") {
      this.closed?.();
      return;
    }
    if (msg.type === "system") {
      this.onSystemStats(msg.stats);
      return;
    }
    if (msg.type === "strict") {
      recordStrictReport(this.metrics, this.log, msg.report);
      return;
    }
    if (msg.type === "cache-current") {
      this.cacheCurrentSeq = Math.max(this.cacheCurrentSeq, msg.seq);
      if (this.cacheCurrentSeq >= this.seq) { for (const w of this.cacheWaiters.splice(0)) w(); }
      return;
    }
    if (msg.type === "warning") {
      this.log.warn("verdict loop warning; packets are still judged", { error: msg.message });
      return;
    }
    if (msg.type !== "report") return;
    recordSnapshot(this.metrics, msg.stats);
    if (msg.held) recordHeldStats(this.metrics, msg.held);
    if (msg.cache) {
      this.metrics.verdictCacheMisses.inc(msg.cache.misses);
      this.metrics.verdictCacheInvalidations.inc(msg.cache.invalidations);
      this.metrics.verdictCacheInvalidationFailures.inc(msg.cache.failures);
    }
    for (const w of msg.warnings) this.log.warn(w);
    try {
      this.records.write(msg.records, msg.heldBack);
    } catch (e) {
      this.log.warn("verdict record sink failed", { error: String(e) });
    }
  }

  private onSystemStats(s: SystemStats): void {
    if (s.nfqueue) {
      recordNfqueueStats(this.metrics, s.nfqueue);
      const ours = s.nfqueue[0];
      if (ours) this.latestQueue = { stats: ours, readAt: s.readAt, received: s.received ?? 0 };
    }
    if (s.process) recordProcessStats(this.metrics, s.process);
    const failed = new Set(s.errors.map((e) => e.source));
    for (const { source, error } of s.errors) {
      if (this.failingSources.has(source)) continue;
      this.failingSources.add(source);
      this.log.warn("cannot read statistics from /proc; retrying quietly", { source, error });
    }
    for (const source of this.failingSources) {
      if (failed.has(source)) continue;
      this.failingSources.delete(source);
      this.log.info("statistics from /proc readable again", { source });
    }
  }

  /** Forwarded to the worker's engine replica; it applies events in this order. */
  applyEvent(ev: StateEvent): void {
    if (this.stopping) return;
    const seq = ++this.seq;
    this.worker.postMessage({ type: "event", seq, event: ev } satisfies ToWorker);
    // Bumped after posting: a worker that sees the new number knows the message is on its way.
    Atomics.store(this.control, SLOT_POSTED_SEQ, seq);
  }

  /** This node's interface addresses (known local addresses for the pod-start race). */
  setLocalAddresses(ips: string[]): void {
    if (this.stopping) return;
    this.worker.postMessage({ type: "local-addresses", ips } satisfies ToWorker);
  }

  /**
   * Resolves once the worker applied every event posted so far and emptied the verdict cache
   * after them (only with the cache on; tests and the bench use it to know a change is in force).
   */
  cacheCurrent(): Promise<void> {
    if (this.cacheCurrentSeq >= this.seq) return Promise.resolve();
    return new Promise((resolve) => this.cacheWaiters.push(resolve));
  }

  /** The state is complete: start judging (packets waited in the kernel queue until now). */
  markSynced(): void {
    Atomics.store(this.control, SLOT_SYNCED, 1);
  }

  get synced(): boolean {
    return Atomics.load(this.control, SLOT_SYNCED) === 1;
  }

  /** Date.now() of the worker's last loop turn (0 before its first), for /healthz. */
  lastHeartbeat(): number {
    return this.heartbeat[0]!;
  }

  /** Idempotent: stop reading, unbind and close the queue, end the worker. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const closed = this.dead
        ? Promise.resolve()
        : new Promise<void>((resolve) => this.closed = resolve);
      Atomics.store(this.control, SLOT_STOP, 1);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = await Promise.race([
        closed.then(() => false),
        new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(true), STOP_TIMEOUT_MS)),
      ]);
      clearTimeout(timer);
      if (timedOut) this.log.warn("verdict loop did not stop in time; terminating its worker");
      this.worker.terminate();
    })();
    return this.stopping;
  }
}
