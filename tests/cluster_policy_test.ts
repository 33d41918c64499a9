/**
 * The cluster-scoped tiers (ClusterNetworkPolicy v1alpha2, AdminNetworkPolicy and
 * BaselineAdminNetworkPolicy v1alpha1), one semantic rule at a time, on a small model:
 * namespaces x, y, z (labels ns=<name>), pods a, b in x and y, a in z (label pod=<name>), all on
 * node-1 (192.168.0.1), plus a hostNetwork pod and an external address.
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import { explainDecision } from "../src/policy/explain.ts";
import type {
  AdminNetworkPolicy,
  BaselineAdminNetworkPolicy,
  ClusterNetworkPolicy,
  Connection,
  DirectionReason,
  NetworkPolicy,
  Node,
  Pod,
} from "../src/policy/types.ts";

const NODE = "node-1";
const NODE_IP = "192.168.0.1";
const OTHER_NODE_IP = "192.168.0.2";
const EXTERNAL = "203.0.113.9";

const IPS: Record<string, string> = {
  "x/a": "10.0.1.1",
  "x/b": "10.0.1.2",
  "y/a": "10.0.2.1",
  "y/b": "10.0.2.2",
  "z/a": "10.0.3.1",
};

function pod(key: string, ip = IPS[key]!, extra: Partial<Pod["spec"]> = {}): Pod {
  const [namespace, name] = key.split("/") as [string, string];
  return {
    metadata: { namespace, name, labels: { pod: name } },
    spec: {
      nodeName: NODE,
      containers: [{
        ports: [
          { name: "http", containerPort: 8080, protocol: "TCP" },
          { name: "dns", containerPort: 53, protocol: "UDP" },
        ],
      }],
      ...extra,
    },
    status: { phase: "Running", podIP: ip, hostIP: NODE_IP },
  };
}

const NODES: Node[] = [
  {
    metadata: { name: NODE, labels: { "kubernetes.io/os": "linux", role: "worker" } },
    status: {
      addresses: [
        { type: "InternalIP", address: NODE_IP },
        { type: "Hostname", address: "node-1" },
      ],
    },
  },
  {
    metadata: { name: "node-2", labels: { "kubernetes.io/os": "linux", role: "control-plane" } },
    status: {
      addresses: [
        { type: "InternalIP", address: OTHER_NODE_IP },
        { type: "ExternalIP", address: "198.51.100.2" },
      ],
    },
  },
];

function model(): PolicyEngine {
  const e = new PolicyEngine();
  for (const ns of ["x", "y", "z"]) e.upsertNamespace({ metadata: { name: ns, labels: { ns } } });
  for (const key of Object.keys(IPS)) assert.deepEqual(e.upsertPod(pod(key)), []);
  // A hostNetwork pod: it has its node's IP and is never a pod for policy.
  assert.deepEqual(
    e.upsertPod(pod("y/host", OTHER_NODE_IP, { hostNetwork: true, nodeName: "node-2" })),
    [],
  );
  for (const n of NODES) assert.deepEqual(e.upsertNode(n), []);
  return e;
}

type Spec = ClusterNetworkPolicy["spec"];
function cnp(name: string, spec: Spec): ClusterNetworkPolicy {
  return {
    apiVersion: "policy.networking.k8s.io/v1alpha2",
    kind: "ClusterNetworkPolicy",
    metadata: { name },
    spec,
  };
}
const ns = (name: string) => ({ matchLabels: { ns: name } });

function apply(e: PolicyEngine, p: ClusterNetworkPolicy) {
  assert.deepEqual(e.upsertClusterPolicy("ClusterNetworkPolicy", p), [], "policy must be valid");
}

function applyNP(e: PolicyEngine, namespace: string, name: string, spec: NetworkPolicy["spec"]) {
  assert.deepEqual(e.upsertPolicy({ metadata: { namespace, name }, spec }), []);
}

function conn(from: string, to: string, port = 80, protocol: Connection["protocol"] = "TCP") {
  return { src: IPS[from] ?? from, dst: IPS[to] ?? to, protocol, port };
}

function verdict(
  e: PolicyEngine,
  from: string,
  to: string,
  port = 80,
  protocol: Connection["protocol"] = "TCP",
) {
  return e.evaluate(conn(from, to, port, protocol)).verdict;
}

const ADMIN_DENY_Y: ClusterNetworkPolicy = cnp("deny-x-to-y", {
  tier: "Admin",
  priority: 10,
  subject: { namespaces: ns("x") },
  egress: [{ name: "no-y", action: "Deny", to: [{ namespaces: ns("y") }] }],
});

// ------------------------------------------------------------------ tiers and actions

Deno.test("Admin Deny: decides the subject's side and names tier, policy and rule", () => {
  const e = model();
  apply(e, ADMIN_DENY_Y);
  const d = e.evaluate(conn("x/a", "y/a"));
  assert.equal(d.verdict, "deny");
  assert.deepEqual(d.egress.reason, {
    kind: "tier-denied",
    pod: "x/a",
    by: { tier: "Admin", policy: "ClusterNetworkPolicy/deny-x-to-y", rule: "no-y" },
  });
  assert.equal(
    explainDecision(d),
    "egress: x/a denied by Admin ClusterNetworkPolicy/deny-x-to-y rule 'no-y'",
  );
  // Traffic no rule matches falls through to the default, and says which policies looked.
  const z = e.evaluate(conn("x/a", "z/a"));
  assert.equal(z.verdict, "allow");
  assert.deepEqual(z.egress.reason, {
    kind: "default-allowed",
    pod: "x/a",
    consulted: ["ClusterNetworkPolicy/deny-x-to-y"],
  });
  // The other direction and other namespaces are not subjects.
  assert.equal(verdict(e, "y/a", "x/a"), "allow");
  assert.deepEqual(e.evaluate(conn("y/a", "x/a")).egress.reason, {
    kind: "not-isolated",
    pod: "y/a",
  });
});

Deno.test("Admin Deny wins over a NetworkPolicy allow", () => {
  const e = model();
  applyNP(e, "y", "allow-all-in", { podSelector: {}, ingress: [{}] });
  applyNP(e, "x", "allow-all-out", { podSelector: {}, policyTypes: ["Egress"], egress: [{}] });
  apply(e, ADMIN_DENY_Y);
  assert.equal(verdict(e, "x/a", "y/a"), "deny");
  // Ingress of y/a still allows (NetworkPolicy tier); only x's egress side denies.
  const d = e.evaluate(conn("x/a", "y/a"));
  assert.equal(d.ingress.verdict, "allow");
  assert.equal(d.ingress.reason.kind, "allowed");
});

Deno.test("Admin Accept wins over a NetworkPolicy deny on its side only; the other side still applies", () => {
  const e = model();
  applyNP(e, "x", "deny-out", { podSelector: {}, policyTypes: ["Egress"] });
  apply(
    e,
    cnp("allow-dns", {
      tier: "Admin",
      priority: 5,
      subject: { namespaces: {} },
      egress: [{
        action: "Accept",
        to: [{ pods: { podSelector: { matchLabels: { pod: "a" } } } }],
      }],
    }),
  );
  // x's egress NetworkPolicy denies everything, but the Admin Accept decides first.
  const ok = e.evaluate(conn("x/a", "z/a"));
  assert.equal(ok.verdict, "allow");
  assert.deepEqual(ok.egress.reason, {
    kind: "tier-accepted",
    pod: "x/a",
    by: { tier: "Admin", policy: "ClusterNetworkPolicy/allow-dns", rule: 0 },
  });
  assert.match(explainDecision(ok), /accepted by Admin ClusterNetworkPolicy\/allow-dns rule 0/);
  // Not matched (destination b): the NetworkPolicy tier decides.
  assert.equal(verdict(e, "x/a", "y/b"), "deny");
  // The destination's ingress side is judged on its own: a NetworkPolicy there still denies.
  applyNP(e, "z", "deny-in", { podSelector: {} });
  const d = e.evaluate(conn("x/a", "z/a"));
  assert.equal(d.verdict, "deny");
  assert.equal(d.egress.verdict, "allow");
  assert.equal(d.ingress.reason.kind, "denied");
});

Deno.test("Admin Accept on ingress overrides the destination's NetworkPolicy deny", () => {
  const e = model();
  applyNP(e, "x", "deny-in", { podSelector: {} });
  apply(
    e,
    cnp("monitoring", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      ingress: [{ name: "from-z", action: "Accept", from: [{ namespaces: ns("z") }] }],
    }),
  );
  assert.equal(verdict(e, "z/a", "x/a"), "allow");
  assert.equal(verdict(e, "y/a", "x/a"), "deny", "the NetworkPolicy still isolates for others");
});

Deno.test("Pass skips the rest of the Admin tier: the NetworkPolicy tier decides when it isolates", () => {
  const e = model();
  apply(
    e,
    cnp("delegate", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [{ name: "to-y", action: "Pass", to: [{ namespaces: ns("y") }] }],
    }),
  );
  apply(
    e,
    cnp("deny-later", {
      tier: "Admin",
      priority: 2,
      subject: { namespaces: ns("x") },
      egress: [{ action: "Deny", to: [{ namespaces: {} }] }],
    }),
  );
  // Without a NetworkPolicy isolating x: Pass goes on to the Baseline tier, then default allow.
  const d = e.evaluate(conn("x/a", "y/a"));
  assert.equal(d.verdict, "allow", "the lower-precedence Admin deny is skipped");
  assert.deepEqual(d.egress.reason, {
    kind: "default-allowed",
    pod: "x/a",
    consulted: ["ClusterNetworkPolicy/delegate", "ClusterNetworkPolicy/deny-later"],
    passed: [{ tier: "Admin", policy: "ClusterNetworkPolicy/delegate", rule: "to-y" }],
  });
  assert.equal(verdict(e, "x/a", "z/a"), "deny", "not passed: the later Admin rule denies");
  // With a NetworkPolicy isolating x for egress, it decides (allow iff a rule admits).
  applyNP(e, "x", "only-pod-b", {
    podSelector: {},
    policyTypes: ["Egress"],
    egress: [{ to: [{ namespaceSelector: {}, podSelector: { matchLabels: { pod: "b" } } }] }],
  });
  const denied = e.evaluate(conn("x/a", "y/a"));
  assert.equal(denied.verdict, "deny");
  assert.equal(denied.egress.reason.kind, "denied");
  assert.match(
    explainDecision(denied),
    /passed by Admin ClusterNetworkPolicy\/delegate rule 'to-y'; then x\/a isolated by x\/only-pod-b/,
  );
  const allowed = e.evaluate(conn("x/a", "y/b"));
  assert.equal(allowed.verdict, "allow");
  assert.deepEqual(allowed.egress.reason, {
    kind: "allowed",
    pod: "x/a",
    policy: "x/only-pod-b",
    rule: 0,
    passed: [{ tier: "Admin", policy: "ClusterNetworkPolicy/delegate", rule: "to-y" }],
  });
});

Deno.test("Pass then Baseline: with no NetworkPolicy isolating the pod, the Baseline tier decides", () => {
  const e = model();
  apply(
    e,
    cnp("delegate", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      ingress: [{ action: "Pass", from: [{ namespaces: ns("y") }] }],
    }),
  );
  apply(
    e,
    cnp("baseline", {
      tier: "Baseline",
      priority: 1,
      subject: { namespaces: ns("x") },
      ingress: [{ name: "deny-y", action: "Deny", from: [{ namespaces: ns("y") }] }],
    }),
  );
  const d = e.evaluate(conn("y/a", "x/a"));
  assert.equal(d.verdict, "deny");
  assert.deepEqual(d.ingress.reason, {
    kind: "tier-denied",
    pod: "x/a",
    by: { tier: "Baseline", policy: "ClusterNetworkPolicy/baseline", rule: "deny-y" },
    passed: [{ tier: "Admin", policy: "ClusterNetworkPolicy/delegate", rule: 0 }],
  });
  // A NetworkPolicy isolating x for egress only does not count for ingress: Baseline still decides.
  applyNP(e, "x", "egress-only", { podSelector: {}, policyTypes: ["Egress"], egress: [{}] });
  assert.equal(verdict(e, "y/a", "x/a"), "deny");
  // One isolating x for ingress does: it allows y, the Baseline is never reached.
  applyNP(e, "x", "allow-y", {
    podSelector: {},
    ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: "y" } } }] }],
  });
  const after = e.evaluate(conn("y/a", "x/a"));
  assert.equal(after.verdict, "allow");
  assert.equal(after.ingress.reason.kind, "allowed");
});

Deno.test("Baseline Deny is overridden by a NetworkPolicy allow, and decides when none isolates", () => {
  const e = model();
  apply(
    e,
    cnp("default", {
      tier: "Baseline",
      priority: 100,
      subject: { namespaces: {} },
      ingress: [{ name: "default-deny", action: "Deny", from: [{ namespaces: {} }] }],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/a"), "deny");
  assert.equal(verdict(e, "x/b", "x/a"), "deny");
  applyNP(e, "x", "allow-same-ns", { podSelector: {}, ingress: [{ from: [{ podSelector: {} }] }] });
  assert.equal(
    verdict(e, "x/b", "x/a"),
    "allow",
    "NetworkPolicy tier allows, Baseline not reached",
  );
  assert.equal(verdict(e, "y/a", "x/a"), "deny", "NetworkPolicy isolates: final deny");
  assert.equal(e.evaluate(conn("y/a", "x/a")).ingress.reason.kind, "denied");
  assert.equal(verdict(e, "x/a", "y/a"), "deny", "y is not isolated: Baseline denies");
});

Deno.test("Baseline Accept and Pass: Accept allows; Pass skips the rest of the Baseline tier", () => {
  const e = model();
  apply(
    e,
    cnp("b1", {
      tier: "Baseline",
      priority: 1,
      subject: { namespaces: {} },
      egress: [
        { action: "Accept", to: [{ namespaces: ns("z") }] },
        { action: "Pass", to: [{ namespaces: ns("x") }] },
      ],
    }),
  );
  apply(
    e,
    cnp("b2", {
      tier: "Baseline",
      priority: 2,
      subject: { namespaces: {} },
      egress: [{ action: "Deny", to: [{ namespaces: {} }] }],
    }),
  );
  assert.equal(e.evaluate(conn("y/a", "z/a")).egress.reason.kind, "tier-accepted");
  const passed = e.evaluate(conn("y/a", "x/a"));
  assert.equal(passed.verdict, "allow");
  assert.equal(passed.egress.reason.kind, "default-allowed");
  assert.equal(verdict(e, "y/a", "y/b"), "deny");
});

Deno.test("priority ascending decides across policies; equal priorities by name; ANP and CNP share the Admin order", () => {
  const e = model();
  const deny = (name: string, priority: number) =>
    cnp(name, {
      tier: "Admin",
      priority,
      subject: { namespaces: ns("x") },
      egress: [{ action: "Deny", to: [{ namespaces: ns("y") }] }],
    });
  const accept = (name: string, priority: number) =>
    cnp(name, {
      tier: "Admin",
      priority,
      subject: { namespaces: ns("x") },
      egress: [{ action: "Accept", to: [{ namespaces: ns("y") }] }],
    });
  apply(e, deny("d", 50));
  apply(e, accept("a", 60));
  assert.equal(verdict(e, "x/a", "y/a"), "deny");
  apply(e, accept("a", 40)); // updated priority: now earlier
  assert.equal(verdict(e, "x/a", "y/a"), "allow");
  // Same priority: by name ("a" < "d").
  apply(e, deny("d", 40));
  assert.equal(verdict(e, "x/a", "y/a"), "allow");
  apply(e, deny("0-first", 40));
  assert.equal(verdict(e, "x/a", "y/a"), "deny");
  // An ANP at a lower priority value comes before every CNP.
  const anp: AdminNetworkPolicy = {
    metadata: { name: "legacy" },
    spec: {
      priority: 3,
      subject: { namespaces: ns("x") },
      egress: [{ name: "allow-y", action: "Allow", to: [{ namespaces: ns("y") }] }],
    },
  };
  assert.deepEqual(e.upsertClusterPolicy("AdminNetworkPolicy", anp), []);
  assert.deepEqual(e.evaluate(conn("x/a", "y/a")).egress.reason, {
    kind: "tier-accepted",
    pod: "x/a",
    by: { tier: "Admin", policy: "AdminNetworkPolicy/legacy", rule: "allow-y" },
  });
  assert.deepEqual(e.clusterPolicyKeys(), [
    "AdminNetworkPolicy/legacy",
    "ClusterNetworkPolicy/0-first",
    "ClusterNetworkPolicy/a",
    "ClusterNetworkPolicy/d",
  ]);
});

Deno.test("rules in written order: the first rule whose peers and protocols match decides", () => {
  const e = model();
  apply(
    e,
    cnp("ordered", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [
        {
          action: "Accept",
          to: [{ namespaces: ns("y") }],
          protocols: [{ tcp: { destinationPort: { number: 443 } } }],
        },
        { action: "Deny", to: [{ namespaces: ns("y") }] },
        { action: "Accept", to: [{ namespaces: {} }] },
      ],
    }),
  );
  assert.equal(verdict(e, "x/a", "y/a", 443), "allow");
  assert.equal(verdict(e, "x/a", "y/a", 80), "deny");
  assert.deepEqual(
    (e.evaluate(conn("x/a", "y/a", 80)).egress.reason as { by: unknown }).by,
    { tier: "Admin", policy: "ClusterNetworkPolicy/ordered", rule: 1 },
  );
  assert.equal(verdict(e, "x/a", "z/a", 80), "allow");
});

// ------------------------------------------------------------------ subjects and peers

Deno.test("subjects: namespaces selector; pods = namespaceSelector AND podSelector; {} selects all", () => {
  const e = model();
  apply(
    e,
    cnp("pods-subject", {
      tier: "Admin",
      priority: 1,
      subject: { pods: { namespaceSelector: ns("y"), podSelector: { matchLabels: { pod: "b" } } } },
      egress: [{ action: "Deny", to: [{ namespaces: {} }] }],
    }),
  );
  assert.equal(verdict(e, "y/b", "x/a"), "deny");
  assert.equal(verdict(e, "y/a", "x/a"), "allow", "podSelector does not select y/a");
  assert.equal(verdict(e, "x/b", "x/a"), "allow", "namespaceSelector does not select x");
  apply(
    e,
    cnp("everyone", {
      tier: "Admin",
      priority: 1,
      subject: { pods: { podSelector: {} } }, // namespaceSelector absent: every namespace
      ingress: [{
        action: "Deny",
        from: [{ pods: { podSelector: { matchLabels: { pod: "b" } } } }],
      }],
    }),
  );
  assert.equal(verdict(e, "x/b", "z/a"), "deny");
  assert.equal(verdict(e, "x/a", "z/a"), "allow");
});

Deno.test("hostNetwork pods are never subjects and never match pod peers; they are their node's IP", () => {
  const e = model();
  apply(
    e,
    cnp("all", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: {} },
      egress: [{ action: "Deny", to: [{ namespaces: {} }] }],
      ingress: [{ action: "Deny", from: [{ namespaces: {} }] }],
    }),
  );
  // y/host (hostNetwork, at OTHER_NODE_IP) is not a subject: its own traffic is not judged.
  const out = e.evaluate(conn(OTHER_NODE_IP, "203.0.113.1"));
  assert.deepEqual(out.egress.reason, { kind: "not-a-pod" });
  // As a destination it does not match the `namespaces: {}` peer: pod to it is not denied.
  assert.equal(verdict(e, "x/a", OTHER_NODE_IP), "allow");
  // ... nor as a source on ingress.
  assert.equal(verdict(e, OTHER_NODE_IP, "x/a"), "allow");
  // Between pods, everything is denied.
  assert.equal(verdict(e, "x/a", "y/a"), "deny");
  assert.deepEqual(e.queuedIPs(NODE).ingress, Object.values(IPS).sort());
  assert.ok(!e.queuedIPs().egress.includes(OTHER_NODE_IP));
});

Deno.test("ingress peers match pods only: node and external sources are never denied by an ingress rule", () => {
  const e = model();
  apply(
    e,
    cnp("deny-in", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      ingress: [{ action: "Deny", from: [{ namespaces: {} }, { pods: { podSelector: {} } }] }],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/a"), "deny");
  assert.equal(verdict(e, EXTERNAL, "x/a"), "allow");
  assert.equal(verdict(e, NODE_IP, "x/a"), "allow");
  // The pod's own node stays allowed by the NetworkPolicy tier even when a NetworkPolicy denies.
  applyNP(e, "x", "deny-all", { podSelector: {} });
  assert.deepEqual(e.evaluate(conn(NODE_IP, "x/a")).ingress.reason, {
    kind: "from-own-node",
    pod: "x/a",
  });
  assert.equal(verdict(e, OTHER_NODE_IP, "x/a"), "deny", "another node: NetworkPolicy denies");
});

Deno.test("egress networks: CIDRs match pod and non-pod addresses, same family only", () => {
  const e = model();
  apply(
    e,
    cnp("no-internet", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [{ name: "v4", action: "Deny", to: [{ networks: ["0.0.0.0/0"] }] }],
    }),
  );
  assert.equal(verdict(e, "x/a", EXTERNAL), "deny");
  assert.equal(verdict(e, "x/a", "y/a"), "deny", "0.0.0.0/0 covers pod traffic too");
  assert.equal(verdict(e, "x/a", "2001:db8::1"), "allow", "an IPv4 CIDR never matches IPv6");
  assert.equal(verdict(e, "x/a", "::ffff:203.0.113.9"), "deny", "IPv4-mapped IPv6 is IPv4");
});

Deno.test("egress networks with a preceding Pass for pod traffic: pods go on, the internet is denied", () => {
  const e = model();
  apply(
    e,
    cnp("egress-guard", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: {} },
      egress: [
        { name: "pods-are-fine", action: "Pass", to: [{ namespaces: {} }] },
        { name: "no-internet", action: "Deny", to: [{ networks: ["0.0.0.0/0", "::/0"] }] },
      ],
    }),
  );
  assert.equal(verdict(e, "x/a", "y/a"), "allow");
  assert.equal(verdict(e, "x/a", EXTERNAL), "deny");
  assert.equal(verdict(e, "x/a", "2001:db8::1"), "deny");
  assert.equal(verdict(e, "x/a", NODE_IP), "deny", "a node IP is not a pod: networks applies");
  // Passed pod traffic meets the NetworkPolicy tier.
  applyNP(e, "y", "deny-in", { podSelector: {} });
  assert.equal(verdict(e, "x/a", "y/a"), "deny");
});

Deno.test("egress nodes: Node objects' InternalIP/ExternalIP by label; a hostNetwork pod is its node", () => {
  const e = model();
  apply(
    e,
    cnp("nodes", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [
        {
          name: "kubelet-on-workers",
          action: "Accept",
          to: [{ nodes: { matchLabels: { role: "worker" } } }],
          protocols: [{ tcp: { destinationPort: { number: 10250 } } }],
        },
        { name: "no-nodes", action: "Deny", to: [{ nodes: {} }] },
      ],
    }),
  );
  assert.equal(verdict(e, "x/a", NODE_IP, 10250), "allow");
  assert.equal(verdict(e, "x/a", NODE_IP, 22), "deny");
  assert.equal(verdict(e, "x/a", OTHER_NODE_IP, 10250), "deny", "control-plane is not a worker");
  assert.equal(verdict(e, "x/a", "198.51.100.2", 80), "deny", "ExternalIP counts");
  assert.equal(verdict(e, "x/a", "y/a", 22), "allow", "pods are not nodes");
  assert.equal(verdict(e, "x/a", EXTERNAL, 22), "allow");
  // y/host is hostNetwork on node-2: reaching it is reaching node-2's address.
  assert.equal(
    e.evaluate(conn("x/a", OTHER_NODE_IP, 22)).egress.reason.kind,
    "tier-denied",
  );
  // Node changes apply at once: relabel, then delete.
  e.upsertNode({ ...NODES[1]!, metadata: { name: "node-2", labels: { role: "worker" } } });
  assert.equal(verdict(e, "x/a", OTHER_NODE_IP, 10250), "allow");
  e.deleteNode("node-2");
  assert.equal(verdict(e, "x/a", OTHER_NODE_IP, 22), "allow", "no Node object owns it any more");
  // Hostname addresses are not node IPs; a bad address is reported with its field.
  const errs = e.upsertNode({
    metadata: { name: "bad" },
    status: {
      addresses: [{ type: "InternalIP", address: "10.0.0.999" }, {
        type: "Hostname",
        address: "x",
      }],
    },
  });
  assert.deepEqual(errs.map((x) => x.field), ["status.addresses[0].address"]);
});

Deno.test("domainNames peers match nothing in this version, and say so", () => {
  const e = model();
  const errs = e.upsertClusterPolicy(
    "ClusterNetworkPolicy",
    cnp("fqdn", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [
        { action: "Accept", to: [{ domainNames: ["*.example.com"] }] },
        { action: "Deny", to: [{ networks: ["0.0.0.0/0"] }] },
      ],
    }),
  );
  assert.equal(errs.length, 1);
  assert.equal(errs[0]!.severity, "warning");
  assert.equal(errs[0]!.field, "spec.egress[0].to[0].domainNames");
  assert.match(errs[0]!.message, /not resolved.*matches nothing/);
  assert.equal(verdict(e, "x/a", EXTERNAL), "deny");
});

// ------------------------------------------------------------------ protocols

Deno.test("protocols: absent = everything incl. ICMP; tcp/udp/sctp number, range, or every port", () => {
  const e = model();
  apply(
    e,
    cnp("ports", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      ingress: [
        {
          action: "Accept",
          from: [{ namespaces: {} }],
          protocols: [
            { tcp: { destinationPort: { number: 80 } } },
            { tcp: { destinationPort: { range: { start: 8000, end: 8010 } } } },
            { udp: {} },
            { sctp: { destinationPort: { number: 9003 } } },
          ],
        },
        { action: "Deny", from: [{ namespaces: {} }] },
      ],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/a", 80), "allow");
  assert.equal(verdict(e, "y/a", "x/a", 81), "deny");
  assert.equal(verdict(e, "y/a", "x/a", 8000), "allow");
  assert.equal(verdict(e, "y/a", "x/a", 8010), "allow", "range end inclusive");
  assert.equal(verdict(e, "y/a", "x/a", 8011), "deny");
  assert.equal(verdict(e, "y/a", "x/a", 12345, "UDP"), "allow");
  assert.equal(verdict(e, "y/a", "x/a", 80, "SCTP"), "deny");
  assert.equal(verdict(e, "y/a", "x/a", 9003, "SCTP"), "allow");
  assert.equal(verdict(e, "y/a", "x/a", 0, "ICMP"), "deny", "the protocol-less Deny catches ICMP");
});

Deno.test("destinationNamedPort: the destination pod's port of that name, never a non-pod", () => {
  const e = model();
  apply(
    e,
    cnp("named", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [
        {
          action: "Accept",
          to: [{ namespaces: {} }, { networks: ["0.0.0.0/0"] }],
          protocols: [{ destinationNamedPort: "http" }],
        },
        { action: "Deny", to: [{ namespaces: {} }, { networks: ["0.0.0.0/0"] }] },
      ],
      ingress: [
        {
          action: "Deny",
          from: [{ namespaces: ns("z") }],
          protocols: [{ destinationNamedPort: "dns" }],
        },
      ],
    }),
  );
  assert.equal(verdict(e, "x/a", "y/a", 8080), "allow", "http is TCP 8080 on y/a");
  assert.equal(verdict(e, "x/a", "y/a", 8080, "UDP"), "deny", "the name's own protocol");
  assert.equal(verdict(e, "x/a", "y/a", 80), "deny");
  assert.equal(verdict(e, "x/a", EXTERNAL, 8080), "deny", "a non-pod has no named ports");
  // Ingress: resolved on the subject itself (x/a's dns is UDP 53).
  assert.equal(verdict(e, "z/a", "x/a", 53, "UDP"), "deny");
  assert.equal(verdict(e, "z/a", "x/a", 53, "TCP"), "allow");
});

// ------------------------------------------------------------------ v1alpha1

Deno.test("AdminNetworkPolicy: Admin tier, Allow is Accept, ports converted (TCP default)", () => {
  const e = model();
  applyNP(e, "x", "deny-in", { podSelector: {} });
  const anp: AdminNetworkPolicy = {
    metadata: { name: "anp" },
    spec: {
      priority: 10,
      subject: { pods: { namespaceSelector: ns("x"), podSelector: {} } },
      ingress: [
        {
          name: "web",
          action: "Allow",
          from: [{ namespaces: ns("y") }],
          ports: [
            { portNumber: { port: 80 } },
            { portRange: { protocol: "UDP", start: 5000, end: 5005 } },
            { namedPort: "dns" },
          ],
        },
        { name: "rest", action: "Pass", from: [{ namespaces: ns("y") }] },
        { name: "z-out", action: "Deny", from: [{ namespaces: ns("z") }] },
      ],
    },
  };
  assert.deepEqual(e.upsertClusterPolicy("AdminNetworkPolicy", anp), []);
  assert.equal(verdict(e, "y/a", "x/a", 80), "allow");
  assert.equal(
    verdict(e, "y/a", "x/a", 80, "UDP"),
    "deny",
    "portNumber defaults to TCP; then Pass -> NetworkPolicy",
  );
  assert.equal(verdict(e, "y/a", "x/a", 5003, "UDP"), "allow");
  assert.equal(verdict(e, "y/a", "x/a", 53, "UDP"), "allow", "namedPort dns");
  assert.deepEqual(e.evaluate(conn("z/a", "x/a", 80)).ingress.reason, {
    kind: "tier-denied",
    pod: "x/a",
    by: { tier: "Admin", policy: "AdminNetworkPolicy/anp", rule: "z-out" },
  });
  e.deleteClusterPolicy("AdminNetworkPolicy", "anp");
  assert.equal(verdict(e, "y/a", "x/a", 80), "deny");
});

Deno.test("BaselineAdminNetworkPolicy: the singleton default, Baseline tier after Baseline CNPs", () => {
  const e = model();
  const banp = (name: string): BaselineAdminNetworkPolicy => ({
    metadata: { name },
    spec: {
      subject: { namespaces: {} },
      egress: [{ name: "deny-y", action: "Deny", to: [{ namespaces: ns("y") }] }],
    },
  });
  const bad = e.upsertClusterPolicy("BaselineAdminNetworkPolicy", banp("other"));
  assert.equal(bad.length, 1);
  assert.equal(bad[0]!.field, "metadata.name");
  assert.equal(bad[0]!.severity, undefined, "an error: not applied");
  assert.equal(verdict(e, "x/a", "y/a"), "allow");
  assert.deepEqual(e.upsertClusterPolicy("BaselineAdminNetworkPolicy", banp("default")), []);
  assert.deepEqual(e.evaluate(conn("x/a", "y/a")).egress.reason, {
    kind: "tier-denied",
    pod: "x/a",
    by: { tier: "Baseline", policy: "BaselineAdminNetworkPolicy/default", rule: "deny-y" },
  });
  // A Baseline CNP at the highest priority value still comes first.
  apply(
    e,
    cnp("z-last", {
      tier: "Baseline",
      priority: 1000,
      subject: { namespaces: {} },
      egress: [{ action: "Accept", to: [{ namespaces: ns("y") }] }],
    }),
  );
  assert.equal(verdict(e, "x/a", "y/a"), "allow");
  assert.deepEqual(e.clusterPolicyKeys(), [
    "ClusterNetworkPolicy/z-last",
    "BaselineAdminNetworkPolicy/default",
  ]);
});

// ------------------------------------------------------------------ failing closed

Deno.test("a peer with no known field fails closed: nothing for Accept, Deny all for Deny and Pass", () => {
  const e = model();
  applyNP(e, "x", "deny-out", { podSelector: {}, policyTypes: ["Egress"] });
  const errs = e.upsertClusterPolicy(
    "ClusterNetworkPolicy",
    cnp("future", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [{
        action: "Accept",
        to: [{ serviceAccounts: { name: "x" } } as never, { namespaces: ns("z") }],
      }],
    }),
  );
  assert.deepEqual(errs.map((x) => [x.field, x.severity]), [["spec.egress[0].to[0]", "warning"]]);
  assert.match(errs[0]!.message, /serviceAccounts.*matches nothing/);
  assert.equal(verdict(e, "x/a", "y/a"), "deny", "the unknown peer accepts nothing");
  assert.equal(verdict(e, "x/a", "z/a"), "allow", "the known peer of the rule still works");

  for (const action of ["Deny", "Pass"]) {
    const e2 = model();
    const w = e2.upsertClusterPolicy(
      "ClusterNetworkPolicy",
      cnp("future", {
        tier: "Admin",
        priority: 1,
        subject: { namespaces: ns("x") },
        egress: [{ action, to: [{}], protocols: [{ tcp: { destinationPort: { number: 80 } } }] }],
        ingress: [{ action, from: [{}] }],
      }),
    );
    assert.equal(w.length, 2);
    assert.ok(w.every((x) => x.severity === "warning" && /denies all traffic/.test(x.message)));
    assert.equal(verdict(e2, "x/a", "y/a", 81), "deny", `${action}: Deny all, every port`);
    assert.equal(
      verdict(e2, "x/a", EXTERNAL, 81),
      "deny",
      `${action}: egress Deny all covers non-pods`,
    );
    assert.equal(verdict(e2, "y/a", "x/a"), "deny", `${action}: ingress Deny all covers pods`);
    assert.equal(verdict(e2, NODE_IP, "x/a"), "allow", "but ingress rules never match a node");
  }
});

Deno.test("an unknown protocol entry fails closed like an unknown peer", () => {
  const e = model();
  const w = e.upsertClusterPolicy(
    "ClusterNetworkPolicy",
    cnp("icmp", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [
        { action: "Accept", to: [{ namespaces: {} }], protocols: [{ icmp: {} } as never] },
        { action: "Deny", to: [{ namespaces: ns("y") }] },
      ],
    }),
  );
  assert.deepEqual(w.map((x) => x.field), ["spec.egress[0].protocols[0]"]);
  assert.equal(verdict(e, "x/a", "y/a", 0, "ICMP"), "deny", "the Accept matched nothing");
  assert.equal(verdict(e, "x/a", "z/a"), "allow");
});

Deno.test("an unknown action fails closed (denies what the rule matches); an unknown tier too", () => {
  const e = model();
  const w = e.upsertClusterPolicy(
    "ClusterNetworkPolicy",
    cnp("newer", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [{ name: "log-it", action: "Log", to: [{ namespaces: ns("y") }] }],
    }),
  );
  assert.deepEqual(w.map((x) => [x.field, x.severity]), [["spec.egress[0].action", "warning"]]);
  assert.equal(verdict(e, "x/a", "y/a"), "deny");
  assert.equal(verdict(e, "x/a", "z/a"), "allow", "only what the rule matches");
  // ANP does not know "Accept" (it says Allow): fails closed too.
  const anp = e.upsertClusterPolicy("AdminNetworkPolicy", {
    metadata: { name: "typo" },
    spec: {
      priority: 1,
      subject: { namespaces: ns("z") },
      egress: [{ action: "Accept", to: [{ namespaces: {} }] }],
    },
  });
  assert.match(anp[0]!.message, /unknown action "Accept" \(want Allow, Deny, Pass\)/);
  assert.equal(verdict(e, "z/a", "x/a"), "deny");

  const t = model();
  const tw = t.upsertClusterPolicy(
    "ClusterNetworkPolicy",
    cnp("platform", {
      tier: "Platform",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [
        { action: "Accept", to: [{ namespaces: ns("y") }] },
        { action: "Pass", to: [{ namespaces: ns("z") }] },
      ],
      ingress: [{ action: "Deny", from: [{ namespaces: ns("y") }] }],
    }),
  );
  assert.deepEqual(tw.map((x) => x.field), ["spec.tier"]);
  applyNP(t, "x", "deny-out", { podSelector: {}, policyTypes: ["Egress"] });
  assert.equal(verdict(t, "x/a", "y/a"), "deny", "Accept in an unknown tier grants nothing");
  assert.equal(t.evaluate(conn("x/a", "z/a")).egress.reason.kind, "tier-denied", "Pass denies");
  assert.equal(verdict(t, "y/a", "x/a"), "deny", "Deny keeps denying, in the Admin tier");
});

// ------------------------------------------------------------------ validation

Deno.test("invalid cluster policies: every problem named with its field; the last good version stays", () => {
  const e = model();
  apply(e, ADMIN_DENY_Y);
  const errs = e.upsertClusterPolicy(
    "ClusterNetworkPolicy",
    {
      metadata: { name: "deny-x-to-y" },
      spec: {
        priority: 1001,
        subject: { namespaces: ns("x"), pods: { podSelector: {} } },
        egress: [
          { action: "Deny", to: [] },
          { to: [{ networks: ["10.0.0.0/33"] }] },
          {
            action: "Deny",
            to: [{ namespaces: ns("y"), networks: ["0.0.0.0/0"] }],
            protocols: [{ tcp: { destinationPort: { range: { start: 90, end: 80 } } } }],
          },
          {
            action: "Deny",
            to: [{
              pods: { podSelector: { matchExpressions: [{ key: "a", operator: "Maybe" }] } },
            }],
            protocols: [{ udp: { destinationPort: { number: 0 } } }, { tcp: {}, udp: {} }],
          },
        ],
      },
    } as unknown as ClusterNetworkPolicy,
    "policies.yaml",
  );
  assert.deepEqual(errs.map((x) => x.field), [
    "spec.tier",
    "spec.priority",
    "spec.subject",
    "spec.egress[0].to",
    "spec.egress[1].action",
    "spec.egress[1].to[0].networks[0]",
    "spec.egress[2].to[0]",
    "spec.egress[2].protocols[0].tcp.destinationPort.range",
    "spec.egress[3].to[0].pods.podSelector.matchExpressions[0].operator",
    "spec.egress[3].protocols[0].udp.destinationPort.number",
    "spec.egress[3].protocols[1]",
  ]);
  assert.ok(
    errs.every((x) =>
      x.object === "ClusterNetworkPolicy deny-x-to-y" && x.source === "policies.yaml"
    ),
  );
  assert.ok(errs.every((x) => x.severity === undefined));
  assert.equal(verdict(e, "x/a", "y/a"), "deny", "the previous version is still in force");
  assert.deepEqual(
    e.upsertClusterPolicy("ClusterNetworkPolicy", { metadata: {} } as ClusterNetworkPolicy).map((
      x,
    ) => x.field),
    ["metadata.name", "spec"],
  );
});

// ------------------------------------------------------------------ special cases

Deno.test("a pod connecting to its own IP is not subject to cluster-scoped policy", () => {
  const e = model();
  apply(
    e,
    cnp("deny-everything", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: {} },
      egress: [{ action: "Deny", to: [{ networks: ["0.0.0.0/0"] }] }],
      ingress: [{ action: "Deny", from: [{ namespaces: {} }] }],
    }),
  );
  const d = e.evaluate(conn("x/a", "x/a"));
  assert.equal(d.verdict, "allow");
  assert.deepEqual(d.egress.reason, { kind: "not-isolated", pod: "x/a" });
  assert.equal(verdict(e, "x/a", "x/b"), "deny");
});

Deno.test("dual-stack: selectors see both families; networks only its own family; nodes by either address", () => {
  const e = model();
  e.upsertPod({
    ...pod("z/ds", "10.0.3.9"),
    status: {
      phase: "Running",
      podIP: "10.0.3.9",
      podIPs: [{ ip: "10.0.3.9" }, { ip: "fd00::39" }],
      hostIP: NODE_IP,
    },
  });
  e.upsertPod({
    ...pod("x/ds", "10.0.1.9"),
    status: {
      phase: "Running",
      podIP: "10.0.1.9",
      podIPs: [{ ip: "10.0.1.9" }, { ip: "fd00::19" }],
    },
  });
  e.upsertNode({
    metadata: { name: "v6-node", labels: { v6: "yes" } },
    status: {
      addresses: [{ type: "InternalIP", address: "fd00:ff::1" }, {
        type: "InternalIP",
        address: "192.168.9.1",
      }],
    },
  });
  apply(
    e,
    cnp("ds", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("x") },
      egress: [
        { name: "z-v6-only", action: "Deny", to: [{ networks: ["fd00::/64"] }] },
        { name: "v6-node", action: "Deny", to: [{ nodes: { matchLabels: { v6: "yes" } } }] },
      ],
      ingress: [{ name: "no-z", action: "Deny", from: [{ namespaces: ns("z") }] }],
    }),
  );
  assert.equal(verdict(e, "fd00::19", "fd00::39"), "deny", "v6 CIDR matches the v6 address");
  assert.equal(verdict(e, "10.0.1.9", "10.0.3.9"), "allow", "... and never the v4 one");
  assert.equal(verdict(e, "fd00::39", "fd00::19"), "deny", "namespace peers match both families");
  assert.equal(verdict(e, "10.0.3.9", "10.0.1.9"), "deny");
  assert.equal(verdict(e, "10.0.1.9", "192.168.9.1"), "deny");
  assert.equal(verdict(e, "fd00::19", "fd00:ff::1"), "deny");
  assert.deepEqual(e.queuedIPs().ingress.filter((ip) => ip.includes(":")), ["fd00::19"]);
});

Deno.test("node scoping: each node judges only its own side of a cluster-tier decision", () => {
  const e = model();
  e.upsertPod(pod("z/a", IPS["z/a"], { nodeName: "node-2" }));
  apply(
    e,
    cnp("deny-z-in", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("z") },
      ingress: [{ action: "Deny", from: [{ namespaces: ns("x") }] }],
    }),
  );
  assert.equal(e.evaluate(conn("x/a", "z/a"), NODE).verdict, "allow", "node-1 judges x/a's egress");
  const d = e.evaluate(conn("x/a", "z/a"), "node-2");
  assert.equal(d.verdict, "deny");
  assert.deepEqual(d.egress.reason, { kind: "not-judged" });
});

// ------------------------------------------------------------------ incremental state

Deno.test("changes apply incrementally: pod labels, namespace labels, policy edits and deletes", () => {
  const e = model();
  apply(
    e,
    cnp("by-label", {
      tier: "Admin",
      priority: 1,
      subject: {
        pods: {
          namespaceSelector: { matchLabels: { env: "prod" } },
          podSelector: { matchLabels: { pod: "a" } },
        },
      },
      egress: [{
        action: "Deny",
        to: [{ pods: { namespaceSelector: {}, podSelector: { matchLabels: { tier: "db" } } } }],
      }],
    }),
  );
  assert.equal(verdict(e, "x/a", "y/b"), "allow", "x is not prod yet");
  e.upsertNamespace({ metadata: { name: "x", labels: { ns: "x", env: "prod" } } });
  assert.equal(verdict(e, "x/a", "y/b"), "allow", "y/b is not a db yet");
  const yb = pod("y/b");
  yb.metadata.labels = { pod: "b", tier: "db" };
  e.upsertPod(yb);
  assert.equal(verdict(e, "x/a", "y/b"), "deny", "peer identity changed: no stale memo");
  assert.deepEqual(e.queuedIPs().egress, [IPS["x/a"]]);
  const xa = pod("x/a");
  xa.metadata.labels = { pod: "other" };
  e.upsertPod(xa);
  assert.equal(verdict(e, "x/a", "y/b"), "allow", "subject no longer selected");
  assert.deepEqual(e.queuedIPs().egress, []);
  e.upsertPod(pod("x/a"));
  assert.equal(verdict(e, "x/a", "y/b"), "deny");
  e.upsertNamespace({ metadata: { name: "x", labels: { ns: "x" } } });
  assert.equal(verdict(e, "x/a", "y/b"), "allow", "namespace relabelled");
  e.upsertNamespace({ metadata: { name: "x", labels: { ns: "x", env: "prod" } } });
  const before = e.generation;
  e.deleteClusterPolicy("ClusterNetworkPolicy", "by-label");
  assert.ok(e.generation > before);
  assert.equal(verdict(e, "x/a", "y/b"), "allow");
  assert.deepEqual(e.tierStats(), { clusterPolicies: 0, nodes: 2 });
  e.deletePod("x", "a");
  assert.equal(e.prepare() >= 0, true);
});

// ------------------------------------------------------------------ queue selection

Deno.test("queue selection: only subjects whose tiers can deny, per direction, plus NetworkPolicy-isolated pods", () => {
  const e = model();
  apply(
    e,
    cnp("deny-into-y", {
      tier: "Admin",
      priority: 1,
      subject: { namespaces: ns("y") },
      ingress: [{ action: "Deny", from: [{ namespaces: ns("z") }] }],
    }),
  );
  assert.deepEqual(e.queuedIPs(NODE), { ingress: [IPS["y/a"], IPS["y/b"]], egress: [] });
  // Accept-only and Pass-only policies never change the default outcome: nothing more queued.
  apply(
    e,
    cnp("accept-only", {
      tier: "Admin",
      priority: 2,
      subject: { namespaces: {} },
      egress: [{ action: "Accept", to: [{ namespaces: {} }] }],
      ingress: [{ action: "Pass", from: [{ namespaces: {} }] }],
    }),
  );
  assert.deepEqual(e.queuedIPs(NODE), { ingress: [IPS["y/a"], IPS["y/b"]], egress: [] });
  // A Baseline deny on egress of z queues z's egress only.
  apply(
    e,
    cnp("baseline-z", {
      tier: "Baseline",
      priority: 1,
      subject: { namespaces: ns("z") },
      egress: [{ action: "Deny", to: [{ networks: ["0.0.0.0/0"] }] }],
    }),
  );
  assert.deepEqual(e.queuedIPs(NODE), { ingress: [IPS["y/a"], IPS["y/b"]], egress: [IPS["z/a"]] });
  // NetworkPolicy isolation still queues as before.
  applyNP(e, "x", "deny-in", { podSelector: { matchLabels: { pod: "a" } } });
  assert.deepEqual(e.queuedIPs(NODE).ingress, [IPS["x/a"], IPS["y/a"], IPS["y/b"]]);
  // Other nodes' pods are not this node's business.
  assert.deepEqual(e.queuedIPs("node-2"), { ingress: [], egress: [] });
  e.deleteClusterPolicy("ClusterNetworkPolicy", "deny-into-y");
  assert.deepEqual(e.queuedIPs(NODE).ingress, [IPS["x/a"]]);
});

Deno.test("explanations: rule name or index, tier, and the passes that led there", () => {
  const reason = (r: DirectionReason) =>
    explainDecision({
      verdict: "deny",
      egress: { verdict: "deny", reason: r },
      ingress: { verdict: "allow", reason: { kind: "not-a-pod" } },
    });
  assert.equal(
    reason({
      kind: "tier-denied",
      pod: "x/a",
      by: { tier: "Baseline", policy: "BaselineAdminNetworkPolicy/default", rule: 3 },
      passed: [{ tier: "Admin", policy: "ClusterNetworkPolicy/p", rule: "delegate" }],
    }),
    "egress: passed by Admin ClusterNetworkPolicy/p rule 'delegate'; then x/a denied by Baseline BaselineAdminNetworkPolicy/default rule 3",
  );
});
