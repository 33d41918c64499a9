/**
 * Reading `iptables-save -c` output for the dataplane check: is our chain there with the rules
 * install() put in it, is our jump the first rule of INPUT and FORWARD, and how many packets did
 * the queue rules match. Pure (unit-tested on saved text); iptables.ts runs the tools.
 */
import type { Damage } from "./backend.ts";
import type { IPFamily } from "../net/ip.ts";
import { type CacheHits, iptablesCacheHitVerdict } from "./verdict_cache_rules.ts";

/** The chain and hooks, repeated here to keep this module free of the backend's imports. */
const CHAIN = "KUBE-NETPOL";
const HOOKS = ["INPUT", "FORWARD"] as const;

/** What one family's saved filter table says about our objects. */
export interface IptablesView {
  /** The filter table is listed at all (`nft flush ruleset` removes iptables-nft's). */
  table: boolean;
  chain: boolean;
  /** Our chain's rules as printed, packet counters removed. */
  chainRules: string[];
  /** First rule of each hook chain, counters removed (undefined when the hook is empty). */
  firstRule: Record<(typeof HOOKS)[number], string | undefined>;
  /** How many of our jumps each hook holds. */
  jumps: Record<(typeof HOOKS)[number], number>;
  /** Packets matched by our NFQUEUE rules (their own counters). */
  queuePackets: number;
  /** Packets matched by the verdict cache's hit rules, by verdict. */
  cacheHits: CacheHits;
}

const COUNTERS = /^\[(\d+):(\d+)\] /;

/** Parses the `*filter` section of `iptables-save -c` output (all tables may be included). */
export function readIptablesSave(saveText: string): IptablesView {
  const lines = saveText.split("\n");
  const start = lines.indexOf("*filter");
  const view: IptablesView = {
    table: start >= 0,
    chain: false,
    chainRules: [],
    firstRule: { INPUT: undefined, FORWARD: undefined },
    jumps: { INPUT: 0, FORWARD: 0 },
    queuePackets: 0,
    cacheHits: { allow: 0, deny: 0 },
  };
  if (start < 0) return view;
  for (let i = start + 1; i < lines.length && lines[i] !== "COMMIT"; i++) {
    const raw = lines[i]!.trimEnd();
    if (raw.startsWith(`:${CHAIN} `)) view.chain = true;
    const counted = COUNTERS.exec(raw);
    const line = counted ? raw.slice(counted[0].length) : raw;
    if (line.startsWith(`-A ${CHAIN} `)) {
      view.chainRules.push(line);
      if (/ -j NFQUEUE( |$)/.test(line)) view.queuePackets += Number(counted?.[1] ?? 0);
      const hit = iptablesCacheHitVerdict(line);
      if (hit) view.cacheHits[hit] += Number(counted?.[1] ?? 0);
      continue;
    }
    for (const hook of HOOKS) {
      if (!line.startsWith(`-A ${hook} `)) continue;
      view.firstRule[hook] ??= line;
      if (line.endsWith(`-j ${CHAIN}`)) view.jumps[hook]++;
    }
  }
  return view;
}

/**
 * What is wrong with one family, compared with `expectedRules` (our chain's rules as listed right
 * after install, counters removed).
 */
export function iptablesDamage(
  family: IPFamily,
  view: IptablesView,
  expectedRules: readonly string[],
): Damage[] {
  const fam = `IPv${family}`;
  if (!view.table) {
    return [
      { reason: "table", detail: `${fam}: filter table missing` },
    ];
  }
  const damage: Damage[] = [];
  if (!view.chain) damage.push({ reason: "chain", detail: `${fam}: chain ${CHAIN} missing` });
  else if (!sameRules(view.chainRules, expectedRules)) {
    damage.push({
      reason: "rules",
      detail: `${fam}: chain ${CHAIN} holds ${view.chainRules.length} rules, ` +
        `not the ${expectedRules.length} installed`,
    });
  }
  for (const hook of HOOKS) {
    const first = view.firstRule[hook];
    if (view.jumps[hook] === 0) {
      damage.push({ reason: "jump", detail: `${fam}: jump from ${hook} to ${CHAIN} missing` });
    } else if (!first?.endsWith(`-j ${CHAIN}`)) {
      damage.push({ reason: "jump", detail: `${fam}: jump from ${hook} is not its first rule` });
    }
  }
  return damage;
}

function sameRules(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((r, i) => r === b[i]);
}
