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
    }
    return [];
  }
  const errors = ev.kind === "Pod"
    ? engine.upsertPod(ev.object)
    : ev.kind === "Namespace"
    ? engine.upsertNamespace(ev.object)
    : engine.upsertPolicy(ev.object, ev.source);
  return ev.source ? errors.map((e) => ({ ...e, source: e.source ?? ev.source })) : errors;
}
