/**
 * Run by containment_test.ts in a lab node netns with the agent's own permission list. Does what
 * main.ts does for `run` (start the verdict Worker, which revokes FFI from this thread), binds the
 * queue through a VerdictLoop as the agent does, and then tries, from this main thread, what code
 * an attacker controls there (a compromised npm package, say) would try. Prints one JSON object:
 * each attempt's outcome ("ok" or the error's name), plus the Worker's /proc readings, which it
 * can only make while it still holds FFI.
 *
 * Usage: containment_probe.ts <queueId>
 */
import { candidatePaths, LIBC_SONAME, NFQ_SONAME } from "../../ffi/library.ts";
import { spawnVerdictWorker, VERDICT_WORKER_URL } from "../../src/verdict/worker_spawn.ts";

const queueId = Number(Deno.args[0] ?? 4343);
const SYSTEM = { system: { parameters: ["buffer"], result: "i32" } } as const;
const GETPID = { getpid: { parameters: [], result: "i32" } } as const;

function attempt(f: () => unknown): string {
  try {
    f();
    return "ok";
  } catch (e) {
    return e instanceof Error ? e.name : String(e);
  }
}

/** The first candidate path this thread can open, and getpid() called through that handle. */
function openable(soname: string): { path: string; pid: number } | undefined {
  for (const path of candidatePaths(soname)) {
    try {
      const lib = Deno.dlopen(path, GETPID);
      const pid = lib.symbols.getpid();
      lib.close();
      return { path, pid };
    } catch { /* not here, or not permitted */ }
  }
  return undefined;
}

// Control, before the Worker starts: the permission list does grant this thread FFI, and a
// libnetfilter_queue handle resolves libc's symbols (getpid here; system() would resolve too).
const before = { libc: openable(LIBC_SONAME), nfq: openable(NFQ_SONAME) };
if (!before.libc || !before.nfq) {
  console.log(JSON.stringify({ error: "control failed: FFI not granted before the worker" }));
  Deno.exit(1);
}

const spawned = spawnVerdictWorker();

const after: Record<string, string> = {
  dlopenLibcSoname: attempt(() => Deno.dlopen(LIBC_SONAME, SYSTEM)),
  dlopenLibcPath: attempt(() => Deno.dlopen(before.libc!.path, SYSTEM)),
  dlopenNfqPath: attempt(() => Deno.dlopen(before.nfq!.path, SYSTEM)),
  requestFfi: Deno.permissions.requestSync({ name: "ffi" }).state,
  dlopenAfterRequest: attempt(() => Deno.dlopen(before.libc!.path, SYSTEM)),
  writeTmp: attempt(() => Deno.writeTextFileSync(`/tmp/knp-containment-${Deno.pid}`, "x")),
  runShell: attempt(() => new Deno.Command("sh", { args: ["-c", "id"] }).outputSync()),
  runBinSh: attempt(() => new Deno.Command("/bin/sh", { args: ["-c", "id"] }).outputSync()),
  readShadow: attempt(() => Deno.readTextFileSync("/etc/shadow")),
  readProc: attempt(() => Deno.readTextFileSync("/proc/self/status")),
  // What it may still do: run a rule tool, read its own sources.
  runRuleTool: attempt(() =>
    new Deno.Command("iptables-nft", { args: ["--version"] }).outputSync()
  ),
  readOwnSource: attempt(() => Deno.readTextFileSync(VERDICT_WORKER_URL)),
};

async function attemptAsync(f: () => Promise<unknown>): Promise<string> {
  try {
    await f();
    return "ok";
  } catch (e) {
    return e instanceof Error ? e.name : String(e);
  }
}
after.connectElsewhere = await attemptAsync(() => Deno.connect({ hostname: "127.0.0.1", port: 1 }));

/** A Worker asking for FFI from a thread that has none is refused (no way back through Workers). */
async function workerEscalation(): Promise<string> {
  try {
    const w = new Worker("data:application/javascript,self.postMessage(1)", {
      type: "module",
      deno: { permissions: { ffi: [before.libc!.path] } },
    });
    return await new Promise<string>((resolve) => {
      w.onmessage = () => resolve("ok");
      w.onerror = (e) => {
        e.preventDefault();
        resolve(`error: ${e.message}`);
      };
    }).finally(() => w.terminate());
  } catch (e) {
    return e instanceof Error ? e.name : String(e);
  }
}
after.workerWithFfi = await workerEscalation();

// Now the agent's own start, with npm packages loaded only after the Worker took FFI (as main.ts).
const { VerdictLoop } = await import("../../src/verdict/verdict_loop.ts");
const { AgentMetrics } = await import("../../src/metrics.ts");
const { createLogger } = await import("../../src/log.ts");
const metrics = new AgentMetrics();
const loop = await VerdictLoop.start(
  { queueId, queueMaxLen: 64, failOpen: true, denyMark: 0x100000, nodeName: "probe-node" },
  metrics,
  { write: () => {} },
  createLogger({ verbosity: 0, write: () => {} }),
  spawned,
);
const value = (text: string, name: string) =>
  Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
const names = [
  "process_resident_memory_bytes",
  "process_cpu_seconds_total",
  "process_open_fds",
  "process_max_fds",
  "process_start_time_seconds",
  "nfqueue_packet_id",
];
let workerReadings: Record<string, number> = {};
for (let i = 0; i < 50; i++) {
  const text = await metrics.registry.metrics();
  workerReadings = Object.fromEntries(names.map((n) => [n, value(text, n)]));
  if (Object.values(workerReadings).every((v) => !Number.isNaN(v))) break;
  await new Promise((r) => setTimeout(r, 100));
}
await loop.stop();
console.log(JSON.stringify({ pid: Deno.pid, before, after, workerReadings }));
Deno.exit(0);
