/**
 * What the verdict loop's main-thread controller and its Worker say to each other. Messages carry
 * state events in, and verdict records and aggregated statistics out. A small SharedArrayBuffer
 * carries what must be seen without waiting for an event-loop turn: the event sequence number the
 * main thread has posted, the stop and synced flags, and the worker's heartbeat.
 */
import type { StateEvent } from "../state/events.ts";
import type { Decision } from "../policy/types.ts";
import type { PacketStatsSnapshot } from "./verdict_stats.ts";
import type { SystemStats } from "./system_stats.ts";
import type { HeldStatsSnapshot } from "./held_verdicts.ts";
import type { StrictReport } from "./strict_cuts.ts";
import type { FlushTarget } from "../netlink/set_flush.ts";
import type { CacheCounts } from "./verdict_cache.ts";

export interface VerdictLoopOptions {
  queueId: number;
  queueMaxLen: number;
  failOpen: boolean;
  denyMark: number;
  nodeName: string;
  /**
   * Bytes of each packet copied to user space; default the whole packet (WHOLE_PACKET), because
   * an IPv6 extension header chain can put the transport header anywhere in it.
   */
  copyRange?: number;
  /** Send a record for every allowed connection too (denies are always sent, rate-limited). */
  logAllows?: boolean;
  /** Packets read per wake-up before one send() answers them all; default 64 (1 = no batching). */
  maxBatch?: number;
  /** Longest blocking recv; bounds how long an idle worker takes to see state or stop; default 5. */
  recvTimeoutMs?: number;
  /** Deny records (log lines) per second at most, burst twice that; default 50 (deny_log.ts). */
  denyLogRate?: number;
  /**
   * [pod-start race] How long a packet from or to an unknown local pod waits for its pod
   * (held_verdicts.ts); 0 or absent: such packets are judged at once, as non-pod addresses.
   */
  unknownPodTimeoutMs?: number;
  /** `--pod-cidr`: this node's pod CIDRs, instead of its Node object's (local_pods.ts). */
  podCIDRs?: string[];
  /**
   * Strict mode: the ct mark bit that cuts connections a state change denies (strict_cuts.ts).
   * Absent: strict mode off.
   */
  strictCutMark?: number;
  /** The kernel verdict cache (verdict_cache.ts); absent: off. */
  verdictCache?: WorkerCacheOptions;
}

export interface WorkerCacheOptions {
  /** Mark bit for verdicts the kernel may remember (src/verdict/marks.ts). */
  mark: number;
  /** Denies are remembered too (the rules have deny sets). */
  denies: boolean;
  /** The sets the worker empties after every state change. */
  target: FlushTarget;
}

/**
 * Copy range asking for the whole packet: the kernel caps it at its maximum (0xffff less the
 * netlink attribute header, 65531 bytes), which holds any packet a 65535-byte MTU can carry.
 */
export const WHOLE_PACKET = 0xffff;

interface RecordBase {
  /** Date.now() when the packet was judged. */
  time: number;
  /** Deny records the rate limit held back since the previous one (deny records only). */
  suppressedBefore?: number;
}

/** A packet the engine judged: its 5-tuple and the engine's decision with its reasons. */
export interface JudgedRecord extends RecordBase {
  kind: "judged";
  family: 4 | 6;
  protocol: string;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  verdict: "allow" | "deny";
  decision: Decision;
}

/**
 * A packet denied without a decision: it could not be parsed (`reason` is the parse failure) or
 * the engine failed on it (`reason` "evaluation-error", `error` its message). Fields are present
 * as far as they could be read.
 */
export interface UnjudgedRecord extends RecordBase {
  kind: "unjudged";
  verdict: "deny";
  reason: string;
  error?: string;
  family: 4 | 6;
  protocol?: string;
  src?: string;
  srcPort?: number;
  dst?: string;
  dstPort?: number;
}

export type VerdictRecord = JudgedRecord | UnjudgedRecord;

/** Records the worker's gate held back since its last report, by kind (see deny_log.ts). */
export interface HeldBack {
  denies: number;
  allows: number;
}

/** Int32 slots of the shared control block. */
export const SLOT_POSTED_SEQ = 0;
export const SLOT_APPLIED_SEQ = 1;
export const SLOT_STOP = 2;
export const SLOT_SYNCED = 3;
/** Float64 slot (byte offset 16) holding the worker's heartbeat, Date.now() of its last turn. */
export const HEARTBEAT_BYTE_OFFSET = 16;
export const CONTROL_BYTES = 24;

export type ToWorker =
  | { type: "init"; opts: VerdictLoopOptions; control: SharedArrayBuffer }
  | { type: "event"; seq: number; event: StateEvent }
  /** This node's interface addresses (they are known local addresses; local_pods.ts). */
  | { type: "local-addresses"; ips: string[] };

export type FromWorker =
  | { type: "ready" }
  /** The loop stopped (or never started): packets are no longer judged. */
  | { type: "fatal"; message: string }
  /** Something is wrong but the loop keeps judging (e.g. state events out of order). */
  | { type: "warning"; message: string }
  | {
    type: "report";
    stats: PacketStatsSnapshot;
    records: VerdictRecord[];
    /** Held back by the record gate and not yet carried by a later record. */
    heldBack: HeldBack;
    /** Problems the worker survived (netlink errors, send failures), already rate-limited. */
    warnings: string[];
    /** Held packets (pod-start race), in periodic reports when there is anything to say. */
    held?: HeldStatsSnapshot;
    /** Verdict cache counts since the last report (absent: nothing to count). */
    cache?: CacheCounts;
  }
  /**
   * Every state event up to `seq` is applied and the verdict cache holds nothing judged before
   * it (sent after each flush; tests and the bench wait for it).
   */
  | { type: "cache-current"; seq: number }
  /** The worker's /proc readings (queue counters, process metrics), every few seconds. */
  | { type: "system"; stats: SystemStats }
  /** Strict mode: connections cut and un-cut since the last one (strict_cuts.ts). */
  | { type: "strict"; report: StrictReport }
  | { type: "closed" };
