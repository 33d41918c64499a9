/**
 * The kernel verdict cache, as rules and sets (pure: rendering and parsing only; docs/rules.md
 * "Verdict cache" says why it is exact).
 *
 * A verdict depends only on (source IP, destination IP, protocol, destination port) and the
 * cluster state. After the agent judged a first packet, the kernel itself remembers the verdict
 * for that key in a set with per-element timeout, filled from the packet the verdict loop hands
 * back with the cache mark (NF_REPEAT), and later first packets of the key are accepted (or
 * refused) in the kernel without queueing. The verdict worker empties every cache set after each
 * state change it applies, before it judges another packet (src/verdict/verdict_cache.ts).
 *
 * Sets, per family: `cache-allow-v4|v6` and, when denies are cached, `cache-deny-v4|v6`; as
 * ipsets `kube-netpol-cache-*` of type hash:ip,port,ip matched `src,dst,dst` (source IP,
 * protocol:destination port, destination IP), or nft sets keyed
 * `saddr . l4proto . th dport . daddr` in our table.
 */
import { hex } from "./hex.ts";
import type { IPFamily } from "../net/ip.ts";

/** Default entry lifetime (`--verdict-cache-timeout`): also the deny log's window per key. */
export const DEFAULT_CACHE_TIMEOUT_SECONDS = 10;
/** Default size limit per set (`--verdict-cache-max-entries`); a full set only misses more. */
export const DEFAULT_CACHE_MAX_ENTRIES = 65536;
/** ipset's largest timeout (seconds); nft accepts more, but one limit for both keeps it simple. */
export const MAX_CACHE_TIMEOUT_SECONDS = 2_147_483;

export interface VerdictCacheRuleOptions {
  /** Packet mark bit the verdict loop sets on verdicts to remember (src/verdict/marks.ts). */
  mark: number;
  /** Entry lifetime in seconds. */
  timeoutSeconds: number;
  /** Largest number of entries per set. */
  maxEntries: number;
  /** Remember denies too (refused in the kernel; the deny log then logs each key once per window). */
  denies: boolean;
}

/**
 * What the cache rules read of the backends' options (a structural slice of RuleOptions, so this
 * module does not import the backend interface that validates through it).
 */
export interface CacheMarkOptions {
  /** The deny mark bit(s) (RuleOptions.denyMark). */
  denyMark: number;
  /** The cache, when on (RuleOptions.verdictCache). */
  verdictCache?: VerdictCacheRuleOptions;
}

export type CacheVerdict = "allow" | "deny";

export interface CacheSet {
  verdict: CacheVerdict;
  family: IPFamily;
  /** Short name: the nft set name; the ipset name adds the `kube-netpol-` prefix. */
  name: string;
}

/** Every cache set there can be (cleanup removes all of them, whatever the flags say now). */
export const CACHE_SETS: readonly CacheSet[] = [
  { verdict: "allow", family: 4, name: "cache-allow-v4" },
  { verdict: "allow", family: 6, name: "cache-allow-v6" },
  { verdict: "deny", family: 4, name: "cache-deny-v4" },
  { verdict: "deny", family: 6, name: "cache-deny-v6" },
];

/** The sets these options use (none when the cache is off). */
export function cacheSetsInUse(cache: VerdictCacheRuleOptions | undefined): CacheSet[] {
  if (!cache) return [];
  return CACHE_SETS.filter((s) => s.verdict === "allow" || cache.denies);
}

export function ipsetCacheName(set: CacheSet): string {
  return `kube-netpol-${set.name}`;
}

/** A set created only to be swapped with the real one (see renderIpsetCacheCreate). */
export function ipsetCacheTmpName(set: CacheSet): string {
  return `${ipsetCacheName(set)}-tmp`;
}

/** Every ipset name the cache may leave behind (sets and interrupted swaps). */
export function allIpsetCacheNames(): string[] {
  return CACHE_SETS.flatMap((s) => [ipsetCacheName(s), ipsetCacheTmpName(s)]);
}

/**
 * Reject options that would render invalid rules (called by validateRuleOptions). `cutMark`:
 * strict mode's ct mark bit, when on; a ct mark, but kept apart so a CNI copying ct marks into
 * packet marks (CONNMARK --restore-mark) cannot make a cut connection look remembered.
 */
export function validateCacheOptions(
  cache: VerdictCacheRuleOptions,
  denyMark: number,
  cutMark?: number,
): void {
  const { mark, timeoutSeconds, maxEntries } = cache;
  if (!Number.isInteger(mark) || mark <= 0 || mark > 0xffffffff) {
    throw new RangeError(`verdict cache mark must be a non-zero 32-bit mark, got ${mark}`);
  }
  if ((mark & denyMark) !== 0) {
    throw new RangeError(
      `verdict cache mark ${hex(mark)} overlaps the deny mark ${hex(denyMark)}: pick free bits`,
    );
  }
  if (cutMark !== undefined && (mark & cutMark) !== 0) {
    throw new RangeError(
      `verdict cache mark ${hex(mark)} overlaps the cut mark ${hex(cutMark)}: pick free bits`,
    );
  }
  if (
    !Number.isInteger(timeoutSeconds) || timeoutSeconds < 1 ||
    timeoutSeconds > MAX_CACHE_TIMEOUT_SECONDS
  ) {
    throw new RangeError(
      `verdict cache timeout must be 1..${MAX_CACHE_TIMEOUT_SECONDS} s, got ${timeoutSeconds}`,
    );
  }
  if (!Number.isInteger(maxEntries) || maxEntries < 1 || maxEntries > 1 << 24) {
    throw new RangeError(`verdict cache size must be 1..${1 << 24} entries, got ${maxEntries}`);
  }
}

/** The bits a verdict may carry back: a packet with any of them set is never queued again. */
export function verdictMarkMask(opts: CacheMarkOptions): number {
  return (opts.denyMark | (opts.verdictCache?.mark ?? 0)) >>> 0;
}

// ------------------------------------------------------------------ iptables + ipset

/**
 * The queue rules' "not one of our re-injected packets" match. Without the cache it stays the
 * historical `! --mark deny/deny`, so existing installs list the same rules.
 */
export function iptablesNotMarked(opts: CacheMarkOptions): string {
  if (!opts.verdictCache) return `-m mark ! --mark ${hex(opts.denyMark)}/${hex(opts.denyMark)}`;
  return `-m mark --mark 0x0/${hex(verdictMarkMask(opts))}`;
}

function ipsetFor(
  opts: CacheMarkOptions,
  verdict: CacheVerdict,
  family: IPFamily,
): string | undefined {
  const s = cacheSetsInUse(opts.verdictCache).find((x) =>
    x.verdict === verdict && x.family === family
  );
  return s ? ipsetCacheName(s) : undefined;
}

function addToSet(name: string, cache: VerdictCacheRuleOptions): string {
  // --exist refreshes the timeout of a key added again; the set's own timeout is the same value.
  return `-j SET --add-set ${name} src,dst,dst --exist --timeout ${cache.timeoutSeconds}`;
}

/**
 * Before the deny rules: a denied packet that also carries the cache mark adds its key to the
 * deny cache and goes on to be refused by the reject rules right after.
 */
export function iptablesCacheDenyFillRules(
  opts: CacheMarkOptions,
  family: IPFamily,
  chain: string,
): string[] {
  const cache = opts.verdictCache;
  const set = ipsetFor(opts, "deny", family);
  if (!cache || !set) return [];
  const both = hex((opts.denyMark | cache.mark) >>> 0);
  return [`-A ${chain} -m mark --mark ${both}/${both} ${addToSet(set, cache)}`];
}

/** Rule 5 (docs/rules.md): first packets whose key the kernel remembers never reach the queue. */
export function iptablesCacheHitRules(
  opts: CacheMarkOptions,
  family: IPFamily,
  chain: string,
): string[] {
  const allow = ipsetFor(opts, "allow", family);
  if (!opts.verdictCache || !allow) return [];
  const isNew = "-m conntrack --ctstate NEW";
  const rules = [`-A ${chain} ${isNew} -m set --match-set ${allow} src,dst,dst -j ACCEPT`];
  const deny = ipsetFor(opts, "deny", family);
  if (deny) {
    const unreachable = family === 4 ? "icmp-port-unreachable" : "icmp6-port-unreachable";
    const hit = `${isNew} -m set --match-set ${deny} src,dst,dst`;
    rules.push(
      `-A ${chain} -p tcp ${hit} -j REJECT --reject-with tcp-reset`,
      `-A ${chain} -p udp ${hit} -j REJECT --reject-with ${unreachable}`,
    );
  }
  return rules;
}

/** After the queue rules: an allowed packet handed back with the cache mark (not the deny mark). */
export function iptablesCacheAllowFillRules(
  opts: CacheMarkOptions,
  family: IPFamily,
  chain: string,
): string[] {
  const cache = opts.verdictCache;
  const set = ipsetFor(opts, "allow", family);
  if (!cache || !set) return [];
  const marked = `-m mark --mark ${hex(cache.mark)}/${hex(verdictMarkMask(opts))}`;
  return [`-A ${chain} ${marked} ${addToSet(set, cache)}`, `-A ${chain} ${marked} -j ACCEPT`];
}

function ipsetCreateLine(name: string, set: CacheSet, cache: VerdictCacheRuleOptions): string {
  return `create ${name} hash:ip,port,ip family ${set.family === 4 ? "inet" : "inet6"} ` +
    `timeout ${cache.timeoutSeconds} maxelem ${cache.maxEntries}`;
}

/**
 * `ipset restore` input creating the cache sets, empty and with the current timeout and size: a
 * set that exists (maybe with other parameters, maybe referenced by rules) is replaced by a fresh
 * one in one swap, so the rules never see a missing set. `existing`: ipset names present now.
 */
export function renderIpsetCacheCreate(
  cache: VerdictCacheRuleOptions | undefined,
  existing: ReadonlySet<string>,
): string {
  let out = "";
  for (const s of cacheSetsInUse(cache)) {
    const name = ipsetCacheName(s);
    const tmp = ipsetCacheTmpName(s);
    if (existing.has(tmp)) out += `destroy ${tmp}\n`;
    if (!existing.has(name)) {
      out += `${ipsetCreateLine(name, s, cache!)}\n`;
      continue;
    }
    out += `${ipsetCreateLine(tmp, s, cache!)}\nswap ${tmp} ${name}\ndestroy ${tmp}\n`;
  }
  return out;
}

/** Packets the cache hit rules matched, from `iptables-save -c` lines of our chain. */
export interface CacheHits {
  allow: number;
  deny: number;
}

/** The verdict a counted chain rule stands for, when it is a cache hit rule. */
export function iptablesCacheHitVerdict(rule: string): CacheVerdict | undefined {
  if (!/ -m set --match-set kube-netpol-cache-(allow|deny)-v[46] src,dst,dst /.test(rule)) {
    return undefined;
  }
  if (/ --ctstate NEW /.test(rule) && / -j ACCEPT$/.test(rule)) return "allow";
  if (/ --ctstate NEW /.test(rule) && / -j REJECT /.test(rule)) return "deny";
  return undefined;
}

// ------------------------------------------------------------------ nftables

/** The nft equivalent of iptablesNotMarked. */
export function nftNotMarked(opts: CacheMarkOptions): string {
  if (!opts.verdictCache) return `meta mark & ${hex(opts.denyMark)} != ${hex(opts.denyMark)}`;
  return `meta mark & ${hex(verdictMarkMask(opts))} == 0x0`;
}

function nftKey(family: IPFamily): string {
  const ip = family === 4 ? "ip" : "ip6";
  return `${ip} saddr . meta l4proto . th dport . ${ip} daddr`;
}

function nftSetFor(opts: CacheMarkOptions, verdict: CacheVerdict, family: IPFamily) {
  return cacheSetsInUse(opts.verdictCache).find((x) =>
    x.verdict === verdict && x.family === family
  );
}

/**
 * `nft -f` lines (without the table prefix handling: `table` is e.g. `inet kube-netpol`) that
 * (re)create the cache sets, empty. `existing`: cache set names present in our table now; they
 * are deleted first (the batch flushes the chains that reference them before this runs).
 */
export function renderNftCacheSets(
  opts: CacheMarkOptions,
  table: string,
  existing: readonly string[],
): string[] {
  const lines = existing.filter((n) => CACHE_SETS.some((s) => s.name === n))
    .map((n) => `delete set ${table} ${n}`);
  const cache = opts.verdictCache;
  for (const s of cacheSetsInUse(cache)) {
    const addr = s.family === 4 ? "ipv4_addr" : "ipv6_addr";
    lines.push(
      `add set ${table} ${s.name} { type ${addr} . inet_proto . inet_service . ${addr}; ` +
        `flags dynamic,timeout; timeout ${cache!.timeoutSeconds}s; size ${cache!.maxEntries}; }`,
    );
  }
  return lines;
}

/** Rule bodies for the judge chain, before the deny rules (see iptablesCacheDenyFillRules). */
export function nftCacheDenyFillRules(opts: CacheMarkOptions): string[] {
  const cache = opts.verdictCache;
  if (!cache) return [];
  const both = hex((opts.denyMark | cache.mark) >>> 0);
  return ([4, 6] as const).flatMap((f) => {
    const s = nftSetFor(opts, "deny", f);
    return s
      ? [`meta mark & ${both} == ${both} meta l4proto { tcp, udp } add @${s.name} { ${nftKey(f)} }`]
      : [];
  });
}

/** Rule bodies of rule 5 (see iptablesCacheHitRules); each counts its hits. */
export function nftCacheHitRules(opts: CacheMarkOptions): string[] {
  if (!opts.verdictCache) return [];
  return ([4, 6] as const).flatMap((f) => {
    const rules: string[] = [];
    const allow = nftSetFor(opts, "allow", f);
    if (allow) rules.push(`ct state new ${nftKey(f)} @${allow.name} counter accept`);
    const deny = nftSetFor(opts, "deny", f);
    if (deny) {
      const hit = `ct state new ${nftKey(f)} @${deny.name}`;
      rules.push(
        `${hit} meta l4proto tcp counter reject with tcp reset`,
        `${hit} meta l4proto udp counter reject with icmpx type port-unreachable`,
      );
    }
    return rules;
  });
}

/** Rule bodies after the queue rules (see iptablesCacheAllowFillRules). */
export function nftCacheAllowFillRules(opts: CacheMarkOptions): string[] {
  const cache = opts.verdictCache;
  if (!cache) return [];
  const marked = `meta mark & ${hex(verdictMarkMask(opts))} == ${hex(cache.mark)}`;
  const rules = ([4, 6] as const).flatMap((f) => {
    const s = nftSetFor(opts, "allow", f);
    return s ? [`${marked} meta l4proto { tcp, udp, sctp } add @${s.name} { ${nftKey(f)} }`] : [];
  });
  return rules.length ? [...rules, `${marked} accept`] : [];
}

/**
 * The verdict a listed nft rule (its JSON expressions) counts hits for: a lookup in a cache set
 * ending in accept or reject.
 */
export function nftCacheHitVerdict(
  expr: readonly Record<string, unknown>[],
): CacheVerdict | undefined {
  const text = JSON.stringify(expr);
  const m = /"@cache-(allow|deny)-v[46]"/.exec(text);
  if (!m || !expr.some((e) => "counter" in e)) return undefined;
  if (expr.some((e) => "set" in e)) return undefined; // a fill rule, not a lookup
  return m[1] as CacheVerdict;
}

// ------------------------------------------------------------------ what the verdict worker needs

/** Where the verdict worker empties the cache after a state change (CacheFlusher). */
export type CacheTarget =
  | { kind: "ipset"; sets: string[] }
  | { kind: "nftables"; table: string; sets: string[] };

/** The cache sets of the chosen backend, as the worker names them over netlink. */
export function cacheTargetFor(
  backend: "nftables" | "iptables-nft" | "iptables-legacy",
  cache: VerdictCacheRuleOptions,
  nftTable = "kube-netpol",
): CacheTarget {
  const sets = cacheSetsInUse(cache);
  if (backend === "nftables") {
    return {
      kind: "nftables",
      table: nftTable,
      sets: sets.map((s) => s.name),
    };
  }
  return { kind: "ipset", sets: sets.map(ipsetCacheName) };
}
