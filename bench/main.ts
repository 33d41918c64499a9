/**
 * `deno task bench`: every performance figure of the performance issue, in one run, on this
 * machine: the engine at scale (no root), then, as root, the packet path side by side with no
 * queue and a native C loop, and policy change to enforcement. Human output, or `--json`.
 * Sections that need root are skipped with a note when not root.
 */
import { parseArgs } from "node:util";
import { formatEngineBench, runEngineBench } from "./engine_bench.ts";
import { formatPolicyChange, runPolicyChangeBench } from "./policy_change_bench.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "boolean", default: false },
    only: { type: "string" }, // engine | packet | policy
    rounds: { type: "string", default: "20" },
  },
});

async function machine(): Promise<Record<string, string>> {
  // `cat`, not Deno.readTextFile: Deno reads /proc only with --allow-all.
  const cpuinfo = await new Deno.Command("cat", { args: ["/proc/cpuinfo"], stdout: "piped" })
    .output().then((o) => new TextDecoder().decode(o.stdout), () => "");
  const cpu = cpuinfo
    .split("\n").find((l) => l.startsWith("model name"))?.split(":")[1]?.trim() ?? "unknown";
  return {
    cpu,
    cores: String(navigator.hardwareConcurrency),
    memory: `${Math.round(Deno.systemMemoryInfo().total / 2 ** 30)} GiB`,
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    date: new Date().toISOString(),
  };
}

const want = (name: string) => !values.only || values.only === name;
const root = Deno.uid() === 0;
const report: Record<string, unknown> = { machine: await machine() };
const human: string[] = [
  `kube-netpol benchmarks on ${(report.machine as Record<string, string>).cpu}, ${
    (report.machine as Record<string, string>).cores
  } cores, kernel ${(report.machine as Record<string, string>).kernel}, Deno ${Deno.version.deno}`,
  "",
];

if (want("engine")) {
  const r = runEngineBench();
  report.engine = r;
  human.push(formatEngineBench(r), "");
}
if (want("packet")) {
  if (!root) human.push("Packet path: skipped (needs root for the namespace lab)", "");
  else {
    // Its own process: it builds the C reference and owns the lab for its whole run.
    const script = new URL("./packet_path.ts", import.meta.url).pathname;
    const run = (json: boolean) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--frozen", "--allow-all", script, ...(json ? ["--json"] : [])],
        stdout: "piped",
        stderr: "inherit",
      }).output();
    const out = await run(values.json);
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success) throw new Error("packet path benchmark failed");
    if (values.json) report.packetPath = JSON.parse(text);
    else human.push(text.trimEnd(), "");
  }
}
if (want("policy")) {
  if (!root) human.push("Policy change to enforcement: skipped (needs root)", "");
  else {
    const r = await runPolicyChangeBench(Number(values.rounds));
    report.policyChange = r;
    human.push(formatPolicyChange(r), "");
  }
}
console.log(values.json ? JSON.stringify(report, null, 2) : human.join("\n"));
