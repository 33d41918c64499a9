/**
 * The kernel side of the pod-start race (src/policy/local_pods.ts says why): per IP family, a set
 * of this node's pod CIDRs and a set of the addresses in them the agent knows, and the rules that
 * queue a new connection from or to an address in the first but not in the second (chain order
 * rules 8 and 9 in docs/rules.md). Both backends render from here; pure, no commands run.
 */
import type { Damage, QueuedIPs, RuleOptions } from "./backend.ts";
import { canonicalIP, type IPFamily, parseIP } from "../net/ip.ts";
import { Cidr } from "../policy/cidr.ts";
import { diffMembers, type SetDiff } from "./queue_sets.ts";
import { iptablesNotMarked, nftNotMarked } from "./verdict_cache_rules.ts";

export interface UnknownPodSet {
  /** `cidrs`: this node's pod CIDRs (ipset hash:net, nft interval set); `known`: addresses. */
  kind: "cidrs" | "known";
  family: IPFamily;
  /** Short name: the nft set name; ipset names add the `kube-netpol-` prefix. */
  name: string;
}

export const UNKNOWN_POD_SETS: readonly UnknownPodSet[] = [
  { kind: "cidrs", family: 4, name: "podcidr-v4" },
  { kind: "cidrs", family: 6, name: "podcidr-v6" },
  { kind: "known", family: 4, name: "known-v4" },
  { kind: "known", family: 6, name: "known-v6" },
];

/** The `cidrs` and `known` set of one family. */
export function unknownPodSetsOf(family: IPFamily): { cidrs: UnknownPodSet; known: UnknownPodSet } {
  const find = (kind: UnknownPodSet["kind"]) =>
    UNKNOWN_POD_SETS.find((s) => s.kind === kind && s.family === family)!;
  return { cidrs: find("cidrs"), known: find("known") };
}

/**
 * One spelling per block: `10.244.0.0/16`; a bare address (ipset lists a /32 in a hash:net set
 * without its prefix; nft lists single addresses of an interval set bare too) is its /32 or /128.
 */
export function canonicalCIDR(text: string): string | null {
  if (!text.includes("/")) {
    const ip = parseIP(text);
    if (!ip) return null;
    text = `${text}/${ip.family === 4 ? 32 : 128}`;
  }
  const c = Cidr.parse(text);
  return typeof c === "string" ? null : c.toString();
}

/** The key members of a set are compared by. */
export function memberKey(set: UnknownPodSet): (text: string) => string | null {
  return set.kind === "cidrs" ? canonicalCIDR : canonicalIP;
}

/** Diff of one of these sets (members compared as blocks or as addresses, not as text). */
export function diffUnknownPodSet(
  set: UnknownPodSet,
  desired: readonly string[],
  installed: readonly string[],
): SetDiff {
  return diffMembers(desired, installed, memberKey(set));
}

/** Desired members of each set (short name -> members); empty sets when `ips` has none. */
export function unknownPodMembers(ips: QueuedIPs | undefined): Map<string, string[]> {
  const out = new Map<string, string[]>(UNKNOWN_POD_SETS.map((s) => [s.name, []]));
  const u = ips?.unknownPods;
  if (!u) return out;
  for (const s of UNKNOWN_POD_SETS) {
    const key = memberKey(s);
    for (const text of s.kind === "cidrs" ? u.podCIDRs : u.known) {
      const k = key(text);
      if (k === null) continue;
      const fam = k.includes(":") ? 6 : 4;
      if (fam === s.family) out.get(s.name)!.push(k);
    }
  }
  return out;
}

/** Damage to these sets: missing, or (when `synced` is known) members other than synced. */
export function unknownPodSetDamage(
  present: ReadonlyMap<string, readonly string[]>,
  synced: QueuedIPs | undefined,
): Damage[] {
  const damage: Damage[] = [];
  const want = synced ? unknownPodMembers(synced) : undefined;
  for (const s of UNKNOWN_POD_SETS) {
    const members = present.get(s.name);
    if (!members) {
      damage.push({ reason: "set", detail: `set ${s.name} missing` });
      continue;
    }
    if (!want) continue;
    const diff = diffUnknownPodSet(s, want.get(s.name) ?? [], members);
    if (diff.add.length || diff.del.length) {
      damage.push({
        reason: "members",
        detail: `set ${s.name}: ${diff.add.length} members missing, ${diff.del.length} unexpected`,
      });
    }
  }
  return damage;
}

/**
 * Our chain's rules for one family, iptables-restore syntax, appended after the queue rules of
 * isolated pods: a packet conntrack cannot place is dropped from and to an unknown local pod (it
 * may be isolated; as for isolated pods, see docs/rules.md), a new unmarked connection is queued
 * with the same bypass flag as the other queue rules.
 */
export function renderIptablesUnknownPodRules(
  opts: RuleOptions,
  family: IPFamily,
  chain: string,
  ipsetName: (short: string) => string,
): string[] {
  const queue = `-j NFQUEUE --queue-num ${opts.queueId}${opts.failOpen ? " --queue-bypass" : ""}`;
  const { cidrs, known } = unknownPodSetsOf(family);
  const unknown = (dir: "src" | "dst") =>
    `-m set --match-set ${ipsetName(cidrs.name)} ${dir} ` +
    `-m set ! --match-set ${ipsetName(known.name)} ${dir}`;
  const c = `-A ${chain}`;
  // Neither mark bit: a packet handed back with the deny or the cache mark is never queued again.
  const isNew = `-m conntrack --ctstate NEW ${iptablesNotMarked(opts)}`;
  return [
    `${c} -m conntrack --ctstate INVALID ${unknown("src")} -j DROP`,
    `${c} -m conntrack --ctstate INVALID ${unknown("dst")} -j DROP`,
    `${c} ${isNew} ${unknown("src")} ${queue}`,
    `${c} ${isNew} ${unknown("dst")} ${queue}`,
  ];
}

/** `add set` lines for nft (CIDR sets are interval sets). */
export function renderNftUnknownPodSets(table: string): string[] {
  return UNKNOWN_POD_SETS.map((s) => {
    const type = s.family === 4 ? "ipv4_addr" : "ipv6_addr";
    const flags = s.kind === "cidrs" ? " flags interval;" : "";
    return `add set ${table} ${s.name} { type ${type};${flags} }`;
  });
}

/** nft rule bodies, in the same order as the iptables ones, both families. */
export function renderNftUnknownPodRules(opts: RuleOptions, queue: string): string[] {
  const isNew = `ct state new ${nftNotMarked(opts)}`;
  const out: string[] = [];
  const both = (f: (match: string) => string) => {
    for (const family of [4, 6] as const) {
      const { cidrs, known } = unknownPodSetsOf(family);
      const ip = family === 4 ? "ip" : "ip6";
      for (const dir of ["saddr", "daddr"]) {
        out.push(f(`${ip} ${dir} @${cidrs.name} ${ip} ${dir} != @${known.name}`));
      }
    }
  };
  both((match) => `ct state invalid ${match} drop`);
  both((match) => `${isNew} ${match} counter ${queue}`);
  return out;
}
