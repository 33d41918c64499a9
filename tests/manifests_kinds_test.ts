/** How a document's kind and apiVersion are recognised (src/manifests/kinds.ts). */
import assert from "node:assert/strict";
import { READ_KIND_NAMES, READ_KINDS, recognise } from "../src/manifests/kinds.ts";

function outcome(kind: string, apiVersion?: string): string {
  const r = recognise(kind, apiVersion);
  if ("read" in r) return `read ${r.read.kind}`;
  if ("skip" in r) return `skip: ${r.skip}`;
  return `error ${r.error.field}: ${r.error.message}`;
}

Deno.test("kinds: every row of the table is read with each of its apiVersions, or none", () => {
  for (const spec of READ_KINDS) {
    for (const v of spec.apiVersions) assert.equal(outcome(spec.kind, v), `read ${spec.kind}`);
    assert.equal(outcome(spec.kind), `read ${spec.kind}`);
  }
  assert.equal(
    READ_KIND_NAMES,
    "Namespace, Node, Pod, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy and " +
      "BaselineAdminNetworkPolicy",
  );
});

Deno.test("kinds: a wrong or misspelt apiVersion of a kind we read is an error with a hint", () => {
  const cases: [string, string, string][] = [
    [
      "NetworkPolicy",
      "networking.k8s.oi/v1",
      "error apiVersion: networking.k8s.oi/v1 is not an apiVersion of NetworkPolicy; did you mean networking.k8s.io/v1?",
    ],
    [
      "NetworkPolicy",
      "networking.k8s.io/v1beta1",
      "error apiVersion: networking.k8s.io/v1beta1 is not supported, use networking.k8s.io/v1",
    ],
    [
      "NetworkPolicy",
      "v1",
      "error apiVersion: v1 is not an apiVersion of NetworkPolicy, use networking.k8s.io/v1",
    ],
    [
      "Pod",
      "networking.k8s.io/v1",
      "error apiVersion: networking.k8s.io/v1 is not an apiVersion of Pod, use v1",
    ],
    ["Namespace", "v2", "error apiVersion: v2 is not supported, use v1"],
    // Another API's kind of the same name is not ours: skipped, not an error.
    ["NetworkPolicy", "crd.projectcalico.org/v1", "skip: not the Kubernetes NetworkPolicy"],
  ];
  for (const [kind, apiVersion, want] of cases) assert.equal(outcome(kind, apiVersion), want);
});

Deno.test("kinds: a near-miss kind says what it meant; an unknown kind in our groups is an error", () => {
  const cases: [string, string | undefined, string][] = [
    [
      "NetworkPolicies",
      "networking.k8s.io/v1",
      "error kind: NetworkPolicies is not a kind kube-netpol reads; did you mean NetworkPolicy?",
    ],
    [
      "networkpolicy",
      "networking.k8s.io/v1",
      "error kind: networkpolicy is not a kind kube-netpol reads; did you mean NetworkPolicy?",
    ],
    [
      "NetworkPolicy2",
      undefined,
      "error kind: NetworkPolicy2 is not a kind kube-netpol reads; did you mean NetworkPolicy?",
    ],
    ["Pods", "v1", "error kind: Pods is not a kind kube-netpol reads; did you mean Pod?"],
    [
      "Namspace",
      "v1",
      "error kind: Namspace is not a kind kube-netpol reads; did you mean Namespace?",
    ],
    // A misspelt group of ours is still ours to judge.
    [
      "NetworkPolicies",
      "networking.k8s.oi/v1",
      "error kind: NetworkPolicies is not a kind kube-netpol reads; did you mean NetworkPolicy?",
    ],
    [
      "Netpol",
      "networking.k8s.io/v1",
      "error kind: Netpol is not a kind kube-netpol reads (Namespace, Node, Pod, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy are read)",
    ],
    [
      "Widget",
      undefined,
      "error kind: Widget is not a kind kube-netpol reads (Namespace, Node, Pod, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy are read)",
    ],
    // Short names are not "near" each other by two letters.
    [
      "Job",
      "v1",
      "error kind: Job is not a kind kube-netpol reads (Namespace, Node, Pod, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy are read)",
    ],
  ];
  for (const [kind, apiVersion, want] of cases) assert.equal(outcome(kind, apiVersion), want);
});

Deno.test("kinds: standard kinds we do not read and other APIs' kinds are skipped", () => {
  const skip =
    "skip: only Namespace, Node, Pod, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy are read";
  assert.equal(outcome("Service", "v1"), skip);
  assert.equal(outcome("ConfigMap"), skip);
  assert.equal(outcome("Ingress", "networking.k8s.io/v1"), skip);
  assert.equal(outcome("Deployment", "apps/v1"), skip);
  assert.equal(outcome("GlobalNetworkPolicy", "crd.projectcalico.org/v1"), skip);
  assert.equal(outcome("Pods", "apps/v1"), skip); // not our group: not ours to judge
});
