/**
 * The process metrics from /proc text (proc(5) formats), the Worker-side reader that collects
 * them with the queue counters, and the gauges the main thread records.
 */
import assert from "node:assert/strict";
import {
  parseBootTime,
  parseMaxOpenFiles,
  parseProcStat,
  parseResidentBytes,
  processStats,
  recordProcessStats,
} from "../src/verdict/process_stats.ts";
import {
  type ProcReader,
  type SystemStats,
  SystemStatsReader,
} from "../src/verdict/system_stats.ts";
import { NFQUEUE_PROC_PATH } from "../src/verdict/nfqueue_stats.ts";
import { AgentMetrics } from "../src/metrics.ts";

// A command name with spaces and parentheses: fields must be counted from the last ')'.
// utime=250 stime=50 (fields 14, 15), starttime=123400 (field 22).
const STAT =
  "4321 (kube (netpol) x) S 1 4321 4321 0 -1 4194560 9000 0 0 0 250 50 0 0 20 0 6 0 123400 " +
  "1073741824 12000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
const STATUS = [
  "Name:\tdeno",
  "VmPeak:\t 1500000 kB",
  "VmRSS:\t   81920 kB",
  "RssAnon:\t   70000 kB",
  "Threads:\t6",
  "",
].join("\n");
const LIMITS = [
  "Limit                     Soft Limit           Hard Limit           Units     ",
  "Max cpu time              unlimited            unlimited            seconds   ",
  "Max open files            1048576              1048576              files     ",
  "",
].join("\n");
const SYSTEM_STAT = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1700000000\nprocesses 7\n";

Deno.test("stat: CPU and start ticks, with spaces and parentheses in the command name", () => {
  assert.deepEqual(parseProcStat(STAT), { utimeTicks: 250, stimeTicks: 50, startTicks: 123400 });
  assert.throws(() => parseProcStat("4321 deno S 1"), /no '\)'/);
  assert.throws(() => parseProcStat("4321 (deno) S 1 2"), /field 14 \(utime\)/);
});

Deno.test("status, limits, /proc/stat: RSS in bytes, the soft fd limit, the boot time", () => {
  assert.equal(parseResidentBytes(STATUS), 81920 * 1024);
  assert.throws(() => parseResidentBytes("Name:\tdeno\n"), /VmRSS/);
  assert.equal(parseMaxOpenFiles(LIMITS), 1048576);
  assert.equal(
    parseMaxOpenFiles(LIMITS.replace("1048576              1048576", "unlimited  unlimited")),
    undefined,
  );
  assert.throws(() => parseMaxOpenFiles("Limit Soft Hard\n"), /Max open files/);
  assert.equal(parseBootTime(SYSTEM_STAT), 1700000000);
});

Deno.test("process stats combine the files: CPU seconds and start time in clock ticks", () => {
  assert.deepEqual(
    processStats({
      stat: STAT,
      status: STATUS,
      limits: LIMITS,
      systemStat: SYSTEM_STAT,
      openFds: 17,
      clockTicks: 100,
    }),
    {
      residentMemoryBytes: 83886080,
      cpuSeconds: 3,
      openFds: 17,
      maxFds: 1048576,
      startTimeSeconds: 1700001234,
    },
  );
});

Deno.test("the process gauges and counter carry the readings", async () => {
  const metrics = new AgentMetrics();
  const s = {
    residentMemoryBytes: 83886080,
    cpuSeconds: 3,
    openFds: 17,
    maxFds: 1048576,
    startTimeSeconds: 1700001234,
  };
  recordProcessStats(metrics, s);
  recordProcessStats(metrics, { ...s, cpuSeconds: 3.5 }); // set, not added
  const text = await metrics.registry.metrics();
  assert.match(text, /^process_resident_memory_bytes 83886080$/m);
  assert.match(text, /^# TYPE process_cpu_seconds_total counter$/m);
  assert.match(text, /^process_cpu_seconds_total 3\.5$/m);
  assert.match(text, /^process_open_fds 17$/m);
  assert.match(text, /^process_max_fds 1048576$/m);
  assert.match(text, /^process_start_time_seconds 1700001234$/m);
});

/** A /proc with fixed files; `broken` paths throw as an unreadable file does. */
function fakeProc(broken: string[] = []): ProcReader & { reads: number } {
  const files: Record<string, string> = {
    [NFQUEUE_PROC_PATH]: "  100 31 3 2 128 17 5 4242 1\n    7 98 0 2 128 0 0 9 1\n",
    "/proc/self/stat": STAT,
    "/proc/self/status": STATUS,
    "/proc/self/limits": LIMITS,
    "/proc/stat": SYSTEM_STAT,
  };
  const proc = {
    reads: 0,
    readText(path: string) {
      proc.reads++;
      if (broken.includes(path) || !(path in files)) throw new Error(`open ${path} failed: ENOENT`);
      return files[path]!;
    },
    // 3 descriptors, plus the one listing the directory.
    readDirNames: (path: string) => path === "/proc/self/fd" ? ["0", "1", "2", "3"] : [],
    clockTicks: () => 100,
  };
  return proc;
}

Deno.test("the reader: our queue only, the fd that lists the directory not counted", () => {
  const got: SystemStats[] = [];
  new SystemStatsReader(100, (s) => got.push(s), fakeProc()).poll(0);
  assert.equal(got.length, 1);
  assert.deepEqual(got[0]!.nfqueue?.map((q) => [q.queue, q.queueDropped]), [[100, 17]]);
  assert.equal(got[0]!.process?.openFds, 3);
  assert.deepEqual(got[0]!.errors, []);
});

Deno.test("the reader: at most once per interval, the first poll at once", () => {
  const got: SystemStats[] = [];
  const proc = fakeProc();
  const reader = new SystemStatsReader(100, (s) => got.push(s), proc, 5000);
  for (const now of [1000, 1001, 3000, 5999]) reader.poll(now);
  assert.equal(got.length, 1);
  reader.poll(6000);
  reader.poll(10999);
  assert.equal(got.length, 2);
  reader.poll(11000);
  assert.equal(got.length, 3);
});

Deno.test("the reader: one unreadable source is reported, the other still read", () => {
  const got: SystemStats[] = [];
  new SystemStatsReader(100, (s) => got.push(s), fakeProc([NFQUEUE_PROC_PATH])).poll(0);
  assert.equal(got[0]!.nfqueue, undefined);
  assert.equal(got[0]!.process?.residentMemoryBytes, 83886080);
  assert.deepEqual(got[0]!.errors, [{
    source: "nfqueue",
    error: `open ${NFQUEUE_PROC_PATH} failed: ENOENT`,
  }]);
  const got2: SystemStats[] = [];
  new SystemStatsReader(100, (s) => got2.push(s), fakeProc(["/proc/self/limits"])).poll(0);
  assert.equal(got2[0]!.process, undefined);
  assert.equal(got2[0]!.nfqueue?.length, 1);
  assert.deepEqual(got2[0]!.errors.map((e) => e.source), ["process"]);
});
