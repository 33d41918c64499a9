/**
 * An engine scoped to one node (what the agent runs, twice) judges that node exactly as an
 * unscoped engine does, while pods elsewhere carry no policy lists and get no rule tables; and
 * the values pods share (labels, named ports) stay correct when one of those pods changes.
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import type { Connection, NetworkPolicy, Pod } from "../src/policy/types.ts";
import { generateCluster, prng } from "../bench/cluster_gen.ts";

function load(engine: PolicyEngine, c: ReturnType<typeof generateCluster>): PolicyEngine {
  for (const ns of c.namespaces) engine.upsertNamespace(ns);
  for (const p of c.pods) engine.upsertPod(p);
  for (const np of c.policies) engine.upsertPolicy(np);
  return engine;
}

Deno.test("scoped engine: the node's verdicts and queued IPs equal the unscoped engine's", () => {
  const c = generateCluster(600, 300);
  const full = load(new PolicyEngine(), c);
  const scoped = load(new PolicyEngine({ node: "node-2" }), c);
  const local = c.pods.filter((p) => p.spec?.nodeName === "node-2").map((p) => p.status!.podIP!);
  const rnd = prng(7);
  const pick = <T>(xs: T[]) => xs[Math.floor(rnd() * xs.length)]!;
  const ports: [Connection["protocol"], number][] = [
    ["TCP", 8080],
    ["TCP", 5432],
    ["UDP", 53],
    [
      "TCP",
      443,
    ],
    ["TCP", 9090],
    ["TCP", 8050],
  ];
  for (let i = 0; i < 3000; i++) {
    const [protocol, port] = pick(ports);
    const other = rnd() < 0.1 ? `203.0.113.${i % 250}` : pick(c.podIPs);
    const conn = i % 2 === 0
      ? { src: other, dst: pick(local), protocol, port }
      : { src: pick(local), dst: other, protocol, port };
    assert.deepEqual(scoped.evaluate(conn), full.evaluate(conn, "node-2"), JSON.stringify(conn));
  }
  assert.deepEqual(scoped.queuedIPs(), full.queuedIPs("node-2"));
  // Policy changes keep them equal (a policy added, one removed).
  const extra: NetworkPolicy = {
    metadata: { namespace: "ns-2", name: "late" },
    spec: { podSelector: {}, policyTypes: ["Ingress"], ingress: [] },
  };
  full.upsertPolicy(extra);
  scoped.upsertPolicy(extra);
  full.deletePolicy(
    "ns-4",
    c.policies.find((p) => p.metadata.namespace === "ns-4")!.metadata.name!,
  );
  scoped.deletePolicy(
    "ns-4",
    c.policies.find((p) => p.metadata.namespace === "ns-4")!.metadata.name!,
  );
  assert.deepEqual(scoped.queuedIPs(), full.queuedIPs("node-2"));
  for (const dst of local) {
    const conn = { src: c.podIPs[0]!, dst, protocol: "TCP" as const, port: 8080 };
    assert.deepEqual(scoped.evaluate(conn), full.evaluate(conn, "node-2"));
  }
});

Deno.test("scoped engine: rule tables only for its own pods; another node is refused", () => {
  const c = generateCluster(600, 300);
  const scoped = load(new PolicyEngine({ node: "node-1" }), c);
  const localPods = c.pods.filter((p) => p.spec?.nodeName === "node-1").length;
  // prepare() builds the tables of the pods whose policies changed: only this node's.
  assert.ok(scoped.prepare() <= localPods, "no table work for pods on other nodes");
  const conn = { src: c.podIPs[0]!, dst: c.podIPs[1]!, protocol: "TCP" as const, port: 80 };
  assert.throws(() => scoped.evaluate(conn, "node-3"), /judges node node-1 only/);
  assert.throws(() => scoped.queuedIPs("node-3"), /judges node node-1 only/);
  assert.doesNotThrow(() => scoped.evaluate(conn, "node-1"));
});

Deno.test("pods sharing labels and named ports: changing one leaves the others as they were", () => {
  const e = new PolicyEngine();
  e.upsertNamespace({ metadata: { name: "x" } });
  const pod = (name: string, ip: string, app: string, port = 8080): Pod => ({
    metadata: { namespace: "x", name, labels: { app } },
    spec: { nodeName: "n", containers: [{ ports: [{ name: "http", containerPort: port }] }] },
    status: { phase: "Running", podIP: ip },
  });
  e.upsertPod(pod("a", "10.0.0.1", "web"));
  e.upsertPod(pod("b", "10.0.0.2", "web"));
  e.upsertPod(pod("c", "10.0.0.3", "client"));
  e.upsertPolicy({
    metadata: { namespace: "x", name: "web" },
    spec: {
      podSelector: { matchLabels: { app: "web" } },
      ingress: [{
        from: [{ podSelector: { matchLabels: { app: "client" } } }],
        ports: [{ port: "http" }],
      }],
    },
  });
  const to = (dst: string, port: number) =>
    e.evaluate({ src: "10.0.0.3", dst, protocol: "TCP", port }).verdict;
  assert.equal(to("10.0.0.1", 8080), "allow");
  assert.equal(to("10.0.0.2", 8080), "allow");
  // b changes its labels and its named port; a (which shared both) must not change with it.
  e.upsertPod(pod("b", "10.0.0.2", "other", 9090));
  assert.equal(to("10.0.0.1", 8080), "allow");
  assert.equal(to("10.0.0.1", 9090), "deny");
  assert.equal(to("10.0.0.2", 8080), "allow", "b is no longer selected: not isolated");
  e.upsertPod(pod("b", "10.0.0.2", "web", 9090));
  assert.equal(to("10.0.0.2", 9090), "allow", "b's own named port");
  assert.equal(to("10.0.0.2", 8080), "deny");
  assert.equal(to("10.0.0.1", 8080), "allow");
});

Deno.test("an IP claimed by two pods: the Running one owns it, the other takes over when it goes", () => {
  const e = new PolicyEngine();
  const pod = (name: string, phase: string): Pod => ({
    metadata: { namespace: "x", name },
    spec: { nodeName: "n" },
    status: { phase, podIP: "10.0.0.9" },
  });
  e.upsertPod(pod("old", "Pending"));
  e.upsertPod(pod("new", "Running"));
  assert.equal(e.podAt("10.0.0.9"), "x/new");
  e.deletePod("x", "new");
  assert.equal(e.podAt("10.0.0.9"), "x/old");
  e.deletePod("x", "old");
  assert.equal(e.podAt("10.0.0.9"), undefined);
});
