/**
 * The Kubernetes object shapes the engine reads (a subset of core/v1 and networking.k8s.io/v1),
 * and the verdict types it answers with. Everything here is plain data: sources (manifest files,
 * informers) hand these objects over as parsed JSON, and the engine never mutates them.
 */

import type { ConnectionProtocol, Protocol } from "../net/protocol.ts";

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  labels?: Record<string, string>;
  resourceVersion?: string;
  uid?: string;
}

export interface LabelSelectorRequirement {
  key: string;
  operator: string; // In | NotIn | Exists | DoesNotExist (validated when compiled)
  values?: string[];
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

export interface ContainerPort {
  name?: string;
  containerPort: number;
  protocol?: Protocol;
}

export interface Pod {
  apiVersion?: string;
  kind?: "Pod";
  metadata: ObjectMeta;
  spec?: {
    nodeName?: string;
    hostNetwork?: boolean;
    containers?: { name?: string; ports?: ContainerPort[] }[];
    initContainers?: { name?: string; ports?: ContainerPort[]; restartPolicy?: string }[];
  };
  status?: {
    phase?: string; // Pending | Running | Succeeded | Failed | Unknown
    podIP?: string;
    podIPs?: { ip: string }[];
    hostIP?: string;
    hostIPs?: { ip: string }[];
  };
}

export interface Namespace {
  apiVersion?: string;
  kind?: "Namespace";
  metadata: ObjectMeta;
}

export interface IPBlock {
  cidr: string;
  except?: string[];
}

export interface NetworkPolicyPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: IPBlock;
}

export interface NetworkPolicyPort {
  protocol?: Protocol;
  port?: number | string;
  endPort?: number;
}

export interface NetworkPolicyIngressRule {
  from?: NetworkPolicyPeer[];
  ports?: NetworkPolicyPort[];
}

export interface NetworkPolicyEgressRule {
  to?: NetworkPolicyPeer[];
  ports?: NetworkPolicyPort[];
}

export interface NetworkPolicy {
  apiVersion?: string;
  kind?: "NetworkPolicy";
  metadata: ObjectMeta;
  spec: {
    podSelector: LabelSelector;
    policyTypes?: ("Ingress" | "Egress")[];
    ingress?: NetworkPolicyIngressRule[];
    egress?: NetworkPolicyEgressRule[];
  };
}

/** The object kinds of the NetworkPolicy tier (namespaces, pods and namespaced policies). */
export type ObjectKind = "Pod" | "Namespace" | "NetworkPolicy";

// ------------------------------------------------------------------ cluster-scoped tiers
// policy.networking.k8s.io: ClusterNetworkPolicy (v1alpha2), AdminNetworkPolicy and
// BaselineAdminNetworkPolicy (v1alpha1), and core/v1 Node for `nodes` egress peers. As above,
// these are the shapes as parsed from JSON; compile (cluster_compile.ts) validates every field.

/** Cluster-scoped kinds the engine consumes (besides ObjectKind). */
export type ClusterObjectKind =
  | "Node"
  | "ClusterNetworkPolicy"
  | "AdminNetworkPolicy"
  | "BaselineAdminNetworkPolicy";

/** Every kind a StateEvent can carry. */
export type StateObjectKind = ObjectKind | ClusterObjectKind;

/** The three cluster-scoped policy kinds. */
export type ClusterPolicyKind = Exclude<ClusterObjectKind, "Node">;

export interface NodeAddress {
  type?: string; // InternalIP | ExternalIP | Hostname | ...
  address?: string;
}

export interface Node {
  apiVersion?: string;
  kind?: "Node";
  metadata: ObjectMeta;
  /** The node's pod CIDRs (`podCIDRs`, one per family; `podCIDR` is its first, older field). */
  spec?: { podCIDR?: string; podCIDRs?: string[] };
  status?: { addresses?: NodeAddress[] };
}

/** `pods` subject or peer: namespaceSelector AND podSelector (each `{}` or absent: all). */
export interface NamespacedPod {
  namespaceSelector?: LabelSelector;
  podSelector?: LabelSelector;
}

/** Exactly one field is set (the API enforces it). */
export interface ClusterPolicySubject {
  namespaces?: LabelSelector;
  pods?: NamespacedPod;
}

export interface ClusterIngressPeer {
  namespaces?: LabelSelector;
  pods?: NamespacedPod;
}

export interface ClusterEgressPeer extends ClusterIngressPeer {
  nodes?: LabelSelector;
  networks?: string[];
  domainNames?: string[];
}

/** v1alpha2 destinationPort: a number or an inclusive range (start < end). */
export interface ClusterPortSpec {
  number?: number;
  range?: { start: number; end: number };
}

/** v1alpha2 protocols entry: exactly one field. */
export interface ClusterNetworkPolicyProtocol {
  tcp?: { destinationPort?: ClusterPortSpec };
  udp?: { destinationPort?: ClusterPortSpec };
  sctp?: { destinationPort?: ClusterPortSpec };
  destinationNamedPort?: string;
}

export interface ClusterNetworkPolicyIngressRule {
  name?: string;
  action: string; // Accept | Deny | Pass
  from: ClusterIngressPeer[];
  protocols?: ClusterNetworkPolicyProtocol[];
}

export interface ClusterNetworkPolicyEgressRule {
  name?: string;
  action: string;
  to: ClusterEgressPeer[];
  protocols?: ClusterNetworkPolicyProtocol[];
}

export interface ClusterNetworkPolicy {
  apiVersion?: string;
  kind?: "ClusterNetworkPolicy";
  metadata: ObjectMeta;
  spec: {
    tier: string; // Admin | Baseline
    priority: number; // 0..1000
    subject: ClusterPolicySubject;
    ingress?: ClusterNetworkPolicyIngressRule[];
    egress?: ClusterNetworkPolicyEgressRule[];
  };
}

/** v1alpha1 ports entry: exactly one field; protocol defaults to TCP. */
export interface AdminNetworkPolicyPort {
  portNumber?: { protocol?: Protocol; port: number };
  portRange?: { protocol?: Protocol; start: number; end: number };
  namedPort?: string;
}

export interface AdminNetworkPolicyIngressRule {
  name?: string;
  action: string; // Allow | Deny | Pass (BaselineAdminNetworkPolicy: Allow | Deny)
  from: ClusterIngressPeer[];
  ports?: AdminNetworkPolicyPort[];
}

export interface AdminNetworkPolicyEgressRule {
  name?: string;
  action: string;
  to: ClusterEgressPeer[];
  ports?: AdminNetworkPolicyPort[];
}

export interface AdminNetworkPolicy {
  apiVersion?: string;
  kind?: "AdminNetworkPolicy";
  metadata: ObjectMeta;
  spec: {
    priority: number;
    subject: ClusterPolicySubject;
    ingress?: AdminNetworkPolicyIngressRule[];
    egress?: AdminNetworkPolicyEgressRule[];
  };
}

/** The singleton: only `metadata.name: default` is valid. */
export interface BaselineAdminNetworkPolicy {
  apiVersion?: string;
  kind?: "BaselineAdminNetworkPolicy";
  metadata: ObjectMeta;
  spec: {
    subject: ClusterPolicySubject;
    ingress?: AdminNetworkPolicyIngressRule[];
    egress?: AdminNetworkPolicyEgressRule[];
  };
}

export type ClusterPolicyObject =
  | ClusterNetworkPolicy
  | AdminNetworkPolicy
  | BaselineAdminNetworkPolicy;

/** The cluster-scoped tiers, in evaluation order around the NetworkPolicy tier. */
export type Tier = "Admin" | "Baseline";

/** A new connection as the engine sees it: the first packet's addresses, protocol and port. */
export interface Connection {
  /** Source IP in canonical text form (IPv4 dotted quad or RFC 5952 IPv6, lower case). */
  src: string;
  dst: string;
  protocol: ConnectionProtocol;
  /** Destination port (1..65535); 0 for protocols without ports. */
  port: number;
}

export type Direction = "ingress" | "egress";
export type Verdict = "allow" | "deny";

/**
 * A rule of an Admin or Baseline tier policy. `policy` is "<Kind>/<name>" (e.g.
 * "ClusterNetworkPolicy/deny-egress"); `rule` is the rule's `name` when it has one, else its
 * 0-based index in spec.ingress / spec.egress.
 */
export interface TierRuleRef {
  tier: Tier;
  policy: string;
  rule: string | number;
}

/**
 * Why one direction came out the way it did. Every verdict carries one, so a deny can always be
 * traced to the policies that isolate the pod, and an allow to the policy and rule that matched.
 * `passed` (present only when non-empty) lists the `Pass` rules that sent this side on to the
 * next tier before the reason's own tier decided.
 */
export type DirectionReason =
  /** This side was not judged here (e.g. the pod is not local to this node, or simulate skipped it). */
  | { kind: "not-judged" }
  /** The endpoint is not a pod (external IP, node IP, hostNetwork pod): it has no policy of its own. */
  | { kind: "not-a-pod" }
  /** The pod is not selected by any policy with this direction among its policyTypes. */
  | { kind: "not-isolated"; pod: string }
  /** Ingress from the pod's own node (kubelet probes) is always allowed. */
  | { kind: "from-own-node"; pod: string; passed?: TierRuleRef[] }
  /** Allowed by rule `rule` (0-based index into spec.ingress / spec.egress) of `policy`. */
  | { kind: "allowed"; pod: string; policy: string; rule: number; passed?: TierRuleRef[] }
  /** Denied: these policies (namespace/name) isolate the pod and none of their rules matched. */
  | { kind: "denied"; pod: string; isolatedBy: string[]; passed?: TierRuleRef[] }
  /** An Admin or Baseline tier rule with action Accept (Allow) decided: allowed. */
  | { kind: "tier-accepted"; pod: string; by: TierRuleRef; passed?: TierRuleRef[] }
  /** An Admin or Baseline tier rule with action Deny decided: denied. */
  | { kind: "tier-denied"; pod: string; by: TierRuleRef; passed?: TierRuleRef[] }
  /**
   * Admin/Baseline policies (`consulted`, in tier order) select the pod, but no rule decided and
   * no NetworkPolicy isolates it: allowed by default.
   */
  | { kind: "default-allowed"; pod: string; consulted: string[]; passed?: TierRuleRef[] };

export interface DirectionResult {
  verdict: Verdict;
  reason: DirectionReason;
}

/** The engine's answer: allowed iff both the source's egress and the destination's ingress allow. */
export interface Decision {
  verdict: Verdict;
  egress: DirectionResult;
  ingress: DirectionResult;
  /** namespace/name of the source and destination pods, when they are pods. */
  srcPod?: string;
  dstPod?: string;
}

/** A problem with one object, located precisely enough for an operator to fix it. */
export interface ObjectError {
  /** Where the object came from: a file path, or e.g. "apiserver". */
  source?: string;
  /** Kind and namespace/name of the object, e.g. "NetworkPolicy x/deny-all". */
  object: string;
  /** JSON-ish path of the offending field, e.g. "spec.ingress[0].from[1].ipBlock.cidr". */
  field: string;
  message: string;
  /**
   * "warning": the object was applied anyway (e.g. a rule with an unknown action now fails
   * closed, or a `domainNames` peer that matches nothing). Absent: the object was not applied.
   */
  severity?: "warning";
}

export function formatObjectError(e: ObjectError): string {
  const where = e.source ? `${e.source}: ` : "";
  return `${where}${e.object}: ${e.field}: ${e.message}`;
}
