/**
 * The cluster-scoped tiers on real packets (root only): every case of e2e/cases/tiers through the
 * real agent in the namespace lab (TCP and UDP; SCTP columns are skipped: no SCTP sockets here),
 * with the pod-to-node and node-to-pod probes the cases list; then what the tiers promise around
 * the verdicts: a deny names its tier, policy and rule in the agent's log and /debug/policies lists
 * the cluster policies in force, and an admin policy on one namespace leaves every other pod's
 * traffic in the kernel (measured with the queue rules' own packet counters). The first test
 * starts the lab and the last removes it, as in cases_lab_test.ts.
 *
 * CI runs every tier case written for this project (the interplay cases the issue lists, nodes
 * peers, ANP/BANP, priorities, named ports, subjects, protocols) and a dozen of the translated
 * conformance scenarios, about a minute; KNP_TIER_CASES=all runs all 48 (about 2 min), as does
 * `deno task e2e:lab`. The rest are listed as ignored.
 *
 *   deno task test:lab e2e/lab/tiers_lab_test.ts     (or the flags of test:lab on this file)
 */
import assert from "node:assert/strict";
import { loadCases } from "../cases/format.ts";
import { LabCaseRunner, TIER_CASES_DIR } from "./cases_lab.ts";
import { probeFrom, type ProbeTarget } from "./probe.ts";
import { type Lab, listNetns } from "./topology.ts";
import type { ClusterNetworkPolicy } from "../../src/policy/types.ts";
import { readIptablesSave } from "../../src/rules/iptables_check.ts";

const root = Deno.uid() === 0;
// Servers and agents outlive single tests by design; runner.stop() ends them.
const shared = { sanitizeOps: false, sanitizeResources: false, ignore: !root };
const cases = await loadCases(TIER_CASES_DIR);
/** The translated conformance scenarios CI runs: each tier, direction and action at least once. */
const CONFORMANCE_IN_CI = [
  "conformance-admin-egress-tcp-pass-first",
  "conformance-admin-egress-udp-deny-first",
  "conformance-admin-ingress-tcp-accept-port",
  "conformance-admin-ingress-udp",
  "conformance-admin-gress-deny-first",
  "conformance-admin-priority-pass-first", // a policy changed under the same name
  "conformance-integration-admin-deny",
  "conformance-integration-pass-to-networkpolicy",
  "conformance-integration-pass-to-baseline",
  "conformance-baseline-ingress-udp-accept-port",
  "conformance-admin-egress-cidr-pod-ips",
  "conformance-baseline-egress-nodes",
];
const unknown = CONFORMANCE_IN_CI.filter((n) => !cases.some((c) => c.name === n));
if (unknown.length) throw new Error(`tiers_lab_test.ts: no case named ${unknown.join(", ")}`);
const allCases = Deno.env.get("KNP_TIER_CASES") === "all";
const inCI = (name: string) => !name.startsWith("conformance-") || CONFORMANCE_IN_CI.includes(name);
let runner: LabCaseRunner | undefined;

Deno.test({
  name: "tier lab: lab, servers (pods and the node) and agent start",
  ...shared,
  fn: async () => {
    // JSON logs: the explanation test reads the deny lines' fields.
    runner = await LabCaseRunner.start({ prefix: "knptier", agentArgs: ["--log-format", "json"] });
  },
});

for (const c of cases) {
  Deno.test({
    name: `lab tier case ${c.name}`,
    ...shared,
    ignore: !root || !(allCases || inCI(c.name)),
    fn: async () => {
      assert.ok(runner, "the lab did not start");
      await runner.runExpectingPass(c);
    },
  });
}

/** An Admin tier policy on namespace x only: z may not reach x (ingress), nothing else. */
const X_GUARD: ClusterNetworkPolicy = {
  apiVersion: "policy.networking.k8s.io/v1alpha2",
  kind: "ClusterNetworkPolicy",
  metadata: { name: "x-guard" },
  spec: {
    tier: "Admin",
    priority: 10,
    subject: { namespaces: { matchLabels: { ns: "x" } } },
    ingress: [{
      name: "not-from-z",
      action: "Deny",
      from: [{ namespaces: { matchLabels: { ns: "z" } } }],
    }],
  },
};

Deno.test({
  name: "tier lab: a deny names tier, policy and rule in the deny log; /debug/policies lists it",
  ...shared,
  fn: async () => {
    assert.ok(runner, "the lab did not start");
    const agent = runner.agents[0]!;
    await runner.applyPolicies([], [X_GUARD]);
    const debug = await agent.debugPolicies();
    assert.deepEqual(debug.clusterPolicies, ["ClusterNetworkPolicy/x-guard"]);
    const mark = agent.logMark();
    const [r] = await probeFrom(runner.lab, runner.lab.pod("z/a").netns, [
      { ip: runner.lab.pod("x/b").ip, protocol: "TCP", port: 80 },
    ]);
    assert.equal(r!.outcome, "refused");
    let line: Record<string, string> | undefined;
    for (let i = 0; i < 50 && !line; i++) {
      line = agent.logsSince(mark).filter((l) => l.startsWith("{")).map((l) => JSON.parse(l))
        .find((l) => l.msg === "connection denied" && l.srcPod === "z/a");
      if (!line) await new Promise((res) => setTimeout(res, 100));
    }
    assert.ok(line, `no deny line for z/a -> x/b\n${agent.logs()}`);
    assert.equal(line.dstPod, "x/b");
    assert.equal(line.direction, "ingress");
    assert.equal(
      line.why,
      "ingress: x/b denied by Admin ClusterNetworkPolicy/x-guard rule 'not-from-z'",
    );
    // The gauges are refreshed every 5 s.
    let metrics = "";
    for (let i = 0; i < 60; i++) {
      metrics = (await agent.get("/metrics")).body;
      if (/^kube_netpol_cluster_policies\{tier="Admin"\} 1$/m.test(metrics)) break;
      await new Promise((res) => setTimeout(res, 200));
    }
    assert.match(metrics, /^kube_netpol_cluster_policies\{tier="Admin"\} 1$/m);
    assert.match(metrics, /^kube_netpol_cluster_policies\{tier="Baseline"\} 0$/m);
  },
});

/**
 * First packets our chain has decided on so far in the node netns (the kernel's own counters):
 * matched by the NFQUEUE rules, or answered by the verdict cache's hit rules (a key judged earlier
 * in the cache window, e.g. by the previous test, is not queued again).
 */
async function queuedPackets(lab: Lab): Promise<number> {
  let total = 0;
  for (const tool of ["iptables-nft-save", "iptables-legacy-save"]) {
    const r = await lab.exec(lab.nodeNetns, [tool, "-c", "-t", "filter"], { timeoutMs: 10_000 });
    if (r.code !== 0) continue;
    const view = readIptablesSave(r.stdout);
    total += view.queuePackets + view.cacheHits.allow + view.cacheHits.deny;
  }
  return total;
}

/** One NEW connection per target and protocol from each source pod; returns how many. */
async function connect(lab: Lab, pairs: [string, string][]): Promise<number> {
  const bySource = Map.groupBy(pairs, ([from]) => from);
  let n = 0;
  await Promise.all([...bySource].map(async ([from, list]) => {
    const targets: ProbeTarget[] = list.flatMap(([, to]) =>
      (["TCP", "UDP"] as const).map((protocol) => ({ ip: lab.pod(to).ip, protocol, port: 80 }))
    );
    n += targets.length;
    await probeFrom(lab, lab.pod(from).netns, targets);
  }));
  return n;
}

const pairsOf = (from: string[], to: string[]): [string, string][] =>
  from.flatMap((f) => to.filter((t) => t !== f).map((t) => [f, t] as [string, string]));
const pods = (ns: string) => ["a", "b", "c"].map((p) => `${ns}/${p}`);

Deno.test({
  name: "tier lab: an admin policy on one namespace queues nothing of the other pods' traffic",
  ...shared,
  fn: async () => {
    assert.ok(runner, "the lab did not start");
    const { lab } = runner;
    await runner.applyPolicies([], [X_GUARD]);
    const measure = async (pairs: [string, string][]) => {
      const before = await queuedPackets(lab);
      const connections = await connect(lab, pairs);
      return { connections, queued: (await queuedPackets(lab)) - before };
    };
    // Between y and z (no policy selects them): every connection stays in the kernel.
    const others = await measure(
      pairsOf([...pods("y"), ...pods("z")], [...pods("y"), ...pods("z")]),
    );
    // Out of x: the guard has no egress rule, so x's egress is not queued either.
    const outOfX = await measure(pairsOf(pods("x"), [...pods("y"), ...pods("z")]));
    // Into x: the guard's Deny may decide x's ingress, so the first packet is judged, once.
    const intoX = await measure(pairsOf([...pods("y"), ...pods("z")], pods("x")));
    const perConnection = (m: { connections: number; queued: number }) =>
      (m.queued / m.connections).toFixed(2);
    console.log(
      `first packets queued or answered by the verdict cache per connection (TCP and UDP, one ` +
        `Admin policy on namespace x): ` +
        `y<->z ${perConnection(others)} (${others.queued}/${others.connections}), ` +
        `x -> y,z ${perConnection(outOfX)} (${outOfX.queued}/${outOfX.connections}), ` +
        `y,z -> x ${perConnection(intoX)} (${intoX.queued}/${intoX.connections})`,
    );
    assert.equal(others.queued, 0, "no packet between pods the policy does not select");
    assert.equal(outOfX.queued, 0, "no egress packet of x: the policy judges x's ingress only");
    assert.equal(
      intoX.queued,
      intoX.connections,
      "exactly the first packet of each connection (queued, or answered by the verdict cache)",
    );
  },
});

Deno.test({
  name: "tier lab: teardown leaves nothing behind",
  ...shared,
  fn: async () => {
    assert.ok(runner, "the lab did not start");
    const prefix = runner.lab.prefix;
    await runner.stop();
    assert.deepEqual(await listNetns(prefix), [], "lab netns removed");
  },
});
