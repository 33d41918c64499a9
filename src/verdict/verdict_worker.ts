/**
 * The verdict loop's Worker: owns the queue and an engine replica, and nothing else runs on its
 * thread, so a blocking recv costs the agent's main thread nothing.
 *
 * One turn: blocking recv (bounded by SO_RCVTIMEO) -> drain what else is pending without waiting,
 * up to `maxBatch` packets -> judge each -> one send() with every verdict. Between turns it
 * checks the shared control block: state events the main thread has posted but this replica has
 * not applied make it yield to its event loop until they have arrived (so a policy change is
 * enforced within one turn, busy or idle), a stop request ends the loop. It does not read the
 * queue before the main thread says the state is synced: packets wait in the kernel queue rather
 * than be judged against a half-known cluster.
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
import { PolicyEngine } from "../policy/engine.ts";
import { applyEvent } from "../state/apply.ts";
import type { StateEvent } from "../state/events.ts";
import { PacketJudge } from "./packet_judge.ts";
import {
  type FromWorker,
  HEARTBEAT_BYTE_OFFSET,
  SLOT_APPLIED_SEQ,
  SLOT_POSTED_SEQ,
  SLOT_STOP,
  SLOT_SYNCED,
  type ToWorker,
  type VerdictLoopOptions,
  type VerdictRecord,
} from "./verdict_protocol.ts";
import { PacketStats } from "./verdict_stats.ts";
import { SystemStatsReader } from "./system_stats.ts";

const REPORT_EVERY_MS = 250;
/** Records are latency-sensitive (deny logs): sent sooner than statistics. */
const RECORDS_EVERY_MS = 50;
/**
 * A busy loop yields to its event loop this often anyway (state events make it yield at once,
 * see catchUp). Rarely, because a yield is a pause every packet waiting in the queue pays for.
 */
const YIELD_EVERY_MS = 1000;
/** Buffer for one datagram: one packet message with the copy range plus metadata. */
const RECV_BUFFER_BYTES = 65536;

function post(msg: FromWorker): void {
  self.postMessage(msg);
}

let control: Int32Array;
let heartbeat: Float64Array;
/** /proc readings for the main thread, which cannot make them (it holds no FFI). */
let systemStats: SystemStatsReader | undefined;
let initialized = false;
const engine = new PolicyEngine();
let applied = 0;
/** Resolves the wait in catchUp() once the posted sequence number is reached. */
let caughtUp: (() => void) | undefined;

self.onmessage = (e: MessageEvent<ToWorker>) => {
  const msg = e.data;
  if (msg.type === "init") {
    // One queue per worker: a second init (from a confused or compromised main thread) is ignored.
    if (initialized) return;
    initialized = true;
    control = new Int32Array(msg.control, 0, 4);
    heartbeat = new Float64Array(msg.control, HEARTBEAT_BYTE_OFFSET, 1);
    run(msg.opts).catch((err) => post({ type: "failed", message: String(err?.message ?? err) }));
    return;
  }
  if (msg.seq !== applied + 1) {
    post({ type: "failed", message: `state event ${msg.seq} arrived after ${applied}` });
  }
  applyOne(msg.event);
  applied = msg.seq;
  // End of a burst of changes: build the rule tables now, not on the next packet's path.
  if (applied >= Atomics.load(control, SLOT_POSTED_SEQ)) engine.prepare();
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
    copyRange: opts.copyRange ?? 128,
    maxLen: opts.queueMaxLen,
    failOpen: opts.failOpen,
    recvTimeoutMs: opts.recvTimeoutMs ?? 5,
  });
  systemStats = new SystemStatsReader(opts.queueId, (stats) => post({ type: "system", stats }));
  try {
    post({ type: "ready" });
    await loop(queue, opts);
  } finally {
    queue.close();
  }
  post({ type: "closed" });
}

async function loop(queue: NfQueue, opts: VerdictLoopOptions): Promise<void> {
  const stats = new PacketStats();
  const judge = new PacketJudge(engine, opts, stats);
  const maxBatch = Math.max(1, opts.maxBatch ?? 64);
  const batch = new VerdictBatch(opts.queueId, maxBatch);
  const decoder = new NetlinkDecoder();
  const buf = new Uint8Array(RECV_BUFFER_BYTES);
  const recordLimiter = new RateLimiter(opts.recordRate ?? 1000, (opts.recordRate ?? 1000) * 2);
  const warnLimiter = new RateLimiter(1, 10);
  const logAllows = opts.logAllows ?? false;
  let records: VerdictRecord[] = [];
  let warnings: string[] = [];
  /** Hand the main thread what accumulated: counters, verdict records, warnings. */
  const report = (suppressedRecords: number) => {
    post({ type: "report", stats: stats.drain(), records, suppressedRecords, warnings });
    records = [];
    warnings = [];
  };
  let started = 0;
  let overruns = 0;
  let drainPays = true;
  let turns = 0;

  const warn = (text: string) => {
    if (warnLimiter.take()) warnings.push(text);
  };
  const sink: NetlinkSink = {
    packet(p: QueuedPacket) {
      const v = judge.judge(p.payload, p.mark, p.hwProtocol, started);
      batch.add(p.id, v.verdict, v.mark);
      const r = v.record;
      if (r && (r.verdict === "deny" || logAllows) && recordLimiter.take()) {
        r.time = Date.now();
        records.push(r);
      }
    },
    error(errno, seq) {
      warn(`netlink error from the kernel: errno ${errno} (seq ${seq})`);
    },
    malformed(reason) {
      stats.parseFailure("bad-netlink");
      warn(`malformed netlink message: ${reason}`);
    },
  };
  const sendBatch = () => {
    try {
      queue.send(batch.buffer, batch.byteLength);
    } catch (e) {
      // The packets stay queued in the kernel; they are lost only if the socket is broken.
      warn(`sending verdicts failed: ${(e as Error).message}`);
    } finally {
      batch.clear();
    }
  };

  let lastReport = performance.now();
  let lastRecords = lastReport;
  let lastYield = lastReport;
  while (Atomics.load(control, SLOT_STOP) === 0) {
    heartbeat[0] = Date.now();
    systemStats?.poll(performance.now());
    if (Atomics.load(control, SLOT_POSTED_SEQ) !== applied) await catchUp();
    if (Atomics.load(control, SLOT_SYNCED) === 0) {
      await sleep(5);
      continue;
    }
    let n = queue.recv(buf);
    let got = 0;
    while (n > 0) {
      started = performance.now();
      decoder.decode(buf, n, sink);
      if (++got >= maxBatch || batch.count >= maxBatch) break;
      // Draining costs one more recv per wake-up; at light load it would find nothing nearly
      // always, so it is tried only while the last attempt found a packet (and every 16th turn).
      if (!drainPays && (++turns & 15) !== 0) break;
      n = queue.recv(buf, true);
      if (got === 1) drainPays = n > 0;
    }
    if (n === RECV_OVERRUN) overruns++;
    sendBatch();

    const now = performance.now();
    if (records.length && now - lastRecords >= RECORDS_EVERY_MS) {
      lastRecords = now;
      report(recordLimiter.drainSuppressed());
    }
    if (now - lastReport >= REPORT_EVERY_MS) {
      lastReport = now;
      if (overruns) warn(`receive buffer overran ${overruns} times (kernel dropped messages)`);
      overruns = 0;
      const suppressedRecords = recordLimiter.drainSuppressed();
      if (!stats.isEmpty || records.length || warnings.length || suppressedRecords) {
        report(suppressedRecords);
      }
    }
    if (now - lastYield >= YIELD_EVERY_MS) {
      lastYield = now;
      await yieldTurn();
    }
  }
  if (!stats.isEmpty || records.length || warnings.length) report(recordLimiter.drainSuppressed());
}
