/**
 * What the verdict Worker reads from /proc for the main thread every few seconds: the kernel's
 * counters for our queue and the process metrics. Only the Worker can: the main thread holds no
 * FFI, and Deno's file API reads /proc only with --allow-all. The Worker reads through libc
 * (ffi/proc_files.ts) and posts plain numbers; the main thread records them (verdict_loop.ts).
 */
import { clockTicksPerSecond, readDirNames, readTextFile } from "../../ffi/proc_files.ts";
import { NFQUEUE_PROC_PATH, type NfqueueStats, parseNfqueueStats } from "./nfqueue_stats.ts";
import { type ProcessStats, processStats } from "./process_stats.ts";

export interface ProcReader {
  readText(path: string): string;
  readDirNames(path: string): string[];
  clockTicks(): number;
}

export const LIBC_PROC_READER: ProcReader = {
  readText: (path) => readTextFile(path),
  readDirNames,
  clockTicks: clockTicksPerSecond,
};

export type SystemStatsSource = "nfqueue" | "process";

export interface SystemStats {
  /** Date.now() when read (wall time, comparable across threads). */
  readAt: number;
  /**
   * Packets the Worker had received from the queue when the queue counters were read (with
   * `nfqueue` only): together they tell what the kernel let through without queueing it.
   */
  received?: number;
  /** Our queue's counters (none while the kernel lists no such queue); absent when unreadable. */
  nfqueue?: NfqueueStats[];
  process?: ProcessStats;
  /** Each source that could not be read this time, and why. */
  errors: { source: SystemStatsSource; error: string }[];
}

const errorText = (e: unknown) => e instanceof Error ? e.message : String(e);

/**
 * One reading of the sources asked for; a failing source is reported and the others still read.
 */
export function readSystemStats(
  queueId: number,
  proc: ProcReader,
  sources: { nfqueue: boolean; process: boolean } = { nfqueue: true, process: true },
): SystemStats {
  const out: SystemStats = { readAt: Date.now(), errors: [] };
  if (sources.nfqueue) readNfqueue(queueId, proc, out);
  if (sources.process) readProcess(proc, out);
  return out;
}

function readNfqueue(queueId: number, proc: ProcReader, out: SystemStats): void {
  try {
    out.nfqueue = parseNfqueueStats(proc.readText(NFQUEUE_PROC_PATH))
      .filter((s) => s.queue === queueId); // other agents' queues on the node are not ours
  } catch (e) {
    out.errors.push({ source: "nfqueue", error: errorText(e) });
  }
}

function readProcess(proc: ProcReader, out: SystemStats): void {
  try {
    out.process = processStats({
      stat: proc.readText("/proc/self/stat"),
      status: proc.readText("/proc/self/status"),
      limits: proc.readText("/proc/self/limits"),
      systemStat: proc.readText("/proc/stat"),
      // Less the descriptor that lists the directory.
      openFds: proc.readDirNames("/proc/self/fd").length - 1,
      clockTicks: proc.clockTicks(),
    });
  } catch (e) {
    out.errors.push({ source: "process", error: errorText(e) });
  }
}

/**
 * Reads every `intervalMs` when polled. The Worker's loop polls on each turn instead of running a
 * timer: a loop that blocks in recv and yields to its event loop only now and then would fire
 * timers late and irregularly.
 */
export class SystemStatsReader {
  private nextQueue = -Infinity;
  private nextProcess = -Infinity;

  /**
   * @param queueIntervalMs the queue counters: often, because counting packets let through
   *   unjudged (src/rules/unjudged.ts) needs a reading newer than the rule counters it reads, and
   *   it is one small file.
   * @param processIntervalMs the process metrics: a few files and the fd directory.
   */
  constructor(
    private readonly queueId: number,
    private readonly report: (stats: SystemStats) => void,
    private readonly proc: ProcReader = LIBC_PROC_READER,
    private readonly queueIntervalMs = 100,
    private readonly processIntervalMs = 5000,
  ) {}

  /**
   * Reads and reports what is due (the first call reads everything); cheap otherwise.
   * `received`: packets the Worker has received so far, reported with the queue counters.
   */
  poll(now: number, received = 0): void {
    const nfqueue = now >= this.nextQueue;
    const process = now >= this.nextProcess;
    if (!nfqueue && !process) return;
    if (nfqueue) this.nextQueue = now + this.queueIntervalMs;
    if (process) this.nextProcess = now + this.processIntervalMs;
    const stats = readSystemStats(this.queueId, this.proc, { nfqueue, process });
    if (nfqueue) stats.received = received;
    this.report(stats);
  }
}
