/**
 * The verdict loop as the agent sees it: starts the Worker that owns the queue (see
 * verdict_worker.ts), forwards every state event to its engine replica in order, feeds the
 * Prometheus metrics from the worker's reports, and hands verdict records to the caller.
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
import { startNfqueueStatsReader } from "./nfqueue_stats.ts";

export type { VerdictLoopOptions, VerdictRecord };

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
  private stopStatsReader?: () => void;
  /** Packets the worker received and reported so far (for counting packets never judged). */
  received = 0;

  private constructor(
    private readonly worker: Worker,
    shared: SharedArrayBuffer,
    private readonly metrics: AgentMetrics,
    private readonly onVerdict: (r: VerdictRecord) => void,
    private readonly log: Logger,
  ) {
    this.control = new Int32Array(shared, 0, 4);
    this.heartbeat = new Float64Array(shared, HEARTBEAT_BYTE_OFFSET, 1);
  }

  /** Resolves once the queue is bound; rejects (and cleans up) if it cannot be. */
  static start(
    opts: VerdictLoopOptions,
    metrics: AgentMetrics,
    onVerdict: (r: VerdictRecord) => void,
    log: Logger,
  ): Promise<VerdictLoop> {
    const shared = new SharedArrayBuffer(CONTROL_BYTES);
    const worker = new Worker(new URL("./verdict_worker.ts", import.meta.url).href, {
      type: "module",
    });
    const loop = new VerdictLoop(
      worker,
      shared,
      metrics,
      onVerdict,
      log.with({ queue: opts.queueId }),
    );
    return new Promise((resolve, reject) => {
      let bound = false;
      worker.onmessage = (e: MessageEvent<FromWorker>) => {
        const msg = e.data;
        if (msg.type === "ready") {
          bound = true;
          // The kernel's own counters for our queue (backlog, drops): every 5 s.
          loop.stopStatsReader = startNfqueueStatsReader(opts.queueId, metrics, loop.log);
          resolve(loop);
        } else if (msg.type === "failed") {
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
    if (msg.type !== "report") return;
    recordSnapshot(this.metrics, msg.stats);
    for (const list of Object.values(msg.stats.durations)) this.received += list.length;
    for (const w of msg.warnings) this.log.warn(w);
    if (msg.suppressedRecords) {
      this.log.v(2).info("verdict records suppressed by rate limit", {
        count: msg.suppressedRecords,
      });
    }
    for (const r of msg.records) {
      try {
        this.onVerdict(r);
      } catch (e) {
        this.log.warn("verdict record handler failed", { error: String(e) });
      }
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
      this.stopStatsReader?.();
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
