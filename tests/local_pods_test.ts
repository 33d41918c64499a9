/**
 * The pod-start race, pure side: this node's pod CIDRs from its Node object (or `--pod-cidr`),
 * which addresses in them the agent knows (local pods isolated or not, the node's own addresses),
 * and so which address is a pod it has not seen yet.
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import { LocalPodAddresses, parsePodCIDRs } from "../src/policy/local_pods.ts";
import type { Node, Pod } from "../src/policy/types.ts";

const NODE = "node-1";

function node(name: string, spec: Node["spec"], ip = "10.244.0.1"): Node {
  return {
    metadata: { name },
    spec,
    status: { addresses: [{ type: "InternalIP", address: ip }] },
  };
}

function pod(name: string, ip: string, nodeName = NODE, phase = "Running"): Pod {
  return {
    metadata: { namespace: "x", name },
    spec: { nodeName },
    status: { phase, podIP: ip, podIPs: [{ ip }] },
  };
}

Deno.test("Node pod CIDRs: podCIDRs, else podCIDR; canonical; bad entries reported and skipped", () => {
  const e = new PolicyEngine();
  assert.deepEqual(
    e.upsertNode(
      node(NODE, { podCIDR: "10.1.0.0/24", podCIDRs: ["10.244.0.0/24", "FD00:10::/64"] }),
    ),
    [],
  );
  assert.deepEqual(e.nodePodCIDRs(NODE), ["10.244.0.0/24", "fd00:10::/64"], "podCIDRs wins");
  e.upsertNode(node("node-2", { podCIDR: "10.245.0.7/24" }));
  assert.deepEqual(
    e.nodePodCIDRs("node-2"),
    ["10.245.0.0/24"],
    "older single podCIDR, host bits off",
  );
  const errors = e.upsertNode(
    node("node-3", { podCIDRs: ["10.246.0.0/24", "nonsense", 7 as never] }),
  );
  assert.deepEqual(errors.map((x) => `${x.object} ${x.field}`), [
    "Node node-3 spec.podCIDRs[1]",
    "Node node-3 spec.podCIDRs[2]",
  ]);
  assert.deepEqual(e.nodePodCIDRs("node-3"), ["10.246.0.0/24"], "the good ones still count");
  assert.equal(e.nodePodCIDRs("nobody"), undefined);
  e.deleteNode(NODE);
  assert.equal(e.nodePodCIDRs(NODE), undefined);
});

Deno.test("local addresses: pods on this node (isolated or not) and the Node's addresses", () => {
  const e = new PolicyEngine();
  e.upsertNode(node(NODE, { podCIDRs: ["10.244.0.0/16"] }));
  e.upsertPod(pod("a", "10.244.1.1"));
  e.upsertPod(pod("elsewhere", "10.245.1.1", "node-2"));
  e.upsertPod(pod("done", "10.244.1.2", NODE, "Succeeded"));
  assert.deepEqual(e.localAddresses(NODE), ["10.244.0.1", "10.244.1.1"]);
  assert.equal(e.isLocalAddress("10.244.1.1", NODE), true);
  assert.equal(e.isLocalAddress("10.244.0.1", NODE), true, "the node itself");
  assert.equal(e.isLocalAddress("10.245.1.1", NODE), false, "a pod of another node");
  assert.equal(e.isLocalAddress("10.244.1.2", NODE), false, "a finished pod owns no IP");
  assert.equal(e.isLocalAddress("10.245.1.1", "node-2"), true);
});

Deno.test("unknown local pod: in this node's pod CIDR, owned by no local pod, not the node", () => {
  const e = new PolicyEngine();
  const local = new LocalPodAddresses(e, NODE);
  assert.equal(local.isUnknown("10.244.7.7"), false, "no pod CIDRs known: nothing is held");
  assert.deepEqual(local.members(), { podCIDRs: [], known: [] });

  e.upsertNode(node(NODE, { podCIDRs: ["10.244.0.0/16", "fd00:10:244::/64"] }));
  assert.equal(local.isUnknown("10.244.7.7"), true, "a pod that started before we saw it");
  assert.equal(local.isUnknown("fd00:10:244::7"), true);
  assert.equal(local.isUnknown("10.244.0.1"), false, "the node's own address (Node object)");
  assert.equal(local.isUnknown("10.245.7.7"), false, "outside our pod CIDRs");
  assert.equal(local.isUnknown("8.8.8.8"), false);

  e.upsertPod(pod("late", "10.244.7.7"));
  assert.equal(local.isUnknown("10.244.7.7"), false, "known as soon as the Pod arrives");
  e.deletePod("x", "late");
  assert.equal(local.isUnknown("10.244.7.7"), true, "and unknown again when it is gone");

  // The bridge address of a flannel-like CNI: in the pod CIDR, on no Node object.
  assert.equal(local.isUnknown("10.244.0.254"), true);
  assert.equal(local.setInterfaceAddresses(["10.244.0.254", "127.0.0.1", "fe80::1%eth0"]), true);
  assert.equal(local.isUnknown("10.244.0.254"), false, "an interface address of this node");
  assert.equal(local.setInterfaceAddresses(["127.0.0.1", "10.244.0.254"]), false, "unchanged");

  e.upsertPod(pod("a", "10.244.1.1"));
  assert.deepEqual(local.members(), {
    podCIDRs: ["10.244.0.0/16", "fd00:10:244::/64"],
    known: ["10.244.0.1", "10.244.0.254", "10.244.1.1", "127.0.0.1"],
  });
});

Deno.test("--pod-cidr overrides the Node object; nested and repeated blocks collapse", () => {
  const e = new PolicyEngine();
  e.upsertNode(node(NODE, { podCIDRs: ["10.244.0.0/16"] }));
  const cidrs = parsePodCIDRs(["10.250.1.0/24", "10.250.0.0/16", "10.250.0.0/16", " fd00::/8 "]);
  assert.deepEqual(cidrs, ["10.250.1.0/24", "10.250.0.0/16", "10.250.0.0/16", "fd00::/8"]);
  const local = new LocalPodAddresses(e, NODE, cidrs as string[]);
  assert.deepEqual(local.podCIDRs(), ["10.250.0.0/16", "fd00::/8"]);
  assert.equal(local.isUnknown("10.250.1.9"), true);
  assert.equal(local.isUnknown("10.244.1.9"), false, "the Node's CIDR is not used");
  assert.match(String(parsePodCIDRs(["10.0.0.0/33"])), /prefix length 33 exceeds 32/);
  assert.match(String(parsePodCIDRs(["10.0.0.0"])), /missing "\/prefix"/);
});
