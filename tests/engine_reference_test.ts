/**
 * Differential test: the indexed, memoizing engine against a naive evaluator written straight
 * from the NetworkPolicy spec (no indexes, no caches, raw objects), over seeded random clusters,
 * policies, connections and mutations. Any divergence in verdict, deciding policy/rule, or
 * isolating set fails with the case that shows it.
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import type {
  ClusterPortSpec,
  Connection,
  Decision,
  LabelSelector,
  Namespace,
  NetworkPolicy,
  NetworkPolicyPeer,
  NetworkPolicyPort,
  Pod,
} from "../src/policy/types.ts";
import type { Protocol } from "../src/net/protocol.ts";
import { prng } from "../bench/cluster_gen.ts";

// ------------------------------------------------------------------ the naive reference

type Labels = Record<string, string>;

function selects(sel: LabelSelector | undefined, labels: Labels): boolean {
  for (const [k, v] of Object.entries(sel?.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of sel?.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, e.key);
    const v = labels[e.key];
    if (e.operator === "In" && !(has && e.values!.includes(v!))) return false;
    if (e.operator === "NotIn" && has && e.values!.includes(v!)) return false;
    if (e.operator === "Exists" && !has) return false;
    if (e.operator === "DoesNotExist" && has) return false;
  }
  return true;
}

function v4(ip: string): number | null {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(ip);
  return m ? ((+m[1]! << 24) | (+m[2]! << 16) | (+m[3]! << 8) | +m[4]!) >>> 0 : null;
}

function inCidr(ip: string, cidr: string): boolean {
  const [net, len] = cidr.split("/");
  const a = v4(ip), b = v4(net!);
  if (a === null || b === null) return false;
  const bits = Number(len);
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return ((a & mask) >>> 0) === ((b & mask) >>> 0);
}

interface World {
  namespaces: Map<string, Labels>;
  pods: Map<string, Pod>;
  policies: Map<string, NetworkPolicy>;
}

function nsLabels(w: World, ns: string): Labels {
  return { ...(w.namespaces.get(ns) ?? {}), "kubernetes.io/metadata.name": ns };
}

function podAt(w: World, ip: string): Pod | undefined {
  for (const p of w.pods.values()) if (p.status?.podIP === ip && !p.spec?.hostNetwork) return p;
  return undefined;
}

function types(np: NetworkPolicy): string[] {
  if (np.spec.policyTypes) return np.spec.policyTypes;
  return (np.spec.egress?.length ?? 0) > 0 ? ["Ingress", "Egress"] : ["Ingress"];
}

function peerOk(w: World, peer: NetworkPolicyPeer, np: NetworkPolicy, ip: string, pod?: Pod) {
  if (peer.ipBlock) {
    return inCidr(ip, peer.ipBlock.cidr) && !(peer.ipBlock.except ?? []).some((e) => inCidr(ip, e));
  }
  if (!pod) return false;
  const nsOk = peer.namespaceSelector
    ? selects(peer.namespaceSelector, nsLabels(w, pod.metadata.namespace!))
    : pod.metadata.namespace === np.metadata.namespace;
  return nsOk && (!peer.podSelector || selects(peer.podSelector, pod.metadata.labels ?? {}));
}

function portOk(p: NetworkPolicyPort, c: Connection, dst?: Pod): boolean {
  if ((p.protocol ?? "TCP") !== c.protocol) return false;
  if (p.port === undefined) return true;
  if (typeof p.port === "number") return c.port >= p.port && c.port <= (p.endPort ?? p.port);
  const named = dst?.spec?.containers?.flatMap((x) => x.ports ?? [])
    .find((x) => x.name === p.port && (x.protocol ?? "TCP") === c.protocol);
  return named?.containerPort === c.port;
}

function refSide(w: World, dir: "Ingress" | "Egress", pod: Pod, c: Connection, peer?: Pod) {
  const key = `${pod.metadata.namespace}/${pod.metadata.name}`;
  const selecting = [...w.policies.values()]
    .filter((np) =>
      np.metadata.namespace === pod.metadata.namespace &&
      selects(np.spec.podSelector, pod.metadata.labels ?? {}) && types(np).includes(dir)
    )
    .sort((a, b) => (a.metadata.name! < b.metadata.name! ? -1 : 1));
  if (!selecting.length) return { verdict: "allow", reason: { kind: "not-isolated", pod: key } };
  if (dir === "Ingress" && c.src === pod.status?.hostIP) {
    return { verdict: "allow", reason: { kind: "from-own-node", pod: key } };
  }
  const peerIP = dir === "Ingress" ? c.src : c.dst;
  const dstPod = dir === "Ingress" ? pod : peer;
  for (const np of selecting) {
    const rules = (dir === "Ingress" ? np.spec.ingress : np.spec.egress) ?? [];
    for (let i = 0; i < rules.length; i++) {
      const r = rules[i]! as {
        from?: NetworkPolicyPeer[];
        to?: NetworkPolicyPeer[];
        ports?: NetworkPolicyPort[];
      };
      const peers = dir === "Ingress" ? r.from : r.to;
      const portsOk = !r.ports?.length || r.ports.some((p) => portOk(p, c, dstPod));
      const peersOk = !peers?.length || peers.some((p) => peerOk(w, p, np, peerIP, peer));
      if (portsOk && peersOk) {
        return {
          verdict: "allow",
          reason: {
            kind: "allowed",
            pod: key,
            policy: `${np.metadata.namespace}/${np.metadata.name}`,
            rule: i,
          },
        };
      }
    }
  }
  return {
    verdict: "deny",
    reason: {
      kind: "denied",
      pod: key,
      isolatedBy: selecting.map((p) => `${p.metadata.namespace}/${p.metadata.name}`),
    },
  };
}

function refEvaluate(w: World, c: Connection) {
  const src = podAt(w, c.src);
  const dst = podAt(w, c.dst);
  const egress = src
    ? refSide(w, "Egress", src, c, dst)
    : { verdict: "allow", reason: { kind: "not-a-pod" } };
  const ingress = dst
    ? refSide(w, "Ingress", dst, c, src)
    : { verdict: "allow", reason: { kind: "not-a-pod" } };
  return {
    verdict: egress.verdict === "allow" && ingress.verdict === "allow" ? "allow" : "deny",
    egress,
    ingress,
  };
}

// ------------------------------------------------------------------ random worlds

const NS = ["x", "y", "z", "w"];
const APPS = ["web", "api", "db", "cache"];
const HOST_IP = "192.168.7.1";

function randomWorld(rnd: () => number) {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)]!;
  const randLabels = (): Labels => {
    const l: Labels = {};
    if (rnd() < 0.9) l.app = pick(APPS);
    if (rnd() < 0.5) l.env = pick(["prod", "dev"]);
    return l;
  };
  const sel = (): LabelSelector => {
    const r = rnd();
    if (r < 0.25) return {};
    if (r < 0.6) return { matchLabels: { app: pick(APPS) } };
    const op = pick(["In", "NotIn", "Exists", "DoesNotExist"] as const);
    return {
      matchExpressions: [{
        key: pick(["app", "env"]),
        operator: op,
        ...(op === "In" || op === "NotIn"
          ? { values: [pick([...APPS, "prod", "dev"]), pick(APPS)] }
          : {}),
      }],
    };
  };
  const nsSel = (): LabelSelector =>
    rnd() < 0.3 ? {} : rnd() < 0.6 ? { matchLabels: { tier: pick(["front", "back"]) } } : {
      matchExpressions: [{
        key: "kubernetes.io/metadata.name",
        operator: "In",
        values: [pick(NS)],
      }],
    };
  const peer = (): NetworkPolicyPeer => {
    const r = rnd();
    if (r < 0.3) return { podSelector: sel() };
    if (r < 0.5) return { namespaceSelector: nsSel() };
    if (r < 0.75) return { namespaceSelector: nsSel(), podSelector: sel() };
    return rnd() < 0.5
      ? { ipBlock: { cidr: "10.9.0.0/16", except: [`10.9.${Math.floor(rnd() * 4)}.0/24`] } }
      : { ipBlock: { cidr: pick(["0.0.0.0/0", "10.9.1.0/24", "203.0.113.0/24"]) } };
  };
  const port = (): NetworkPolicyPort => {
    const protocol = pick<Protocol>(["TCP", "TCP", "UDP", "SCTP"]);
    const r = rnd();
    if (r < 0.2) return { protocol };
    if (r < 0.5) return { protocol, port: pick([80, 81, 443]) };
    if (r < 0.7) return { protocol, port: 80, endPort: pick([81, 90]) };
    return { protocol, port: pick(["serve-80", "serve-81", "metrics"]) };
  };
  const list = <T>(f: () => T, max: number): T[] | undefined => {
    if (rnd() < 0.25) return undefined;
    return Array.from({ length: Math.floor(rnd() * (max + 1)) }, f);
  };
  const world: World = { namespaces: new Map(), pods: new Map(), policies: new Map() };
  for (const ns of NS) world.namespaces.set(ns, { tier: pick(["front", "back"]) });
  let n = 0;
  for (const ns of NS) {
    for (let i = 0; i < 5; i++) {
      n++;
      const p: Pod = {
        metadata: { namespace: ns, name: `p${i}`, labels: randLabels() },
        spec: {
          nodeName: "n1",
          containers: [{
            ports: [
              { name: "serve-80", containerPort: rnd() < 0.8 ? 80 : 8080, protocol: "TCP" },
              { name: "serve-81", containerPort: 81, protocol: pick<Protocol>(["TCP", "UDP"]) },
              { name: "metrics", containerPort: 9090, protocol: "TCP" },
            ],
          }],
        },
        status: { phase: "Running", podIP: `10.9.${Math.floor(n / 8)}.${n}`, hostIP: HOST_IP },
      };
      world.pods.set(`${ns}/p${i}`, p);
    }
  }
  const policy = (ns: string, name: string): NetworkPolicy => {
    const spec: NetworkPolicy["spec"] = {
      podSelector: sel(),
      ingress: list(() => ({ from: list(peer, 2), ports: list(port, 2) }), 2),
      egress: list(() => ({ to: list(peer, 2), ports: list(port, 2) }), 2),
    };
    if (rnd() < 0.5) {
      spec.policyTypes = pick([["Ingress"], ["Egress"], ["Ingress", "Egress"]] as const).slice();
    }
    return { metadata: { namespace: ns, name }, spec };
  };
  for (let i = 0; i < 10; i++) {
    const ns = pick(NS);
    world.policies.set(`${ns}/np${i}`, policy(ns, `np${i}`));
  }
  return { world, pick, randLabels, policy };
}

function load(w: World): PolicyEngine {
  const e = new PolicyEngine();
  for (const [name, labels] of w.namespaces) {
    e.upsertNamespace({ metadata: { name, labels } } as Namespace);
  }
  for (const p of w.pods.values()) assert.deepEqual(e.upsertPod(p), []);
  for (const np of w.policies.values()) assert.deepEqual(e.upsertPolicy(np), []);
  return e;
}

function compare(e: PolicyEngine, w: World, c: Connection, context: string) {
  const got: Decision = e.evaluate(c);
  const want = refEvaluate(w, c);
  const strip = (d: { verdict: string; egress: unknown; ingress: unknown }) => ({
    verdict: d.verdict,
    egress: d.egress,
    ingress: d.ingress,
  });
  assert.deepEqual(strip(got), want, `${context}: ${JSON.stringify(c)}`);
}

Deno.test("engine agrees with a naive spec evaluator on 200 random clusters, before and after mutations", () => {
  const rnd = prng(20261123);
  let checked = 0;
  for (let world = 0; world < 200; world++) {
    const { world: w, pick, randLabels, policy } = randomWorld(rnd);
    const e = load(w);
    const ips = [
      ...[...w.pods.values()].map((p) => p.status!.podIP!),
      "10.9.3.77",
      "203.0.113.5",
      HOST_IP,
    ];
    const conn = (): Connection => ({
      src: pick(ips),
      dst: pick(ips),
      protocol: pick<Protocol>(["TCP", "TCP", "UDP", "SCTP"]),
      port: pick([80, 81, 85, 443, 8080, 9090]),
    });
    const probes = Array.from({ length: 60 }, conn);
    for (const c of probes) compare(e, w, c, `world ${world}`);
    // Mutate: relabel pods, relabel a namespace, replace and delete policies; judge again
    // (the same probes too, so stale memos would show).
    for (let m = 0; m < 6; m++) {
      const kind = Math.floor(rnd() * 4);
      if (kind === 0) {
        const key = pick([...w.pods.keys()]);
        const p = structuredClone(w.pods.get(key)!);
        p.metadata.labels = randLabels();
        w.pods.set(key, p);
        e.upsertPod(p);
      } else if (kind === 1) {
        const ns = pick(NS);
        const labels = { tier: pick(["front", "back", "none"]) };
        w.namespaces.set(ns, labels);
        e.upsertNamespace({ metadata: { name: ns, labels } });
      } else if (kind === 2) {
        const ns = pick(NS);
        const name = `np${Math.floor(rnd() * 12)}`;
        const np = policy(ns, name);
        w.policies.set(`${ns}/${name}`, np);
        e.upsertPolicy(np);
      } else {
        const key = pick([...w.policies.keys(), "x/none"]);
        w.policies.delete(key);
        const [ns, name] = key.split("/");
        e.deletePolicy(ns!, name!);
      }
      for (const c of [...probes.slice(0, 20), ...Array.from({ length: 20 }, conn)]) {
        compare(e, w, c, `world ${world} after mutation ${m}`);
        checked++;
      }
    }
    checked += probes.length;
  }
  assert.ok(checked >= 200 * 180, `checked ${checked}`);
});

// ------------------------------------------------------------------ cluster-scoped tiers
// The same idea for the Admin and Baseline tiers: a naive evaluator over the raw objects (every
// policy scanned, sorted and matched per connection), against the indexed engine, on random
// worlds with ClusterNetworkPolicies (both tiers), AdminNetworkPolicies, the
// BaselineAdminNetworkPolicy, NetworkPolicies, Nodes and a hostNetwork pod.

type ClusterKind = "ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy";
type RawRule = {
  name?: string;
  action: string;
  from?: RawPeer[];
  to?: RawPeer[];
  protocols?: Record<string, unknown>[];
  ports?: Record<string, unknown>[];
};
type RawPeer = {
  namespaces?: LabelSelector;
  pods?: { namespaceSelector?: LabelSelector; podSelector?: LabelSelector };
  nodes?: LabelSelector;
  networks?: string[];
};
interface RawCluster {
  kind: ClusterKind;
  metadata: { name: string };
  spec: {
    tier?: string;
    priority?: number;
    subject: { namespaces?: LabelSelector; pods?: RawPeer["pods"] };
    ingress?: RawRule[];
    egress?: RawRule[];
  };
}
interface TierWorld extends World {
  cluster: Map<string, RawCluster>;
  nodes: Map<string, { labels: Labels; ips: string[] }>;
}

const HOSTNET_IP = "192.168.7.2";

function inCidr6(ip: string, cidr: string): boolean {
  // The worlds use only ::/0 for IPv6 and IPv4 connections: a v6 CIDR never matches them.
  return cidr.includes(":") && ip.includes(":");
}

function tierOf(p: RawCluster): "Admin" | "Baseline" {
  if (p.kind === "ClusterNetworkPolicy") return p.spec.tier as "Admin" | "Baseline";
  return p.kind === "AdminNetworkPolicy" ? "Admin" : "Baseline";
}

function priorityOf(p: RawCluster): number {
  return p.kind === "BaselineAdminNetworkPolicy" ? 1001 : p.spec.priority!;
}

function subjectSelects(w: TierWorld, p: RawCluster, pod: Pod): boolean {
  if (pod.spec?.hostNetwork) return false;
  const nsl = nsLabels(w, pod.metadata.namespace!);
  const s = p.spec.subject;
  if (s.namespaces) return selects(s.namespaces, nsl);
  return selects(s.pods!.namespaceSelector, nsl) &&
    selects(s.pods!.podSelector, pod.metadata.labels ?? {});
}

function clusterPeerOk(w: TierWorld, peer: RawPeer, ip: string, pod: Pod | undefined): boolean {
  if (peer.namespaces) {
    return !!pod && selects(peer.namespaces, nsLabels(w, pod.metadata.namespace!));
  }
  if (peer.pods) {
    return !!pod && selects(peer.pods.namespaceSelector, nsLabels(w, pod.metadata.namespace!)) &&
      selects(peer.pods.podSelector, pod.metadata.labels ?? {});
  }
  if (peer.networks) return peer.networks.some((c) => inCidr(ip, c) || inCidr6(ip, c));
  if (peer.nodes) {
    const owner = [...w.nodes.entries()].sort(([a], [b]) => (a < b ? -1 : 1))
      .find(([, n]) => n.ips.includes(ip));
    return !!owner && selects(peer.nodes, owner[1].labels);
  }
  return false;
}

function namedPortOk(name: string, c: Connection, dst: Pod | undefined): boolean {
  const p = dst?.spec?.containers?.flatMap((x) => x.ports ?? [])
    .find((x) => x.name === name && (x.protocol ?? "TCP") === c.protocol);
  return p?.containerPort === c.port;
}

function clusterPortsOk(p: RawCluster, r: RawRule, c: Connection, dst: Pod | undefined): boolean {
  if (p.kind === "ClusterNetworkPolicy") {
    if (!r.protocols) return true;
    return r.protocols.some((e) => {
      if (typeof e.destinationNamedPort === "string") {
        return namedPortOk(e.destinationNamedPort, c, dst);
      }
      const [field, body] = Object.entries(e)[0]! as [
        string,
        { destinationPort?: ClusterPortSpec },
      ];
      if (field.toUpperCase() !== c.protocol) return false;
      const dp = body.destinationPort;
      if (!dp) return true;
      if (dp.number !== undefined) return dp.number === c.port;
      return c.port >= dp.range!.start && c.port <= dp.range!.end;
    });
  }
  if (!r.ports) return true;
  return r.ports.some((e) => {
    if (typeof e.namedPort === "string") return namedPortOk(e.namedPort, c, dst);
    const spec = (e.portNumber ?? e.portRange) as {
      protocol?: string;
      port?: number;
      start?: number;
      end?: number;
    };
    if ((spec.protocol ?? "TCP") !== c.protocol) return false;
    return spec.port !== undefined
      ? spec.port === c.port
      : c.port >= spec.start! && c.port <= spec.end!;
  });
}

type Ref = { tier: string; policy: string; rule: string | number };

/** First matching rule of a tier: its action and reference, or undefined. */
function refTier(
  w: TierWorld,
  policies: RawCluster[],
  dir: "Ingress" | "Egress",
  c: Connection,
  pod: Pod,
  peer: Pod | undefined,
): { action: string; by: Ref } | undefined {
  const peerIP = dir === "Ingress" ? c.src : c.dst;
  const dst = dir === "Ingress" ? pod : peer;
  for (const p of policies) {
    const rules = (dir === "Ingress" ? p.spec.ingress : p.spec.egress) ?? [];
    for (const [i, r] of rules.entries()) {
      const peers = (dir === "Ingress" ? r.from : r.to) ?? [];
      if (!clusterPortsOk(p, r, c, dst)) continue;
      if (!peers.some((x) => clusterPeerOk(w, x, peerIP, peer))) continue;
      const action = r.action === "Allow" ? "Accept" : r.action;
      return {
        action,
        by: { tier: tierOf(p), policy: `${p.kind}/${p.metadata.name}`, rule: r.name || i },
      };
    }
  }
  return undefined;
}

const KIND_ORDER: Record<ClusterKind, number> = {
  ClusterNetworkPolicy: 0,
  AdminNetworkPolicy: 1,
  BaselineAdminNetworkPolicy: 2,
};

function refTierSide(
  w: TierWorld,
  dir: "Ingress" | "Egress",
  pod: Pod,
  c: Connection,
  peer: Pod | undefined,
) {
  const key = `${pod.metadata.namespace}/${pod.metadata.name}`;
  const applies = (p: RawCluster) =>
    ((dir === "Ingress" ? p.spec.ingress : p.spec.egress) ?? []).length > 0;
  const selecting = [...w.cluster.values()]
    .filter((p) => subjectSelects(w, p, pod) && applies(p))
    .sort((a, b) =>
      priorityOf(a) - priorityOf(b) ||
      (a.metadata.name < b.metadata.name ? -1 : a.metadata.name > b.metadata.name ? 1 : 0) ||
      KIND_ORDER[a.kind] - KIND_ORDER[b.kind]
    );
  const admin = selecting.filter((p) => tierOf(p) === "Admin");
  const baseline = selecting.filter((p) => tierOf(p) === "Baseline");
  if (peer === pod || (!admin.length && !baseline.length)) return refSide(w, dir, pod, c, peer);
  const passed: Ref[] = [];
  const withPassed = <T extends object>(
    r: T,
  ) => (passed.length ? { ...r, passed: [...passed] } : r);
  const decide = (hit: { action: string; by: Ref }) =>
    hit.action === "Accept"
      ? { verdict: "allow", reason: withPassed({ kind: "tier-accepted", pod: key, by: hit.by }) }
      : { verdict: "deny", reason: withPassed({ kind: "tier-denied", pod: key, by: hit.by }) };
  const a = refTier(w, admin, dir, c, pod, peer);
  if (a && a.action !== "Pass") return decide(a);
  if (a) passed.push(a.by);
  const np = refSide(w, dir, pod, c, peer);
  if (np.reason.kind !== "not-isolated") {
    return { verdict: np.verdict, reason: withPassed(np.reason) };
  }
  const b = refTier(w, baseline, dir, c, pod, peer);
  if (b && b.action !== "Pass") return decide(b);
  if (b) passed.push(b.by);
  return {
    verdict: "allow",
    reason: withPassed({
      kind: "default-allowed",
      pod: key,
      consulted: [...admin, ...baseline].map((p) => `${p.kind}/${p.metadata.name}`),
    }),
  };
}

function refTierEvaluate(w: TierWorld, c: Connection) {
  const src = podAt(w, c.src);
  const dst = podAt(w, c.dst);
  const egress = src
    ? refTierSide(w, "Egress", src, c, dst)
    : { verdict: "allow", reason: { kind: "not-a-pod" } };
  const ingress = dst
    ? refTierSide(w, "Ingress", dst, c, src)
    : { verdict: "allow", reason: { kind: "not-a-pod" } };
  return {
    verdict: egress.verdict === "allow" && ingress.verdict === "allow" ? "allow" : "deny",
    egress,
    ingress,
  };
}

function randomTierWorld(rnd: () => number) {
  const base = randomWorld(rnd);
  const { pick } = base;
  const w: TierWorld = { ...base.world, cluster: new Map(), nodes: new Map() };
  // A hostNetwork pod on node n2: never a subject or pod peer; its address is n2's.
  w.pods.set("x/hostnet", {
    metadata: { namespace: "x", name: "hostnet", labels: { app: "web" } },
    spec: { nodeName: "n2", hostNetwork: true },
    status: { phase: "Running", podIP: HOSTNET_IP, hostIP: HOSTNET_IP },
  });
  const nodeLabels = (): Labels => ({ role: pick(["worker", "control-plane"]) });
  w.nodes.set("n1", { labels: nodeLabels(), ips: [HOST_IP] });
  w.nodes.set("n2", { labels: nodeLabels(), ips: [HOSTNET_IP] });
  const sel = (): LabelSelector =>
    pick<LabelSelector>([{}, { matchLabels: { app: pick(APPS) } }, {
      matchExpressions: [{ key: "env", operator: pick(["Exists", "DoesNotExist"]) }],
    }]);
  const nsSel = (): LabelSelector =>
    pick<LabelSelector>([{}, { matchLabels: { tier: pick(["front", "back"]) } }, {
      matchLabels: { "kubernetes.io/metadata.name": pick(NS) },
    }]);
  const peer = (egress: boolean): RawPeer => {
    const r = rnd();
    if (r < 0.3) return { namespaces: nsSel() };
    if (r < 0.6 || !egress) return { pods: { namespaceSelector: nsSel(), podSelector: sel() } };
    if (r < 0.8) {
      return {
        networks: [pick(["10.9.0.0/16", "0.0.0.0/0", "203.0.113.0/24", "10.9.1.0/24", "::/0"])],
      };
    }
    return { nodes: pick<LabelSelector>([{}, { matchLabels: { role: "worker" } }]) };
  };
  const protocols = (): Record<string, unknown>[] | undefined => {
    if (rnd() < 0.4) return undefined;
    return Array.from({ length: 1 + Math.floor(rnd() * 2) }, () =>
      pick<Record<string, unknown>>([
        { tcp: { destinationPort: { number: pick([80, 81, 443]) } } },
        { tcp: { destinationPort: { range: { start: 80, end: 90 } } } },
        { udp: {} },
        { sctp: { destinationPort: { number: 80 } } },
        { destinationNamedPort: pick(["serve-80", "serve-81", "metrics"]) },
      ]));
  };
  const ports = (): Record<string, unknown>[] | undefined => {
    if (rnd() < 0.4) return undefined;
    return Array.from({ length: 1 + Math.floor(rnd() * 2) }, () =>
      pick<Record<string, unknown>>([
        { portNumber: { port: pick([80, 81, 443]) } },
        { portNumber: { protocol: "UDP", port: 81 } },
        { portRange: { protocol: pick(["TCP", "SCTP"]), start: 80, end: 90 } },
        { namedPort: pick(["serve-80", "metrics"]) },
      ]));
  };
  const policy = (kind: ClusterKind, name: string): RawCluster => {
    const actions = kind === "ClusterNetworkPolicy"
      ? ["Accept", "Deny", "Pass"]
      : kind === "AdminNetworkPolicy"
      ? ["Allow", "Deny", "Pass"]
      : ["Allow", "Deny"];
    const rules = (egress: boolean): RawRule[] | undefined => {
      if (rnd() < 0.3) return undefined;
      return Array.from({ length: Math.floor(rnd() * 3) }, (_, i) => {
        const r: RawRule = { action: pick(actions) };
        if (rnd() < 0.5) r.name = `r${i}`;
        const peers = Array.from({ length: 1 + Math.floor(rnd() * 2) }, () => peer(egress));
        if (egress) r.to = peers;
        else r.from = peers;
        if (kind === "ClusterNetworkPolicy") {
          const p = protocols();
          if (p) r.protocols = p;
        } else {
          const p = ports();
          if (p) r.ports = p;
        }
        return r;
      });
    };
    const spec: RawCluster["spec"] = {
      subject: rnd() < 0.5
        ? { namespaces: nsSel() }
        : { pods: { namespaceSelector: nsSel(), podSelector: sel() } },
      ingress: rules(false),
      egress: rules(true),
    };
    if (kind === "ClusterNetworkPolicy") spec.tier = pick(["Admin", "Baseline"]);
    if (kind !== "BaselineAdminNetworkPolicy") spec.priority = pick([1, 5, 5, 10]);
    return { kind, metadata: { name }, spec };
  };
  const randomCluster = (): RawCluster => {
    const kind = pick<ClusterKind>([
      "ClusterNetworkPolicy",
      "ClusterNetworkPolicy",
      "AdminNetworkPolicy",
      "BaselineAdminNetworkPolicy",
    ]);
    return policy(
      kind,
      kind === "BaselineAdminNetworkPolicy" ? "default" : pick(["p0", "p1", "p2", "p3"]),
    );
  };
  for (let i = 0; i < 5; i++) {
    const p = randomCluster();
    w.cluster.set(`${p.kind}/${p.metadata.name}`, p);
  }
  return { w, pick, randLabels: base.randLabels, npPolicy: base.policy, randomCluster, nodeLabels };
}

function applyCluster(e: PolicyEngine, p: RawCluster) {
  const errs = e.upsertClusterPolicy(p.kind, p as never);
  assert.deepEqual(errs.filter((x) => x.severity !== "warning"), [], JSON.stringify(p));
}

function loadTiers(w: TierWorld): PolicyEngine {
  const e = load(w);
  for (const [name, n] of w.nodes) {
    e.upsertNode({
      metadata: { name, labels: n.labels },
      status: { addresses: n.ips.map((address) => ({ type: "InternalIP", address })) },
    });
  }
  for (const p of w.cluster.values()) applyCluster(e, p);
  return e;
}

Deno.test("engine agrees with a naive tier evaluator on 150 random clusters with Admin/Baseline policies, before and after mutations", () => {
  const rnd = prng(20260812);
  let checked = 0;
  for (let world = 0; world < 150; world++) {
    const { w, pick, randLabels, npPolicy, randomCluster, nodeLabels } = randomTierWorld(rnd);
    const e = loadTiers(w);
    const ips = [
      ...[...w.pods.values()].map((p) => p.status!.podIP!),
      "10.9.3.77",
      "203.0.113.5",
      HOST_IP,
    ];
    const conn = (): Connection => ({
      src: pick(ips),
      dst: pick(ips),
      protocol: pick<Connection["protocol"]>(["TCP", "TCP", "UDP", "SCTP", "ICMP"]),
      port: 0,
    });
    const withPort = (c: Connection): Connection =>
      c.protocol === "ICMP" ? c : { ...c, port: pick([80, 81, 85, 443, 8080, 9090]) };
    const check = (c: Connection, context: string) => {
      const got = e.evaluate(c);
      const want = refTierEvaluate(w, c);
      assert.deepEqual(
        { verdict: got.verdict, egress: got.egress, ingress: got.ingress },
        want,
        `${context}: ${JSON.stringify(c)}\n${JSON.stringify([...w.cluster.values()])}`,
      );
      checked++;
    };
    const probes = Array.from({ length: 60 }, () => withPort(conn()));
    for (const c of probes) check(c, `world ${world}`);
    for (let m = 0; m < 6; m++) {
      const kind = Math.floor(rnd() * 6);
      if (kind === 0) {
        const p = randomCluster();
        w.cluster.set(`${p.kind}/${p.metadata.name}`, p);
        applyCluster(e, p);
      } else if (kind === 1) {
        const key = pick([...w.cluster.keys(), "ClusterNetworkPolicy/none"]);
        w.cluster.delete(key);
        const [k, name] = key.split("/") as [ClusterKind, string];
        e.deleteClusterPolicy(k, name);
      } else if (kind === 2) {
        const key = pick([...w.pods.keys()].filter((k) => k !== "x/hostnet"));
        const p = structuredClone(w.pods.get(key)!);
        p.metadata.labels = randLabels();
        w.pods.set(key, p);
        e.upsertPod(p);
      } else if (kind === 3) {
        const ns = pick(NS);
        const labels = { tier: pick(["front", "back", "none"]) };
        w.namespaces.set(ns, labels);
        e.upsertNamespace({ metadata: { name: ns, labels } });
      } else if (kind === 4) {
        const name = pick(["n1", "n2"]);
        const n = { ...w.nodes.get(name)!, labels: nodeLabels() };
        w.nodes.set(name, n);
        e.upsertNode({
          metadata: { name, labels: n.labels },
          status: { addresses: n.ips.map((address) => ({ type: "InternalIP", address })) },
        });
      } else {
        const ns = pick(NS);
        const name = `np${Math.floor(rnd() * 12)}`;
        const np = npPolicy(ns, name);
        w.policies.set(`${ns}/${name}`, np);
        e.upsertPolicy(np);
      }
      if (rnd() < 0.5) e.prepare();
      for (
        const c of [
          ...probes.slice(0, 20),
          ...Array.from({ length: 20 }, () => withPort(conn())),
        ]
      ) {
        check(c, `world ${world} after mutation ${m}`);
      }
    }
  }
  assert.ok(checked >= 150 * 180, `checked ${checked}`);
});
