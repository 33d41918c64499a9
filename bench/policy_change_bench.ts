/**
 * Policy change to enforcement (performance issue §3), on real packets in a namespace lab: the
 * time from writing a policy that denies a flow to the first new connection being denied, and
 * from removing it to the first new connection allowed again. The agent runs with --manifests;
 * a probe loop in the client pod connects every 2 ms. Needs root.
 *   deno run -A bench/policy_change_bench.ts [--rounds 20] [--json]
 */
import { parseArgs } from "node:util";
import { LabAgent, ManifestDir } from "../e2e/lab/agent.ts";
import { clusterObjects, defaultPlan } from "../e2e/lab/cluster.ts";
import { startServers } from "../e2e/lab/servers.ts";
import { cleanupStaleLabs, createLab } from "../e2e/lab/topology.ts";

export interface PolicyChangeResult {
  rounds: number;
  denyAfterWriteMs: { p50: number; p99: number; max: number };
  allowAfterRemoveMs: { p50: number; p99: number; max: number };
}

const PROBE_LOOP = new URL("./probe_loop.ts", import.meta.url).pathname;

function stats(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { p50: at(0.5), p99: at(0.99), max: s[s.length - 1]! };
}

const DENY_B = {
  apiVersion: "networking.k8s.io/v1",
  kind: "NetworkPolicy",
  metadata: { namespace: "x", name: "deny-to-b" },
  spec: { podSelector: { matchLabels: { pod: "b" } }, policyTypes: ["Ingress"] },
};
// Keeps pod x/c isolated throughout, so the node's queue rules exist before the first round.
const ISOLATE_C = {
  apiVersion: "networking.k8s.io/v1",
  kind: "NetworkPolicy",
  metadata: { namespace: "x", name: "isolate-c" },
  spec: { podSelector: { matchLabels: { pod: "c" } }, ingress: [{}] },
};

export async function runPolicyChangeBench(rounds: number): Promise<PolicyChangeResult> {
  await cleanupStaleLabs("knpbpc");
  const plan = defaultPlan();
  plan.pods = plan.pods.filter((p) => p.namespace === "x");
  const lab = await createLab({ prefix: "knpbpc", pods: plan.pods });
  const dir = await ManifestDir.create();
  let agent: LabAgent | undefined;
  try {
    await startServers(lab, { ports: [80] });
    await dir.writeModel(clusterObjects(plan, lab));
    await dir.writePolicies([ISOLATE_C]);
    agent = await LabAgent.start(lab, { nodeName: plan.nodeName, manifestsDir: dir.path });
    await agent.waitEnforced(["x/isolate-c"]);
    const target = lab.pod("x/b").ip;
    const durationMs = rounds * 2 * 1500 + 5000;
    const loop = lab.spawn(lab.pod("x/a").netns, [
      Deno.execPath(),
      "run",
      "--no-config",
      "--allow-net",
      PROBE_LOOP,
      target,
      "80",
      "2",
      String(durationMs),
    ], { stdout: "piped", stderr: "null" });
    const lines: [number, string][] = [];
    (async () => {
      let buf = "";
      for await (const chunk of loop.stdout!.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        const parts = buf.split("\n");
        buf = parts.pop()!;
        for (const l of parts) {
          const [t, o] = l.split(" ");
          lines.push([Number(t), o!]);
        }
      }
    })();
    // First attempt started at or after `since` whose outcome is `want`.
    const waitFor = async (since: number, want: (o: string) => boolean): Promise<number> => {
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        const hit = lines.find(([t, o]) => t >= since && want(o));
        if (hit) return hit[0] - since;
        await new Promise((r) => setTimeout(r, 5));
      }
      throw new Error("policy change not enforced within 5 s");
    };
    await waitFor(Date.now(), (o) => o === "ok");
    const deny: number[] = [];
    const allow: number[] = [];
    for (let i = 0; i < rounds; i++) {
      let t0 = Date.now();
      await dir.writePolicies([ISOLATE_C, DENY_B]);
      deny.push(await waitFor(t0, (o) => o !== "ok"));
      await new Promise((r) => setTimeout(r, 100));
      t0 = Date.now();
      await dir.writePolicies([ISOLATE_C]);
      allow.push(await waitFor(t0, (o) => o === "ok"));
      await new Promise((r) => setTimeout(r, 100));
      lines.splice(0, lines.length - 50);
    }
    try {
      loop.kill("SIGKILL");
    } catch { /* already done */ }
    return { rounds, denyAfterWriteMs: stats(deny), allowAfterRemoveMs: stats(allow) };
  } finally {
    await agent?.kill("SIGTERM").catch(() => {});
    await lab.destroy();
    await dir.remove();
  }
}

export function formatPolicyChange(r: PolicyChangeResult): string {
  const f = (s: { p50: number; p99: number; max: number }) =>
    `p50 ${s.p50} ms, p99 ${s.p99} ms, max ${s.max} ms`;
  return [
    `Policy change to enforcement, real packets, ${r.rounds} rounds (probe every 2 ms)`,
    `  deny policy written -> first new connection denied: ${f(r.denyAfterWriteMs)}`,
    `  policy removed -> first new connection allowed:     ${f(r.allowAfterRemoveMs)}`,
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rounds: { type: "string", default: "20" },
      json: { type: "boolean", default: false },
    },
  });
  const r = await runPolicyChangeBench(Number(values.rounds));
  console.log(values.json ? JSON.stringify(r, null, 2) : formatPolicyChange(r));
}
