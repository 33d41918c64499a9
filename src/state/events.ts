/**
 * The one stream every state source (manifest files, Kubernetes informers) produces and every
 * consumer (engine, verdict-loop replica, rule sync) reads: one object change at a time.
 */
import type { Namespace, NetworkPolicy, ObjectKind, Pod } from "../policy/types.ts";

export type StateEvent =
  | { op: "upsert"; kind: "Pod"; object: Pod; source?: string }
  | { op: "upsert"; kind: "Namespace"; object: Namespace; source?: string }
  | { op: "upsert"; kind: "NetworkPolicy"; object: NetworkPolicy; source?: string }
  | { op: "delete"; kind: ObjectKind; namespace?: string; name: string };
