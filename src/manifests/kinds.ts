/**
 * Which kinds kube-netpol reads from manifests, and how a document's `kind` and `apiVersion` are
 * recognised. Adding a kind is one row in READ_KINDS (plus its StateEvent variant in
 * src/state/events.ts, which the engine consumes).
 *
 * Recognising is strict on purpose: a policy whose kind or apiVersion is mistyped must not silently
 * become "some other object" (which would read as the policy being deleted). So a misspelt kind or
 * apiVersion of a kind we read, or an unknown kind in an API group we read, is an error (with a
 * hint where the intended spelling is obvious); only kinds of API groups we do not read (apps/v1
 * Deployment, Calico's crd.projectcalico.org NetworkPolicy) are skipped with a notice.
 */
import type { StateObjectKind } from "../policy/types.ts";

export interface KindSpec {
  kind: StateObjectKind;
  /** apiVersions accepted for this kind; the first is the one suggested in hints. */
  apiVersions: readonly string[];
  /** Namespaced objects default to namespace "default"; cluster-scoped ones carry none. */
  namespaced: boolean;
}

/**
 * The kinds read, in the order objects are applied: a kind before the kinds that refer to it
 * (namespaces before the pods and policies in them). Deletes go in the reverse order.
 */
export const READ_KINDS: readonly KindSpec[] = [
  { kind: "Namespace", apiVersions: ["v1"], namespaced: false },
  { kind: "Node", apiVersions: ["v1"], namespaced: false },
  { kind: "Pod", apiVersions: ["v1"], namespaced: true },
  { kind: "NetworkPolicy", apiVersions: ["networking.k8s.io/v1"], namespaced: true },
  {
    kind: "ClusterNetworkPolicy",
    apiVersions: ["policy.networking.k8s.io/v1alpha2"],
    namespaced: false,
  },
  {
    kind: "AdminNetworkPolicy",
    apiVersions: ["policy.networking.k8s.io/v1alpha1"],
    namespaced: false,
  },
  {
    kind: "BaselineAdminNetworkPolicy",
    apiVersions: ["policy.networking.k8s.io/v1alpha1"],
    namespaced: false,
  },
];

/**
 * Standard kinds of the API groups we read that we skip on purpose: a Service next to the pods is
 * not a mistake. Any other kind in these groups is (`kind: NetworkPolicies`, `kind: Netpol`).
 */
const OTHER_STANDARD_KINDS: Record<string, readonly string[]> = {
  "": [
    "Binding",
    "ConfigMap",
    "Endpoints",
    "Event",
    "LimitRange",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "PodTemplate",
    "ReplicationController",
    "ResourceQuota",
    "Secret",
    "Service",
    "ServiceAccount",
  ],
  "networking.k8s.io": ["IPAddress", "Ingress", "IngressClass", "ServiceCIDR"],
};

const BY_KIND = new Map(READ_KINDS.map((s) => [s.kind as string, s]));
/** API groups of the kinds we read ("" is the core group, written plain `v1`). */
const READ_GROUPS = new Set(READ_KINDS.flatMap((s) => s.apiVersions.map((v) => groupOf(v))));

/** The kinds read, for messages: "Namespace, Node, Pod and ...". */
export const READ_KIND_NAMES = READ_KINDS.map((s) => s.kind).join(", ").replace(
  /, ([^,]+)$/,
  " and $1",
);

export function kindSpec(kind: string): KindSpec | undefined {
  return BY_KIND.get(kind);
}

/** Upsert order of kinds (deletes: reversed). */
export function kindOrder(): StateObjectKind[] {
  return READ_KINDS.map((s) => s.kind);
}

export function isNamespaced(kind: StateObjectKind): boolean {
  return BY_KIND.get(kind)?.namespaced ?? true;
}

/** What a document's kind and apiVersion make of it. */
export type Recognition =
  | { read: KindSpec }
  | { error: { field: "kind" | "apiVersion"; message: string } }
  /** Not ours to read: the reason, for the notice. */
  | { skip: string };

/** Recognises `kind` (non-empty) with `apiVersion` (absent is accepted, as before). */
export function recognise(kind: string, apiVersion: string | undefined): Recognition {
  const spec = BY_KIND.get(kind);
  if (spec) return checkApiVersion(spec, apiVersion);
  const group = apiVersion === undefined ? undefined : groupOf(apiVersion);
  // A group that is ours or a misspelling of ours: its kinds are ours to judge.
  if (group !== undefined && !READ_GROUPS.has(group) && nearestGroup(group) === undefined) {
    return { skip: `only ${READ_KIND_NAMES} are read` };
  }
  const meant = nearestKind(kind);
  if (meant !== undefined) {
    return {
      error: {
        field: "kind",
        message: `${kind} is not a kind kube-netpol reads; did you mean ${meant}?`,
      },
    };
  }
  if (isOtherStandardKind(kind, group)) return { skip: `only ${READ_KIND_NAMES} are read` };
  return {
    error: {
      field: "kind",
      message: `${kind} is not a kind kube-netpol reads (${READ_KIND_NAMES} are read)`,
    },
  };
}

function checkApiVersion(spec: KindSpec, apiVersion: string | undefined): Recognition {
  if (apiVersion === undefined || spec.apiVersions.includes(apiVersion)) return { read: spec };
  const want = spec.apiVersions[0]!;
  const group = groupOf(apiVersion);
  const error = (message: string): Recognition => ({ error: { field: "apiVersion", message } });
  if (spec.apiVersions.some((v) => groupOf(v) === group)) {
    return error(`${apiVersion} is not supported, use ${want}`); // right group, other version
  }
  if (READ_GROUPS.has(group)) {
    return error(`${apiVersion} is not an apiVersion of ${spec.kind}, use ${want}`);
  }
  const near = spec.apiVersions.find((v) => isNear(groupOf(v), group, 2));
  if (near !== undefined) {
    return error(`${apiVersion} is not an apiVersion of ${spec.kind}; did you mean ${near}?`);
  }
  // e.g. Calico's crd.projectcalico.org/v1 NetworkPolicy: same kind name, another API.
  return { skip: `not the Kubernetes ${spec.kind}` };
}

function isOtherStandardKind(kind: string, group: string | undefined): boolean {
  if (group !== undefined) return OTHER_STANDARD_KINDS[group]?.includes(kind) ?? false;
  return Object.values(OTHER_STANDARD_KINDS).some((kinds) => kinds.includes(kind));
}

/** The group of an apiVersion: `networking.k8s.io/v1` -> `networking.k8s.io`, `v1` -> "". */
export function groupOf(apiVersion: string): string {
  const slash = apiVersion.lastIndexOf("/");
  return slash < 0 ? "" : apiVersion.slice(0, slash);
}

/** The group we read that `group` is a misspelling of (`networking.k8s.oi`), if any. */
function nearestGroup(group: string): string | undefined {
  return [...READ_GROUPS].find((g) => g !== "" && isNear(g, group, 2));
}

/**
 * The kind we read that `kind` most likely meant: same letters in another case, a plural
 * (`NetworkPolicies`, `Pods`), or one or two letters off (one for short names).
 */
function nearestKind(kind: string): string | undefined {
  const k = kind.toLowerCase();
  for (const { kind: known } of READ_KINDS) {
    const want = known.toLowerCase();
    const plurals = [`${want}s`, `${want}es`, want.replace(/y$/, "ies")];
    if (k === want || plurals.includes(k)) return known;
    if (isNear(want, k, want.length >= 6 ? 2 : 1)) return known;
  }
  return undefined;
}

/** Levenshtein distance of `a` and `b` is at most `max` (and they differ). */
function isNear(a: string, b: string, max: number): boolean {
  if (a === b || Math.abs(a.length - b.length) > max) return false;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + cost);
    }
    prev = row;
  }
  return prev[b.length]! <= max;
}
