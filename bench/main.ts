/**
 * `deno task bench`: every performance figure of the performance issues, in one run, on this
 * machine: the engine at scale (no root), then, as root, the packet path side by side (the
 * verdict cache on a repeated flow against no queue, the loop without it against a native C
 * loop), the whole agent's memory fed by its informers at 10,000 pods, and policy change to
 * enforcement. Ends with the targets and where each stands. Human output, or `--json`.
 * Sections that need root are skipped with a note when not root.
 */
import { parseArgs } from "node:util";
import { formatEngineBench, runEngineBench } from "./engine_bench.ts";
import { formatPolicyChange, runPolicyChangeBench } from "./policy_change_bench.ts";
import { type AgentRssResult, formatAgentRss, runAgentRssBench } from "./agent_rss_bench.ts";
import { formatPacketPath, type PacketPathReport } from "./packet_path.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "boolean", default: false },
    only: { type: "string" }, // engine | packet | rss | policy
    "packet-rounds": { type: "string", default: "3" },
    rounds: { type: "string", default: "20" },
  },
});

async function loadAverage(): Promise<string> {
  const out = await new Deno.Command("cat", { args: ["/proc/loadavg"], stdout: "piped" }).output()
    .then((o) => new TextDecoder().decode(o.stdout), () => "");
  return out.split(" ").slice(0, 3).join(" ");
}

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
    loadAverageAtStart: await loadAverage(),
  };
}

const want = (name: string) => !values.only || values.only === name;
const root = Deno.uid() === 0;
const report: Record<string, unknown> = { machine: await machine() };
const m = report.machine as Record<string, string>;
const human: string[] = [
  `kube-netpol benchmarks on ${m.cpu}, ${m.cores} cores, ${m.memory}, kernel ${m.kernel}, ` +
  `Deno ${Deno.version.deno}; load average ${m.loadAverageAtStart}`,
  "",
];
/** Target -> where it stands, for the closing table. */
const targets: [string, string][] = [];

if (want("engine")) {
  const r = runEngineBench();
  report.engine = r;
  human.push(formatEngineBench(r), "");
  targets.push([
    "engine node-view p99 largest/smallest <= 1.5",
    r.ratioP99LargestToSmallest.toFixed(2),
  ]);
}
if (want("packet")) {
  if (!root) human.push("Packet path: skipped (needs root for the namespace lab)", "");
  else {
    // Its own process: it builds the C reference and owns the lab for its whole run.
    const script = new URL("./packet_path.ts", import.meta.url).pathname;
    const run = () =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--frozen",
          "--allow-all",
          script,
          "--json",
          "--rounds",
          String(values["packet-rounds"]),
        ],
        stdout: "piped",
        stderr: "inherit",
      }).output();
    // Always JSON from the child; its progress lines go to our stderr.
    const out = await run();
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success) throw new Error("packet path benchmark failed");
    const r = JSON.parse(text) as PacketPathReport;
    report.packetPath = r;
    human.push(formatPacketPath(r), "");
    const one = r.ratios["1 thread"];
    if (one) {
      targets.push(["repeated flow, cache on: cache/none >= 0.85", one.cacheOverNone.toFixed(2)]);
      targets.push(["cache off: deno/c >= 0.95 at one client thread", one.denoOverC.toFixed(2)]);
    }
    const light = r.ratios["~1000 conn/s"];
    if (light) {
      targets.push(["cache off: added connect() p50 <= 40 us", `+${light.addedP50UsDeno} us`]);
    }
  }
}
if (want("rss")) {
  if (!root) human.push("Agent memory: skipped (needs root for the namespace lab)", "");
  else {
    // One agent at a time, configured as in a pod (the image's case) and with a kubeconfig (which
    // also loads client-node's KubeConfig), alternating, three runs each; medians reported.
    const runs: Record<"in-cluster" | "kubeconfig", AgentRssResult[]> = {
      "in-cluster": [],
      kubeconfig: [],
    };
    for (let i = 0; i < 3; i++) {
      runs["in-cluster"].push(await runAgentRssBench(10_000, 5_000, 10, true));
      runs.kubeconfig.push(await runAgentRssBench(10_000, 5_000, 10, false));
    }
    report.agentMemory = { runs };
    const settled: Record<string, number> = {};
    for (const [config, rs] of Object.entries(runs)) {
      const med = (f: (r: AgentRssResult) => number) =>
        rs.map(f).sort((a, b) => a - b)[Math.floor(rs.length / 2)]!;
      settled[config] = med((r) => r.rssSettledMB);
      human.push(
        formatAgentRss({
          ...rs[0]!,
          readySeconds: med((r) => r.readySeconds),
          rssReadyMB: med((r) => r.rssReadyMB),
          rssSettledMB: med((r) => r.rssSettledMB),
          rssMaxMB: med((r) => r.rssMaxMB),
        }) + ` (median of ${rs.length}; settled: ${
          rs.map((r) => r.rssSettledMB.toFixed(0)).join(", ")
        } MB)`,
      );
    }
    human.push("");
    targets.push([
      // 150 MB was reachable only without @kubernetes/client-node and prom-client, which the
      // design card keeps (docs/performance.md, "Memory").
      "whole agent RSS at 10k pods / 5k policies <= 150 MB (settled, in-cluster)",
      `${settled["in-cluster"]!.toFixed(0)} MB (kubeconfig ${settled.kubeconfig!.toFixed(0)} MB)`,
    ]);
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
if (targets.length) {
  human.push("Targets (performance issue) and this run:");
  for (const [t, v] of targets) human.push(`  ${t.padEnd(64)} ${v}`);
  human.push(`  load average at the end: ${await loadAverage()}`);
}
report.targets = Object.fromEntries(targets);
console.log(values.json ? JSON.stringify(report, null, 2) : human.join("\n"));
