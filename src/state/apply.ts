/** Applies one StateEvent to an engine; shared by the main thread and the verdict-loop replica. */
import type { PolicyEngine } from "../policy/engine.ts";
import type { ObjectError } from "../policy/types.ts";
import type { StateEvent } from "./events.ts";

export function applyEvent(engine: PolicyEngine, ev: StateEvent): ObjectError[] {
  if (ev.op === "delete") {
    const namespace = ev.namespace ?? "default";
    switch (ev.kind) {
      case "Pod":
        engine.deletePod(namespace, ev.name);
        break;
      case "Namespace":
        engine.deleteNamespace(ev.name);
        break;
      case "NetworkPolicy":
        engine.deletePolicy(namespace, ev.name);
        break;
      case "Node":
        engine.deleteNode(ev.name);
        break;
      case "ClusterNetworkPolicy":
      case "AdminNetworkPolicy":
      case "BaselineAdminNetworkPolicy":
        engine.deleteClusterPolicy(ev.kind, ev.name);
        break;
    }
    return [];
  }
  let errors: ObjectError[];
  switch (ev.kind) {
    case "Pod":
      errors = engine.upsertPod(ev.object);
      break;
    case "Namespace":
      errors = engine.upsertNamespace(ev.object);
      break;
    case "NetworkPolicy":
      errors = engine.upsertPolicy(ev.object, ev.source);
      break;
    case "Node":
      errors = engine.upsertNode(ev.object);
      break;
    default:
      errors = engine.upsertClusterPolicy(ev.kind, ev.object, ev.source);
  }
  return ev.source ? errors.map((e) => ({ ...e, source: e.source ?? ev.source })) : errors;
}
