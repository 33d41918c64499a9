/**
 * The engine's semantics, one rule at a time, on a small version of the upstream e2e model:
 * namespaces x, y (labels ns=<name>), pods a, b (label pod=<name>) serving named ports.
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import type { Connection, NetworkPolicy, Pod } from "../src/policy/types.ts";

const NODE = "node-1";
const NODE_IP = "192.168.0.1";

const IPS: Record<string, string> = {
  "x/a": "10.0.1.1",
  "x/b": "10.0.1.2",
  "y/a": "10.0.2.1",
  "y/b": "10.0.2.2",
};

function pod(key: string, extra: Partial<Pod["spec"]> & { labels?: Record<string, string> } = {}) {
  const [namespace, name] = key.split("/") as [string, string];
  const { labels, ...spec } = extra;
  return {
    metadata: { namespace, name, labels: labels ?? { pod: name } },
    spec: {
      nodeName: NODE,
      containers: [{
        ports: [
          { name: "serve-80-tcp", containerPort: 80, protocol: "TCP" },
          { name: "serve-81-udp", containerPort: 81, protocol: "UDP" },
        ],
      }],
      ...spec,
    },
    status: { phase: "Running", podIP: IPS[key], hostIP: NODE_IP },
  } as Pod;
}

function model(): PolicyEngine {
  const e = new PolicyEngine();
  for (const ns of ["x", "y"]) e.upsertNamespace({ metadata: { name: ns, labels: { ns } } });
  for (const key of Object.keys(IPS)) assert.deepEqual(e.upsertPod(pod(key)), []);
  return e;
}

function np(namespace: string, name: string, spec: NetworkPolicy["spec"]): NetworkPolicy {
  return { metadata: { namespace, name }, spec };
}

function apply(e: PolicyEngine, policy: NetworkPolicy) {
  assert.deepEqual(e.upsertPolicy(policy), []);
}

function conn(from: string, to: string, port = 80, protocol: Connection["protocol"] = "TCP") {
  return { src: IPS[from] ?? from, dst: IPS[to] ?? to, protocol, port };
}

function verdict(
  e: PolicyEngine,
  from: string,
  to: string,
  port = 80,
  proto: Connection["protocol"] = "TCP",
) {
  return e.evaluate(conn(from, to, port, proto)).verdict;
}

Deno.test("no policy: everything is allowed and both sides say not-isolated", () => {
  const d = model().evaluate(conn("x/a", "y/b"));
  assert.equal(d.verdict, "allow");
  assert.deepEqual(d.egress.reason, { kind: "not-isolated", pod: "x/a" });
  assert.deepEqual(d.ingress.reason, { kind: "not-isolated", pod: "y/b" });
  assert.equal(d.srcPod, "x/a");
  assert.equal(d.dstPod, "y/b");
});

Deno.test("default deny ingress isolates only the selected namespace and names the policy", () => {
  const e = model();
  apply(e, np("x", "deny-all", { podSelector: {} }));
  const d = e.evaluate(conn("y/a", "x/a"));
  assert.equal(d.verdict, "deny");
  assert.deepEqual(d.ingress.reason, { kind: "denied", pod: "x/a", isolatedBy: ["x/deny-all"] });
  assert.equal(verdict(e, "x/a", "y/a"), "allow", "egress from x is not isolated");
  assert.equal(verdict(e, "x/a", "x/b"), "deny");
});

Deno.test("policyTypes default: Ingress always, Egress only when egress rules exist", () => {
  const e = model();
  // egress list non-empty, no policyTypes -> isolates both directions
  apply(
    e,
    np("x", "p", {
      podSelector: { matchLabels: { pod: "a" } },
      egress: [{ to: [{ podSelector: {} }] }],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/a"), "deny", "ingress isolated by default");
  assert.equal(verdict(e, "x/a", "x/b"), "allow", "egress to pods in x allowed");
  assert.equal(verdict(e, "x/a", "y/a"), "deny", "egress to y not in rule");
});

Deno.test("policyTypes given: rules of an unlisted direction are ignored", () => {
  const e = model();
  apply(
    e,
    np("x", "p", {
      podSelector: {},
      policyTypes: ["Egress"],
      ingress: [{}],
      egress: [],
    }),
  );
  assert.equal(verdict(e, "x/a", "y/a"), "deny", "egress isolated, no rules");
  assert.equal(verdict(e, "y/a", "x/a"), "allow", "ingress not isolated despite ingress rules");
  const d = e.evaluate(conn("x/a", "y/a"));
  assert.deepEqual(d.egress.reason, { kind: "denied", pod: "x/a", isolatedBy: ["x/p"] });
});

Deno.test("empty rule list allows nothing; [{}] allows everything, pod or not", () => {
  const e = model();
  apply(e, np("x", "none", { podSelector: {}, ingress: [] }));
  assert.equal(verdict(e, "x/b", "x/a"), "deny");
  apply(e, np("x", "all", { podSelector: {}, ingress: [{}] }));
  assert.equal(verdict(e, "x/b", "x/a"), "allow");
  assert.equal(verdict(e, "203.0.113.9", "x/a"), "allow", "non-pod source matched by empty peers");
  assert.deepEqual(e.evaluate(conn("y/a", "x/a")).ingress.reason, {
    kind: "allowed",
    pod: "x/a",
    policy: "x/all",
    rule: 0,
  });
});

Deno.test("peers: podSelector alone stays in the policy namespace; namespaceSelector alone spans", () => {
  const e = model();
  apply(
    e,
    np("x", "pods", {
      podSelector: {},
      ingress: [{ from: [{ podSelector: { matchLabels: { pod: "b" } } }] }],
    }),
  );
  assert.equal(verdict(e, "x/b", "x/a"), "allow");
  assert.equal(verdict(e, "y/b", "x/a"), "deny", "pod=b in y is not in the policy's namespace");
  apply(
    e,
    np("x", "ns", {
      podSelector: {},
      ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: "y" } } }] }],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/a"), "allow");
  assert.equal(verdict(e, "x/a", "x/b"), "deny", "x/a is neither pod=b nor in y");
});

Deno.test("peers: both selectors in one peer AND; separate peers OR", () => {
  const e = model();
  apply(
    e,
    np("x", "and", {
      podSelector: { matchLabels: { pod: "a" } },
      ingress: [{
        from: [{
          namespaceSelector: { matchLabels: { ns: "y" } },
          podSelector: { matchLabels: { pod: "b" } },
        }],
      }],
    }),
  );
  assert.equal(verdict(e, "y/b", "x/a"), "allow");
  assert.equal(verdict(e, "y/a", "x/a"), "deny");
  assert.equal(verdict(e, "x/b", "x/a"), "deny");
  apply(
    e,
    np("x", "or", {
      podSelector: { matchLabels: { pod: "b" } },
      ingress: [{
        from: [{ namespaceSelector: { matchLabels: { ns: "y" } } }, {
          podSelector: { matchLabels: { pod: "a" } },
        }],
      }],
    }),
  );
  assert.equal(verdict(e, "y/b", "x/b"), "allow");
  assert.equal(verdict(e, "x/a", "x/b"), "allow");
});

Deno.test("matchExpressions: In, NotIn (missing key matches), Exists, DoesNotExist", () => {
  const e = model();
  e.upsertPod(pod("y/b", { labels: {} })); // y/b has no `pod` label
  const only = (expr: object) =>
    np(
      "x",
      "expr",
      {
        podSelector: {},
        ingress: [{ from: [{ namespaceSelector: {}, podSelector: { matchExpressions: [expr] } }] }],
      } as NetworkPolicy["spec"],
    );
  apply(e, only({ key: "pod", operator: "In", values: ["a"] }));
  assert.deepEqual(["y/a", "y/b"].map((p) => verdict(e, p, "x/a")), ["allow", "deny"]);
  apply(e, only({ key: "pod", operator: "NotIn", values: ["a"] }));
  assert.deepEqual(["y/a", "y/b"].map((p) => verdict(e, p, "x/a")), ["deny", "allow"]);
  apply(e, only({ key: "pod", operator: "Exists" }));
  assert.deepEqual(["y/a", "y/b"].map((p) => verdict(e, p, "x/a")), ["allow", "deny"]);
  apply(e, only({ key: "pod", operator: "DoesNotExist" }));
  assert.deepEqual(["y/a", "y/b"].map((p) => verdict(e, p, "x/a")), ["deny", "allow"]);
});

Deno.test("namespaceSelector sees kubernetes.io/metadata.name even when the manifest omits it", () => {
  const e = model();
  apply(
    e,
    np("x", "by-name", {
      podSelector: {},
      ingress: [{
        from: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "y" } } }],
      }],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/a"), "allow");
  // and a namespace label change takes effect without touching the policy
  e.upsertNamespace({ metadata: { name: "y", labels: { ns: "y" } } });
  apply(
    e,
    np("x", "by-name", {
      podSelector: {},
      ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: "t" } } }] }],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/a"), "deny");
  e.upsertNamespace({ metadata: { name: "y", labels: { team: "t" } } });
  assert.equal(verdict(e, "y/a", "x/a"), "allow");
});

Deno.test("ipBlock: CIDR minus except, matched against pod and non-pod IPs, v4 and v6", () => {
  const e = model();
  apply(
    e,
    np("x", "cidr", {
      podSelector: {},
      ingress: [{
        from: [{ ipBlock: { cidr: "10.0.0.0/16", except: ["10.0.2.0/24"] } }, {
          ipBlock: { cidr: "2001:db8::/32" },
        }],
      }],
    }),
  );
  assert.equal(verdict(e, "x/b", "x/a"), "allow", "pod IP inside the block");
  assert.equal(verdict(e, "y/a", "x/a"), "deny", "pod IP in except");
  assert.equal(verdict(e, "10.0.9.9", "x/a"), "allow", "non-pod IP inside the block");
  assert.equal(verdict(e, "2001:db8::5", "x/a"), "allow");
  assert.equal(verdict(e, "2001:db9::5", "x/a"), "deny");
  assert.equal(
    verdict(e, "::ffff:10.0.9.9", "x/a"),
    "allow",
    "an IPv4-mapped IPv6 address is its IPv4 address, as for Go's net package",
  );
});

Deno.test("except narrows only its own block", () => {
  const e = model();
  apply(
    e,
    np("x", "two", {
      podSelector: {},
      ingress: [{
        from: [{ ipBlock: { cidr: "10.0.0.0/16", except: ["10.0.2.0/24"] } }, {
          ipBlock: { cidr: "10.0.2.0/24" },
        }],
      }],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/a"), "allow");
});

Deno.test("ports: TCP default, protocols distinct, endPort inclusive, empty ports = all", () => {
  const e = model();
  apply(
    e,
    np("x", "ports", {
      podSelector: {},
      ingress: [{ ports: [{ port: 80 }, { protocol: "UDP", port: 1000, endPort: 1002 }] }],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/a", 80, "TCP"), "allow");
  assert.equal(verdict(e, "y/a", "x/a", 80, "UDP"), "deny");
  assert.equal(verdict(e, "y/a", "x/a", 80, "SCTP"), "deny");
  assert.deepEqual([999, 1000, 1002, 1003].map((p) => verdict(e, "y/a", "x/a", p, "UDP")), [
    "deny",
    "allow",
    "allow",
    "deny",
  ]);
  assert.equal(verdict(e, "y/a", "x/a", 0, "ICMP"), "deny", "ICMP never matches a port rule");
  apply(
    e,
    np("x", "icmp", {
      podSelector: {},
      ingress: [{ from: [{ podSelector: {}, namespaceSelector: {} }] }],
    }),
  );
  assert.equal(
    verdict(e, "y/a", "x/a", 0, "ICMP"),
    "allow",
    "a rule without ports allows any protocol",
  );
});

Deno.test("named ports resolve on the destination pod, per pod, and never on non-pods", () => {
  const e = model();
  // x/b serves serve-80-tcp on 8080 instead of 80
  e.upsertPod(
    pod("x/b", { containers: [{ ports: [{ name: "serve-80-tcp", containerPort: 8080 }] }] }),
  );
  apply(
    e,
    np("x", "named-in", { podSelector: {}, ingress: [{ ports: [{ port: "serve-80-tcp" }] }] }),
  );
  assert.equal(verdict(e, "y/a", "x/a", 80), "allow");
  assert.equal(verdict(e, "y/a", "x/b", 80), "deny");
  assert.equal(verdict(e, "y/a", "x/b", 8080), "allow");
  assert.equal(verdict(e, "y/a", "x/a", 81, "UDP"), "deny", "name and protocol must both match");
  apply(
    e,
    np("y", "named-out", {
      podSelector: {},
      policyTypes: ["Egress"],
      egress: [{ ports: [{ port: "serve-80-tcp" }] }],
    }),
  );
  assert.equal(verdict(e, "y/a", "x/b", 8080), "allow", "egress resolves on the destination pod");
  assert.equal(verdict(e, "y/a", "x/b", 80), "deny");
  assert.equal(
    verdict(e, "y/a", "198.51.100.1", 80),
    "deny",
    "non-pod destination has no named ports",
  );
});

Deno.test("a connection needs both egress of the source and ingress of the destination", () => {
  const e = model();
  apply(e, np("x", "allow-in", { podSelector: {}, ingress: [{}] }));
  apply(e, np("y", "deny-out", { podSelector: {}, policyTypes: ["Egress"] }));
  const d = e.evaluate(conn("y/a", "x/a"));
  assert.equal(d.verdict, "deny");
  assert.equal(d.egress.verdict, "deny");
  assert.equal(d.ingress.verdict, "allow");
});

Deno.test("policies add up: any rule of any selecting policy allows", () => {
  const e = model();
  apply(
    e,
    np("x", "p1", {
      podSelector: {},
      ingress: [{ from: [{ podSelector: { matchLabels: { pod: "a" } } }] }],
    }),
  );
  apply(
    e,
    np("x", "p2", {
      podSelector: {},
      ingress: [{ from: [{ podSelector: { matchLabels: { pod: "b" } } }] }],
    }),
  );
  assert.equal(verdict(e, "x/a", "x/b"), "allow");
  assert.deepEqual(e.evaluate(conn("x/b", "x/a")).ingress.reason, {
    kind: "allowed",
    pod: "x/a",
    policy: "x/p2",
    rule: 0,
  });
  assert.deepEqual(e.evaluate(conn("y/a", "x/a")).ingress.reason, {
    kind: "denied",
    pod: "x/a",
    isolatedBy: ["x/p1", "x/p2"],
  });
});

Deno.test("non-pod endpoints: only ipBlock or empty peers match them; hostNetwork pods are node IPs", () => {
  const e = model();
  e.upsertPod({
    metadata: { namespace: "y", name: "hostnet", labels: { pod: "a" } },
    spec: { nodeName: NODE, hostNetwork: true },
    status: { phase: "Running", podIP: "192.168.0.7", hostIP: "192.168.0.7" },
  });
  apply(
    e,
    np("x", "from-any-pod", { podSelector: {}, ingress: [{ from: [{ namespaceSelector: {} }] }] }),
  );
  assert.equal(verdict(e, "192.168.0.7", "x/a"), "deny", "hostNetwork pod is not a pod peer");
  assert.deepEqual(e.evaluate(conn("192.168.0.7", "x/a")).egress.reason, { kind: "not-a-pod" });
  assert.equal(verdict(e, "y/a", "x/a"), "allow");
  assert.deepEqual(e.queuedIPs(NODE).ingress, ["10.0.1.1", "10.0.1.2"]);
});

Deno.test("ingress from the pod's own node is always allowed (kubelet probes)", () => {
  const e = model();
  apply(e, np("x", "deny-all", { podSelector: {} }));
  const d = e.evaluate(conn(NODE_IP, "x/a"));
  assert.equal(d.verdict, "allow");
  assert.deepEqual(d.ingress.reason, { kind: "from-own-node", pod: "x/a" });
  assert.equal(verdict(e, "192.168.0.2", "x/a"), "deny", "another node is not exempt");
});

Deno.test("pod IP ownership: no IP, Succeeded/Failed own nothing; Running wins a shared IP", () => {
  const e = model();
  apply(e, np("x", "deny-all", { podSelector: {} }));
  e.upsertPod({ ...pod("x/b"), status: { phase: "Succeeded", podIP: IPS["y/a"] } });
  assert.equal(e.podAt(IPS["y/a"]!), "y/a", "finished pod does not take the IP");
  e.upsertPod({ ...pod("x/b"), status: { phase: "Pending", podIP: IPS["y/a"] } });
  assert.equal(e.podAt(IPS["y/a"]!), "y/a", "Running y/a keeps it against a Pending claimant");
  e.deletePod("y", "a");
  assert.equal(e.podAt(IPS["y/a"]!), "x/b", "the remaining claimant owns it");
  e.upsertPod({ ...pod("x/b"), status: { phase: "Pending" } });
  assert.equal(e.podAt(IPS["y/a"]!), undefined);
});

Deno.test("dual-stack: every IP in status.podIPs belongs to the pod", () => {
  const e = model();
  e.upsertPod({
    ...pod("x/a"),
    status: { phase: "Running", podIPs: [{ ip: "10.0.1.1" }, { ip: "FD00::0:1" }] },
  });
  assert.equal(e.podAt("fd00::1"), "x/a");
  apply(e, np("x", "deny-all", { podSelector: {} }));
  assert.equal(verdict(e, "y/a", "fd00::1"), "deny");
  assert.deepEqual(e.queuedIPs().ingress, ["10.0.1.1", "10.0.1.2", "fd00::1"]);
});

Deno.test("node scoping: each node judges only its own side", () => {
  const e = model();
  e.upsertPod(pod("y/a", { nodeName: "node-2" }));
  apply(e, np("x", "deny-all", { podSelector: {} }));
  apply(e, np("y", "deny-out", { podSelector: {}, policyTypes: ["Egress"] }));
  const onNode2 = e.evaluate(conn("y/a", "x/a"), "node-2");
  assert.equal(onNode2.egress.verdict, "deny");
  assert.deepEqual(onNode2.ingress.reason, { kind: "not-judged" });
  const onNode1 = e.evaluate(conn("y/a", "x/a"), NODE);
  assert.deepEqual(onNode1.egress.reason, { kind: "not-judged" });
  assert.equal(onNode1.ingress.verdict, "deny");
  assert.deepEqual(e.queuedIPs("node-2"), { ingress: [], egress: ["10.0.2.1"] });
});

Deno.test("pod label changes re-select policies incrementally", () => {
  const e = model();
  apply(e, np("x", "a-only", { podSelector: { matchLabels: { pod: "a" } } }));
  assert.equal(verdict(e, "y/a", "x/b"), "allow");
  e.upsertPod(pod("x/b", { labels: { pod: "a" } }));
  assert.equal(verdict(e, "y/a", "x/b"), "deny");
  e.deletePolicy("x", "a-only");
  assert.equal(verdict(e, "y/a", "x/b"), "allow");
  assert.deepEqual(e.queuedIPs(), { ingress: [], egress: [] });
});

Deno.test("invalid policies: every problem reported with its field; last good version stays", () => {
  const e = model();
  apply(e, np("x", "p", { podSelector: {} }));
  const errors = e.upsertPolicy(
    np("x", "p", {
      podSelector: { matchExpressions: [{ key: "k", operator: "Maybe" }] },
      ingress: [{
        from: [
          { ipBlock: { cidr: "10.0.0.0/33" } },
          { ipBlock: { cidr: "10.0.0.0/16", except: ["10.1.0.0/24"] } },
          {},
        ],
        ports: [{ port: 70000 }, { port: 80, endPort: 79 }, { endPort: 90 }, {
          protocol: "ICMP" as "TCP",
        }],
      }],
    }),
    "x.yaml",
  );
  assert.deepEqual(errors.map((x) => x.field), [
    "spec.podSelector.matchExpressions[0].operator",
    "spec.ingress[0].from[0].ipBlock.cidr",
    "spec.ingress[0].from[1].ipBlock.except[0]",
    "spec.ingress[0].from[2]",
    "spec.ingress[0].ports[0].port",
    "spec.ingress[0].ports[1].endPort",
    "spec.ingress[0].ports[2].endPort",
    "spec.ingress[0].ports[3].protocol",
  ]);
  assert.ok(errors.every((x) => x.object === "NetworkPolicy x/p" && x.source === "x.yaml"));
  assert.equal(verdict(e, "y/a", "x/a"), "deny", "previous version still enforced");
  assert.deepEqual(
    e.upsertPolicy({ metadata: { namespace: "x" }, spec: { podSelector: {} } } as NetworkPolicy)
      .map((x) => x.field),
    ["metadata.name"],
  );
  assert.equal(e.stats().policies, 1);
});

Deno.test("label values that are not strings are reported, and the rest of the pod is kept", () => {
  const e = model();
  const p = pod("x/a", { labels: { pod: "a", version: 1.0 as unknown as string } });
  assert.deepEqual(e.upsertPod(p).map((x) => [x.object, x.field]), [[
    "Pod x/a",
    "metadata.labels.version",
  ]]);
  assert.equal(e.podAt(IPS["x/a"]!), "x/a");
  assert.deepEqual(
    e.upsertNamespace({ metadata: { name: "x", labels: { ns: "x", n: 3 as unknown as string } } })
      .map((x) => x.field),
    ["metadata.labels.n"],
  );
});
