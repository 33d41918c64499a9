/**
 * A pod's Admin or Baseline tier rules for one direction, for the verdict path.
 *
 * Built from only the policies whose subject selects the pod (kept incrementally by the engine,
 * and shared by all pods selected by the same policies),
 * in tier order (priority, then name; see tierOrder), rules in written order. A verdict walks
 * them and stops at the first rule whose protocols and peers match. What a peer pod matches on
 * the selector side (namespaces / pods peers) depends only on its identity (namespace, namespace
 * labels, pod labels), so that answer is computed once per identity for all rules at once and
 * memoized; address peers (networks, nodes) are checked per connection, and only for the rules
 * that have them.
 */
import type { ClusterPeer, ClusterRule, CompiledClusterPolicy } from "./cluster_compile.ts";
import type { PeerContext, PeerView } from "./rule_table.ts";
import type { Labels } from "./selector.ts";
import type { ConnectionProtocol } from "../net/protocol.ts";

/** What a tier table asks about the peer beyond what a NetworkPolicy rule table asks. */
export interface TierPeerContext extends PeerContext {
  /** Labels of the Node object owning the peer's address, if any (for `nodes` peers). */
  nodeLabels(): Labels | undefined;
}

export interface TierHit {
  policy: CompiledClusterPolicy;
  rule: ClusterRule;
}

interface Entry extends TierHit {
  /** Some peer is decided by the peer pod's identity (namespaces, pods). */
  bySelector: boolean;
  /** Some peer is decided by the peer's address (networks, nodes). */
  byAddress: boolean;
  /** A failed-closed "Deny all" rule. */
  all: boolean;
}

/** Tables are shared by every pod with the same tier policies, so they see many identities. */
const MEMO_LIMIT = 16384;

export class TierTable {
  private readonly entries: Entry[] = [];
  private readonly hasSelectorRules: boolean;
  /** identity -> per-entry flag: do the entry's selector peers admit a pod of that identity? */
  private memo = new Map<number, Uint8Array>();

  /** @param selecting the tier's policies selecting the pod for this direction, in tier order */
  constructor(
    private readonly direction: "ingress" | "egress",
    selecting: readonly CompiledClusterPolicy[],
  ) {
    for (const policy of selecting) {
      for (const rule of direction === "ingress" ? policy.ingress : policy.egress) {
        const kinds = rule.peers.map((p) => p.kind);
        this.entries.push({
          policy,
          rule,
          bySelector: kinds.includes("namespaces") || kinds.includes("pods"),
          byAddress: kinds.includes("networks") || kinds.includes("nodes"),
          all: kinds.includes("all"),
        });
      }
    }
    this.hasSelectorRules = this.entries.some((e) => e.bySelector);
  }

  /**
   * The first rule (in tier order) matching the connection, whatever its action, or null.
   * `dstPod` is the destination pod (for named ports): the subject itself on ingress.
   */
  match(
    protocol: ConnectionProtocol,
    port: number,
    ctx: TierPeerContext,
    dstPod: PeerView | undefined,
  ): TierHit | null {
    const pod = ctx.pod;
    let selected: Uint8Array | undefined;
    const entries = this.entries;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      if (!protocolsMatch(e.rule, protocol, port, dstPod)) continue;
      if (e.all) {
        // Ingress peers are pods only: a node or external source is never matched there.
        if (this.direction === "egress" || pod) return e;
        continue;
      }
      if (pod && e.bySelector) {
        selected ??= this.selectorMatches(pod, ctx);
        if (selected[i]) return e;
      }
      if (e.byAddress && addressMatches(e.rule.peers, ctx)) return e;
    }
    return null;
  }

  private selectorMatches(pod: PeerView, ctx: TierPeerContext): Uint8Array {
    let flags = this.memo.get(pod.identity);
    if (flags) return flags;
    flags = new Uint8Array(this.entries.length);
    if (this.hasSelectorRules) {
      const nsLabels = ctx.namespaceLabels(pod.namespace);
      this.entries.forEach((e, i) => {
        if (!e.bySelector) return;
        for (const p of e.rule.peers) {
          if (
            p.kind === "namespaces"
              ? p.namespaces.matches(nsLabels)
              : p.kind === "pods"
              ? p.namespaces.matches(nsLabels) && p.pods.matches(pod.labels)
              : false
          ) {
            flags![i] = 1;
            return;
          }
        }
      });
    }
    if (this.memo.size >= MEMO_LIMIT) this.memo = new Map();
    this.memo.set(pod.identity, flags);
    return flags;
  }
}

function protocolsMatch(
  rule: ClusterRule,
  protocol: ConnectionProtocol,
  port: number,
  dstPod: PeerView | undefined,
): boolean {
  const list = rule.protocols;
  if (list === null) return true;
  for (const m of list) {
    if (m.kind === "ports") {
      if (m.protocol === protocol && port >= m.from && port <= m.to) return true;
    } else if (
      dstPod && (protocol === "TCP" || protocol === "UDP" || protocol === "SCTP") &&
      dstPod.namedPorts.get(m.name)?.[protocol] === port
    ) return true;
  }
  return false;
}

function addressMatches(peers: readonly ClusterPeer[], ctx: TierPeerContext): boolean {
  for (const p of peers) {
    if (p.kind === "networks") {
      const ip = ctx.ip();
      if (!ip) continue;
      for (const c of p.cidrs) if (c.contains(ip)) return true;
    } else if (p.kind === "nodes") {
      const labels = ctx.nodeLabels();
      if (labels && p.nodes.matches(labels)) return true;
    }
  }
  return false;
}
