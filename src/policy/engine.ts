/**
 * The policy engine: NetworkPolicy v1 semantics over an in-memory view of pods, namespaces and
 * policies. Pure: no I/O, no clocks. Every state change is applied incrementally to indexes, so a
 * verdict costs one IP lookup per side plus one rule-table lookup per judged side.
 *
 * Indexes kept up to date on every change:
 *   - pod by IP (the Running pod wins when two pods claim one IP);
 *   - for each pod, the policies selecting it for ingress and for egress (sorted by key), and a
 *     rule table per direction built from them on first use (see rule_table.ts);
 *   - pods by namespace (to re-select when a policy changes) and by node (for rule sync);
 *   - an identity per pod (namespace, namespace labels, pod labels) that rule tables memoize on.
 * Peer selectors are evaluated against the one peer pod (or its memoized identity), so label
 * changes only re-identify the pods concerned.
 */
import { canonicalIP, type ParsedIP, parseIP } from "../net/ip.ts";
import { type CompiledPolicy, compilePolicy } from "./compile.ts";
import { type PeerContext, RuleTable } from "./rule_table.ts";
import { type Labels, toLabels } from "./selector.ts";
import type {
  Connection,
  Decision,
  DirectionResult,
  Namespace,
  NetworkPolicy,
  ObjectError,
  Pod,
} from "./types.ts";
import type { Protocol } from "../net/protocol.ts";

/** Reused for every verdict (evaluation is synchronous), so judging allocates no context. */
class VerdictContext implements PeerContext {
  pod: PodEntry | undefined;
  ipText = "";
  parsed: ParsedIP | null | undefined;
  constructor(readonly namespaceLabels: (namespace: string) => Labels) {}
  ip(): ParsedIP | null {
    return this.parsed === undefined ? (this.parsed = parseIP(this.ipText)) : this.parsed;
  }
}

/** The engine's view of one pod: only what verdicts need. */
interface PodEntry {
  key: string;
  namespace: string;
  name: string;
  labels: Labels;
  nodeName: string | undefined;
  hostNetwork: boolean;
  /** Pod IPs this pod may own (none for hostNetwork, Succeeded or Failed pods). */
  ips: string[];
  hostIPs: ReadonlySet<string>;
  running: boolean;
  /** containerPort by port name, then by protocol, for named ports. */
  namedPorts: ReadonlyMap<string, Partial<Record<Protocol, number>>>;
  ingress: CompiledPolicy[];
  egress: CompiledPolicy[];
  /** Keys of `ingress` / `egress`, kept with them so a deny allocates nothing to explain itself. */
  ingressKeys: string[];
  egressKeys: string[];
  /** Rule tables, built on first use after the selecting policies change. */
  ingressTable?: RuleTable;
  egressTable?: RuleTable;
  /** Interned (namespace, namespace labels, pod labels): pods alike to every selector. */
  identity: number;
}

const NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name";
const NOT_JUDGED: DirectionResult = { verdict: "allow", reason: { kind: "not-judged" } };
const NOT_A_POD: DirectionResult = { verdict: "allow", reason: { kind: "not-a-pod" } };

export interface EngineStats {
  pods: number;
  namespaces: number;
  policies: number;
}

export class PolicyEngine {
  private readonly namespaces = new Map<string, Labels>();
  private readonly pods = new Map<string, PodEntry>();
  private readonly podsByNamespace = new Map<string, Set<PodEntry>>();
  private readonly podsByNode = new Map<string, Set<PodEntry>>();
  /** Every pod claiming an IP; `owner` holds the one that wins. */
  private readonly claims = new Map<string, PodEntry[]>();
  private readonly owner = new Map<string, PodEntry>();
  private readonly policies = new Map<string, CompiledPolicy>();
  private readonly policiesByNamespace = new Map<string, Map<string, CompiledPolicy>>();
  private _generation = 0;
  private readonly identities = new Map<string, number>();
  private readonly namespaceVersions = new Map<string, number>();
  private readonly ctx = new VerdictContext((ns) => this.namespaceLabels(ns));
  /** Pods whose rule tables must be rebuilt (see prepare()). */
  private readonly stale = new Set<PodEntry>();

  /** Increases on every change that can alter a verdict or the queued set. */
  get generation(): number {
    return this._generation;
  }

  // ---------------------------------------------------------------- namespaces

  upsertNamespace(ns: Namespace): ObjectError[] {
    const name = ns?.metadata?.name;
    if (typeof name !== "string" || name === "") {
      return [{ object: "Namespace <unnamed>", field: "metadata.name", message: "is required" }];
    }
    const problems: [string, string][] = [];
    const labels = toLabels(ns.metadata.labels, problems);
    // The API server always sets this label; manifests written by hand often omit it.
    labels.set(NAMESPACE_NAME_LABEL, name);
    this.namespaces.set(name, labels);
    this.namespaceLabelsChanged(name);
    return problems.map(([field, message]) => ({ object: `Namespace ${name}`, field, message }));
  }

  deleteNamespace(name: string): void {
    if (this.namespaces.delete(name)) this.namespaceLabelsChanged(name);
  }

  /** Peers in this namespace now look different to namespace selectors: new identities. */
  private namespaceLabelsChanged(name: string): void {
    this.namespaceVersions.set(name, (this.namespaceVersions.get(name) ?? 0) + 1);
    for (const pod of this.podsByNamespace.get(name) ?? []) pod.identity = this.identityOf(pod);
    this._generation++;
  }

  private identityOf(pod: PodEntry): number {
    const labels = [...pod.labels].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const key = `${pod.namespace}\u0000${this.namespaceVersions.get(pod.namespace) ?? 0}\u0000${
      JSON.stringify(labels)
    }`;
    let id = this.identities.get(key);
    if (id === undefined) this.identities.set(key, id = this.identities.size + 1);
    return id;
  }

  private namespaceLabels(name: string): Labels {
    let labels = this.namespaces.get(name);
    if (!labels) {
      // A namespace we have not seen (yet) still has its name label.
      labels = new Map([[NAMESPACE_NAME_LABEL, name]]);
    }
    return labels;
  }

  // ---------------------------------------------------------------- pods

  upsertPod(pod: Pod): ObjectError[] {
    const name = pod?.metadata?.name;
    const namespace = pod?.metadata?.namespace ?? "default";
    const object = `Pod ${namespace}/${name ?? "<unnamed>"}`;
    if (typeof name !== "string" || name === "") {
      return [{ object, field: "metadata.name", message: "is required" }];
    }
    const errors: ObjectError[] = [];
    const labelProblems: [string, string][] = [];
    const key = `${namespace}/${name}`;
    const phase = pod.status?.phase;
    const ownsIPs = !pod.spec?.hostNetwork && phase !== "Succeeded" && phase !== "Failed";
    const ips: string[] = [];
    if (ownsIPs) {
      const texts = pod.status?.podIPs?.length
        ? pod.status.podIPs.map((p, i) => [p?.ip, `status.podIPs[${i}].ip`] as const)
        : pod.status?.podIP
        ? [[pod.status.podIP, "status.podIP"] as const]
        : [];
      for (const [text, field] of texts) {
        const ip = typeof text === "string" ? canonicalIP(text) : null;
        if (ip === null) {
          errors.push({ object, field, message: `invalid IP ${JSON.stringify(text)}` });
        } else if (!ips.includes(ip)) ips.push(ip);
      }
    }
    const hostIPs = new Set<string>();
    for (const text of [pod.status?.hostIP, ...(pod.status?.hostIPs ?? []).map((h) => h?.ip)]) {
      const ip = typeof text === "string" ? canonicalIP(text) : null;
      if (ip) hostIPs.add(ip);
    }
    const namedPorts = new Map<string, Partial<Record<Protocol, number>>>();
    const containers = [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])];
    containers.forEach((c, ci) => {
      (c?.ports ?? []).forEach((p, pi) => {
        if (!p?.name) return;
        if (!Number.isInteger(p.containerPort) || p.containerPort < 1 || p.containerPort > 65535) {
          errors.push({
            object,
            field: `spec.containers[${ci}].ports[${pi}].containerPort`,
            message: `must be between 1 and 65535, not ${p.containerPort}`,
          });
          return;
        }
        const byProtocol = namedPorts.get(p.name) ?? {};
        byProtocol[p.protocol ?? "TCP"] ??= p.containerPort;
        namedPorts.set(p.name, byProtocol);
      });
    });

    const entry: PodEntry = {
      key,
      namespace,
      name,
      labels: toLabels(pod.metadata.labels, labelProblems),
      nodeName: pod.spec?.nodeName || undefined,
      hostNetwork: pod.spec?.hostNetwork === true,
      ips,
      hostIPs,
      running: phase === "Running",
      namedPorts,
      ingress: [],
      egress: [],
      ingressKeys: [],
      egressKeys: [],
      identity: 0,
    };
    entry.identity = this.identityOf(entry);
    for (const [field, message] of labelProblems) errors.push({ object, field, message });
    // hostNetwork pods are node endpoints: no policy selects them, they are never queued.
    if (!entry.hostNetwork) this.selectPoliciesFor(entry);
    this.removePod(key);
    this.pods.set(key, entry);
    addToIndex(this.podsByNamespace, namespace, entry);
    if (entry.nodeName) addToIndex(this.podsByNode, entry.nodeName, entry);
    for (const ip of ips) {
      const list = this.claims.get(ip) ?? [];
      list.push(entry);
      this.claims.set(ip, list);
      this.electOwner(ip);
    }
    this._generation++;
    return errors;
  }

  deletePod(namespace: string, name: string): void {
    if (this.removePod(`${namespace}/${name}`)) this._generation++;
  }

  private removePod(key: string): boolean {
    const old = this.pods.get(key);
    if (!old) return false;
    this.pods.delete(key);
    this.stale.delete(old);
    removeFromIndex(this.podsByNamespace, old.namespace, old);
    if (old.nodeName) removeFromIndex(this.podsByNode, old.nodeName, old);
    for (const ip of old.ips) {
      const list = (this.claims.get(ip) ?? []).filter((p) => p !== old);
      if (list.length) this.claims.set(ip, list);
      else this.claims.delete(ip);
      this.electOwner(ip);
    }
    return true;
  }

  /** Two pods with one IP (a finished pod's IP reused): the Running one owns it. */
  private electOwner(ip: string): void {
    const list = this.claims.get(ip);
    if (!list?.length) {
      this.owner.delete(ip);
      return;
    }
    this.owner.set(ip, list.find((p) => p.running) ?? list[list.length - 1]!);
  }

  private selectPoliciesFor(pod: PodEntry): void {
    const inNamespace = this.policiesByNamespace.get(pod.namespace);
    if (!inNamespace) return;
    for (const policy of inNamespace.values()) {
      if (!policy.podSelector.matches(pod.labels)) continue;
      if (policy.ingress) pod.ingress.push(policy);
      if (policy.egress) pod.egress.push(policy);
    }
    pod.ingress.sort(byKey);
    pod.egress.sort(byKey);
    this.refresh(pod);
  }

  // ---------------------------------------------------------------- policies

  /**
   * Apply a policy. An invalid policy is not applied and its errors are returned; a previously
   * applied version of it stays in force (a bad edit never silently opens or closes traffic).
   */
  upsertPolicy(np: NetworkPolicy, source?: string): ObjectError[] {
    const { policy, errors } = compilePolicy(np, source);
    if (!policy) return errors;
    this.removePolicy(policy.key);
    this.policies.set(policy.key, policy);
    let inNamespace = this.policiesByNamespace.get(policy.namespace);
    if (!inNamespace) this.policiesByNamespace.set(policy.namespace, inNamespace = new Map());
    inNamespace.set(policy.key, policy);
    for (const pod of this.podsByNamespace.get(policy.namespace) ?? []) {
      if (pod.hostNetwork || !policy.podSelector.matches(pod.labels)) continue;
      if (policy.ingress) insertSorted(pod.ingress, policy);
      if (policy.egress) insertSorted(pod.egress, policy);
      this.refresh(pod);
    }
    this._generation++;
    return [];
  }

  deletePolicy(namespace: string, name: string): void {
    if (this.removePolicy(`${namespace}/${name}`)) this._generation++;
  }

  private removePolicy(key: string): boolean {
    const old = this.policies.get(key);
    if (!old) return false;
    this.policies.delete(key);
    this.policiesByNamespace.get(old.namespace)?.delete(key);
    for (const pod of this.podsByNamespace.get(old.namespace) ?? []) {
      const i = pod.ingress.indexOf(old);
      if (i >= 0) pod.ingress.splice(i, 1);
      const e = pod.egress.indexOf(old);
      if (e >= 0) pod.egress.splice(e, 1);
      if (i >= 0 || e >= 0) this.refresh(pod);
    }
    return true;
  }

  // ---------------------------------------------------------------- verdicts

  /**
   * Judge a new connection. It is allowed iff the source side allows it as egress and the
   * destination side allows it as ingress. With `node`, only the sides whose pod runs on that
   * node are judged (each node judges its own pods, so no direction is judged twice).
   */
  evaluate(conn: Connection, node?: string): Decision {
    const src = this.owner.get(conn.src);
    const dst = this.owner.get(conn.dst);
    const egress = !src
      ? NOT_A_POD
      : node !== undefined && src.nodeName !== node
      ? NOT_JUDGED
      : this.judge("egress", src, conn, dst);
    const ingress = !dst
      ? NOT_A_POD
      : node !== undefined && dst.nodeName !== node
      ? NOT_JUDGED
      : dst.ingress.length && dst.hostIPs.has(conn.src)
      ? { verdict: "allow" as const, reason: { kind: "from-own-node" as const, pod: dst.key } }
      : this.judge("ingress", dst, conn, src);
    const verdict = egress.verdict === "allow" && ingress.verdict === "allow" ? "allow" : "deny";
    return { verdict, egress, ingress, srcPod: src?.key, dstPod: dst?.key };
  }

  /** One direction for one pod; `peer` is the pod at the other end, if any. */
  private judge(
    direction: "ingress" | "egress",
    pod: PodEntry,
    conn: Connection,
    peer: PodEntry | undefined,
  ): DirectionResult {
    const ingress = direction === "ingress";
    if ((ingress ? pod.ingress : pod.egress).length === 0) {
      return { verdict: "allow", reason: { kind: "not-isolated", pod: pod.key } };
    }
    const table = ingress
      ? (pod.ingressTable ??= new RuleTable("ingress", pod.ingress, pod.namedPorts))
      : (pod.egressTable ??= new RuleTable("egress", pod.egress, undefined));
    const ctx = this.ctx;
    ctx.pod = peer;
    ctx.ipText = ingress ? conn.src : conn.dst;
    ctx.parsed = undefined;
    const hit = table.match(conn.protocol, conn.port, ctx, ingress ? pod : peer);
    if (hit) {
      return {
        verdict: "allow",
        reason: { kind: "allowed", pod: pod.key, policy: hit.policy.key, rule: hit.rule.index },
      };
    }
    return {
      verdict: "deny",
      reason: {
        kind: "denied",
        pod: pod.key,
        isolatedBy: ingress ? pod.ingressKeys : pod.egressKeys,
      },
    };
  }

  // ---------------------------------------------------------------- for the dataplane

  /** IPs of pods (on `node` when given) isolated for ingress / egress: what the rules must queue. */
  queuedIPs(node?: string): { ingress: string[]; egress: string[] } {
    const ingress: string[] = [];
    const egress: string[] = [];
    const pods = node === undefined ? this.pods.values() : (this.podsByNode.get(node) ?? []);
    for (const pod of pods) {
      for (const ip of pod.ips) {
        if (this.owner.get(ip) !== pod) continue;
        if (pod.ingress.length) ingress.push(ip);
        if (pod.egress.length) egress.push(ip);
      }
    }
    return { ingress: ingress.sort(), egress: egress.sort() };
  }

  /**
   * Build the rule tables of every pod whose selecting policies changed since the last call, so
   * the verdict path never pays for it. Call after applying a batch of changes (the verdict loop
   * does); tables are otherwise built on first use.
   */
  prepare(): number {
    const n = this.stale.size;
    for (const pod of this.stale) {
      if (pod.ingress.length) {
        pod.ingressTable ??= new RuleTable("ingress", pod.ingress, pod.namedPorts);
      }
      if (pod.egress.length) pod.egressTable ??= new RuleTable("egress", pod.egress, undefined);
    }
    this.stale.clear();
    return n;
  }

  private refresh(pod: PodEntry): void {
    resetTables(pod);
    this.stale.add(pod);
  }

  /** namespace/name of the pod owning `ip`, if any. */
  podAt(ip: string): string | undefined {
    const canonical = canonicalIP(ip);
    return canonical === null ? undefined : this.owner.get(canonical)?.key;
  }

  /** The first IP of a pod ("namespace/name"), for tools that name pods. */
  podIP(key: string): string | undefined {
    return this.pods.get(key)?.ips[0];
  }

  /** namespace/name of every pod that owns an IP, sorted. */
  podKeys(): string[] {
    return [...this.pods.values()].filter((p) => p.ips.some((ip) => this.owner.get(ip) === p))
      .map((p) => p.key).sort();
  }

  policyKeys(): string[] {
    return [...this.policies.keys()].sort();
  }

  stats(): EngineStats {
    return { pods: this.pods.size, namespaces: this.namespaces.size, policies: this.policies.size };
  }
}

/** The pod's selecting policies changed: new explanation keys, tables rebuilt on next use. */
function resetTables(pod: PodEntry): void {
  pod.ingressKeys = pod.ingress.map((p) => p.key);
  pod.egressKeys = pod.egress.map((p) => p.key);
  pod.ingressTable = undefined;
  pod.egressTable = undefined;
}

function byKey(a: CompiledPolicy, b: CompiledPolicy): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

function insertSorted(list: CompiledPolicy[], policy: CompiledPolicy): void {
  let i = 0;
  while (i < list.length && byKey(list[i]!, policy) < 0) i++;
  list.splice(i, 0, policy);
}

function addToIndex<K, V>(index: Map<K, Set<V>>, key: K, value: V): void {
  let set = index.get(key);
  if (!set) index.set(key, set = new Set());
  set.add(value);
}

function removeFromIndex<K, V>(index: Map<K, Set<V>>, key: K, value: V): void {
  const set = index.get(key);
  if (!set) return;
  set.delete(value);
  if (set.size === 0) index.delete(key);
}
