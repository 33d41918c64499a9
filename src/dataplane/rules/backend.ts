/**
 * Netfilter rule backends: the kernel side of kube-netpol.
 *
 * What gets queued. Only the first packet of a new connection (`ct state new`) whose destination
 * is a local pod isolated for ingress, or whose source is a local pod isolated for egress, goes to
 * NFQUEUE `queueId`. Everything else (established traffic, pods no policy selects, hostNetwork
 * pods, the node's own traffic) never leaves the kernel. After an accept verdict conntrack carries
 * the rest of the connection, so the kernel rules hold only a handful of rules and four IP sets
 * (ingress/egress x IPv4/IPv6), whatever the number of policies.
 *
 * Hooks. Our own chain is jumped to from the filter FORWARD and INPUT hooks (inserted first, so an
 * earlier ACCEPT of another component cannot skip us):
 *   - FORWARD sees pod-to-pod traffic on this node and traffic between a local pod and anything
 *     outside the node, in both directions.
 *   - INPUT sees a local pod talking to its own node (node IPs, hostNetwork pods), which is egress
 *     that FORWARD never sees.
 *   Not hooked on purpose: OUTPUT, i.e. the node's own processes (kubelet probes) reaching local
 *   pods, which Kubernetes expects to be allowed anyway.
 *
 * Chain order, for every packet that reaches it:
 *   1. packet carries the deny mark (`mark & denyMark == denyMark`): TCP -> REJECT tcp-reset,
 *      UDP -> REJECT icmp(6) port-unreachable, anything else -> DROP;
 *   2. new connection, not marked, destination in the ingress set -> NFQUEUE;
 *   3. new connection, not marked, source in the egress set -> NFQUEUE.
 *   The queue rule carries `--queue-bypass` (nft: `bypass`) when failing open: with no listener
 *   on the queue the kernel then accepts instead of dropping.
 *
 * Mark contract (see ../marks.ts): the verdict loop denies a TCP/UDP packet with NF_REPEAT and the
 * deny mark set; the packet re-enters the hook, rule 1 rejects it and the client fails fast
 * instead of waiting for a timeout. Rules 2 and 3 also require "not marked", so a marked packet
 * can never be queued again: even without rule 1 it could not loop.
 *
 * Backends. `nftables` (one `table inet kube-netpol` with named sets and base chains at
 * priority filter-10) needs the kernel's native nft `queue` (CONFIG_NFT_QUEUE). Without it,
 * iptables `-j NFQUEUE` (xt compat) is used, through iptables-nft or iptables-legacy, whichever the
 * node already uses (see probe.ts); its sets are ipsets named `kube-netpol-*`, its chain is
 * `KUBE-NETPOL` in the filter table of iptables and ip6tables.
 *
 * IPVS: with kube-proxy in IPVS mode, service traffic is rewritten at LOCAL_IN and leaves through
 * OUTPUT/POSTROUTING, so the FORWARD hook of these backends does not see a connection to a
 * Service after its DNAT: ingress to a local backend pod reached through a Service VIP is not
 * queued, and egress from a local pod to a VIP is judged in INPUT against the VIP, not the backend
 * pod. IPVS mode is therefore not covered; use kube-proxy in iptables or nftables mode.
 *
 * Updates. `install()` creates our objects atomically (one `nft -f` transaction, or one
 * `iptables-restore --noflush` per family that only names our chain and our jump rules) and is
 * idempotent. `sync()` reads the installed set members and adds/deletes only the difference in
 * one batch (`ipset restore` / `nft -f`); sets are never rebuilt, so no connection is ever judged
 * against a half-filled set. Foreign chains, rules and sets are never flushed or changed.
 *
 * Shutdown. With fail-open the agent uninstalls on a graceful exit: traffic then flows unjudged
 * while the agent is away, which fail-open promises anyway. With fail-closed the rules stay, so
 * selected pods stay protected (no listener and no bypass: their new connections are dropped)
 * until the agent is back; `kube-netpol cleanup` (`cleanupAll`) removes everything of every
 * backend flavour for good.
 */

export interface RuleOptions {
  /** NFQUEUE number the verdict loop listens on. */
  queueId: number;
  /** Queue with bypass: packets pass when no listener is bound or the queue is full. */
  failOpen: boolean;
  /** Packet mark bit(s) the verdict loop sets on denied packets (see ../marks.ts). */
  denyMark: number;
}

/** Local pod IPs to queue, IPv4 and IPv6 mixed; from `engine.queuedIPs(node)`. */
export interface QueuedIPs {
  ingress: string[];
  egress: string[];
}

export interface RuleBackend {
  readonly name: "nftables" | "iptables-nft" | "iptables-legacy";
  /** Idempotent; creates only our own table/chains/sets and jump rules. */
  install(): Promise<void>;
  /** Incremental: adds and deletes only the difference to the installed set members. */
  sync(ips: QueuedIPs): Promise<{ added: number; removed: number }>;
  /** Removes everything we created; idempotent; never touches foreign rules. */
  uninstall(): Promise<void>;
}

/** Marks are 32-bit; rendered the way iptables-save prints them (`0x100000`). */
export function hex(n: number): string {
  return "0x" + (n >>> 0).toString(16);
}

/** Reject options that would render invalid rules, before anything reaches the kernel. */
export function validateRuleOptions(opts: RuleOptions): void {
  if (!Number.isInteger(opts.queueId) || opts.queueId < 0 || opts.queueId > 65535) {
    throw new RangeError(`queueId must be 0..65535, got ${opts.queueId}`);
  }
  if (!Number.isInteger(opts.denyMark) || opts.denyMark <= 0 || opts.denyMark > 0xffffffff) {
    throw new RangeError(`denyMark must be a non-zero 32-bit mark, got ${opts.denyMark}`);
  }
}
