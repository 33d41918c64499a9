/**
 * The verdict loop's Worker: owns the queue and an engine replica, and nothing else runs on its
 * thread, so a blocking recv costs the agent's main thread nothing.
 *
 * One turn (VerdictTurns): drain (a blocking recv bounded by SO_RCVTIMEO, then what else is
 * pending without waiting, up to `maxBatch` packets, each judged as it is decoded) -> send (one
 * send() with every verdict) -> report (counters, records and warnings to the main thread, on
 * their own schedules). Between turns it checks the shared control block: state events the main
 * thread has posted but this replica has not applied make it yield to its event loop until they
 * have arrived (so a policy change is enforced within one turn, busy or idle), a stop request ends
 * the loop. It does not read the queue before the main thread says the state is synced: packets
 * wait in the kernel queue rather than be judged against a half-known cluster. With the kernel
 * verdict cache on, a turn after applied state changes starts by emptying the cache sets, so no
 * verdict of the old state is served once the new one is in force (verdict_cache.ts).
 */
/// <reference lib="deno.worker" />
import { NfQueue, RECV_OVERRUN } from "../../ffi/queue.ts";
import {
  NetlinkDecoder,
  type NetlinkSink,
  type QueuedPacket,
  VerdictBatch,
} from "../netlink/nfqueue.ts";
import { RateLimiter } from "../log.ts";
import { DEFAULT_DENY_LOG_RATE, RecordGate } from "./deny_log.ts";
import { PolicyEngine } from "../policy/engine.ts";
import { applyEvent } from "../state/apply.ts";
import type { StateEvent } from "../state/events.ts";
import { PacketJudge } from "./packet_judge.ts";
import {
  type FromWorker,
  HEARTBEAT_BYTE_OFFSET,
  type HeldBack,
  SLOT_APPLIED_SEQ,
  SLOT_POSTED_SEQ,
  SLOT_STOP,
  SLOT_SYNCED,
  type ToWorker,
  type VerdictLoopOptions,
  type VerdictRecord,
  WHOLE_PACKET,
} from "./verdict_protocol.ts";
import { PacketStats } from "./verdict_stats.ts";
import { SystemStatsReader } from "./system_stats.ts";
import { LocalPodAddresses } from "../policy/local_pods.ts";
import {
  describeRelease,
  type HeldPacket,
  HeldVerdicts,
  maxHeldFor,
  type ReleaseReason,
  releaseVerdict,
} from "./held_verdicts.ts";
import type { PacketVerdict } from "./packet_judge.ts";
import { openStrictMode, type StrictMode } from "./strict_worker.ts";
import { releaseMemory } from "../release_memory.ts";
import { NETLINK_NETFILTER, NetlinkSocket } from "../../ffi/netlink_socket.ts";
import { CacheFlusher, WorkerCache } from "./verdict_cache.ts";

const REPORT_EVERY_MS = 250;
/** Records are latency-sensitive (deny logs): sent sooner than statistics. */
const RECORDS_EVERY_MS = 50;
/**
 * A busy loop yields to its event loop this often anyway (state events make it yield at once,
 * see catchUp). Rarely, because a yield is a pause every packet waiting in the queue pays for.
 */
const YIELD_EVERY_MS = 1000;
/** The heartbeat (/healthz reads it, with a 10 s limit) is refreshed this often at most. */
const HEARTBEAT_EVERY_MS = 100;
/**
 * Buffer for one datagram: the kernel sends one netlink message per queued packet, holding up to
 * the copy range (the whole packet, at most 65531 bytes) plus metadata attributes (packet header,
 * mark, interfaces, timestamp, hardware address: well under 1 KiB). It must hold the largest
 * message: a longer datagram would be cut, its packet would get no verdict and stay queued. One
 * buffer, reused for every recv; first packets are mostly small SYNs, so only its first few
 * hundred bytes are normally touched.
 */
const RECV_BUFFER_BYTES = 0x10000 + 4096;
/** Longest wait for the kernel's answer to a cache flush (it normally comes inside the send). */
const CACHE_FLUSH_WAIT_MS = 50;

function post(msg: FromWorker): void {
  self.postMessage(msg);
}

let control: Int32Array;
let heartbeat: Float64Array;
/** /proc readings for the main thread, which cannot make them (it holds no FFI). */
let systemStats: SystemStatsReader | undefined;
let initialized = false;
/** Replaced at init by one scoped to this node (it judges this node's pods only). */
let engine = new PolicyEngine();
let applied = 0;
/** Strict mode (strict_cuts.ts): set at init when enabled and the conntrack socket opened. */
let strict: StrictMode | undefined;
/** Resolves the wait in catchUp() once the posted sequence number is reached. */
let caughtUp: (() => void) | undefined;
/** [pod-start race] This node's pod CIDRs and which addresses in them are known. */
let localPods: LocalPodAddresses | undefined;
/** Bumped when the interface addresses change: held packets are looked at again. */
let localAddressesVersion = 0;
/** The kernel verdict cache's worker side (verdict_cache.ts); undefined when it is off. */
let cache: WorkerCache | undefined;

self.onmessage = (e: MessageEvent<ToWorker>) => {
  const msg = e.data;
  if (msg.type === "init") {
    // One queue per worker: a second init (from a confused or compromised main thread) is ignored.
    if (initialized) return;
    initialized = true;
    engine = new PolicyEngine({ node: msg.opts.nodeName });
    control = new Int32Array(msg.control, 0, 4);
    heartbeat = new Float64Array(msg.control, HEARTBEAT_BYTE_OFFSET, 1);
    try {
      localPods = new LocalPodAddresses(engine, msg.opts.nodeName, msg.opts.podCIDRs);
    } catch (err) {
      post({ type: "fatal", message: String((err as Error)?.message ?? err) });
      return;
    }
    // Before any state event arrives: the engine must note every change from the first one on.
    strict = openStrictMode(engine, msg.opts, post);
    run(msg.opts).catch((err) => post({ type: "fatal", message: String(err?.message ?? err) }));
    return;
  }
  if (msg.type === "local-addresses") {
    if (localPods?.setInterfaceAddresses(msg.ips)) {
      localAddressesVersion++;
      // Which addresses are unknown pods changed: a remembered verdict may now skip a hold.
      cache?.stateChanged();
    }
    return;
  }
  if (msg.seq !== applied + 1) {
    // Applied anyway: the replica may now differ from the main engine, but it keeps judging.
    post({ type: "warning", message: `state event ${msg.seq} arrived after ${applied}` });
  }
  applyOne(msg.event);
  applied = msg.seq;
  cache?.stateChanged();
  // End of a burst of changes: build the rule tables now, not on the next packet's path.
  if (applied >= Atomics.load(control, SLOT_POSTED_SEQ)) {
    engine.prepare();
    strict?.changed();
  }
  Atomics.store(control, SLOT_APPLIED_SEQ, applied);
  if (caughtUp && applied >= Atomics.load(control, SLOT_POSTED_SEQ)) {
    caughtUp();
    caughtUp = undefined;
  }
};

function applyOne(ev: StateEvent): void {
  try {
    // Errors are the main thread's to report: it applies the same event to its own engine.
    applyEvent(engine, ev);
  } catch {
    // A replica that threw on an event is no worse off than one that skipped it.
  }
}

/** Waits for every posted state event to be applied. */
function catchUp(): Promise<void> {
  if (applied >= Atomics.load(control, SLOT_POSTED_SEQ)) return Promise.resolve();
  return new Promise((resolve) => caughtUp = resolve);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One event-loop turn without the timer clamp of setTimeout(0) (about 1 ms here). */
const turnChannel = new MessageChannel();
let turnWaiter: (() => void) | undefined;
turnChannel.port1.onmessage = () => {
  turnWaiter?.();
  turnWaiter = undefined;
};
function yieldTurn(): Promise<void> {
  return new Promise((resolve) => {
    turnWaiter = resolve;
    turnChannel.port2.postMessage(0);
  });
}

async function run(opts: VerdictLoopOptions): Promise<void> {
  const queue = NfQueue.open({
    queueId: opts.queueId,
    copyRange: opts.copyRange ?? WHOLE_PACKET,
    maxLen: opts.queueMaxLen,
    failOpen: opts.failOpen,
    recvTimeoutMs: opts.recvTimeoutMs ?? 5,
  });
  systemStats = new SystemStatsReader(opts.queueId, (stats) => post({ type: "system", stats }));
  let cacheSocket: NetlinkSocket | undefined;
  try {
    if (opts.verdictCache) {
      // Answers are a few acknowledgements: a small receive buffer is plenty.
      cacheSocket = NetlinkSocket.open(NETLINK_NETFILTER, {
        recvTimeoutMs: CACHE_FLUSH_WAIT_MS,
        receiveBufferBytes: 64 * 1024,
      });
      cache = new WorkerCache(new CacheFlusher(opts.verdictCache.target, cacheSocket));
    }
    post({ type: "ready" });
    await loop(queue, opts);
    // Nothing judges any more: what the kernel remembers must not outlive the agent (with
    // --fail-open=false the rules stay, and new connections must then fail as promised).
    const emptied = cache?.empty();
    if (emptied && !emptied.ok) {
      post({ type: "warning", message: `emptying the verdict cache at stop: ${emptied.error}` });
    }
  } finally {
    queue.close();
    cacheSocket?.close();
  }
  post({ type: "closed" });
}

async function loop(queue: NfQueue, opts: VerdictLoopOptions): Promise<void> {
  const stats = new PacketStats();
  const gate = new RecordGate({
    denyPerSecond: opts.denyLogRate ?? DEFAULT_DENY_LOG_RATE,
    logAllows: opts.logAllows ?? false,
  });
  const turns = new VerdictTurns(queue, new PacketJudge(engine, opts, stats), stats, gate, opts);
  let lastYield = performance.now();
  let lastBeat = -Infinity;
  let releasedAfterSync = false;
  while (Atomics.load(control, SLOT_STOP) === 0) {
    // One clock reading per turn serves the heartbeat, the /proc poll and the cache (each clock
    // read costs about 0.1 us here: a busy loop turns for every packet).
    let now = performance.now();
    if (now - lastBeat >= HEARTBEAT_EVERY_MS) {
      lastBeat = now;
      heartbeat[0] = Date.now();
    }
    systemStats?.poll(now, turns.received);
    if (Atomics.load(control, SLOT_POSTED_SEQ) !== applied) await catchUp();
    if (Atomics.load(control, SLOT_SYNCED) === 0) {
      await sleep(5);
      continue;
    }
    if (!releasedAfterSync) {
      // The initial state is applied: hand back what its messages left (before any judging).
      releasedAfterSync = true;
      releaseMemory();
    }
    if (cache) turns.keepCacheCurrent(cache, now, applied);
    turns.drain();
    turns.releaseHeld();
    turns.send();
    now = performance.now();
    turns.report(now);
    // Between turns: strict mode re-judges the connections a change touched (time-bounded).
    strict?.turn(now);
    if (now - lastYield >= YIELD_EVERY_MS) {
      lastYield = now;
      await yieldTurn();
    }
  }
  turns.releaseAllHeld();
  turns.flush();
  strict?.close();
}

/**
 * The parts of one turn, with their state in fields: the per-packet path (`packet`, called by
 * the decoder) allocates nothing of its own, records only for the verdicts the gate admits.
 */
class VerdictTurns implements NetlinkSink {
  private readonly buf = new Uint8Array(RECV_BUFFER_BYTES);
  private readonly decoder = new NetlinkDecoder();
  private readonly batch: VerdictBatch;
  private readonly maxBatch: number;
  private readonly warnLimiter = new RateLimiter(1, 10);
  /** performance.now() when the datagram being decoded was received. */
  private started = 0;
  private overruns = 0;
  /** Whether the last non-blocking recv after a wake-up found a packet (see drain). */
  private drainPays = true;
  private turnCount = 0;
  /** Packets received from the queue since start (for counting what the kernel never queued). */
  received = 0;
  private records: VerdictRecord[] = [];
  private warnings: string[] = [];
  private lastReport = performance.now();
  private lastRecords = this.lastReport;
  /** [pod-start race] Packets waiting for their pod; absent when holding is off. */
  private readonly held?: HeldVerdicts;
  private readonly failOpen: boolean;
  private readonly releaseLog = new RateLimiter(1, 5);
  /** Engine generation and interface addresses last looked at for held packets. */
  private heldSeen = { generation: -1, addresses: -1 };
  private readonly cacheMark: number;
  private readonly cacheDenies: boolean;

  constructor(
    private readonly queue: NfQueue,
    private readonly judge: PacketJudge,
    private readonly stats: PacketStats,
    private readonly gate: RecordGate,
    opts: VerdictLoopOptions,
  ) {
    this.maxBatch = Math.max(1, opts.maxBatch ?? 64);
    this.batch = new VerdictBatch(opts.queueId, this.maxBatch);
    this.failOpen = opts.failOpen;
    if (opts.unknownPodTimeoutMs && localPods) {
      const local = localPods;
      this.held = new HeldVerdicts(opts.unknownPodTimeoutMs, maxHeldFor(opts.queueMaxLen));
      judge.unknownEndpoint = (ip) => local.isUnknown(ip);
      judge.unknownVersion = () => localAddressesVersion;
    }
    this.cacheMark = opts.verdictCache?.mark ?? 0;
    this.cacheDenies = opts.verdictCache?.denies ?? false;
  }

  /**
   * Before a turn: empty the verdict cache if the state changed (so nothing judged before the
   * change is served after it), and mark verdicts for caching only while the cache is current.
   */
  keepCacheCurrent(c: WorkerCache, now: number, appliedSeq: number): void {
    if (c.beforeJudging(now)) post({ type: "cache-current", seq: appliedSeq });
    const usable = c.usable;
    this.judge.setCacheMarks(
      usable ? this.cacheMark : 0,
      usable && this.cacheDenies ? this.cacheMark : 0,
    );
    const failure = c.takeFailure();
    if (failure) {
      this.warn(
        `emptying the verdict cache failed; nothing is cached until it works again: ${failure}`,
      );
    }
  }

  /** Read what the kernel queued (waiting for the first datagram), judging each packet. */
  drain(): void {
    const { queue, buf, maxBatch } = this;
    let n = queue.recv(buf);
    let got = 0;
    while (n > 0) {
      this.started = performance.now();
      this.decoder.decode(buf, n, this);
      if (++got >= maxBatch || this.batch.count >= maxBatch) break;
      // Draining costs one more recv per wake-up; at light load it would find nothing nearly
      // always, so it is tried only while the last attempt found a packet (and every 16th turn).
      if (!this.drainPays && (++this.turnCount & 15) !== 0) break;
      n = queue.recv(buf, true);
      if (got === 1) this.drainPays = n > 0;
    }
    if (n === RECV_OVERRUN) this.overruns++;
  }

  /** Answer every packet of this turn with one send(). */
  send(): void {
    const batch = this.batch;
    try {
      this.queue.send(batch.buffer, batch.byteLength);
    } catch (e) {
      // The packets stay queued in the kernel; they are lost only if the socket is broken.
      this.warn(`sending verdicts failed: ${(e as Error).message}`);
    } finally {
      batch.clear();
    }
  }

  /** Hand the main thread what accumulated: records soon (deny logs), the rest less often. */
  report(now: number): void {
    if (this.records.length && now - this.lastRecords >= RECORDS_EVERY_MS) {
      this.lastRecords = now;
      this.postReport();
    }
    if (now - this.lastReport >= REPORT_EVERY_MS) {
      this.lastReport = now;
      if (this.overruns) {
        this.warn(`receive buffer overran ${this.overruns} times (kernel dropped messages)`);
      }
      this.overruns = 0;
      this.postReport(true);
    }
  }

  /** The last report, when the loop stops. */
  flush(): void {
    this.postReport(true);
  }

  /** Post a report if there is anything in it; held-back counts go only with periodic ones. */
  private postReport(periodic = false): void {
    const heldBack = periodic ? this.gate.takeHeldBack() : NOTHING_HELD_BACK;
    const stats = this.stats;
    const held = periodic && this.held?.hasStats ? this.held.snapshot() : undefined;
    const cacheCounts = periodic ? cache?.drain() : undefined;
    if (
      stats.isEmpty && !this.records.length && !this.warnings.length &&
      !heldBack.denies && !heldBack.allows && !held && !cacheCounts
    ) return;
    post({
      type: "report",
      stats: stats.drain(),
      records: this.records,
      heldBack,
      warnings: this.warnings,
      ...(held ? { held } : {}),
      ...(cacheCounts ? { cache: cacheCounts } : {}),
    });
    this.records = [];
    this.warnings = [];
  }

  private warn(text: string): void {
    if (this.warnLimiter.take()) this.warnings.push(text);
  }

  // NetlinkSink: the decoder calls these for every message of a datagram.

  packet(p: QueuedPacket): void {
    this.received++;
    cache?.miss();
    const v = this.judge.judge(p.payload, p.mark, p.hwProtocol, this.started);
    if (v.held) return this.hold(p);
    this.answer(p.id, v);
  }

  /** Add a verdict (sending first if the batch is full) and its record if the gate wants it. */
  private answer(id: number, v: PacketVerdict): void {
    if (!this.batch.add(id, v.verdict, v.mark)) {
      this.send();
      this.batch.add(id, v.verdict, v.mark);
    }
    if (this.gate.admit(v.allowed)) {
      const r = this.judge.record(Date.now());
      if (!v.allowed) {
        const before = this.gate.takeDeniesHeldBack();
        if (before) r.suppressedBefore = before;
      }
      this.records.push(r);
    }
  }

  // [pod-start race] Holding packets whose pod is not known yet (held_verdicts.ts).

  private hold(p: QueuedPacket): void {
    const packet = this.judge.heldPacket;
    if (!this.held || !packet) return; // cannot happen: held only when holding is on
    const overflow = this.held.hold({
      id: p.id,
      mark: p.mark,
      packet,
      since: this.started,
      cacheable: this.judge.heldPacketCacheable,
    });
    if (overflow) this.release(overflow, "overflow", this.started);
  }

  /**
   * Judge the held packets whose pods are known now (after state changed), release those held
   * too long by the --fail-open rule. Called every turn, after the turn's packets were read and
   * in the same synchronous stretch as the turn's keepCacheCurrent: a held packet is judged with
   * the state it is released in, and may carry the cache mark only if the cache was emptied
   * after that state's last change (PacketJudge checks the generation too). Released unjudged,
   * it never carries one.
   */
  releaseHeld(): void {
    const held = this.held;
    if (!held || held.size === 0) return;
    const now = performance.now();
    const seen = this.heldSeen;
    if (seen.generation !== engine.generation || seen.addresses !== localAddressesVersion) {
      seen.generation = engine.generation;
      seen.addresses = localAddressesVersion;
      for (const h of held.takeKnown(this.judge.unknownEndpoint!, now)) {
        this.answer(
          h.id,
          this.judge.judgeParsed(h.packet, h.mark, performance.now(), h.cacheable ?? false),
        );
      }
    }
    for (const h of held.takeExpired(now)) this.release(h, "timeout", now);
  }

  /** The loop stops: what is held gets the --fail-open verdict now (unbinding would drop it). */
  releaseAllHeld(): void {
    if (!this.held?.size) return;
    const verdict = releaseVerdict(this.failOpen);
    for (const h of this.held.takeAll()) {
      if (!this.batch.add(h.id, verdict)) {
        this.send();
        this.batch.add(h.id, verdict);
      }
    }
    this.send();
  }

  private release(h: HeldPacket, reason: ReleaseReason, now: number): void {
    const verdict = releaseVerdict(this.failOpen);
    if (!this.batch.add(h.id, verdict)) {
      this.send();
      this.batch.add(h.id, verdict);
    }
    if (this.releaseLog.take()) {
      const unknown = this.judge.unknownEndpoint ?? (() => false);
      const suppressed = this.releaseLog.drainSuppressed();
      this.warnings.push(
        describeRelease(h, reason, this.failOpen, unknown, now - h.since) +
          (suppressed ? ` (${suppressed} similar lines suppressed before)` : ""),
      );
    }
  }

  error(errno: number, seq: number): void {
    this.warn(`netlink error from the kernel: errno ${errno} (seq ${seq})`);
  }

  malformed(reason: string): void {
    this.stats.parseFailure("bad-netlink");
    this.warn(`malformed netlink message: ${reason}`);
  }
}

const NOTHING_HELD_BACK: HeldBack = Object.freeze({ denies: 0, allows: 0 });
