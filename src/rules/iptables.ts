/**
 * iptables backend (`-j NFQUEUE`), for kernels without nft's native `queue`. Two flavours share
 * all logic and differ only in the binaries: iptables-nft (xt rules inside nf_tables) and
 * iptables-legacy. Per IP family: one chain `KUBE-NETPOL` in the filter table and one jump rule
 * at the top of INPUT and FORWARD; members live in ipsets (ipset.ts).
 */
import type { Logger } from "../log.ts";
import { hex } from "./hex.ts";
import {
  type DataplaneStatus,
  type QueuedIPs,
  type RuleBackend,
  type RuleOptions,
  validateRuleOptions,
} from "./backend.ts";
import { type CommandRunner, denoCommandRunner, runChecked } from "./command.ts";
import { ipsetName, IpsetSets } from "./ipset.ts";
import type { IPFamily } from "../net/ip.ts";
import { desiredMembers, QUEUE_SETS, setDamage } from "./queue_sets.ts";
import { iptablesDamage, readIptablesSave } from "./iptables_check.ts";
import {
  renderIptablesUnknownPodRules,
  unknownPodMembers,
  unknownPodSetDamage,
} from "./unknown_pod_sets.ts";
import {
  iptablesCacheAllowFillRules,
  iptablesCacheDenyFillRules,
  iptablesCacheHitRules,
  iptablesNotMarked,
} from "./verdict_cache_rules.ts";

export type IptablesFlavour = "nft" | "legacy";
export const IPTABLES_FLAVOURS: readonly IptablesFlavour[] = ["nft", "legacy"];

export const IPTABLES_CHAIN = "KUBE-NETPOL";
/**
 * An empty chain that records, in the kernel itself, that our install created the filter table
 * (iptables-nft only: there a table is an nf_tables object that stays behind, empty, after our
 * rules are gone). Uninstall deletes the table only when this marker is there and nothing else
 * is, so a table that existed before us is never removed, even across agent restarts.
 */
export const TABLE_MARKER_CHAIN = "KUBE-NETPOL-OWNS-TABLE";
/** The hooks we jump from; see docs/rules.md for why these two. */
export const IPTABLES_HOOKS = ["INPUT", "FORWARD"] as const;
const JUMP_SPEC = `-m comment --comment kube-netpol -j ${IPTABLES_CHAIN}`;

/** `iptables-nft-save`, `ip6tables-legacy-restore`, ... */
export function iptablesBinary(
  flavour: IptablesFlavour,
  family: IPFamily,
  tool: "save" | "restore",
): string {
  return `${family === 4 ? "iptables" : "ip6tables"}-${flavour}-${tool}`;
}

/** The rules of our chain, in iptables-restore syntax (docs/rules.md says why this order). */
export function renderIptablesChainRules(opts: RuleOptions, family: IPFamily): string[] {
  const mark = `${hex(opts.denyMark)}/${hex(opts.denyMark)}`;
  const unreachable = family === 4 ? "icmp-port-unreachable" : "icmp6-port-unreachable";
  const queue = `-j NFQUEUE --queue-num ${opts.queueId}${opts.failOpen ? " --queue-bypass" : ""}`;
  const isNew = `-m conntrack --ctstate NEW ${iptablesNotMarked(opts)}`;
  const invalid = "-m conntrack --ctstate INVALID";
  const set = (direction: "ingress" | "egress") => {
    const s = QUEUE_SETS.find((q) => q.direction === direction && q.family === family);
    return s ? ipsetName(s) : "";
  };
  const c = `-A ${IPTABLES_CHAIN}`;
  return [
    ...iptablesCacheDenyFillRules(opts, family, IPTABLES_CHAIN),
    `${c} -p tcp -m mark --mark ${mark} -j REJECT --reject-with tcp-reset`,
    `${c} -p udp -m mark --mark ${mark} -j REJECT --reject-with ${unreachable}`,
    `${c} -m mark --mark ${mark} -j DROP`,
    ...renderIptablesCutRules(opts, family),
    // Packets conntrack cannot place (bad flag combinations, unrelated ICMP errors) are never
    // queued: drop them where the pod is isolated, as for any other unjudged traffic.
    `${c} ${invalid} -m set --match-set ${set("ingress")} dst -j DROP`,
    `${c} ${invalid} -m set --match-set ${set("egress")} src -j DROP`,
    ...iptablesCacheHitRules(opts, family, IPTABLES_CHAIN),
    `${c} ${isNew} -m set --match-set ${set("ingress")} dst ${queue}`,
    `${c} ${isNew} -m set --match-set ${set("egress")} src ${queue}`,
    // Pods that started before the agent knew them (the pod-start race).
    ...renderIptablesUnknownPodRules(opts, family, IPTABLES_CHAIN, (n) => ipsetName({ name: n })),
    // Last: allowed packets handed back to be remembered (they skipped every queue rule above).
    ...iptablesCacheAllowFillRules(opts, family, IPTABLES_CHAIN),
  ];
}

/**
 * Rule 2 (strict mode): every packet of a connection whose ct mark has the cut bit, whichever
 * direction, is refused like a denied first packet. Nothing without `cutMark`.
 */
export function renderIptablesCutRules(opts: RuleOptions, family: IPFamily): string[] {
  if (opts.cutMark === undefined) return [];
  const cut = `-m connmark --mark ${hex(opts.cutMark)}/${hex(opts.cutMark)}`;
  const unreachable = family === 4 ? "icmp-port-unreachable" : "icmp6-port-unreachable";
  const c = `-A ${IPTABLES_CHAIN}`;
  return [
    `${c} -p tcp ${cut} -j REJECT --reject-with tcp-reset`,
    `${c} -p udp ${cut} -j REJECT --reject-with ${unreachable}`,
    `${c} ${cut} -j DROP`,
  ];
}

/** Our jump rules found in `iptables-save -t filter` output, as printed (`-A INPUT ...`). */
export function findJumps(saveText: string): string[] {
  return saveText.split("\n").filter((l) =>
    IPTABLES_HOOKS.some((h) => l.startsWith(`-A ${h} `)) &&
    l.trimEnd().endsWith(`-j ${IPTABLES_CHAIN}`)
  );
}

/**
 * The `*filter ... COMMIT` part of full `iptables-save` output. Removal reads the full output
 * rather than `-t filter`: asking iptables-legacy for a table that does not exist yet creates it.
 */
export function filterSection(saveText: string): string {
  const lines = saveText.split("\n");
  const start = lines.indexOf("*filter");
  if (start < 0) return "";
  const end = lines.indexOf("COMMIT", start);
  return lines.slice(start, end < 0 ? undefined : end).join("\n");
}

function hasChain(saveText: string, chain = IPTABLES_CHAIN): boolean {
  return saveText.split("\n").some((l) => l.startsWith(`:${chain} `));
}

/** The first rule of `hook` in saved text, as printed. */
function firstRule(saveText: string, hook: string): string | undefined {
  return saveText.split("\n").find((l) => l.startsWith(`-A ${hook} `));
}

/**
 * `iptables-restore --noflush` input installing our chain atomically. Declaring the chain
 * creates it or empties it (only ours); a jump is inserted where missing or moved back to the top
 * when another rule got above it, and duplicates (e.g. from a crashed older run) are removed, so
 * installing twice changes nothing. `markTable`: the filter table does not exist yet, so this
 * install creates it; the marker chain records that (see TABLE_MARKER_CHAIN).
 */
export function renderIptablesInstall(
  opts: RuleOptions,
  family: IPFamily,
  saveText: string,
  markTable = false,
): string {
  const lines = [
    "*filter",
    `:${IPTABLES_CHAIN} - [0:0]`,
    ...(markTable ? [`:${TABLE_MARKER_CHAIN} - [0:0]`] : []),
    ...renderIptablesChainRules(opts, family),
  ];
  const jumps = findJumps(saveText);
  for (const hook of IPTABLES_HOOKS) {
    const present = jumps.filter((j) => j.startsWith(`-A ${hook} `));
    const onTop = present.length > 0 && firstRule(saveText, hook) === present[0];
    for (const extra of onTop ? present.slice(1) : present) lines.push("-D" + extra.slice(2));
    if (!onTop) lines.push(`-I ${hook} 1 ${JUMP_SPEC}`);
  }
  lines.push("COMMIT", "");
  return lines.join("\n");
}

/** `iptables-restore --noflush` input removing our jumps and chains; undefined if none exist. */
export function renderIptablesUninstall(saveText: string): string | undefined {
  const lines = findJumps(saveText).map((j) => "-D" + j.slice(2));
  if (hasChain(saveText)) lines.push(`-F ${IPTABLES_CHAIN}`, `-X ${IPTABLES_CHAIN}`);
  if (hasChain(saveText, TABLE_MARKER_CHAIN)) lines.push(`-X ${TABLE_MARKER_CHAIN}`);
  if (lines.length === 0) return undefined;
  return ["*filter", ...lines, "COMMIT", ""].join("\n");
}

const FAMILIES: readonly IPFamily[] = [4, 6];
/** Wait for the xtables lock (legacy) instead of failing when kube-proxy holds it. */
const RESTORE_ARGS = ["--noflush", "--wait", "5"];

export class IptablesBackend implements RuleBackend {
  readonly name: "iptables-nft" | "iptables-legacy";
  private readonly sets: IpsetSets;
  /** Our chain's rules per family as the tool listed them right after install (counters cut). */
  private installedRules = new Map<IPFamily, string[]>();

  constructor(
    readonly flavour: IptablesFlavour,
    private readonly opts: RuleOptions,
    private readonly run: CommandRunner = denoCommandRunner,
    private readonly log?: Logger,
  ) {
    validateRuleOptions(opts);
    this.name = `iptables-${flavour}`;
    this.sets = new IpsetSets(run, opts.verdictCache);
  }

  /** The filter table with packet counters (`-t filter`: cheap even beside kube-proxy's nat). */
  private saveFilter(family: IPFamily): Promise<string> {
    return runChecked(this.run, iptablesBinary(this.flavour, family, "save"), [
      "-c",
      "-t",
      "filter",
    ]);
  }

  private async restore(family: IPFamily, text: string): Promise<void> {
    await runChecked(this.run, iptablesBinary(this.flavour, family, "restore"), RESTORE_ARGS, text);
  }

  async install(): Promise<void> {
    // Sets first: the rules reference them by name.
    await this.sets.create();
    for (const family of FAMILIES) {
      // The full listing (not `-t filter`) tells whether the table exists: iptables-nft-save
      // prints an empty filter table for `-t filter` even when there is none.
      const all = await runChecked(this.run, iptablesBinary(this.flavour, family, "save"), []);
      const filter = filterSection(all);
      const markTable = this.flavour === "nft" && filter === "";
      await this.restore(family, renderIptablesInstall(this.opts, family, filter, markTable));
      this.installedRules.set(family, readIptablesSave(await this.saveFilter(family)).chainRules);
    }
    await this.sets.destroyUnusedCacheSets();
  }

  async sync(ips: QueuedIPs): Promise<{ added: number; removed: number }> {
    const { members, invalid } = desiredMembers(ips);
    // A bad IP must not block the others from being protected: skip it and say so.
    if (invalid.length) this.log?.warn("not queuing invalid pod IPs", { ips: invalid });
    for (const [name, list] of unknownPodMembers(ips)) members.set(name, list);
    return await this.sets.sync(members);
  }

  async check(synced: QueuedIPs | undefined): Promise<DataplaneStatus> {
    const status: DataplaneStatus = { damage: [], queueRulePackets: 0 };
    const hits = { allow: 0, deny: 0 };
    for (const family of FAMILIES) {
      const view = readIptablesSave(await this.saveFilter(family));
      status.damage.push(...iptablesDamage(family, view, this.installedRules.get(family) ?? []));
      status.queueRulePackets! += view.queuePackets;
      hits.allow += view.cacheHits.allow;
      hits.deny += view.cacheHits.deny;
    }
    if (this.opts.verdictCache) status.cacheHits = hits;
    const sets = await this.sets.list();
    status.damage.push(...setDamage(sets, synced), ...unknownPodSetDamage(sets, synced));
    return status;
  }

  async uninstall(): Promise<void> {
    await removeIptablesRules(this.flavour, this.run);
    await this.sets.destroy();
  }
}

/**
 * Remove our jumps and chains from both families of one flavour, and a filter table our install
 * created once nothing else is in it; true if anything was removed.
 */
export async function removeIptablesRules(
  flavour: IptablesFlavour,
  run: CommandRunner,
): Promise<boolean> {
  let removed = false;
  for (const family of FAMILIES) {
    const saved = await run.run(iptablesBinary(flavour, family, "save"), []);
    if (saved.code !== 0) continue; // flavour not installed: nothing of ours
    const filter = filterSection(saved.stdout);
    const text = renderIptablesUninstall(filter);
    if (text === undefined) continue;
    await runChecked(run, iptablesBinary(flavour, family, "restore"), RESTORE_ARGS, text);
    removed = true;
    if (flavour === "nft" && hasChain(filter, TABLE_MARKER_CHAIN)) {
      await removeTableIfEmpty(family, run);
    }
  }
  return removed;
}

/** iptables-nft's filter table of one family, by its nf_tables name. */
function nftFilterTable(family: IPFamily): [string, string] {
  return [family === 4 ? "ip" : "ip6", "filter"];
}

/**
 * True when `nft -j list table` output holds nothing but the built-in INPUT/FORWARD/OUTPUT chains
 * with policy accept: no rule, no other chain, set, map or object.
 */
export function nftTableIsEmpty(json: string): boolean {
  const doc = JSON.parse(json) as { nftables?: Array<Record<string, unknown>> };
  for (const item of doc.nftables ?? []) {
    const [kind] = Object.keys(item);
    if (kind === "metainfo" || kind === "table") continue;
    if (kind !== "chain") return false;
    const chain = item.chain as { name?: string; hook?: string; policy?: string };
    if (!["INPUT", "FORWARD", "OUTPUT"].includes(chain.name ?? "")) return false;
    if (chain.policy !== undefined && chain.policy !== "accept") return false;
  }
  return true;
}

/**
 * Delete the filter table our install created (the marker said so) if it is empty now. Another
 * component may have put rules in it meanwhile: then it stays. The listing and the delete are two
 * commands, so a rule added in the few milliseconds between them would go too; nft offers no
 * "delete if empty".
 */
async function removeTableIfEmpty(family: IPFamily, run: CommandRunner): Promise<void> {
  const table = nftFilterTable(family);
  const listed = await run.run("nft", ["-j", "list", "table", ...table]);
  if (listed.code !== 0 || !nftTableIsEmpty(listed.stdout)) return;
  await runChecked(run, "nft", ["delete", "table", ...table]);
}
