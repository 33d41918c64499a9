/**
 * The two-node lab (root only): the case model spread over two node netns joined by a router netns
 * (cluster.ts `spreadPlan(2)`: pod b of every namespace on lab-node-2, a and c on lab-node), one
 * real agent per node, both fed by one manifest directory.
 *
 *   deno test --frozen -A e2e/lab/two_node_test.ts
 *
 * What it shows: cross-node connections really leave one node and enter the other; each direction
 * of a connection is judged exactly once, egress on the source pod's node and ingress on the
 * destination pod's node (the agents' own verdict counters and verdict logs); and the shared
 * connectivity cases give the same matrices across nodes as on one node. The first agent test
 * starts the lab and the last one removes it, as in cases_lab_test.ts.
 */
import assert from "node:assert/strict";
import type { LabAgent, VerdictCounts } from "./agent.ts";
import { labLayout, networkPolicy as policy, spreadPlan } from "./cluster.ts";
import { assertMatrix, type Expectation } from "./matrix.ts";
import {
  allPairs,
  type LabProtocol,
  probeFrom,
  probeMatrices,
  type ProbeOptions,
  type ProbePair,
  type ProbeResult,
  reprobeInconclusive,
} from "./probe.ts";
import { startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab, type Lab, listNetns } from "./topology.ts";
import { CASES_DIR, LabCaseRunner, TIER_CASES_DIR } from "./cases_lab.ts";
import { loadCases } from "../cases/format.ts";

const root = Deno.uid() === 0;
// Servers and agents outlive single tests by design; lab.destroy() / runner.stop() end them.
const shared = { sanitizeOps: false, sanitizeResources: false, ignore: !root };

/**
 * Probe `pairs` for each combination and compare with `expect`; an expected allow that timed out
 * is probed once more first (reprobeInconclusive), as the case runner does, so a starved process
 * on a busy machine is not taken for a deny.
 */
async function assertProbes(
  lab: Lab,
  title: string,
  pairs: ProbePair[],
  combos: { protocol: LabProtocol; port: number }[],
  expect: Expectation,
  opts: ProbeOptions = {},
): Promise<void> {
  const observed = await probeMatrices(lab, pairs, combos, opts);
  const retried = await reprobeInconclusive(lab, combos, observed, (_, f, t) => expect(f, t), opts);
  for (const r of retried) console.log(`probed again: ${r}`);
  combos.forEach((c, i) => assertMatrix(`${title}, ${c.protocol} ${c.port}`, observed[i]!, expect));
}

Deno.test(
  "two-node lab: cross-node traffic crosses the router, same-node traffic does not; late pods route by pod CIDR",
  shared,
  async () => {
    await cleanupStaleLabs("knptwonet");
    const plan = spreadPlan(2);
    const started = Date.now();
    const lab = await createLab({ prefix: "knptwonet", ...labLayout(plan), ipv6: true });
    try {
      console.log(`two-node lab (9 pods, IPv4 + IPv6) built in ${Date.now() - started} ms`);
      assert.deepEqual(lab.nodes.map((n) => [n.name, n.ip, n.ip6, n.podCIDRs]), [
        ["lab-node", "10.244.0.1", "fd00:10:244::1", ["10.244.0.0/16", "fd00:10:244::/64"]],
        ["lab-node-2", "10.245.0.1", "fd00:10:245::1", ["10.245.0.0/16", "fd00:10:245::/64"]],
      ]);
      assert.ok(lab.routerNetns?.startsWith(`${lab.prefix}-`), "the router is a lab netns");
      assert.deepEqual(
        ["x/a", "x/b", "z/c"].map((k) => [lab.pod(k).node, lab.pod(k).ip, lab.pod(k).ip6]),
        [
          ["lab-node", "10.244.1.11", "fd00:10:244::1:11"],
          ["lab-node-2", "10.245.1.12", "fd00:10:245::1:12"],
          ["lab-node", "10.244.3.13", "fd00:10:244::3:13"],
        ],
      );
      await startServers(lab);
      const pairs = allPairs(lab);
      const all = () => "allow" as const;
      await assertProbes(lab, "IPv4", pairs, [
        { protocol: "TCP", port: 80 },
        { protocol: "UDP", port: 81 },
      ], all);
      await assertProbes(lab, "IPv6", pairs, [{ protocol: "TCP", port: 81 }], all, { ipv6: true });

      // A DROP of new connections in the router's FORWARD chain: only cross-node pairs notice.
      const router = lab.routerNetns!;
      for (const bin of ["iptables", "ip6tables"]) {
        const r = await lab.exec(router, [
          bin,
          "-A",
          "FORWARD",
          "-m",
          "conntrack",
          "--ctstate",
          "NEW",
          "-j",
          "DROP",
        ]);
        assert.equal(r.code, 0, r.stderr);
      }
      const sameNode = (from: string, to: string) =>
        lab.pod(from).node === lab.pod(to).node ? "allow" as const : "deny" as const;
      const tcp80 = [{ protocol: "TCP" as const, port: 80 }];
      await assertProbes(lab, "IPv4, router drops", pairs, tcp80, sameNode, { timeoutMs: 500 });
      await assertProbes(lab, "IPv6, router drops", pairs, tcp80, sameNode, {
        ipv6: true,
        timeoutMs: 500,
      });
      for (const bin of ["iptables", "ip6tables"]) {
        assert.equal((await lab.exec(router, [bin, "-F", "FORWARD"])).code, 0);
      }

      // Pods that start late: inside lab-node-2's pod CIDRs no router change is needed; outside
      // them the router gets a route of its own; inside lab-node's CIDR the lab refuses.
      const inCidr = await lab.addPod({
        namespace: "late",
        name: "d",
        ip: "10.245.9.9",
        node: "lab-node-2",
      });
      const outside = await lab.addPod({
        namespace: "late",
        name: "e",
        ip: "10.99.0.5",
        node: "lab-node-2",
      });
      await assert.rejects(
        lab.addPod({ namespace: "late", name: "f", ip: "10.244.9.9", node: "lab-node-2" }),
        /10\.244\.9\.9 is in lab-node's pod CIDR/,
      );
      assert.equal(lab.pods.length, 11, "the refused pod left nothing behind");
      const routes = async (...args: string[]) =>
        (await lab.exec(router, ["ip", ...args, "route", "show"])).stdout;
      const routes4 = await routes();
      assert.doesNotMatch(routes4, /^10\.245\.9\.9 /m);
      assert.match(routes4, /^10\.99\.0\.5 via 10\.245\.0\.1 dev n2/m);
      assert.doesNotMatch(await routes("-6"), /^fd00:10:245::9:9 /m);
      await startServers(lab, { pods: [inCidr, outside] });
      const late = [
        ...["x/a", "y/c"].flatMap((from) => [
          { from, to: "late/d" },
          { from, to: "late/e" },
        ]),
        { from: "late/d", to: "z/a" },
      ];
      await assertProbes(lab, "late pods, IPv4", late, tcp80, all);
      await assertProbes(lab, "late pods, IPv6", late, [{ protocol: "UDP", port: 80 }], all, {
        ipv6: true,
      });
    } finally {
      await lab.destroy();
    }
    assert.deepEqual(await listNetns(lab.prefix), [], "lab namespaces removed");
  },
);

Deno.test("two-node lab: a pod inside another node's pod CIDR is refused", shared, async () => {
  const plan = spreadPlan(2);
  const pods = plan.pods.map((p) =>
    p.namespace === "x" && p.name === "b" ? { ...p, ip: "10.244.1.12" } : p
  );
  await assert.rejects(
    createLab({ prefix: "knptwonet", pods, nodes: plan.nodes! }),
    /lab pod x\/b on lab-node-2: 10\.244\.1\.12 is in lab-node's pod CIDR/,
  );
});

// ------------------------------------------------------------------------ two agents

let runner: LabCaseRunner | undefined;

Deno.test({
  name: "two-node agents: lab, servers and one agent per node start",
  ...shared,
  fn: async () => {
    const started = Date.now();
    runner = await LabCaseRunner.start({
      nodes: 2,
      prefix: "knptwo",
      // Every verdict logged, as JSON: the judged-once check reads what each agent decided.
      verbosity: 4,
      agentArgs: ["--log-format", "json"],
    });
    console.log(`two-node lab, servers and 2 agents ready in ${Date.now() - started} ms`);
    assert.deepEqual(runner.agents.map((a) => a.nodeName), ["lab-node", "lab-node-2"]);
    assert.deepEqual(runner.agents.map((a) => a.netns), runner.lab.nodes.map((n) => n.netns));
  },
});

type Verdict = "allow" | "deny";

/** One probe and what each side should decide; `ingress: undefined` = never gets there. */
interface Judged {
  from: string;
  to: string;
  port: number;
  egress: Verdict;
  ingress: Verdict | undefined;
}

/** A verdict line of an agent's JSON log. */
interface VerdictLine {
  msg: string;
  srcPod: string;
  dstPod: string;
  dst: string;
  direction: string;
  why: string;
}

function verdictLines(agent: LabAgent, mark: number): VerdictLine[] {
  return agent.logsSince(mark).flatMap((line) => {
    if (!line.startsWith("{")) return [];
    const rec = JSON.parse(line) as Partial<VerdictLine>;
    return rec.msg === "connection allowed" || rec.msg === "connection denied"
      ? [rec as VerdictLine]
      : [];
  });
}

const lineKey = (l: VerdictLine) => `${l.srcPod} -> ${l.dstPod}:${l.dst.split(":").pop()}`;
const probeKey = (p: Judged) => `${p.from} -> ${p.to}:${p.port}`;

function delta(after: VerdictCounts, before: VerdictCounts): VerdictCounts {
  const out: VerdictCounts = {};
  for (const key of ["egress/allow", "egress/deny", "ingress/allow", "ingress/deny"]) {
    out[key] = (after[key] ?? 0) - (before[key] ?? 0);
  }
  return out;
}

Deno.test({
  name:
    "two-node agents: each direction judged exactly once, egress on the source's node and ingress on the destination's",
  ...shared,
  fn: async () => {
    assert.ok(runner, "the lab did not start");
    const { lab, agents } = runner;
    // x/a, y/a on lab-node; x/b, y/b on lab-node-2. In x, pods a and b talk to each other on
    // TCP 80 only (both directions isolated); every pod of y may open anything (egress isolated,
    // so its connections are queued and judged on its own node).
    await runner.applyPolicies([
      policy("x", "ab-80", {
        podSelector: { matchExpressions: [{ key: "pod", operator: "In", values: ["a", "b"] }] },
        policyTypes: ["Ingress", "Egress"],
        ingress: [{
          from: [{
            podSelector: { matchExpressions: [{ key: "pod", operator: "In", values: ["a", "b"] }] },
          }],
          ports: [{ protocol: "TCP", port: 80 }],
        }],
        egress: [{
          to: [{
            podSelector: { matchExpressions: [{ key: "pod", operator: "In", values: ["a", "b"] }] },
          }],
          ports: [{ protocol: "TCP", port: 80 }],
        }],
      }),
      policy("y", "egress-all", { podSelector: {}, policyTypes: ["Egress"], egress: [{}] }),
    ]);
    const probes: Judged[] = [
      // lab-node -> lab-node-2
      { from: "x/a", to: "x/b", port: 80, egress: "allow", ingress: "allow" },
      { from: "x/a", to: "x/b", port: 81, egress: "deny", ingress: undefined },
      { from: "y/a", to: "x/b", port: 80, egress: "allow", ingress: "deny" },
      // lab-node-2 -> lab-node
      { from: "x/b", to: "x/a", port: 80, egress: "allow", ingress: "allow" },
      { from: "x/b", to: "x/a", port: 81, egress: "deny", ingress: undefined },
      { from: "y/b", to: "x/a", port: 80, egress: "allow", ingress: "deny" },
      // Within lab-node, for contrast: one agent judges both sides of one packet.
      { from: "y/a", to: "x/a", port: 80, egress: "allow", ingress: "deny" },
    ];
    const nodeOf = (pod: string) => lab.pod(pod).node;
    const want = new Map<string, { counts: VerdictCounts; lines: Set<string> }>(
      agents.map((a) => [a.nodeName, {
        counts: { "egress/allow": 0, "egress/deny": 0, "ingress/allow": 0, "ingress/deny": 0 },
        lines: new Set<string>(),
      }]),
    );
    for (const p of probes) {
      const src = want.get(nodeOf(p.from))!;
      src.counts[`egress/${p.egress}`]!++;
      src.lines.add(probeKey(p));
      if (p.ingress) {
        const dst = want.get(nodeOf(p.to))!;
        dst.counts[`ingress/${p.ingress}`]!++;
        dst.lines.add(probeKey(p));
      }
    }

    const marks = agents.map((a) => a.logMark());
    const before = await Promise.all(agents.map((a) => a.verdictCounts()));
    // Each probe is one judged connection, so none may be repeated: a generous timeout instead
    // (denies are refused at once; only a starved process on a busy machine waits).
    const results = await Promise.all(probes.map(async (p) => {
      const [r] = await probeFrom(lab, lab.pod(p.from).netns, [
        { ip: lab.pod(p.to).ip, protocol: "TCP", port: p.port },
      ], 10_000);
      return r!;
    }));
    const seen = (r: ProbeResult) =>
      r.outcome === "connected" ? `connected to ${r.server}` : r.outcome;
    assert.deepEqual(
      results.map((r, i) => `${probeKey(probes[i]!)} ${seen(r)}`),
      probes.map((p) =>
        `${probeKey(p)} ${
          p.egress === "allow" && p.ingress !== "deny" ? `connected to ${p.to}` : "refused"
        }`
      ),
      "allowed connections reach their pod; denied ones are reset by the judging agent",
    );

    // A verdict's log line and its counter increments leave the agent's worker in one report, so
    // once every expected line is there the counters are complete: no timing involved.
    const deadline = Date.now() + 10_000;
    const lines = () => agents.map((a, i) => verdictLines(a, marks[i]!));
    let got = lines();
    while (
      agents.some((a, i) => got[i]!.length < want.get(a.nodeName)!.lines.size) &&
      Date.now() < deadline
    ) {
      await new Promise((r) => setTimeout(r, 50));
      got = lines();
    }
    const after = await Promise.all(agents.map((a) => a.verdictCounts()));
    agents.forEach((a, i) => {
      const w = want.get(a.nodeName)!;
      assert.deepEqual(
        got[i]!.map(lineKey).sort(),
        [...w.lines].sort(),
        `${a.nodeName} logs a verdict for exactly the connections of its own pods`,
      );
      assert.deepEqual(
        delta(after[i]!, before[i]!),
        w.counts,
        `${a.nodeName}: kube_netpol_verdicts_total{direction,verdict} increments`,
      );
    });

    // The lines say which side each node judged: the remote side is "not judged here".
    const line = (node: number, key: string) => got[node]!.find((l) => lineKey(l) === key)!;
    assert.match(
      line(0, "x/a -> x/b:80").why,
      /egress: allowed by x\/ab-80 rule 0; ingress: not judged here/,
    );
    assert.match(
      line(1, "x/a -> x/b:80").why,
      /egress: not judged here; ingress: allowed by x\/ab-80 rule 0/,
    );
    assert.equal(line(0, "x/a -> x/b:81").direction, "egress");
    assert.match(
      line(0, "x/a -> x/b:81").why,
      /^egress: x\/a isolated by x\/ab-80; no rule matched$/,
    );
    assert.match(
      line(0, "y/a -> x/b:80").why,
      /egress: allowed by y\/egress-all rule 0; ingress: not judged here/,
    );
    assert.equal(line(1, "y/a -> x/b:80").direction, "ingress");
    assert.match(
      line(1, "y/a -> x/b:80").why,
      /^ingress: x\/b isolated by x\/ab-80; no rule matched$/,
    );
    assert.equal(line(1, "x/b -> x/a:81").direction, "egress");
    assert.equal(line(0, "y/b -> x/a:80").direction, "ingress");
    assert.equal(line(0, "y/a -> x/a:80").direction, "ingress");
  },
});

/**
 * Every shared case runs across the two nodes: about 50 s on a quiet 2-core machine, within what CI
 * can spend. For a quicker loop on a busy machine, KNP_TWO_NODE_CASES=subset runs only the cases
 * where crossing nodes matters most (about 20 s); the others are then listed as ignored.
 */
const SUBSET = [
  "deny-all-ingress-x", // ingress judged on the destination's node only
  "deny-all-egress-x", // egress judged on the source's node only
  "ingress-from-pod-b-same-namespace", // a same-namespace peer on the other node
  "ingress-namespace-and-pod-in-one-peer", // y/b on lab-node-2 into x/a on lab-node
  "ipblock-pod-ips", // ipBlock /32s of pods on both nodes
  "ipblock-egress", // egress ipBlock
  "named-port", // ingress named port, resolved where the destination runs
  "egress-named-port", // egress named port of a destination on the other node
  "udp-any-port", // UDP, with the reject's ICMP crossing the router
  "egress-deny-beats-ingress-allow", // the two sides on different nodes disagree
  "ingress-deny-beats-egress-allow",
  "default-deny-allow-same-namespace", // every pod on both nodes isolated
];
const cases = await loadCases(CASES_DIR);
const unknown = SUBSET.filter((n) => !cases.some((c) => c.name === n));
if (unknown.length) throw new Error(`two_node_test.ts: no case named ${unknown.join(", ")}`);
const subsetOnly = Deno.env.get("KNP_TWO_NODE_CASES") === "subset";

for (const c of cases) {
  Deno.test({
    name: `two-node case ${c.name}`,
    ...shared,
    ignore: !root || (subsetOnly && !SUBSET.includes(c.name)),
    fn: async () => {
      assert.ok(runner, "the lab did not start");
      await runner.runExpectingPass(c);
    },
  });
}

/**
 * The cluster-tier interplay cases across the two nodes (about 25 s): each side's tier walk runs on
 * its own pod's node (an Admin Accept on the source's node, the destination's ingress on the other),
 * `nodes` peers name both nodes, and the `node` endpoint (the first node) is reached from pods on
 * either. Every tier case runs on one node in tiers_lab_test.ts.
 */
const TIER_SUBSET = [
  "tier-admin-deny-over-networkpolicy-allow",
  "tier-admin-accept-over-networkpolicy-deny",
  "tier-pass-to-networkpolicy-then-baseline",
  "tier-baseline-overridden-by-networkpolicy",
  "tier-egress-networks-with-pass-for-pods",
  "tier-egress-nodes-peers",
  "tier-adminnetworkpolicy-and-baseline-singleton",
];
const tierCases = (await loadCases(TIER_CASES_DIR)).filter((c) => TIER_SUBSET.includes(c.name));
if (tierCases.length !== TIER_SUBSET.length) {
  throw new Error(`two_node_test.ts: a tier case of ${TIER_SUBSET.join(", ")} is missing`);
}
for (const c of tierCases) {
  Deno.test({
    name: `two-node tier case ${c.name}`,
    ...shared,
    fn: async () => {
      assert.ok(runner, "the lab did not start");
      await runner.runExpectingPass(c);
    },
  });
}

Deno.test({
  name: "two-node agents: teardown leaves nothing behind",
  ...shared,
  fn: async () => {
    assert.ok(runner, "the lab did not start");
    const prefix = runner.lab.prefix;
    await runner.stop();
    assert.deepEqual(await listNetns(prefix), [], `lab namespaces ${prefix}-* removed`);
  },
});
