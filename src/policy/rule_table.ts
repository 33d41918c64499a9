/**
 * A pod's rules for one direction, indexed for the verdict path.
 *
 * Linear scans over every rule of every selecting policy made verdict time grow with policy
 * count (a pod selected by 25 policies scanned 25+ rules per deny). The table groups rules by the
 * protocol/port they allow, so a connection only looks at rules that can match its port, and
 * memoizes "which selector rule (if any) admits this peer" per bucket, keyed by the peer's
 * identity (namespace + namespace labels + pod labels): replicas of one client share the answer.
 *
 * Rules keep a global order (policy key, then rule index) so the explanation names the same
 * policy and rule as a plain scan would.
 */
import type { ParsedIP } from "../net/ip.ts";
import type { CompiledPeer, CompiledPolicy, CompiledRule } from "./compile.ts";
import type { Labels } from "./selector.ts";
import type { ConnectionProtocol, Protocol } from "../net/protocol.ts";

export interface OrderedRule {
  order: number;
  policy: CompiledPolicy;
  rule: CompiledRule;
}

/** What the table needs to know about the pod at the other end of the connection. */
export interface PeerView {
  identity: number;
  namespace: string;
  labels: Labels;
  namedPorts: ReadonlyMap<string, Partial<Record<Protocol, number>>>;
}

export interface PeerContext {
  pod: PeerView | undefined;
  /** The peer's address, parsed on first use. */
  ip(): ParsedIP | null;
  namespaceLabels(namespace: string): Labels;
}

const MEMO_LIMIT = 4096;
const PROTOCOL_INDEX: Record<string, number> = { TCP: 0, UDP: 1, SCTP: 2 };

/**
 * The rules of one port (or range, or "any"), split by what their peers look at: selector peers
 * depend only on the peer pod's identity, so their answer is memoized per identity; ipBlock peers
 * depend on the address and are few, so they are scanned (with an early exit once a memoized
 * selector match is earlier). A rule without peers matches anything and sits in both halves.
 */
class Bucket {
  private readonly bySelector: OrderedRule[] = [];
  private readonly byAddress: OrderedRule[] = [];
  /** First peerless rule: what a non-pod peer matches on the selector side. */
  private firstPeerless: OrderedRule | null = null;
  private memo = new Map<number, OrderedRule | null>();

  add(r: OrderedRule): void {
    const peers = r.rule.peers;
    if (peers === null || peers.some((p) => p.kind === "pods")) this.bySelector.push(r);
    if (peers === null || peers.some((p) => p.kind === "ipBlock")) this.byAddress.push(r);
  }

  seal(): void {
    this.bySelector.sort((a, b) => a.order - b.order);
    this.byAddress.sort((a, b) => a.order - b.order);
    this.firstPeerless = this.bySelector.find((r) => r.rule.peers === null) ?? null;
  }

  /** First rule (in order) whose peers admit the peer. */
  first(ctx: PeerContext): OrderedRule | null {
    let best: OrderedRule | null;
    const pod = ctx.pod;
    if (pod) {
      const hit = this.memo.get(pod.identity);
      if (hit !== undefined) best = hit;
      else {
        best = null;
        for (const r of this.bySelector) {
          if (r.rule.peers === null || selectorsAdmit(r, pod, ctx)) {
            best = r;
            break;
          }
        }
        if (this.memo.size >= MEMO_LIMIT) this.memo = new Map();
        this.memo.set(pod.identity, best);
      }
    } else best = this.firstPeerless;
    for (const r of this.byAddress) {
      if (best && r.order >= best.order) break;
      if (r.rule.peers === null || addressAdmits(r, ctx)) return r;
    }
    return best;
  }
}

function selectorsAdmit(r: OrderedRule, pod: PeerView, ctx: PeerContext): boolean {
  for (const p of r.rule.peers!) {
    if (p.kind === "pods" && podPeerAdmits(p, r.policy.namespace, pod, ctx)) return true;
  }
  return false;
}

function addressAdmits(r: OrderedRule, ctx: PeerContext): boolean {
  for (const p of r.rule.peers!) {
    if (p.kind !== "ipBlock") continue;
    const ip = ctx.ip();
    if (!ip || !p.cidr.contains(ip)) continue;
    let excluded = false;
    for (const e of p.except) {
      if (e.contains(ip)) {
        excluded = true;
        break;
      }
    }
    if (!excluded) return true;
  }
  return false;
}

/** Full check of one rule's peers (used for egress named ports, which are not bucketed). */
function peersAdmit(r: OrderedRule, ctx: PeerContext): boolean {
  if (r.rule.peers === null) return true;
  return (ctx.pod !== undefined && selectorsAdmit(r, ctx.pod, ctx)) || addressAdmits(r, ctx);
}

function podPeerAdmits(
  p: Extract<CompiledPeer, { kind: "pods" }>,
  policyNamespace: string,
  pod: PeerView,
  ctx: PeerContext,
): boolean {
  // Selectors match pods only; hostNetwork pods and other IPs are not pods here.
  if (p.namespaceSelector) {
    if (!p.namespaceSelector.matches(ctx.namespaceLabels(pod.namespace))) return false;
  } else if (pod.namespace !== policyNamespace) return false;
  return p.podSelector === null || p.podSelector.matches(pod.labels);
}

export class RuleTable {
  private readonly exact = new Map<number, Bucket>();
  private readonly ranges: { protocol: number; from: number; to: number; bucket: Bucket }[] = [];
  private readonly anyPortOf: (Bucket | undefined)[] = [undefined, undefined, undefined];
  private anyProtocol?: Bucket;
  /** Egress named ports: resolved on the destination pod at verdict time. */
  private readonly named: { protocol: Protocol; name: string; rule: OrderedRule }[] = [];

  /**
   * @param selecting the policies selecting the pod for this direction, sorted by key
   * @param ownPorts the pod's named ports when it is the destination (ingress), else undefined
   */
  constructor(
    direction: "ingress" | "egress",
    selecting: readonly CompiledPolicy[],
    ownPorts: PeerView["namedPorts"] | undefined,
  ) {
    let order = 0;
    for (const policy of selecting) {
      for (const rule of (direction === "ingress" ? policy.ingress : policy.egress) ?? []) {
        const r: OrderedRule = { order: order++, policy, rule };
        if (rule.ports === null) {
          (this.anyProtocol ??= new Bucket()).add(r);
          continue;
        }
        for (const port of rule.ports) {
          const proto = PROTOCOL_INDEX[port.protocol]!;
          if (port.kind === "any") {
            (this.anyPortOf[proto] ??= new Bucket()).add(r);
          } else if (port.kind === "range") {
            if (port.from === port.to) this.exactBucket(proto, port.from).add(r);
            else {
              let range = this.ranges.find((x) =>
                x.protocol === proto && x.from === port.from && x.to === port.to
              );
              if (!range) {
                range = { protocol: proto, from: port.from, to: port.to, bucket: new Bucket() };
                this.ranges.push(range);
              }
              range.bucket.add(r);
            }
          } else if (ownPorts) {
            // Ingress: the destination is this pod, so its named ports resolve now.
            const number = ownPorts.get(port.name)?.[port.protocol];
            if (number !== undefined) this.exactBucket(proto, number).add(r);
          } else {
            this.named.push({ protocol: port.protocol, name: port.name, rule: r });
          }
        }
      }
    }
    for (const b of this.exact.values()) b.seal();
    for (const r of this.ranges) r.bucket.seal();
    for (const b of this.anyPortOf) b?.seal();
    this.anyProtocol?.seal();
  }

  private exactBucket(protocol: number, port: number): Bucket {
    const key = protocol * 65536 + port;
    let b = this.exact.get(key);
    if (!b) this.exact.set(key, b = new Bucket());
    return b;
  }

  /**
   * The first rule (in policy-key, rule-index order) admitting this connection, or null.
   * `dstPod` is the destination pod when this is an egress table (for named ports).
   */
  match(
    protocol: ConnectionProtocol,
    port: number,
    ctx: PeerContext,
    dstPod: PeerView | undefined,
  ): OrderedRule | null {
    let best = this.anyProtocol?.first(ctx) ?? null;
    const proto = PROTOCOL_INDEX[protocol];
    if (proto === undefined) return best; // ICMP and others: only port-less rules apply
    best = earlier(best, this.anyPortOf[proto]?.first(ctx) ?? null);
    best = earlier(best, this.exact.get(proto * 65536 + port)?.first(ctx) ?? null);
    for (const r of this.ranges) {
      if (r.protocol === proto && port >= r.from && port <= r.to) {
        best = earlier(best, r.bucket.first(ctx));
      }
    }
    for (const n of this.named) {
      if (best && n.rule.order > best.order) break;
      if (
        n.protocol === protocol && dstPod?.namedPorts.get(n.name)?.[n.protocol] === port &&
        peersAdmit(n.rule, ctx)
      ) {
        best = earlier(best, n.rule);
      }
    }
    return best;
  }
}

function earlier(a: OrderedRule | null, b: OrderedRule | null): OrderedRule | null {
  if (!a) return b;
  if (!b) return a;
  return b.order < a.order ? b : a;
}
