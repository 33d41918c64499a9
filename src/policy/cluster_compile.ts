/**
 * Turns ClusterNetworkPolicy (v1alpha2), AdminNetworkPolicy and BaselineAdminNetworkPolicy
 * (v1alpha1) objects into one compiled form the engine evaluates: an ANP is an Admin tier policy
 * whose `Allow` is `Accept`, the BANP singleton `default` a Baseline tier policy, and v1alpha1
 * `ports` become v1alpha2-style protocol matches.
 *
 * Validation reports every problem at once with the field it concerns. Two outcomes:
 *   - an invalid object (a required field missing, a bad selector, CIDR or port) is not applied
 *     at all, exactly like an invalid NetworkPolicy (its last good version stays in force);
 *   - something a newer CRD could legitimately send (an unknown `action` or `tier`, a peer or a
 *     protocol entry with no field this agent knows) makes that rule **fail closed**, and the
 *     object is applied with a warning. The API's definition of failing closed: an Accept/Allow
 *     rule matches nothing; a Deny or Pass rule becomes "Deny all".
 */
import { Cidr } from "./cidr.ts";
import { Selector } from "./selector.ts";
import type {
  ClusterPolicyKind,
  ClusterPolicyObject,
  ObjectError,
  Tier,
  TierRuleRef,
} from "./types.ts";
import type { Protocol } from "../net/protocol.ts";

export type ClusterAction = "Accept" | "Deny" | "Pass";

export type ClusterPeer =
  /** Every pod in the selected namespaces. */
  | { kind: "namespaces"; namespaces: Selector }
  /** Pods matching both selectors. */
  | { kind: "pods"; namespaces: Selector; pods: Selector }
  /** The InternalIP/ExternalIP addresses of the selected Node objects. */
  | { kind: "nodes"; nodes: Selector }
  /** Any address in one of the CIDRs (same family only), pod or not. */
  | { kind: "networks"; cidrs: Cidr[] }
  /** Not resolved in this version: matches nothing. */
  | { kind: "domainNames"; names: string[] }
  /** A failed-closed Deny rule's peer: every destination (egress), every pod source (ingress). */
  | { kind: "all" };

export type ClusterPortMatch =
  /** `to` inclusive; an entry without destinationPort is 1..65535. */
  | { kind: "ports"; protocol: Protocol; from: number; to: number }
  /** The destination pod's container port of that name, with its own protocol and number. */
  | { kind: "named"; name: string };

export interface ClusterRule {
  index: number;
  /** What explanations print: the rule's `name` when given, else its index. */
  ref: string | number;
  /** Tier, policy and rule, as verdict reasons name them (one shared object per rule). */
  by: TierRuleRef;
  action: ClusterAction;
  /** ORed; empty: the rule matches nothing (an Accept rule whose peers all failed closed). */
  peers: ClusterPeer[];
  /** null: every protocol and port, ICMP included; []: nothing (all entries failed closed). */
  protocols: ClusterPortMatch[] | null;
}

export interface CompiledClusterPolicy {
  /** "<Kind>/<name>", e.g. "ClusterNetworkPolicy/deny-x": unique across the three kinds. */
  key: string;
  kind: ClusterPolicyKind;
  name: string;
  tier: Tier;
  /** 0..1000; the BaselineAdminNetworkPolicy (which has none) sorts after every Baseline CNP. */
  priority: number;
  subjectNamespaces: Selector;
  /** null: every pod of the selected namespaces. */
  subjectPods: Selector | null;
  /** [] : the policy does not affect that direction. */
  ingress: ClusterRule[];
  egress: ClusterRule[];
  /** Some rule of that direction can deny: only then can the policy change the default outcome. */
  ingressCanDeny: boolean;
  egressCanDeny: boolean;
}

/** Where the BANP sorts: after every Baseline CNP (priorities stop at 1000). */
export const BANP_PRIORITY = 1001;

const KIND_RANK: Record<ClusterPolicyKind, number> = {
  ClusterNetworkPolicy: 0,
  AdminNetworkPolicy: 1,
  BaselineAdminNetworkPolicy: 2,
};

/**
 * Order inside a tier: priority ascending; equal priorities (whose order the API leaves to the
 * implementation) by name, then ClusterNetworkPolicy before AdminNetworkPolicy.
 */
export function tierOrder(a: CompiledClusterPolicy, b: CompiledClusterPolicy): number {
  if (a.priority !== b.priority) return a.priority - b.priority;
  if (a.name !== b.name) return a.name < b.name ? -1 : 1;
  return KIND_RANK[a.kind] - KIND_RANK[b.kind];
}

export function clusterPolicyKey(kind: ClusterPolicyKind, name: string): string {
  return `${kind}/${name}`;
}

/** The per-kind vocabulary the compiler checks against. */
interface Dialect {
  /** Action spelling -> compiled action. */
  actions: Record<string, ClusterAction>;
  egressPeerFields: readonly string[];
  /** v1alpha2 `protocols` or v1alpha1 `ports`. */
  portsField: "protocols" | "ports";
}

const INGRESS_PEER_FIELDS = ["namespaces", "pods"] as const;

const DIALECTS: Record<ClusterPolicyKind, Dialect> = {
  ClusterNetworkPolicy: {
    actions: { Accept: "Accept", Deny: "Deny", Pass: "Pass" },
    egressPeerFields: ["namespaces", "pods", "nodes", "networks", "domainNames"],
    portsField: "protocols",
  },
  AdminNetworkPolicy: {
    actions: { Allow: "Accept", Deny: "Deny", Pass: "Pass" },
    egressPeerFields: ["namespaces", "pods", "nodes", "networks", "domainNames"],
    portsField: "ports",
  },
  BaselineAdminNetworkPolicy: {
    actions: { Allow: "Accept", Deny: "Deny" },
    egressPeerFields: ["namespaces", "pods", "nodes", "networks"],
    portsField: "ports",
  },
};

const PROTOCOL_FIELDS = { tcp: "TCP", udp: "UDP", sctp: "SCTP" } as const;
const PROTOCOLS = new Set(["TCP", "UDP", "SCTP"]);

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Collects problems: errors stop the object from being applied, warnings do not. */
class Problems {
  readonly errors: [string, string][] = [];
  readonly warnings: [string, string][] = [];
  error(field: string, message: string): void {
    this.errors.push([field, message]);
  }
  warn(field: string, message: string): void {
    this.warnings.push([field, message]);
  }
}

/** Result of one peer or protocol entry: compiled, invalid (error), or unknown (fails closed). */
type Entry<T> = { ok: T } | { invalid: true } | { unknown: true };

export function compileClusterPolicy(
  kind: ClusterPolicyKind,
  obj: ClusterPolicyObject,
  source?: string,
): { policy: CompiledClusterPolicy | null; errors: ObjectError[] } {
  const p = new Problems();
  const rawName = obj?.metadata?.name;
  const name = typeof rawName === "string" && rawName !== "" ? rawName : undefined;
  if (name === undefined) p.error("metadata.name", "is required");
  else if (kind === "BaselineAdminNetworkPolicy" && name !== "default") {
    p.error("metadata.name", 'must be "default": the BaselineAdminNetworkPolicy is a singleton');
  }
  const spec = (obj as { spec?: unknown })?.spec;
  let policy: CompiledClusterPolicy | null = null;
  if (!isObject(spec)) p.error("spec", "is required");
  else {
    const dialect = DIALECTS[kind];
    let tier: Tier = kind === "BaselineAdminNetworkPolicy" ? "Baseline" : "Admin";
    /** An unknown tier: evaluated in the Admin tier with Accept matching nothing, Pass denying. */
    let unknownTier = false;
    if (kind === "ClusterNetworkPolicy") {
      const t = spec.tier;
      if (t === undefined || t === null) p.error("spec.tier", "is required (Admin or Baseline)");
      else if (typeof t !== "string") p.error("spec.tier", "must be a string (Admin or Baseline)");
      else if (t === "Admin" || t === "Baseline") tier = t;
      else {
        unknownTier = true;
        p.warn(
          "spec.tier",
          `unknown tier ${
            JSON.stringify(t)
          } (this agent knows Admin and Baseline): the policy fails closed in the Admin tier (its Accept rules match nothing, its Deny and Pass rules deny)`,
        );
      }
    }
    let priority = BANP_PRIORITY;
    if (kind !== "BaselineAdminNetworkPolicy") {
      const pr = spec.priority;
      if (pr === undefined || pr === null) p.error("spec.priority", "is required (0 to 1000)");
      else if (typeof pr !== "number" || !Number.isInteger(pr) || pr < 0 || pr > 1000) {
        p.error("spec.priority", `must be an integer from 0 to 1000, not ${JSON.stringify(pr)}`);
      } else priority = pr;
    }
    const subject = compileSubject(spec.subject, p);
    const key = clusterPolicyKey(kind, name ?? "<unnamed>");
    const refOf = (rule: string | number): TierRuleRef =>
      Object.freeze({ tier, policy: key, rule });
    const ingress = compileRules(
      spec.ingress,
      "spec.ingress",
      "ingress",
      dialect,
      unknownTier,
      refOf,
      p,
    );
    const egress = compileRules(
      spec.egress,
      "spec.egress",
      "egress",
      dialect,
      unknownTier,
      refOf,
      p,
    );
    if (subject && name !== undefined && p.errors.length === 0) {
      policy = {
        key,
        kind,
        name,
        tier,
        priority,
        subjectNamespaces: subject.namespaces,
        subjectPods: subject.pods,
        ingress,
        egress,
        ingressCanDeny: ingress.some((r) => r.action === "Deny"),
        egressCanDeny: egress.some((r) => r.action === "Deny"),
      };
    }
  }
  const object = `${kind} ${name ?? "<unnamed>"}`;
  const errors: ObjectError[] = p.errors.map(([field, message]) => ({
    source,
    object,
    field,
    message,
  }));
  if (errors.length) return { policy: null, errors };
  const warnings: ObjectError[] = p.warnings.map(([field, message]) => ({
    source,
    object,
    field,
    message,
    severity: "warning",
  }));
  return { policy, errors: warnings };
}

function compileSubject(
  subject: unknown,
  p: Problems,
): { namespaces: Selector; pods: Selector | null } | null {
  if (!isObject(subject)) {
    p.error("spec.subject", "is required (namespaces or pods)");
    return null;
  }
  const hasNs = subject.namespaces !== undefined && subject.namespaces !== null;
  const hasPods = subject.pods !== undefined && subject.pods !== null;
  if (hasNs === hasPods) {
    p.error("spec.subject", "must set exactly one of namespaces or pods");
    return null;
  }
  const sel = (v: unknown, path: string) =>
    Selector.compile(v as Parameters<typeof Selector.compile>[0], path, p.errors);
  if (hasNs) {
    const namespaces = sel(subject.namespaces, "spec.subject.namespaces");
    return namespaces ? { namespaces, pods: null } : null;
  }
  const pods = compileNamespacedPod(subject.pods, "spec.subject.pods", p);
  return pods ? { namespaces: pods.namespaces, pods: pods.pods } : null;
}

function compileNamespacedPod(
  v: unknown,
  path: string,
  p: Problems,
): { namespaces: Selector; pods: Selector } | null {
  if (!isObject(v)) {
    p.error(path, "must be an object with namespaceSelector and podSelector");
    return null;
  }
  const ns = Selector.compile(
    v.namespaceSelector as Parameters<typeof Selector.compile>[0],
    `${path}.namespaceSelector`,
    p.errors,
  );
  const pods = Selector.compile(
    v.podSelector as Parameters<typeof Selector.compile>[0],
    `${path}.podSelector`,
    p.errors,
  );
  return ns && pods ? { namespaces: ns, pods } : null;
}

function compileRules(
  rules: unknown,
  path: string,
  direction: "ingress" | "egress",
  dialect: Dialect,
  unknownTier: boolean,
  refOf: (rule: string | number) => TierRuleRef,
  p: Problems,
): ClusterRule[] {
  if (rules === undefined || rules === null) return [];
  if (!Array.isArray(rules)) {
    p.error(path, "must be a list");
    return [];
  }
  const out: ClusterRule[] = [];
  rules.forEach((raw, index) => {
    const rp = `${path}[${index}]`;
    if (!isObject(raw)) {
      p.error(rp, "must be an object");
      return;
    }
    let ref: string | number = index;
    if (raw.name !== undefined && raw.name !== null) {
      if (typeof raw.name !== "string" || raw.name.length > 100) {
        p.error(`${rp}.name`, "must be a string of at most 100 characters");
      } else if (raw.name !== "") ref = raw.name;
    }
    let action: ClusterAction = "Deny";
    if (typeof raw.action !== "string" || raw.action === "") {
      p.error(`${rp}.action`, `is required (${Object.keys(dialect.actions).join(", ")})`);
    } else if (Object.hasOwn(dialect.actions, raw.action)) {
      action = dialect.actions[raw.action]!;
    } else {
      p.warn(
        `${rp}.action`,
        `unknown action ${JSON.stringify(raw.action)} (want ${
          Object.keys(dialect.actions).join(", ")
        }): the rule fails closed and denies what it matches`,
      );
    }
    if (unknownTier) {
      // Fail closed without knowing where the tier sits: never grant, never skip ahead.
      if (action === "Pass") action = "Deny";
    }
    const peerField = direction === "ingress" ? "from" : "to";
    const fields = direction === "ingress" ? INGRESS_PEER_FIELDS : dialect.egressPeerFields;
    const peersPath = `${rp}.${peerField}`;
    const rawPeers = raw[peerField];
    const peers: ClusterPeer[] = [];
    let unknownPeer = false;
    if (!Array.isArray(rawPeers) || rawPeers.length === 0) {
      p.error(peersPath, "must list at least one peer");
    } else {
      rawPeers.forEach((peer, i) => {
        const r = compilePeer(peer, `${peersPath}[${i}]`, fields, action, p);
        if ("ok" in r) peers.push(r.ok);
        else if ("unknown" in r) unknownPeer = true;
      });
    }
    const portsPath = `${rp}.${dialect.portsField}`;
    const rawPorts = raw[dialect.portsField];
    let protocols: ClusterPortMatch[] | null = null;
    let unknownProtocol = false;
    if (rawPorts !== undefined && rawPorts !== null) {
      if (!Array.isArray(rawPorts)) p.error(portsPath, "must be a list");
      else if (rawPorts.length > 0) {
        protocols = [];
        for (const [i, entry] of rawPorts.entries()) {
          const r = dialect.portsField === "protocols"
            ? compileProtocol(entry, `${portsPath}[${i}]`, action, p)
            : compileV1Port(entry, `${portsPath}[${i}]`, action, p);
          if ("ok" in r) protocols.push(r.ok);
          else if ("unknown" in r) unknownProtocol = true;
        }
      }
    }
    const rule: ClusterRule = { index, ref, by: refOf(ref), action, peers, protocols };
    if ((unknownPeer || unknownProtocol) && action !== "Accept") {
      // The API's fail-closed for Deny and Pass: the rule becomes "Deny all".
      rule.action = "Deny";
      rule.peers = [{ kind: "all" }];
      rule.protocols = null;
    }
    if (unknownTier && rule.action === "Accept") rule.peers = [];
    out.push(rule);
  });
  return out;
}

function compilePeer(
  raw: unknown,
  path: string,
  fields: readonly string[],
  action: ClusterAction,
  p: Problems,
): Entry<ClusterPeer> {
  const one = oneField(raw, path, fields, "peer", action, p);
  if (!("field" in one)) return one;
  const field = one.field;
  const value = one.obj[field];
  const fp = `${path}.${field}`;
  const selector = (v: unknown, at: string) =>
    Selector.compile(v as Parameters<typeof Selector.compile>[0], at, p.errors);
  switch (field) {
    case "namespaces": {
      const namespaces = selector(value, fp);
      return namespaces ? { ok: { kind: "namespaces", namespaces } } : { invalid: true };
    }
    case "pods": {
      const np = compileNamespacedPod(value, fp, p);
      return np
        ? { ok: { kind: "pods", namespaces: np.namespaces, pods: np.pods } }
        : { invalid: true };
    }
    case "nodes": {
      const nodes = selector(value, fp);
      return nodes ? { ok: { kind: "nodes", nodes } } : { invalid: true };
    }
    case "networks": {
      if (!Array.isArray(value) || value.length === 0) {
        p.error(fp, "must list at least one CIDR");
        return { invalid: true };
      }
      const cidrs: Cidr[] = [];
      let bad = false;
      value.forEach((text, i) => {
        const c = typeof text === "string" ? Cidr.parse(text) : "must be a string";
        if (typeof c === "string") {
          p.error(`${fp}[${i}]`, `invalid CIDR: ${c}`);
          bad = true;
        } else cidrs.push(c);
      });
      return bad ? { invalid: true } : { ok: { kind: "networks", cidrs } };
    }
    default: { // domainNames
      if (!Array.isArray(value) || value.length === 0 || value.some((d) => typeof d !== "string")) {
        p.error(fp, "must list at least one domain name");
        return { invalid: true };
      }
      p.warn(
        fp,
        "domainNames peers are not resolved by this agent yet: this peer matches nothing",
      );
      return { ok: { kind: "domainNames", names: value as string[] } };
    }
  }
}

function checkPort(v: unknown, path: string, p: Problems): number | null {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 65535) {
    p.error(path, `must be an integer from 1 to 65535, not ${JSON.stringify(v)}`);
    return null;
  }
  return v;
}

function checkRange(
  start: unknown,
  end: unknown,
  path: string,
  p: Problems,
): { from: number; to: number } | null {
  const from = checkPort(start, `${path}.start`, p);
  const to = checkPort(end, `${path}.end`, p);
  if (from === null || to === null) return null;
  if (from >= to) {
    p.error(path, `start (${from}) must be less than end (${to})`);
    return null;
  }
  return { from, to };
}

/** What a union whose one field cannot be taken compiles to. */
type NoField = { invalid: true } | { unknown: true };

/**
 * The one field of a union that must set exactly one of `fields`: its name, with the object.
 * Otherwise what to return: not an object or more than one field set is invalid (an error); no
 * known field (none set, or only fields of a newer API) is unknown, which fails closed (a warning
 * saying how: the `noun` matches nothing when it would accept, the rule denies all otherwise).
 */
function oneField(
  raw: unknown,
  path: string,
  fields: readonly string[],
  noun: "peer" | "entry",
  action: ClusterAction,
  p: Problems,
): { field: string; obj: Record<string, unknown> } | NoField {
  if (!isObject(raw)) {
    p.error(path, "must be an object");
    return { invalid: true };
  }
  const set = Object.keys(raw).filter((k) => raw[k] !== undefined && raw[k] !== null);
  const known = set.filter((k) => fields.includes(k));
  if (known.length > 1) {
    p.error(path, `must set exactly one of ${fields.join(", ")}, not ${known.join(" and ")}`);
    return { invalid: true };
  }
  if (known.length === 1) return { field: known[0]!, obj: raw };
  const what = set.length ? `only fields this agent does not know (${set.join(", ")})` : "no field";
  p.warn(
    path,
    `sets ${what}; want one of ${fields.join(", ")}: ${
      action === "Accept"
        ? `the ${noun} fails closed and matches nothing`
        : "the rule fails closed and denies all traffic"
    }`,
  );
  return { unknown: true };
}

const PROTOCOL_UNION = ["tcp", "udp", "sctp", "destinationNamedPort"];
const V1_PORT_UNION = ["portNumber", "portRange", "namedPort"];

/** v1alpha2: exactly one of tcp, udp, sctp, destinationNamedPort. */
function compileProtocol(
  raw: unknown,
  path: string,
  action: ClusterAction,
  p: Problems,
): Entry<ClusterPortMatch> {
  const one = oneField(raw, path, PROTOCOL_UNION, "entry", action, p);
  if (!("field" in one)) return one;
  const { field, obj } = one;
  const fp = `${path}.${field}`;
  if (field === "destinationNamedPort") {
    const name = obj[field];
    if (typeof name !== "string" || name === "") {
      p.error(fp, "must be a non-empty port name");
      return { invalid: true };
    }
    return { ok: { kind: "named", name } };
  }
  const protocol = PROTOCOL_FIELDS[field as keyof typeof PROTOCOL_FIELDS];
  const body = obj[field];
  if (!isObject(body)) {
    p.error(fp, "must be an object");
    return { invalid: true };
  }
  const dp = body.destinationPort;
  if (dp === undefined || dp === null) {
    return { ok: { kind: "ports", protocol, from: 1, to: 65535 } };
  }
  const dpp = `${fp}.destinationPort`;
  if (!isObject(dp)) {
    p.error(dpp, "must be an object with number or range");
    return { invalid: true };
  }
  const hasNumber = dp.number !== undefined && dp.number !== null;
  const hasRange = dp.range !== undefined && dp.range !== null;
  if (hasNumber === hasRange) {
    p.error(dpp, "must set exactly one of number or range");
    return { invalid: true };
  }
  if (hasNumber) {
    const n = checkPort(dp.number, `${dpp}.number`, p);
    return n === null ? { invalid: true } : { ok: { kind: "ports", protocol, from: n, to: n } };
  }
  const range = isObject(dp.range) ? dp.range : {};
  const r = checkRange(range.start, range.end, `${dpp}.range`, p);
  return r ? { ok: { kind: "ports", protocol, ...r } } : { invalid: true };
}

/** v1alpha1: exactly one of portNumber, portRange, namedPort; protocol defaults to TCP. */
function compileV1Port(
  raw: unknown,
  path: string,
  action: ClusterAction,
  p: Problems,
): Entry<ClusterPortMatch> {
  const one = oneField(raw, path, V1_PORT_UNION, "entry", action, p);
  if (!("field" in one)) return one;
  const field = one.field;
  const fp = `${path}.${field}`;
  const value = one.obj[field];
  if (field === "namedPort") {
    if (typeof value !== "string" || value === "") {
      p.error(fp, "must be a non-empty port name");
      return { invalid: true };
    }
    return { ok: { kind: "named", name: value } };
  }
  if (!isObject(value)) {
    p.error(fp, "must be an object");
    return { invalid: true };
  }
  const protocol = value.protocol ?? "TCP";
  if (typeof protocol !== "string" || !PROTOCOLS.has(protocol)) {
    p.error(`${fp}.protocol`, `must be TCP, UDP or SCTP, not ${JSON.stringify(protocol)}`);
    return { invalid: true };
  }
  if (field === "portNumber") {
    const n = checkPort(value.port, `${fp}.port`, p);
    return n === null
      ? { invalid: true }
      : { ok: { kind: "ports", protocol: protocol as Protocol, from: n, to: n } };
  }
  const r = checkRange(value.start, value.end, fp, p);
  return r ? { ok: { kind: "ports", protocol: protocol as Protocol, ...r } } : { invalid: true };
}
