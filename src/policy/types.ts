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

/** The object kinds the engine consumes. */
export type ObjectKind = "Pod" | "Namespace" | "NetworkPolicy";

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
 * Why one direction came out the way it did. Every verdict carries one, so a deny can always be
 * traced to the policies that isolate the pod, and an allow to the policy and rule that matched.
 */
export type DirectionReason =
  /** This side was not judged here (e.g. the pod is not local to this node, or simulate skipped it). */
  | { kind: "not-judged" }
  /** The endpoint is not a pod (external IP, node IP, hostNetwork pod): it has no policy of its own. */
  | { kind: "not-a-pod" }
  /** The pod is not selected by any policy with this direction among its policyTypes. */
  | { kind: "not-isolated"; pod: string }
  /** Ingress from the pod's own node (kubelet probes) is always allowed. */
  | { kind: "from-own-node"; pod: string }
  /** Allowed by rule `rule` (0-based index into spec.ingress / spec.egress) of `policy`. */
  | { kind: "allowed"; pod: string; policy: string; rule: number }
  /** Denied: these policies (namespace/name) isolate the pod and none of their rules matched. */
  | { kind: "denied"; pod: string; isolatedBy: string[] };

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
}

export function formatObjectError(e: ObjectError): string {
  const where = e.source ? `${e.source}: ` : "";
  return `${where}${e.object}: ${e.field}: ${e.message}`;
}
