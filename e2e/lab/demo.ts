/**
 * `deno task demo`: the real agent enforcing examples/ on real packets, on this machine.
 *
 * Builds a namespace lab from the example pods (their IPs, the example node), starts servers on
 * each pod's container ports, runs `main.ts run --manifests <copy of examples>` in the node
 * namespace, and prints a live matrix: every pod connecting to every other pod's service port,
 * with what actually happened on the wire and the agent's reason for each deny (from its logs).
 * `--once` prints one matrix and exits (for scripts); otherwise it refreshes until Ctrl-C.
 * Everything lives in network namespaces it creates and removes.
 */
import { parseArgs } from "node:util";
import { loadManifests } from "../../src/manifests/load.ts";
import type { Pod } from "../../src/policy/types.ts";
import { LabAgent } from "./agent.ts";
import { observedVerdict, probeMatrices } from "./probe.ts";
import { startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab, type Lab } from "./topology.ts";

const EXAMPLES = new URL("../../examples", import.meta.url).pathname;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    once: { type: "boolean", default: false },
    manifests: { type: "string", default: EXAMPLES },
    interval: { type: "string", default: "3" },
  },
});

if (Deno.uid() !== 0) {
  console.error("demo: needs root (it creates network namespaces and netfilter rules in them)");
  Deno.exit(1);
}

interface DemoPod {
  key: string;
  ip: string;
  node: string;
  hostIP: string;
  ports: number[];
}

async function examplePods(dir: string): Promise<DemoPod[]> {
  const { objects, errors } = await loadManifests([dir]);
  if (errors.length) throw new Error(`${dir}: ${errors.length} invalid object(s); try simulate`);
  return objects.filter((o) => o.kind === "Pod").map((o) => {
    const p = o.object as Pod;
    return {
      key: `${p.metadata.namespace}/${p.metadata.name}`,
      ip: p.status!.podIP!,
      node: p.spec!.nodeName!,
      hostIP: p.status!.hostIP!,
      ports: (p.spec?.containers ?? []).flatMap((c) => c.ports ?? []).map((x) => x.containerPort),
    };
  });
}

/** The agent logs each deny with its reason; keep the latest per connection for the matrix. */
function denyReasons(agentLog: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of agentLog.split("\n")) {
    if (!line.includes("connection denied")) continue;
    const src = /src=(\S+)/.exec(line)?.[1]?.split(":")[0];
    const dst = /dst=(\S+)/.exec(line)?.[1];
    const why = /why="([^"]*)"/.exec(line)?.[1] ?? /why=(\S+)/.exec(line)?.[1];
    if (src && dst && why) out.set(`${src}>${dst}`, why);
  }
  return out;
}

async function render(
  lab: Lab,
  pods: DemoPod[],
  agent: LabAgent,
  live: boolean,
): Promise<string> {
  const ports = [...new Set(pods.flatMap((p) => p.ports))].sort((a, b) => a - b);
  const pairs = pods.flatMap((a) =>
    pods.filter((b) => b !== a).map((b) => ({ from: a.key, to: b.key }))
  );
  // Each destination is probed on its own service port only.
  const portOf = new Map(pods.map((p) => [p.key, p.ports[0]!]));
  const matrices = await Promise.all(ports.map(async (port) => {
    const mine = pairs.filter((pr) => portOf.get(pr.to) === port);
    if (!mine.length) return new Map();
    const [m] = await probeMatrices(lab, mine, [{ protocol: "TCP", port }], { timeoutMs: 1500 });
    return m!;
  }));
  const byPort = new Map(ports.map((p, i) => [p, matrices[i]!]));
  const denied = pairs.filter((pr) => {
    const r = byPort.get(portOf.get(pr.to)!)?.get(pr.from)?.get(pr.to);
    return !r || observedVerdict(r, pr.to) === "deny";
  }).map((pr) => {
    const [a, b] = [pods.find((p) => p.key === pr.from)!, pods.find((p) => p.key === pr.to)!];
    return `${a.ip}>${b.ip}:${b.ports[0]}`;
  });
  // The worker hands deny records over in batches (every 50 ms): wait briefly for the last ones.
  let reasons = denyReasons(agent.logs());
  for (let i = 0; i < 20 && denied.some((k) => !reasons.has(k)); i++) {
    await new Promise((r) => setTimeout(r, 50));
    reasons = denyReasons(agent.logs());
  }
  const w = Math.max(...pods.map((p) => p.key.length));
  const lines = [
    `Each cell: a real TCP connection from the row pod to the column pod's container port.`,
    `${"from \\ to".padEnd(w)}  ${
      pods.map((p) => `${p.key}:${p.ports[0]}`.padEnd(w + 6)).join("")
    }`,
  ];
  const denies: string[] = [];
  for (const a of pods) {
    let row = a.key.padEnd(w) + "  ";
    for (const b of pods) {
      if (a === b) {
        row += "-".padEnd(w + 6);
        continue;
      }
      const r = byPort.get(b.ports[0]!)?.get(a.key)?.get(b.key);
      const v = r ? observedVerdict(r, b.key) : "deny";
      row += (v === "allow" ? "ALLOW" : `DENY (${r?.outcome ?? "?"})`).padEnd(w + 6);
      if (v === "deny") {
        const why = reasons.get(`${a.ip}>${b.ip}:${b.ports[0]}`) ??
          "(no deny logged: see agent log)";
        denies.push(`  ${a.key} -> ${b.key}:${b.ports[0]}  ${why}`);
      }
    }
    lines.push(row);
  }
  lines.push("", "Why each deny (from the agent's log):", ...denies);
  const metrics = await agent.get("/metrics").catch(() => ({ body: "" }));
  const pick = (name: string) =>
    metrics.body.split("\n").filter((l) => l.startsWith(name)).map((l) => `  ${l}`).join("\n");
  lines.push(
    "",
    "Agent metrics (excerpt):",
    pick("kube_netpol_verdicts_total"),
    pick("packet_count"),
  );
  // Only while the lab lives on: with --once it is removed right after this matrix.
  if (live) {
    lines.push(
      "",
      `Metrics: sudo ip netns exec ${lab.nodeNetns} curl -s 127.0.0.1:${agent.port}/metrics`,
      `The agent enforces ${agentDir} live: edit a policy there and watch this matrix change.`,
    );
  }
  return lines.join("\n");
}

let agentDir = "";

async function main(): Promise<void> {
  await cleanupStaleLabs("knpdemo");
  const pods = await examplePods(values.manifests!);
  const node = pods[0]!.node;
  const lab = await createLab({
    prefix: "knpdemo",
    pods: pods.map((p) => {
      const [namespace, name] = p.key.split("/") as [string, string];
      return { namespace, name, ip: p.ip };
    }),
    nodeIP: pods[0]!.hostIP,
  });
  let agent: LabAgent | undefined;
  const cleanup = async () => {
    await agent?.kill("SIGTERM").catch(() => {});
    await lab.destroy();
    if (agentDir) await Deno.remove(agentDir, { recursive: true }).catch(() => {});
  };
  Deno.addSignalListener("SIGINT", () => {
    cleanup().finally(() => Deno.exit(0));
  });
  try {
    await startServers(lab, { ports: [...new Set(pods.flatMap((p) => p.ports))] });
    agentDir = await Deno.makeTempDir({ prefix: "knpdemo-manifests-" });
    for await (const e of Deno.readDir(values.manifests!)) {
      if (e.isFile) await Deno.copyFile(`${values.manifests}/${e.name}`, `${agentDir}/${e.name}`);
    }
    console.log(
      `lab ready: node netns ${lab.nodeNetns}, ${pods.length} pods; starting the agent...`,
    );
    agent = await LabAgent.start(lab, { nodeName: node, manifestsDir: agentDir, verbosity: 2 });
    const first = await agent.debugPolicies();
    console.log(
      `agent ready, enforcing ${first.policies.length} policies: ${first.policies.join(", ")}\n`,
    );
    do {
      const text = await render(lab, pods, agent, !values.once);
      if (!values.once) console.log("\x1b[2J\x1b[H" + new Date().toISOString());
      console.log(text);
      if (values.once) break;
      await new Promise((r) => setTimeout(r, Number(values.interval) * 1000));
    } while (true);
  } finally {
    await cleanup();
  }
}

await main();
