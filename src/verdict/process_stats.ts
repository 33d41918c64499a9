/**
 * The agent's own process metrics (the conventional `process_*` names), from /proc text. The
 * verdict Worker reads the files (system_stats.ts); everything here is parsing and recording.
 * Threads share one /proc/<pid> view of memory, CPU and descriptors, so reading from the Worker
 * measures the whole agent.
 */
import type { AgentMetrics } from "../metrics.ts";

export interface ProcessStats {
  residentMemoryBytes: number;
  /** User plus system CPU time of every thread. */
  cpuSeconds: number;
  openFds: number;
  /** The soft RLIMIT_NOFILE; undefined when unlimited. */
  maxFds: number | undefined;
  /** Unix time the process started. */
  startTimeSeconds: number;
}

/** What the reader hands over: the raw texts, the fd directory listing, the tick unit. */
export interface ProcessProcTexts {
  /** /proc/self/stat */
  stat: string;
  /** /proc/self/status */
  status: string;
  /** /proc/self/limits */
  limits: string;
  /** /proc/stat (for the boot time) */
  systemStat: string;
  /** Entries of /proc/self/fd, minus the one descriptor used to list them. */
  openFds: number;
  /** sysconf(_SC_CLK_TCK) */
  clockTicks: number;
}

export interface ProcStat {
  utimeTicks: number;
  stimeTicks: number;
  /** Clock ticks after boot when the process started. */
  startTicks: number;
}

/**
 * /proc/<pid>/stat (proc(5)): "pid (comm) state ppid ...". comm may hold spaces and parentheses,
 * so fields are counted from the last ')'. utime, stime and starttime are fields 14, 15 and 22.
 */
export function parseProcStat(text: string): ProcStat {
  const close = text.lastIndexOf(")");
  if (close < 0) throw new Error("stat: no ')' after the command name");
  // Field 3 (state) is the first after the command name.
  const f = text.slice(close + 1).trim().split(/\s+/);
  const field = (n: number, name: string) => {
    const v = f[n - 3];
    if (v === undefined || !/^\d+$/.test(v)) {
      throw new Error(`stat: field ${n} (${name}) is ${JSON.stringify(v)}, not a number`);
    }
    return Number(v);
  };
  return {
    utimeTicks: field(14, "utime"),
    stimeTicks: field(15, "stime"),
    startTicks: field(22, "starttime"),
  };
}

/** VmRSS from /proc/<pid>/status, in bytes (the kernel prints kB = 1024 bytes). */
export function parseResidentBytes(status: string): number {
  const m = /^VmRSS:\s+(\d+)\s+kB\s*$/m.exec(status);
  if (!m) throw new Error("status: no VmRSS line");
  return Number(m[1]) * 1024;
}

/** The soft limit of "Max open files" in /proc/<pid>/limits; undefined when "unlimited". */
export function parseMaxOpenFiles(limits: string): number | undefined {
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(limits);
  if (!m) throw new Error("limits: no 'Max open files' line");
  if (m[1] === "unlimited") return undefined;
  if (!/^\d+$/.test(m[1]!)) throw new Error(`limits: soft open files is ${JSON.stringify(m[1])}`);
  return Number(m[1]);
}

/** btime from /proc/stat: the boot time, in Unix seconds. */
export function parseBootTime(systemStat: string): number {
  const m = /^btime\s+(\d+)\s*$/m.exec(systemStat);
  if (!m) throw new Error("/proc/stat: no btime line");
  return Number(m[1]);
}

export function processStats(t: ProcessProcTexts): ProcessStats {
  if (!(t.clockTicks > 0)) throw new Error(`clock ticks per second is ${t.clockTicks}`);
  const stat = parseProcStat(t.stat);
  return {
    residentMemoryBytes: parseResidentBytes(t.status),
    cpuSeconds: (stat.utimeTicks + stat.stimeTicks) / t.clockTicks,
    openFds: t.openFds,
    maxFds: parseMaxOpenFiles(t.limits),
    startTimeSeconds: parseBootTime(t.systemStat) + stat.startTicks / t.clockTicks,
  };
}

export function recordProcessStats(metrics: AgentMetrics, s: ProcessStats): void {
  metrics.processResidentMemory.set(s.residentMemoryBytes);
  // A counter whose value the kernel keeps: set it (it only grows) rather than add to it.
  metrics.processCpuSeconds.reset();
  metrics.processCpuSeconds.inc(s.cpuSeconds);
  metrics.processOpenFds.set(s.openFds);
  if (s.maxFds !== undefined) metrics.processMaxFds.set(s.maxFds);
  metrics.processStartTime.set(s.startTimeSeconds);
}
