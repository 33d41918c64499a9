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

export interface VerdictLoopOptions {
  queueId: number;
  queueMaxLen: number;
  failOpen: boolean;
  denyMark: number;
  nodeName: string;
  /** Bytes of each packet copied to user space; default 128 (IPv6 + extension headers + ports). */
  copyRange?: number;
  /** Send a record for every allowed connection too (denies are always sent, rate-limited). */
  logAllows?: boolean;
  /** Packets read per wake-up before one send() answers them all; default 64 (1 = no batching). */
  maxBatch?: number;
  /** Longest blocking recv; bounds how long an idle worker takes to see state or stop; default 5. */
  recvTimeoutMs?: number;
  /** Verdict records per second the worker sends at most (the rest are counted); default 1000. */
  recordRate?: number;
}

export interface VerdictRecord {
  /** Date.now() when the packet was judged. */
  time: number;
  family: 4 | 6;
  protocol: string;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  verdict: "allow" | "deny";
  decision: Decision;
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
  | { type: "event"; seq: number; event: StateEvent };

export type FromWorker =
  | { type: "ready" }
  | { type: "failed"; message: string }
  | {
    type: "report";
    stats: PacketStatsSnapshot;
    records: VerdictRecord[];
    suppressedRecords: number;
    /** Problems the worker survived (netlink errors, send failures), already rate-limited. */
    warnings: string[];
  }
  /** The worker's /proc readings (queue counters, process metrics), every few seconds. */
  | { type: "system"; stats: SystemStats }
  | { type: "closed" };
