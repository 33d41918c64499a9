/**
 * The interface every rule backend implements, and the options they share. What the rules do and
 * why (hooks, chain order, the deny-mark contract, updates, shutdown) is in docs/rules.md.
 */
import type { UnknownPodMembers } from "../policy/local_pods.ts";
import {
  type CacheHits,
  validateCacheOptions,
  type VerdictCacheRuleOptions,
} from "./verdict_cache_rules.ts";

export interface RuleOptions {
  /** NFQUEUE number the verdict loop listens on. */
  queueId: number;
  /** Queue with bypass: packets pass when no listener is bound or the queue is full. */
  failOpen: boolean;
  /** Packet mark bit(s) the verdict loop sets on denied packets (see src/verdict/marks.ts). */
  denyMark: number;
  /**
   * Conntrack mark bit(s) strict mode sets on connections a change denies; with it, the chain
   * refuses every packet of such a connection (rule 2, docs/rules.md). Absent: strict mode off.
   */
  cutMark?: number;
  /** The kernel verdict cache (verdict_cache_rules.ts); absent: off (`--verdict-cache=false`). */
  verdictCache?: VerdictCacheRuleOptions;
}

/** Local pod IPs to queue, IPv4 and IPv6 mixed; from `engine.queuedIPs(node)`. */
export interface QueuedIPs {
  ingress: string[];
  egress: string[];
  /**
   * This node's pod CIDRs and the addresses in them the agent knows: new connections from or to
   * the others are queued (unknown_pod_sets.ts). Absent: those sets are kept empty.
   */
  unknownPods?: UnknownPodMembers;
}

/** Kinds of damage a dataplane check can find: the `reason` label of the repairs counter. */
export type DamageReason = "table" | "chain" | "rules" | "jump" | "set" | "members";

export interface Damage {
  reason: DamageReason;
  /** For the log and /readyz, e.g. "IPv4: jump from FORWARD missing". */
  detail: string;
}

/** What one look at the kernel found (see docs/rules.md, "Check and repair"). */
export interface DataplaneStatus {
  /** Empty when our table/chains, rules, jumps and sets are all as installed and synced. */
  damage: Damage[];
  /**
   * Packets the queue rules matched since they were last installed, summed over rules and
   * families (their own counters); undefined when the rules could not be read.
   */
  queueRulePackets?: number;
  /**
   * First packets the verdict cache answered in the kernel since the rules were installed, by
   * verdict (the hit rules' own counters); undefined when the cache is off or unreadable.
   */
  cacheHits?: CacheHits;
}

export interface RuleBackend {
  readonly name: "nftables" | "iptables-nft" | "iptables-legacy";
  /** Idempotent; creates only our own table/chains/sets and jump rules. */
  install(): Promise<void>;
  /** Incremental: adds and deletes only the difference to the installed set members. */
  sync(ips: QueuedIPs): Promise<{ added: number; removed: number }>;
  /** Removes everything we created; idempotent; never touches foreign rules. */
  uninstall(): Promise<void>;
  /**
   * Compares the kernel with what install() put there and `synced` (the members of the last
   * successful sync; skipped when undefined). Cheap: one listing per IP family plus one of the
   * sets. Throws only when the tools themselves fail.
   */
  check(synced: QueuedIPs | undefined): Promise<DataplaneStatus>;
}

/** Reject options that would render invalid rules, before anything reaches the kernel. */
export function validateRuleOptions(opts: RuleOptions): void {
  if (!Number.isInteger(opts.queueId) || opts.queueId < 0 || opts.queueId > 65535) {
    throw new RangeError(`queueId must be 0..65535, got ${opts.queueId}`);
  }
  if (!Number.isInteger(opts.denyMark) || opts.denyMark <= 0 || opts.denyMark > 0xffffffff) {
    throw new RangeError(`denyMark must be a non-zero 32-bit mark, got ${opts.denyMark}`);
  }
  const cut = opts.cutMark;
  if (cut !== undefined && (!Number.isInteger(cut) || cut <= 0 || cut > 0xffffffff)) {
    throw new RangeError(`cutMark must be a non-zero 32-bit mark, got ${cut}`);
  }
  if (opts.verdictCache) validateCacheOptions(opts.verdictCache, opts.denyMark, opts.cutMark);
}
