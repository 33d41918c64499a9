/**
 * The policy engine: NetworkPolicy v1 semantics, plus the cluster-scoped Admin and Baseline tiers
 * (ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy), over an in-memory view
 * of pods, namespaces, nodes and policies. Pure: no I/O, no clocks. Every state change is applied
 * incrementally to indexes, so a verdict costs one IP lookup per side plus one rule-table lookup
 * per judged side (and one tier-table walk per tier that selects the pod).
 *
 * Each side of a connection (egress of the source pod, ingress of the destination pod) walks:
 * Admin tier -> NetworkPolicy tier (only when a NetworkPolicy isolates the pod in that direction:
 * allowed iff a rule admits, final either way) -> Baseline tier -> allowed by default. In a tier
 * the first matching rule decides: Accept allows, Deny denies, Pass skips to the next tier.
 *
 * Indexes kept up to date on every change:
 *   - pod by IP (the Running pod wins when two pods claim one IP);
 *   - for each pod, the policies selecting it for ingress and for egress (sorted by key), and a
 *     rule table per direction built from them on first use (see rule_table.ts);
 *   - for each pod, the Admin and Baseline policies whose subject selects it, per direction, in
 *     tier order, and a tier table per tier and direction (see tier_table.ts); for each cluster
 *     policy, the pods it selects (so a change touches only those);
 *   - node by address (for `nodes` peers);
 *   - pods by namespace (to re-select when a policy changes) and by node (for rule sync);
 *   - an identity per pod (namespace, namespace labels, pod labels) that rule tables memoize on.
 * Peer selectors are evaluated against the one peer pod (or its memoized identity), so label
 * changes only re-identify the pods concerned.
 */
import { canonicalIP, type ParsedIP, parseIP } from "../net/ip.ts";
import {
  clusterPolicyKey,
  compileClusterPolicy,
  type CompiledClusterPolicy,
  tierOrder,
} from "./cluster_compile.ts";
import { type CompiledPolicy, compilePolicy } from "./compile.ts";
import { type CompiledPod, compilePod } from "./pod_compile.ts";
import { Interned } from "./intern.ts";
import type { Protocol } from "../net/protocol.ts";
import { NodeIndex } from "./nodes.ts";
import { RuleTable } from "./rule_table.ts";
import { type Labels, toLabels } from "./selector.ts";
import { type TierHit, type TierPeerContext, TierTable } from "./tier_table.ts";
import type {
  ClusterPolicyKind,
  ClusterPolicyObject,
  Connection,
  Decision,
  DirectionReason,
  DirectionResult,
  Namespace,
  NetworkPolicy,
  Node,
  ObjectError,
  Pod,
  Tier,
  TierRuleRef,
} from "./types.ts";

/** Reused for every verdict (evaluation is synchronous), so judging allocates no context. */
class VerdictContext implements TierPeerContext {
  pod: PodEntry | undefined;
  ipText = "";
  parsed: ParsedIP | null | undefined;
  constructor(
    readonly namespaceLabels: (namespace: string) => Labels,
    private readonly nodeLabelsAt: (ip: string) => Labels | undefined,
  ) {}
  ip(): ParsedIP | null {
    return this.parsed === undefined ? (this.parsed = parseIP(this.ipText)) : this.parsed;
  }
  nodeLabels(): Labels | undefined {
    return this.nodeLabelsAt(this.ipText);
  }
}

/**
 * A pod's Admin and Baseline tier policies for one direction, in tier order. Shared by every pod
 * whose subjects select the same policies (see tierViewFor), so the tables and their per-identity
 * memos are built once and warmed by all those pods' traffic.
 */
interface TierView {
  admin: CompiledClusterPolicy[];
  baseline: CompiledClusterPolicy[];
  adminTable?: TierTable;
  baselineTable?: TierTable;
  /** Keys of admin then baseline, for explanations (allocated once per change, not per verdict). */
  consulted: string[];
  /** Some rule can deny: only then can the tiers change this side's default outcome. */
  canDeny: boolean;
}

const NO_TIERS: TierView = Object.freeze({
  admin: [],
  baseline: [],
  consulted: [],
  canDeny: false,
}) as TierView;

/**
 * The engine's view of one pod: only what verdicts need. Kept small (a node agent holds one per
 * pod of the cluster, twice): labels, named ports and host IPs are shared by every pod that has
 * the same ones (see Interned), the name is in `key` only, and pods an engine scoped to a node
 * never judges carry no policy lists (shared empty arrays, never mutated).
 */
interface PodEntry extends Omit<CompiledPod, "name"> {
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
  /** Every Admin/Baseline policy whose subject selects the pod, in tier order (never for hostNetwork pods). */
  tierPolicies: CompiledClusterPolicy[];
  ingressTiers: TierView;
  egressTiers: TierView;
}

const NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name";
const NO_ADDRESSES: readonly string[] = Object.freeze([]);
const NOT_JUDGED: DirectionResult = { verdict: "allow", reason: { kind: "not-judged" } };
const NOT_A_POD: DirectionResult = { verdict: "allow", reason: { kind: "not-a-pod" } };

export interface EngineOptions {
  /**
   * Judge only this node's pods (a node agent's engines): pods elsewhere are known as peers
   * (labels, addresses) but carry no selecting policies and get no rule tables, which is most of
   * an engine's memory at scale. `evaluate` and `queuedIPs` then judge for this node only.
   */
  node?: string;
}

/** Shared empty lists of pods that have none (never mutated: see ownList). */
const NO_POLICIES: CompiledPolicy[] = Object.freeze([]) as unknown as CompiledPolicy[];
const NO_KEYS: string[] = Object.freeze([]) as unknown as string[];
const NO_CLUSTER_POLICIES: CompiledClusterPolicy[] = Object.freeze(
  [],
) as unknown as CompiledClusterPolicy[];

export interface EngineStats {
  pods: number;
  namespaces: number;
  policies: number;
}

/** Sizes of the cluster-scoped state (kept apart from EngineStats, whose shape callers pin). */
export interface TierStats {
  /** ClusterNetworkPolicies, AdminNetworkPolicies and the BaselineAdminNetworkPolicy. */
  clusterPolicies: number;
  nodes: number;
}

export class PolicyEngine {
  /** The node this engine judges for (EngineOptions.node); undefined: every node. */
  private readonly scope: string | undefined;
  private readonly labelSets = new Interned<Labels>();
  private readonly portSets = new Interned<
    ReadonlyMap<string, Partial<Record<Protocol, number>>>
  >();
  private readonly hostIPSets = new Interned<ReadonlySet<string>>();
  private readonly namespaces = new Map<string, Labels>();
  private readonly pods = new Map<string, PodEntry>();
  private readonly podsByNamespace = new Map<string, Set<PodEntry>>();
  private readonly podsByNode = new Map<string, Set<PodEntry>>();
  /**
   * The pods claiming an IP that more than one pod claims (rare: a finished pod's IP reused), in
   * the order they claimed it; `owner` holds the one that wins, and alone the only claimant.
   */
  private readonly claims = new Map<string, PodEntry[]>();
  private readonly owner = new Map<string, PodEntry>();
  private readonly policies = new Map<string, CompiledPolicy>();
  private readonly policiesByNamespace = new Map<string, Map<string, CompiledPolicy>>();
  private _generation = 0;
  private readonly identities = new Map<string, number>();
  private readonly namespaceVersions = new Map<string, number>();
  private readonly clusterPolicies = new Map<string, CompiledClusterPolicy>();
  /** Policy key -> the pods its subject selects. */
  private readonly clusterSubjects = new Map<string, Set<PodEntry>>();
  /** Shared tier views by direction and policy versions; emptied when a cluster policy changes. */
  private readonly tierViews = new Map<string, TierView>();
  /** [ingress, egress] views by the versions of a pod's tierPolicies: pods alike share the work. */
  private readonly tierViewPairs = new Map<string, [TierView, TierView]>();
  /** A number per compiled policy version, for tierViews keys. */
  private readonly policyVersions = new WeakMap<CompiledClusterPolicy, number>();
  private policyVersionSeq = 0;
  private readonly nodes = new NodeIndex();
  private readonly ctx = new VerdictContext(
    (ns) => this.namespaceLabels(ns),
    (ip) => this.nodes.labelsAt(ip),
  );
  /** Pods whose rule tables must be rebuilt (see prepare()). */
  private readonly stale = new Set<PodEntry>();
  /** Addresses whose connections' verdicts may have changed; only kept once asked for. */
  private changedAddresses: Set<string> | undefined;

  constructor(opts: EngineOptions = {}) {
    this.scope = opts.node;
  }

  /** Whether this engine judges `pod` (always, unless scoped to another node). */
  private inScope(pod: PodEntry): boolean {
    return this.scope === undefined || pod.nodeName === this.scope;
  }

  /** The node to judge for: the engine's scope, or the caller's (which must then agree). */
  private judgeNode(node: string | undefined): string | undefined {
    if (this.scope === undefined) return node;
    if (node !== undefined && node !== this.scope) {
      throw new RangeError(`this engine judges node ${this.scope} only, not ${node}`);
    }
    return this.scope;
  }

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
    const old = this.namespaces.get(name);
    this.namespaces.set(name, labels);
    this.namespaceLabelsChanged(name, !old || !sameLabels(old, labels));
    return problems.map(([field, message]) => ({ object: `Namespace ${name}`, field, message }));
  }

  deleteNamespace(name: string): void {
    if (this.namespaces.delete(name)) this.namespaceLabelsChanged(name);
  }

  /** Peers in this namespace now look different to namespace selectors: new identities. */
  private namespaceLabelsChanged(name: string, changed = true): void {
    this.namespaceVersions.set(name, (this.namespaceVersions.get(name) ?? 0) + 1);
    for (const pod of this.podsByNamespace.get(name) ?? []) {
      if (changed) this.noteChanged(pod.ips);
      pod.identity = this.identityOf(pod);
      // Subjects select by namespace labels too.
      if (this.clusterPolicies.size || pod.tierPolicies.length) this.selectTiersFor(pod);
    }
    this._generation++;
  }

  private identityOf(pod: PodEntry): number {
    const key = `${pod.namespace}\u0000${this.namespaceVersions.get(pod.namespace) ?? 0}\u0000${
      labelsKey(pod.labels)
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
    const { pod: compiled, errors } = compilePod(pod);
    if (!compiled) return errors;
    const { labels, hostIPs, namedPorts, hostNetworkIPs } = compiled;
    const entry: PodEntry = {
      key: compiled.key,
      namespace: compiled.namespace,
      labels: this.labelSets.get(labelsKey(labels), () => labels),
      nodeName: compiled.nodeName,
      hostNetwork: compiled.hostNetwork,
      ips: compiled.ips,
      hostIPs: this.hostIPSets.get([...hostIPs].sort().join(" "), () => hostIPs),
      running: compiled.running,
      namedPorts: namedPorts.size
        ? this.portSets.get(JSON.stringify([...namedPorts].sort()), () => namedPorts)
        : NO_NAMED_PORTS,
      ingress: NO_POLICIES,
      egress: NO_POLICIES,
      ingressKeys: NO_KEYS,
      egressKeys: NO_KEYS,
      identity: 0,
      tierPolicies: NO_CLUSTER_POLICIES,
      ingressTiers: NO_TIERS,
      egressTiers: NO_TIERS,
      hostNetworkIPs: hostNetworkIPs.length ? hostNetworkIPs : NO_KEYS,
    };
    entry.identity = this.identityOf(entry);
    // hostNetwork pods are node endpoints: no policy selects them, they are never queued.
    if (!entry.hostNetwork) {
      this.selectPoliciesFor(entry);
      this.selectTiersFor(entry);
    }
    const old = this.pods.get(entry.key);
    if (!old || podSignature(old) !== podSignature(entry)) {
      this.noteChanged(entry.ips);
      if (old) this.noteChanged(old.ips);
    }
    this.removePod(entry.key);
    this.pods.set(entry.key, entry);
    addToIndex(this.podsByNamespace, entry.namespace, entry);
    if (entry.nodeName) addToIndex(this.podsByNode, entry.nodeName, entry);
    for (const ip of entry.ips) this.claim(ip, entry);
    this._generation++;
    return errors;
  }

  deletePod(namespace: string, name: string): void {
    this.noteChanged(this.pods.get(`${namespace}/${name}`)?.ips ?? []);
    if (this.removePod(`${namespace}/${name}`)) this._generation++;
  }

  private removePod(key: string): boolean {
    const old = this.pods.get(key);
    if (!old) return false;
    this.pods.delete(key);
    this.stale.delete(old);
    for (const p of old.tierPolicies) this.clusterSubjects.get(p.key)?.delete(old);
    removeFromIndex(this.podsByNamespace, old.namespace, old);
    if (old.nodeName) removeFromIndex(this.podsByNode, old.nodeName, old);
    for (const ip of old.ips) this.unclaim(ip, old);
    return true;
  }

  private claim(ip: string, pod: PodEntry): void {
    const current = this.owner.get(ip);
    if (current === undefined) {
      this.owner.set(ip, pod);
      return;
    }
    const list = this.claims.get(ip) ?? [current];
    list.push(pod);
    this.claims.set(ip, list);
    this.electOwner(ip, list);
  }

  private unclaim(ip: string, pod: PodEntry): void {
    const list = this.claims.get(ip);
    if (list === undefined) {
      if (this.owner.get(ip) === pod) this.owner.delete(ip);
      return;
    }
    const rest = list.filter((p) => p !== pod);
    if (rest.length > 1) this.claims.set(ip, rest);
    else this.claims.delete(ip);
    if (rest.length === 0) this.owner.delete(ip);
    else this.electOwner(ip, rest);
  }

  /** Two pods with one IP (a finished pod's IP reused): the Running one owns it. */
  private electOwner(ip: string, claimants: PodEntry[]): void {
    this.owner.set(ip, claimants.find((p) => p.running) ?? claimants[claimants.length - 1]!);
  }

  private selectPoliciesFor(pod: PodEntry): void {
    const inNamespace = this.policiesByNamespace.get(pod.namespace);
    if (!inNamespace || !this.inScope(pod)) return;
    const ingress: CompiledPolicy[] = [];
    const egress: CompiledPolicy[] = [];
    for (const policy of inNamespace.values()) {
      if (!policy.podSelector.matches(pod.labels)) continue;
      if (policy.ingress) ingress.push(policy);
      if (policy.egress) egress.push(policy);
    }
    pod.ingress = ingress.length ? ingress.sort(byKey) : NO_POLICIES;
    pod.egress = egress.length ? egress.sort(byKey) : NO_POLICIES;
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
      if (pod.hostNetwork || !this.inScope(pod) || !policy.podSelector.matches(pod.labels)) {
        continue;
      }
      if (policy.ingress) pod.ingress = withPolicy(pod.ingress, policy);
      if (policy.egress) pod.egress = withPolicy(pod.egress, policy);
      this.refresh(pod);
      this.noteChanged(pod.ips);
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
      if (i >= 0) pod.ingress = withoutPolicy(pod.ingress, old);
      const e = pod.egress.indexOf(old);
      if (e >= 0) pod.egress = withoutPolicy(pod.egress, old);
      if (i >= 0 || e >= 0) {
        this.refresh(pod);
        this.noteChanged(pod.ips);
      }
    }
    return true;
  }

  // ---------------------------------------------------------------- verdicts

  /**
   * Judge a new connection. It is allowed iff the source side allows it as egress and the
   * destination side allows it as ingress. With `node`, only the sides whose pod runs on that
   * node are judged (each node judges its own pods, so no direction is judged twice).
   */
  evaluate(conn: Connection, forNode?: string): Decision {
    const node = this.judgeNode(forNode);
    const src = this.owner.get(conn.src);
    const dst = this.owner.get(conn.dst);
    const egress = !src
      ? NOT_A_POD
      : node !== undefined && src.nodeName !== node
      ? NOT_JUDGED
      : this.side("egress", src, conn, dst);
    const ingress = !dst
      ? NOT_A_POD
      : node !== undefined && dst.nodeName !== node
      ? NOT_JUDGED
      : this.side("ingress", dst, conn, src);
    const verdict = egress.verdict === "allow" && ingress.verdict === "allow" ? "allow" : "deny";
    return { verdict, egress, ingress, srcPod: src?.key, dstPod: dst?.key };
  }

  /**
   * One side: Admin tier, NetworkPolicy tier (when isolated), Baseline tier, default allow.
   * `peer` is the pod at the other end, if any.
   */
  private side(
    direction: "ingress" | "egress",
    pod: PodEntry,
    conn: Connection,
    peer: PodEntry | undefined,
  ): DirectionResult {
    const ingress = direction === "ingress";
    const tiers = ingress ? pod.ingressTiers : pod.egressTiers;
    // A pod reaching its own IP is not subject to cluster-scoped policy.
    if (tiers === NO_TIERS || peer === pod) {
      return this.networkPolicyTier(direction, pod, conn, peer);
    }
    let passed: TierRuleRef[] | undefined;
    if (tiers.admin.length) {
      const hit = this.tierMatch(
        tiers.adminTable ??= new TierTable(direction, tiers.admin),
        ingress,
        pod,
        conn,
        peer,
      );
      if (hit) {
        const decided = tierDecision(pod, hit, passed);
        if (decided) return decided;
        passed = [hit.rule.by];
      }
    }
    if ((ingress ? pod.ingress : pod.egress).length) {
      const r = this.networkPolicyTier(direction, pod, conn, peer);
      return passed
        ? { verdict: r.verdict, reason: { ...r.reason, passed } as DirectionReason }
        : r;
    }
    if (tiers.baseline.length) {
      const hit = this.tierMatch(
        tiers.baselineTable ??= new TierTable(direction, tiers.baseline),
        ingress,
        pod,
        conn,
        peer,
      );
      if (hit) {
        const decided = tierDecision(pod, hit, passed);
        if (decided) return decided;
        passed = [...(passed ?? []), hit.rule.by];
      }
    }
    const reason: DirectionReason = passed
      ? { kind: "default-allowed", pod: pod.key, consulted: tiers.consulted, passed }
      : { kind: "default-allowed", pod: pod.key, consulted: tiers.consulted };
    return { verdict: "allow", reason };
  }

  private tierMatch(
    table: TierTable,
    ingress: boolean,
    pod: PodEntry,
    conn: Connection,
    peer: PodEntry | undefined,
  ): TierHit | null {
    const ctx = this.ctx;
    ctx.pod = peer;
    ctx.ipText = ingress ? conn.src : conn.dst;
    ctx.parsed = undefined;
    return table.match(conn.protocol, conn.port, ctx, ingress ? pod : peer);
  }

  /** The NetworkPolicy tier as it always was: own-node ingress, then the pod's rule tables. */
  private networkPolicyTier(
    direction: "ingress" | "egress",
    pod: PodEntry,
    conn: Connection,
    peer: PodEntry | undefined,
  ): DirectionResult {
    if (direction === "ingress" && pod.ingress.length && pod.hostIPs.has(conn.src)) {
      return { verdict: "allow", reason: { kind: "from-own-node", pod: pod.key } };
    }
    return this.judge(direction, pod, conn, peer);
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

  /**
   * IPs of pods (on `node` when given) whose ingress / egress some tier can deny: isolated by a
   * NetworkPolicy in that direction, or selected by an Admin/Baseline policy with a Deny rule for
   * that direction. What the rules must queue; every other packet's verdict is "allow" anyway.
   */
  queuedIPs(forNode?: string): { ingress: string[]; egress: string[] } {
    const node = this.judgeNode(forNode);
    const ingress: string[] = [];
    const egress: string[] = [];
    const pods = node === undefined ? this.pods.values() : (this.podsByNode.get(node) ?? []);
    for (const pod of pods) {
      for (const ip of pod.ips) {
        if (this.owner.get(ip) !== pod) continue;
        // Only a NetworkPolicy or a tier rule that can deny changes the default outcome.
        if (pod.ingress.length || pod.ingressTiers.canDeny) ingress.push(ip);
        if (pod.egress.length || pod.egressTiers.canDeny) egress.push(ip);
      }
    }
    return { ingress: ingress.sort(), egress: egress.sort() };
  }

  /**
   * Whether `ip` (canonical text) is known to be on `node`: a pod there owns it (isolated or not),
   * or it is one of that Node object's addresses. See local_pods.ts for what uses it.
   */
  isLocalAddress(ip: string, node: string): boolean {
    const pod = this.owner.get(ip);
    if (pod) return pod.nodeName === node;
    return this.nodes.addressesOf(node).includes(ip);
  }

  /** Every address isLocalAddress() accepts for `node`, sorted. */
  localAddresses(node: string): string[] {
    const out = new Set(this.nodes.addressesOf(node));
    for (const pod of this.podsByNode.get(node) ?? []) {
      for (const ip of pod.ips) if (this.owner.get(ip) === pod) out.add(ip);
    }
    return [...out].sort();
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
      for (
        const [direction, t] of [["ingress", pod.ingressTiers], [
          "egress",
          pod.egressTiers,
        ]] as const
      ) {
        if (t.admin.length) t.adminTable ??= new TierTable(direction, t.admin);
        if (t.baseline.length) t.baselineTable ??= new TierTable(direction, t.baseline);
      }
    }
    this.stale.clear();
    return n;
  }

  private refresh(pod: PodEntry): void {
    resetTables(pod);
    this.stale.add(pod);
  }

  // ---------------------------------------------------------------- for strict mode

  /**
   * Start keeping the addresses whose connections' verdicts may change (strict mode re-judges the
   * conntrack entries of those; src/verdict/strict_cuts.ts). Off by default, so an engine nobody
   * asks does not accumulate them.
   */
  trackChangedAddresses(): void {
    this.changedAddresses ??= new Set();
  }

  /**
   * Addresses (canonical text) such that every connection whose verdict may have changed since
   * the last call has one of them at one end: the pods a change re-selected (policies, tiers),
   * the pods whose labels, addresses or ports changed (they are the subject or the peer of
   * others' rules), every pod of a namespace whose labels changed, a node's addresses (for
   * `nodes` peers). Conservative: a listed address may have no changed verdict at all.
   */
  takeChangedAddresses(): readonly string[] {
    const set = this.changedAddresses;
    // Asked between every two packet turns: nothing changed costs no allocation.
    if (!set?.size) return NO_ADDRESSES;
    const out = [...set];
    set.clear();
    return out;
  }

  private noteChanged(ips: Iterable<string>): void {
    const set = this.changedAddresses;
    if (set) { for (const ip of ips) set.add(ip); }
  }

  /** Every address owned by a pod on `node` (the pods whose sides this node judges). */
  podIPsOn(node: string): string[] {
    const out: string[] = [];
    for (const pod of this.podsByNode.get(node) ?? []) {
      for (const ip of pod.ips) if (this.owner.get(ip) === pod) out.push(ip);
    }
    return out;
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

  /**
   * Addresses a named pod answers on, for tools that name pods: the IPs it owns, or for a
   * hostNetwork pod its node's addresses (judged as a non-pod endpoint). Undefined: no such pod.
   */
  podAddresses(key: string): { ips: string[]; hostNetwork: boolean } | undefined {
    const pod = this.pods.get(key);
    if (!pod) return undefined;
    return pod.hostNetwork
      ? { ips: [...pod.hostNetworkIPs], hostNetwork: true }
      : { ips: pod.ips.filter((ip) => this.owner.get(ip) === pod), hostNetwork: false };
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

  // ---------------------------------------------------------------- cluster-scoped tiers

  /**
   * Apply a ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy. An invalid
   * object is not applied (its last good version stays) and its errors are returned; a valid one
   * may come back with warnings (`severity: "warning"`: e.g. a rule that fails closed).
   */
  upsertClusterPolicy(
    kind: ClusterPolicyKind,
    obj: ClusterPolicyObject,
    source?: string,
  ): ObjectError[] {
    const { policy, errors } = compileClusterPolicy(kind, obj, source);
    if (!policy) return errors;
    this.removeClusterPolicy(policy.key);
    this.tierViews.clear();
    this.tierViewPairs.clear();
    this.policyVersions.set(policy, ++this.policyVersionSeq);
    this.clusterPolicies.set(policy.key, policy);
    const selected = new Set<PodEntry>();
    this.clusterSubjects.set(policy.key, selected);
    for (const [namespace, pods] of this.podsByNamespace) {
      if (!policy.subjectNamespaces.matches(this.namespaceLabels(namespace))) continue;
      for (const pod of pods) {
        if (pod.hostNetwork || !this.inScope(pod)) continue;
        if (policy.subjectPods && !policy.subjectPods.matches(pod.labels)) continue;
        if (pod.tierPolicies === NO_CLUSTER_POLICIES) pod.tierPolicies = [];
        insertInTierOrder(pod.tierPolicies, policy);
        selected.add(pod);
        this.rebuildTiers(pod);
        this.noteChanged(pod.ips);
      }
    }
    this._generation++;
    return errors;
  }

  deleteClusterPolicy(kind: ClusterPolicyKind, name: string): void {
    if (this.removeClusterPolicy(clusterPolicyKey(kind, name))) this._generation++;
  }

  private removeClusterPolicy(key: string): boolean {
    const old = this.clusterPolicies.get(key);
    if (!old) return false;
    this.clusterPolicies.delete(key);
    // Views holding the old version must not be handed to other pods (pods keep theirs until
    // re-selected; a view never changes).
    this.tierViews.clear();
    this.tierViewPairs.clear();
    for (const pod of this.clusterSubjects.get(key) ?? []) {
      pod.tierPolicies = pod.tierPolicies.filter((p) => p !== old);
      this.rebuildTiers(pod);
      this.noteChanged(pod.ips);
    }
    this.clusterSubjects.delete(key);
    return true;
  }

  /** Which cluster policies' subjects select this pod (after its labels or namespace changed). */
  private selectTiersFor(pod: PodEntry): void {
    for (const p of pod.tierPolicies) this.clusterSubjects.get(p.key)?.delete(pod);
    pod.tierPolicies = NO_CLUSTER_POLICIES;
    if (!this.inScope(pod)) {
      pod.ingressTiers = pod.egressTiers = NO_TIERS;
      return;
    }
    if (!pod.hostNetwork && this.clusterPolicies.size) {
      const selected: CompiledClusterPolicy[] = [];
      const nsLabels = this.namespaceLabels(pod.namespace);
      for (const policy of this.clusterPolicies.values()) {
        if (!policy.subjectNamespaces.matches(nsLabels)) continue;
        if (policy.subjectPods && !policy.subjectPods.matches(pod.labels)) continue;
        selected.push(policy);
        this.clusterSubjects.get(policy.key)?.add(pod);
      }
      if (selected.length) pod.tierPolicies = selected.sort(tierOrder);
    }
    this.rebuildTiers(pod);
  }

  private rebuildTiers(pod: PodEntry): void {
    const sorted = pod.tierPolicies;
    const signature = sorted.map((p) => this.policyVersions.get(p)).join(",");
    let pair = this.tierViewPairs.get(signature);
    if (!pair) {
      pair = [this.tierViewFor(sorted, "ingress"), this.tierViewFor(sorted, "egress")];
      this.tierViewPairs.set(signature, pair);
    }
    [pod.ingressTiers, pod.egressTiers] = pair;
    this.stale.add(pod);
  }

  /** The shared view of these policies (already in tier order) for one direction. */
  private tierViewFor(sorted: CompiledClusterPolicy[], direction: "ingress" | "egress"): TierView {
    const applies = (p: CompiledClusterPolicy) =>
      (direction === "ingress" ? p.ingress : p.egress).length > 0;
    const admin = sorted.filter((p) => p.tier === "Admin" && applies(p));
    const baseline = sorted.filter((p) => p.tier === "Baseline" && applies(p));
    if (admin.length === 0 && baseline.length === 0) return NO_TIERS;
    const all = [...admin, ...baseline];
    const key = `${direction}:${all.map((p) => this.policyVersions.get(p)).join(",")}`;
    let view = this.tierViews.get(key);
    if (!view) {
      view = {
        admin,
        baseline,
        consulted: all.map((p) => p.key),
        canDeny: all.some((p) => direction === "ingress" ? p.ingressCanDeny : p.egressCanDeny),
      };
      this.tierViews.set(key, view);
    }
    return view;
  }

  upsertNode(node: Node): ObjectError[] {
    const name = node?.metadata?.name;
    const before = typeof name === "string" ? this.nodes.describe(name) : undefined;
    const errors = this.nodes.upsert(node);
    const after = typeof name === "string" ? this.nodes.describe(name) : undefined;
    if (before?.signature !== after?.signature) {
      this.noteChanged(before?.ips ?? []);
      this.noteChanged(after?.ips ?? []);
    }
    this._generation++;
    return errors;
  }

  deleteNode(name: string): void {
    this.noteChanged(this.nodes.describe(name)?.ips ?? []);
    if (this.nodes.delete(name)) this._generation++;
  }

  /** Node `name`'s pod CIDRs (canonical text); undefined when no such Node is known. */
  nodePodCIDRs(name: string): readonly string[] | undefined {
    return this.nodes.podCIDRsOf(name);
  }

  /** "<Kind>/<name>" of every applied cluster-scoped policy, in evaluation order per tier. */
  clusterPolicyKeys(): string[] {
    const all = [...this.clusterPolicies.values()].sort(tierOrder);
    return [
      ...all.filter((p) => p.tier === "Admin"),
      ...all.filter((p) => p.tier === "Baseline"),
    ].map((p) => p.key);
  }

  /** Applied cluster-scoped policies per tier (an unknown `tier` counts as Admin, where it acts). */
  clusterPoliciesByTier(): Record<Tier, number> {
    const out: Record<Tier, number> = { Admin: 0, Baseline: 0 };
    for (const p of this.clusterPolicies.values()) out[p.tier]++;
    return out;
  }

  tierStats(): TierStats {
    return { clusterPolicies: this.clusterPolicies.size, nodes: this.nodes.size };
  }
}

/** Everything about a pod a verdict depends on, as one string: equal means no verdict changed. */
function podSignature(p: PodEntry): string {
  return JSON.stringify([
    p.identity,
    [...p.ips].sort(),
    p.running,
    p.nodeName ?? "",
    p.hostNetwork,
    [...p.hostIPs].sort(),
    [...p.namedPorts].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
  ]);
}

function sameLabels(a: Labels, b: Labels): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

/** Insert keeping tier order (binary search: a pod may be selected by many policies). */
function insertInTierOrder(list: CompiledClusterPolicy[], policy: CompiledClusterPolicy): void {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (tierOrder(list[mid]!, policy) < 0) lo = mid + 1;
    else hi = mid;
  }
  list.splice(lo, 0, policy);
}

/** Accept and Deny decide the side; Pass (null) goes on to the next tier. */
function tierDecision(
  pod: PodEntry,
  hit: TierHit,
  passed: TierRuleRef[] | undefined,
): DirectionResult | null {
  const action = hit.rule.action;
  if (action === "Pass") return null;
  const kind = action === "Accept" ? "tier-accepted" as const : "tier-denied" as const;
  const reason: DirectionReason = passed
    ? { kind, pod: pod.key, by: hit.rule.by, passed }
    : { kind, pod: pod.key, by: hit.rule.by };
  return { verdict: action === "Accept" ? "allow" : "deny", reason };
}

/** The pod's selecting policies changed: new explanation keys, tables rebuilt on next use. */
function resetTables(pod: PodEntry): void {
  pod.ingressKeys = pod.ingress.length ? pod.ingress.map((p) => p.key) : NO_KEYS;
  pod.egressKeys = pod.egress.length ? pod.egress.map((p) => p.key) : NO_KEYS;
  pod.ingressTable = undefined;
  pod.egressTable = undefined;
}

function byKey(a: CompiledPolicy, b: CompiledPolicy): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

/** `list` with `policy` inserted in key order (a new array: lists may be shared empties). */
function withPolicy(list: CompiledPolicy[], policy: CompiledPolicy): CompiledPolicy[] {
  let i = 0;
  while (i < list.length && byKey(list[i]!, policy) < 0) i++;
  return [...list.slice(0, i), policy, ...list.slice(i)];
}

function withoutPolicy(list: CompiledPolicy[], policy: CompiledPolicy): CompiledPolicy[] {
  const rest = list.filter((p) => p !== policy);
  return rest.length ? rest : NO_POLICIES;
}

/** One text per label set, the same whatever the order the labels came in. */
function labelsKey(labels: Labels): string {
  return JSON.stringify([...labels].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

const NO_NAMED_PORTS: ReadonlyMap<string, Partial<Record<Protocol, number>>> = new Map();

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
