/**
 * nftables backend: one `table inet kube-netpol` holding the four queue sets, the `judge` chain
 * and two base chains (forward, input) at priority filter-10, so we see packets before the usual
 * filter-priority chains of other components. Needs the kernel's native nft `queue`
 * (CONFIG_NFT_QUEUE); probe.ts only picks this backend when a throwaway queue rule loads.
 *
 * Everything is written as `nft -f` command batches, never by feeding `nft list` output back:
 * on kernels that mix in iptables-nft, listed xt rules do not parse back to what they were.
 */
import type { Logger } from "../log.ts";
import { hex } from "./hex.ts";
import {
  type Damage,
  type DataplaneStatus,
  type QueuedIPs,
  type RuleBackend,
  type RuleOptions,
  validateRuleOptions,
} from "./backend.ts";
import { type CommandRunner, denoCommandRunner, runChecked } from "./command.ts";
import { desiredMembers, diffMembers, QUEUE_SETS, setDamage } from "./queue_sets.ts";
import {
  diffUnknownPodSet,
  renderNftUnknownPodRules,
  renderNftUnknownPodSets,
  UNKNOWN_POD_SETS,
  unknownPodMembers,
  unknownPodSetDamage,
} from "./unknown_pod_sets.ts";
import {
  type CacheHits,
  nftCacheAllowFillRules,
  nftCacheDenyFillRules,
  nftCacheHitRules,
  nftCacheHitVerdict,
  nftNotMarked,
  renderNftCacheSets,
} from "./verdict_cache_rules.ts";

export const NFT_TABLE = "inet kube-netpol";
const JUDGE = "judge";
/** Base chains and their hooks; see docs/rules.md for why forward and input. */
const BASE_CHAINS = [{ name: "forward", hook: "forward" }, { name: "input", hook: "input" }];

/** The statement that hands a packet to the verdict loop. */
export function renderNftQueue(opts: RuleOptions): string {
  return `queue num ${opts.queueId}${opts.failOpen ? " bypass" : ""}`;
}

/**
 * Rule 2 (strict mode): every packet of a connection whose ct mark has the cut bit, whichever
 * direction, is refused like a denied first packet. Rule bodies for the judge chain; none
 * without `cutMark`.
 */
export function renderNftCutRules(opts: RuleOptions): string[] {
  if (opts.cutMark === undefined) return [];
  const m = hex(opts.cutMark);
  const cut = `ct mark & ${m} == ${m}`;
  return [
    `${cut} meta l4proto tcp reject with tcp reset`,
    `${cut} meta l4proto udp reject with icmpx type port-unreachable`,
    `${cut} drop`,
  ];
}

/**
 * One `nft -f` transaction creating or refreshing our table. `add` of an existing table/set/chain
 * is a no-op, so set members survive a re-install; our chains are flushed and refilled in the
 * same transaction, so the kernel never sees a half-built rule set.
 */
export function renderNftInstall(opts: RuleOptions, existingSets: readonly string[] = []): string {
  const m = hex(opts.denyMark);
  const marked = `meta mark & ${m} == ${m}`;
  const isNew = `ct state new ${nftNotMarked(opts)}`;
  const queue = renderNftQueue(opts);
  const rule = (body: string) => `add rule ${NFT_TABLE} ${JUDGE} ${body}`;
  const lines = [`add table ${NFT_TABLE}`];
  for (const s of QUEUE_SETS) {
    lines.push(`add set ${NFT_TABLE} ${s.name} { type ${s.family === 4 ? "ipv4" : "ipv6"}_addr; }`);
  }
  lines.push(...renderNftUnknownPodSets(NFT_TABLE));
  lines.push(
    `add chain ${NFT_TABLE} ${JUDGE}`,
    `flush chain ${NFT_TABLE} ${JUDGE}`,
    // The chain no longer references the cache sets: they can be replaced by fresh ones.
    ...renderNftCacheSets(opts, NFT_TABLE, existingSets),
    ...nftCacheDenyFillRules(opts).map(rule),
    rule(`${marked} meta l4proto tcp reject with tcp reset`),
    rule(`${marked} meta l4proto udp reject with icmpx type port-unreachable`),
    rule(`${marked} drop`),
    ...renderNftCutRules(opts).map(rule),
  );
  const match = (s: (typeof QUEUE_SETS)[number]) =>
    `${s.family === 4 ? "ip" : "ip6"} ${s.direction === "ingress" ? "daddr" : "saddr"} @${s.name}`;
  // Packets conntrack cannot place are never queued: drop them where the pod is isolated.
  for (const s of QUEUE_SETS) lines.push(rule(`ct state invalid ${match(s)} drop`));
  lines.push(...nftCacheHitRules(opts).map(rule));
  // The counter lets the dataplane check count packets the kernel let through unjudged.
  for (const s of QUEUE_SETS) lines.push(rule(`${isNew} ${match(s)} counter ${queue}`));
  // Pods that started before the agent knew them (the pod-start race).
  for (const body of renderNftUnknownPodRules(opts, queue)) lines.push(rule(body));
  // Last: allowed packets handed back to be remembered (they skipped every queue rule above).
  lines.push(...nftCacheAllowFillRules(opts).map(rule));
  for (const b of BASE_CHAINS) {
    lines.push(
      `add chain ${NFT_TABLE} ${b.name} { type filter hook ${b.hook} priority filter - 10; policy accept; }`,
      `flush chain ${NFT_TABLE} ${b.name}`,
      `add rule ${NFT_TABLE} ${b.name} jump ${JUDGE}`,
    );
  }
  return lines.join("\n") + "\n";
}

/** Deleting a table that may not exist: `add` first makes the batch succeed either way. */
export const NFT_UNINSTALL = `add table ${NFT_TABLE}\ndelete table ${NFT_TABLE}\n`;

/** Whether our table is present (it holds everything of this backend). */
export async function nftTableExists(run: CommandRunner): Promise<boolean> {
  return (await run.run("nft", ["list", "table", ...NFT_TABLE.split(" ")])).code === 0;
}

/** One `nft -f` batch applying all set diffs; empty when nothing changes. */
export function renderNftSetDiffs(diffs: Map<string, { add: string[]; del: string[] }>): string {
  let out = "";
  for (const [name, d] of diffs) {
    if (d.del.length) out += `delete element ${NFT_TABLE} ${name} { ${d.del.join(", ")} }\n`;
    if (d.add.length) out += `add element ${NFT_TABLE} ${name} { ${d.add.join(", ")} }\n`;
  }
  return out;
}

/** Set members from `nft -j list table inet kube-netpol`, keyed by set name. */
export function parseNftSetMembers(json: string): Map<string, string[]> {
  const members = new Map<string, string[]>();
  const doc = JSON.parse(json) as { nftables?: Array<Record<string, unknown>> };
  for (const item of doc.nftables ?? []) {
    const set = item["set"] as { name?: string; elem?: unknown[] } | undefined;
    if (!set?.name) continue;
    // Plain address sets list bare strings, interval sets prefixes (`{"prefix": {"addr": ...,
    // "len": 16}}`) and bare strings for single addresses; anything else is not ours to interpret.
    members.set(set.name, (set.elem ?? []).flatMap(nftElementText));
  }
  return members;
}

function nftElementText(e: unknown): string[] {
  if (typeof e === "string") return [e];
  const prefix = (e as { prefix?: { addr?: unknown; len?: unknown } } | null)?.prefix;
  if (typeof prefix?.addr === "string" && typeof prefix.len === "number") {
    return [`${prefix.addr}/${prefix.len}`];
  }
  return [];
}

/** Our chains and rules in `nft -j list table` output, comparable across listings. */
export interface NftView {
  sets: Map<string, string[]>;
  /** Chain name -> its definition (type, hook, priority, policy) as JSON text. */
  chains: Map<string, string>;
  /** Chain name -> its rules as JSON text, handles dropped and counter values zeroed. */
  rules: Map<string, string[]>;
  /** Packets counted by the rules that queue. */
  queuePackets: number;
  /** Packets counted by the verdict cache's hit rules, by verdict. */
  cacheHits: CacheHits;
}

export function readNftTable(json: string): NftView {
  const view: NftView = {
    sets: parseNftSetMembers(json),
    chains: new Map(),
    rules: new Map(),
    queuePackets: 0,
    cacheHits: { allow: 0, deny: 0 },
  };
  const doc = JSON.parse(json) as { nftables?: Array<Record<string, unknown>> };
  for (const item of doc.nftables ?? []) {
    if (item.chain) {
      const { name, type, hook, prio, policy } = item.chain as Record<string, unknown>;
      view.chains.set(String(name), JSON.stringify({ type, hook, prio, policy }));
      if (!view.rules.has(String(name))) view.rules.set(String(name), []);
    }
    const rule = item.rule as { chain?: string; expr?: Array<Record<string, unknown>> } | undefined;
    if (!rule?.chain) continue;
    const expr = rule.expr ?? [];
    let packets = 0;
    const shape = expr.map((e) => {
      if (!("counter" in e)) return e;
      packets += Number((e.counter as { packets?: number } | null)?.packets ?? 0);
      return { counter: null };
    });
    if (expr.some((e) => "queue" in e)) view.queuePackets += packets;
    const hit = nftCacheHitVerdict(expr);
    if (hit) view.cacheHits[hit] += packets;
    const list = view.rules.get(rule.chain) ?? [];
    list.push(JSON.stringify(shape));
    view.rules.set(rule.chain, list);
  }
  return view;
}

/** What differs between `now` and `installed` (both read with readNftTable). */
export function nftDamage(now: NftView, installed: NftView): Damage[] {
  const damage: Damage[] = [];
  for (const [name, def] of installed.chains) {
    const have = now.chains.get(name);
    if (have === undefined) {
      damage.push({ reason: "chain", detail: `nft chain ${name} missing` });
      continue;
    }
    const want = installed.rules.get(name) ?? [];
    const rules = now.rules.get(name) ?? [];
    if (have !== def || rules.join("\n") !== want.join("\n")) {
      // The base chains hold only the jump to our judge chain.
      damage.push({
        reason: name === JUDGE ? "rules" : "jump",
        detail: `nft chain ${name} differs from what was installed`,
      });
    }
  }
  return damage;
}

export class NftablesBackend implements RuleBackend {
  readonly name = "nftables";

  constructor(
    private readonly opts: RuleOptions,
    private readonly run: CommandRunner = denoCommandRunner,
    private readonly log?: Logger,
  ) {
    validateRuleOptions(opts);
  }

  /** Our table as listed right after install: what check() compares with. */
  private installed?: NftView;

  private list(): Promise<string> {
    return runChecked(this.run, "nft", ["-j", "list", "table", ...NFT_TABLE.split(" ")]);
  }

  async install(): Promise<void> {
    // Cache sets present now are replaced by fresh ones (other flags, or stale entries).
    const before = await this.run.run("nft", ["-j", "list", "table", ...NFT_TABLE.split(" ")]);
    const existing = before.code === 0 ? [...parseNftSetMembers(before.stdout).keys()] : [];
    await runChecked(this.run, "nft", ["-f", "-"], renderNftInstall(this.opts, existing));
    this.installed = readNftTable(await this.list());
  }

  async check(synced: QueuedIPs | undefined): Promise<DataplaneStatus> {
    const listed = await this.run.run("nft", ["-j", "list", "table", ...NFT_TABLE.split(" ")]);
    if (listed.code !== 0) {
      return { damage: [{ reason: "table", detail: `nft table ${NFT_TABLE} missing` }] };
    }
    const now = readNftTable(listed.stdout);
    return {
      damage: [
        ...(this.installed ? nftDamage(now, this.installed) : []),
        ...setDamage(now.sets, synced),
        ...unknownPodSetDamage(now.sets, synced),
      ],
      queueRulePackets: now.queuePackets,
      ...(this.opts.verdictCache ? { cacheHits: now.cacheHits } : {}),
    };
  }

  async sync(ips: QueuedIPs): Promise<{ added: number; removed: number }> {
    const { members, invalid } = desiredMembers(ips);
    if (invalid.length) this.log?.warn("not queuing invalid pod IPs", { ips: invalid });
    const installed = parseNftSetMembers(await this.list());
    const diffs = new Map<string, { add: string[]; del: string[] }>();
    let added = 0;
    let removed = 0;
    for (const s of QUEUE_SETS) {
      const d = diffMembers(members.get(s.name) ?? [], installed.get(s.name) ?? []);
      diffs.set(s.name, d);
      added += d.add.length;
      removed += d.del.length;
    }
    const unknownPods = unknownPodMembers(ips);
    for (const s of UNKNOWN_POD_SETS) {
      const d = diffUnknownPodSet(s, unknownPods.get(s.name) ?? [], installed.get(s.name) ?? []);
      diffs.set(s.name, d);
      added += d.add.length;
      removed += d.del.length;
    }
    const batch = renderNftSetDiffs(diffs);
    if (batch) await runChecked(this.run, "nft", ["-f", "-"], batch);
    return { added, removed };
  }

  async uninstall(): Promise<void> {
    await runChecked(this.run, "nft", ["-f", "-"], NFT_UNINSTALL);
  }
}
