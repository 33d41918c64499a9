/**
 * The one stream every state source (manifest files, Kubernetes informers) produces and every
 * consumer (engine, verdict-loop replica, rule sync) reads: one object change at a time.
 * Cluster-scoped kinds (Node and the three cluster policy kinds) carry no namespace.
 */
import type {
  AdminNetworkPolicy,
  BaselineAdminNetworkPolicy,
  ClusterNetworkPolicy,
  Namespace,
  NetworkPolicy,
  Node,
  Pod,
  StateObjectKind,
} from "../policy/types.ts";

export type StateEvent =
  | { op: "upsert"; kind: "Pod"; object: Pod; source?: string }
  | { op: "upsert"; kind: "Namespace"; object: Namespace; source?: string }
  | { op: "upsert"; kind: "NetworkPolicy"; object: NetworkPolicy; source?: string }
  | { op: "upsert"; kind: "Node"; object: Node; source?: string }
  | { op: "upsert"; kind: "ClusterNetworkPolicy"; object: ClusterNetworkPolicy; source?: string }
  | { op: "upsert"; kind: "AdminNetworkPolicy"; object: AdminNetworkPolicy; source?: string }
  | {
    op: "upsert";
    kind: "BaselineAdminNetworkPolicy";
    object: BaselineAdminNetworkPolicy;
    source?: string;
  }
  | { op: "delete"; kind: StateObjectKind; namespace?: string; name: string };
