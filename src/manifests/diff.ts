/**
 * The difference between the objects consumers have and the objects now in force, as StateEvents:
 * upserts before deletes (a policy renamed or moved between files never leaves its pods
 * unprotected), kinds in READ_KINDS order for upserts and the reverse for deletes.
 */
import type { StateEvent } from "../state/events.ts";
import { isNamespaced, kindOrder } from "./kinds.ts";
import { type LoadedObject, objectKey } from "./load.ts";

export interface Known {
  loaded: LoadedObject;
  /** Canonical JSON of the object: an edit that changes nothing sends nothing. */
  content: string;
}

export interface Diff {
  next: Map<string, Known>;
  events: StateEvent[];
  upserts: number;
  deletes: number;
}

/** JSON with object keys sorted, so reordering keys in a file is not a change. */
export function canonicalJSON(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return v;
    const sorted: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) sorted[k] = (v as Record<string, unknown>)[k];
    return sorted;
  });
}

export function diffObjects(known: Map<string, Known>, desired: LoadedObject[]): Diff {
  const next = new Map<string, Known>();
  const changed: LoadedObject[] = [];
  for (const loaded of desired) {
    const key = objectKey(loaded);
    const content = canonicalJSON(loaded.object);
    next.set(key, { loaded, content });
    if (known.get(key)?.content !== content) changed.push(loaded);
  }
  const gone = [...known].filter(([key]) => !next.has(key)).map(([, k]) => k.loaded);
  const order = kindOrder();
  const events = [
    ...byKind(changed, order).map(upsert),
    ...byKind(gone, [...order].reverse()).map(deletion),
  ];
  return { next, events, upserts: changed.length, deletes: gone.length };
}

function byKind(objects: LoadedObject[], order: string[]): LoadedObject[] {
  return order.flatMap((k) => objects.filter((o) => o.kind === k));
}

function upsert(o: LoadedObject): StateEvent {
  return { op: "upsert", kind: o.kind, object: o.object, source: o.source } as StateEvent;
}

function deletion(o: LoadedObject): StateEvent {
  const m = o.object.metadata;
  return isNamespaced(o.kind)
    ? { op: "delete", kind: o.kind, namespace: m.namespace, name: m.name! }
    : { op: "delete", kind: o.kind, name: m.name! };
}
