/**
 * What the informers watch: one row per kind, with its API path. Kept apart from source.ts (which
 * loads client-node) so `run` can read the defaults without loading it.
 *
 * Optional kinds are those a cluster may not serve: the network-policy-api CRDs (installed by the
 * cluster's administrator, or not at all), and Node, which an older ClusterRole may not grant. A
 * NetworkPolicy user must not notice their absence (see source.ts, "Optional kinds").
 */
import type { StateObjectKind } from "../policy/types.ts";

export interface ApiKind {
  kind: StateObjectKind;
  /** The cluster-wide list/watch path. */
  path: string;
  /** The resource's plural: metric label, log name, what RBAC grants. */
  label: string;
  /** A cluster may not serve it: 404 means "none exist", not an outage. */
  optional: boolean;
}

/** The policy API group of the cluster-scoped tiers (kubernetes-sigs/network-policy-api). */
export const POLICY_GROUP = "policy.networking.k8s.io";

/** Namespaces first so pods and policies mostly land in a namespace the engine already knows. */
export const API_KINDS: readonly ApiKind[] = [
  { kind: "Namespace", path: "/api/v1/namespaces", label: "namespaces", optional: false },
  { kind: "Node", path: "/api/v1/nodes", label: "nodes", optional: true },
  { kind: "Pod", path: "/api/v1/pods", label: "pods", optional: false },
  {
    kind: "NetworkPolicy",
    path: "/apis/networking.k8s.io/v1/networkpolicies",
    label: "networkpolicies",
    optional: false,
  },
  {
    kind: "ClusterNetworkPolicy",
    path: `/apis/${POLICY_GROUP}/v1alpha2/clusternetworkpolicies`,
    label: "clusternetworkpolicies",
    optional: true,
  },
  {
    kind: "AdminNetworkPolicy",
    path: `/apis/${POLICY_GROUP}/v1alpha1/adminnetworkpolicies`,
    label: "adminnetworkpolicies",
    optional: true,
  },
  {
    kind: "BaselineAdminNetworkPolicy",
    path: `/apis/${POLICY_GROUP}/v1alpha1/baselineadminnetworkpolicies`,
    label: "baselineadminnetworkpolicies",
    optional: true,
  },
];

/**
 * How often a kind the API server does not serve (404: its CRD is not installed) is looked for
 * again (`--crd-recheck-interval`). Installing a CRD is rare and deliberate; half a minute until
 * its policies are enforced is the price of needing no permission on CustomResourceDefinitions.
 */
export const DEFAULT_ABSENT_RECHECK_MS = 30_000;
