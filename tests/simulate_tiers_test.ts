/**
 * `simulate` with the cluster-scoped kinds and the endpoint answers fixed for issue 10: a
 * hostNetwork pod named as an endpoint, a dual-stack pod against an IPv6 address, and dual-stack
 * pod pairs judged per family.
 */
import assert from "node:assert/strict";
import { loadSimulation, renderTable, runProbes } from "../src/cli/simulate.ts";

async function dirWith(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(`${dir}/${name}`, text);
  }
  return dir;
}

const CLUSTER = `
apiVersion: v1
kind: Namespace
metadata: { name: x }
---
apiVersion: v1
kind: Namespace
metadata: { name: y }
---
apiVersion: v1
kind: Node
metadata: { name: n1, labels: { role: worker } }
status: { addresses: [{ type: InternalIP, address: 192.168.0.1 }, { type: InternalIP, address: "fd00:ff::1" }] }
---
apiVersion: v1
kind: Pod
metadata: { namespace: x, name: a, labels: { app: a } }
spec: { nodeName: n1 }
status:
  phase: Running
  podIP: 10.0.1.1
  podIPs: [{ ip: 10.0.1.1 }, { ip: "fd00::11" }]
---
apiVersion: v1
kind: Pod
metadata: { namespace: y, name: b, labels: { app: b } }
spec: { nodeName: n1 }
status:
  phase: Running
  podIP: 10.0.2.1
  podIPs: [{ ip: 10.0.2.1 }, { ip: "fd00::21" }]
---
apiVersion: v1
kind: Pod
metadata: { namespace: y, name: v4only }
spec: { nodeName: n1 }
status: { phase: Running, podIP: 10.0.2.2 }
---
apiVersion: v1
kind: Pod
metadata: { namespace: x, name: agent }
spec: { nodeName: n1, hostNetwork: true }
status: { phase: Running, podIP: 192.168.0.1, podIPs: [{ ip: 192.168.0.1 }, { ip: "fd00:ff::1" }] }
`;

const POLICIES = `
# Admin: x may not reach y over IPv6 (a CIDR is one family), nor any node.
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: { name: guard }
spec:
  tier: Admin
  priority: 1
  subject: { namespaces: { matchLabels: { kubernetes.io/metadata.name: x } } }
  egress:
    - { name: no-v6-pods, action: Deny, to: [{ networks: ["fd00::/64"] }] }
    - { name: no-nodes, action: Deny, to: [{ nodes: {} }] }
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: { name: legacy }
spec:
  priority: 2
  subject: { namespaces: {} }
  ingress:
    - { name: allow-x, action: Allow, from: [{ namespaces: {} }], ports: [{ portNumber: { port: 80 } }] }
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: { name: default }
spec:
  subject: { namespaces: {} }
  ingress:
    - { name: default-deny, action: Deny, from: [{ namespaces: {} }] }
`;

Deno.test("simulate loads Node, ClusterNetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy manifests", async () => {
  const dir = await dirWith({ "cluster.yaml": CLUSTER, "policies.yaml": POLICIES });
  const sim = await loadSimulation([dir]);
  assert.deepEqual(sim.errors, []);
  assert.deepEqual(sim.warnings, []);
  assert.deepEqual(sim.engine.tierStats(), { clusterPolicies: 3, nodes: 1 });
  const [v4, bad] = runProbes(sim.engine, [
    { from: "y/v4only", to: "x/a", protocol: "TCP", port: 80 },
    { from: "y/v4only", to: "x/a", protocol: "TCP", port: 81 },
  ]);
  assert.equal(v4!.verdict, "allow");
  assert.equal(v4!.reason.ingress.reason.kind, "tier-accepted");
  assert.equal(bad!.verdict, "deny");
  assert.deepEqual(bad!.reason.ingress.reason, {
    kind: "tier-denied",
    pod: "x/a",
    by: { tier: "Baseline", policy: "BaselineAdminNetworkPolicy/default", rule: "default-deny" },
  });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("simulate: a hostNetwork pod named as an endpoint is its node's address, judged as a non-pod", async () => {
  const dir = await dirWith({ "cluster.yaml": CLUSTER, "policies.yaml": POLICIES });
  const { engine } = await loadSimulation([dir]);
  const [toAgent, fromAgent] = runProbes(engine, [
    { from: "x/a", to: "x/agent", protocol: "TCP", port: 10250 },
    { from: "x/agent", to: "y/v4only", protocol: "TCP", port: 81 },
  ]);
  // x/a -> node address: the `nodes` peer matches the hostNetwork pod's (node's) address.
  assert.equal(toAgent!.verdict, "deny");
  assert.equal(toAgent!.dst, "192.168.0.1");
  assert.equal(toAgent!.reason.dstPod, undefined);
  assert.deepEqual(toAgent!.reason.ingress.reason, { kind: "not-a-pod" });
  assert.equal(toAgent!.reason.egress.reason.kind, "tier-denied");
  // From it: a node source; ingress peers never match it, so the Baseline deny does not apply.
  assert.equal(fromAgent!.verdict, "allow");
  assert.deepEqual(fromAgent!.reason.egress.reason, { kind: "not-a-pod" });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("simulate: a dual-stack pod facing an IPv6 address uses its IPv6 address", async () => {
  const dir = await dirWith({ "cluster.yaml": CLUSTER, "policies.yaml": POLICIES });
  const { engine } = await loadSimulation([dir]);
  const [r] = runProbes(engine, [{ from: "x/a", to: "fd00::21", protocol: "TCP", port: 80 }]);
  assert.equal(r!.src, "fd00::11", "the pod's address of the destination's family");
  assert.equal(r!.reason.srcPod, "x/a");
  assert.equal(r!.verdict, "deny");
  assert.equal(r!.reason.egress.reason.kind, "tier-denied");
  assert.equal(r!.families, undefined, "one family judged");
  const [v4] = runProbes(engine, [{ from: "x/a", to: "10.0.2.1", protocol: "TCP", port: 80 }]);
  assert.equal(v4!.verdict, "allow");
  assert.equal(v4!.src, "10.0.1.1");
  assert.throws(
    () => runProbes(engine, [{ from: "y/v4only", to: "fd00::11", protocol: "TCP", port: 80 }]),
    /no address family in common \(y\/v4only has IPv4, fd00::11 has IPv6\)/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("simulate: dual-stack pod pairs are judged per family; differing answers are both reported", async () => {
  const dir = await dirWith({ "cluster.yaml": CLUSTER, "policies.yaml": POLICIES });
  const { engine } = await loadSimulation([dir]);
  const [r, same] = runProbes(engine, [
    { from: "x/a", to: "y/b", protocol: "TCP", port: 80 },
    { from: "y/b", to: "x/a", protocol: "TCP", port: 80 },
  ]);
  assert.equal(r!.verdict, "deny", "not allowed in every family");
  assert.deepEqual(
    r!.families!.map((f) => [f.family, f.src, f.dst, f.verdict]),
    [[4, "10.0.1.1", "10.0.2.1", "allow"], [6, "fd00::11", "fd00::21", "deny"]],
  );
  assert.equal(same!.families, undefined, "both families agree: one answer");
  const table = renderTable([r!, same!], true);
  assert.match(table, /4\/6 only IPv4\/IPv6 allowed/);
  assert.match(table, /^x\/a\s+-\s+4\s*$/m);
  assert.match(table, /ALLOW x\/a -> y\/b TCP\/80 \[IPv4\]: /);
  assert.match(
    table,
    /DENY {2}x\/a -> y\/b TCP\/80 \[IPv6\]: egress: x\/a denied by Admin ClusterNetworkPolicy\/guard rule 'no-v6-pods'/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("simulate: a rule failing closed is a warning (applied); an invalid cluster policy an error", async () => {
  const dir = await dirWith({
    "cluster.yaml": CLUSTER,
    "policies.yaml": `
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: { name: newer }
spec:
  tier: Admin
  priority: 1
  subject: { namespaces: {} }
  egress: [{ action: Deny, to: [{ serviceAccounts: { name: x } }] }]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: { name: broken }
spec: { tier: Admin, priority: 5000, subject: { namespaces: {} } }
`,
  });
  const sim = await loadSimulation([dir]);
  assert.deepEqual(sim.warnings.map((w) => [w.object, w.field]), [[
    "ClusterNetworkPolicy newer",
    "spec.egress[0].to[0]",
  ]]);
  assert.deepEqual(sim.errors.map((w) => [w.object, w.field]), [[
    "ClusterNetworkPolicy broken",
    "spec.priority",
  ]]);
  assert.match(sim.errors[0]!.source!, /policies\.yaml#doc 2$/);
  const [r] = runProbes(sim.engine, [{ from: "x/a", to: "y/b", protocol: "UDP", port: 53 }]);
  assert.equal(r!.verdict, "deny", "the failed-closed rule denies all");
  await Deno.remove(dir, { recursive: true });
});
