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
  /** Our queue's counters (none while the kernel lists no such queue); absent when unreadable. */
  nfqueue?: NfqueueStats[];
  process?: ProcessStats;
  /** Each source that could not be read this time, and why. */
  errors: { source: SystemStatsSource; error: string }[];
}

const errorText = (e: unknown) => e instanceof Error ? e.message : String(e);

/** One reading of every source; a failing source is reported and the others still read. */
export function readSystemStats(queueId: number, proc: ProcReader): SystemStats {
  const out: SystemStats = { errors: [] };
  try {
    out.nfqueue = parseNfqueueStats(proc.readText(NFQUEUE_PROC_PATH))
      .filter((s) => s.queue === queueId); // other agents' queues on the node are not ours
  } catch (e) {
    out.errors.push({ source: "nfqueue", error: errorText(e) });
  }
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
  return out;
}

/**
 * Reads every `intervalMs` when polled. The Worker's loop polls on each turn instead of running a
 * timer: a loop that blocks in recv and yields to its event loop only now and then would fire
 * timers late and irregularly.
 */
export class SystemStatsReader {
  private next = -Infinity;

  constructor(
    private readonly queueId: number,
    private readonly report: (stats: SystemStats) => void,
    private readonly proc: ProcReader = LIBC_PROC_READER,
    private readonly intervalMs = 5000,
  ) {}

  /** Reads and reports when due (the first call always is); cheap otherwise. */
  poll(now: number): void {
    if (now < this.next) return;
    this.next = now + this.intervalMs;
    this.report(readSystemStats(this.queueId, this.proc));
  }
}
