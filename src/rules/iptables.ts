/**
 * iptables backend (`-j NFQUEUE`), for kernels without nft's native `queue`. Two flavours share
 * all logic and differ only in the binaries: iptables-nft (xt rules inside nf_tables) and
 * iptables-legacy. Per IP family: one chain `KUBE-NETPOL` in the filter table and one jump rule
 * at the top of INPUT and FORWARD; members live in ipsets (ipset.ts).
 */
import type { Logger } from "../log.ts";
import {
  hex,
  type QueuedIPs,
  type RuleBackend,
  type RuleOptions,
  validateRuleOptions,
} from "./backend.ts";
import { type CommandRunner, denoCommandRunner, runChecked } from "./command.ts";
import { ipsetName, IpsetSets } from "./ipset.ts";
import type { IPFamily } from "../net/ip.ts";
import { desiredMembers, QUEUE_SETS } from "./queue_sets.ts";

export type IptablesFlavour = "nft" | "legacy";
export const IPTABLES_FLAVOURS: readonly IptablesFlavour[] = ["nft", "legacy"];

export const IPTABLES_CHAIN = "KUBE-NETPOL";
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
  const isNew = `-m conntrack --ctstate NEW -m mark ! --mark ${mark}`;
  const invalid = "-m conntrack --ctstate INVALID";
  const set = (direction: "ingress" | "egress") => {
    const s = QUEUE_SETS.find((q) => q.direction === direction && q.family === family);
    return s ? ipsetName(s) : "";
  };
  const c = `-A ${IPTABLES_CHAIN}`;
  return [
    `${c} -p tcp -m mark --mark ${mark} -j REJECT --reject-with tcp-reset`,
    `${c} -p udp -m mark --mark ${mark} -j REJECT --reject-with ${unreachable}`,
    `${c} -m mark --mark ${mark} -j DROP`,
    // Packets conntrack cannot place (bad flag combinations, unrelated ICMP errors) are never
    // queued: drop them where the pod is isolated, as for any other unjudged traffic.
    `${c} ${invalid} -m set --match-set ${set("ingress")} dst -j DROP`,
    `${c} ${invalid} -m set --match-set ${set("egress")} src -j DROP`,
    `${c} ${isNew} -m set --match-set ${set("ingress")} dst ${queue}`,
    `${c} ${isNew} -m set --match-set ${set("egress")} src ${queue}`,
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

function hasChain(saveText: string): boolean {
  return saveText.split("\n").some((l) => l.startsWith(`:${IPTABLES_CHAIN} `));
}

/**
 * `iptables-restore --noflush` input installing our chain atomically. Declaring the chain
 * creates it or empties it (only ours); a jump is inserted only where missing, and duplicates
 * (e.g. from a crashed older run) are removed, so installing twice changes nothing.
 */
export function renderIptablesInstall(
  opts: RuleOptions,
  family: IPFamily,
  saveText: string,
): string {
  const lines = [
    "*filter",
    `:${IPTABLES_CHAIN} - [0:0]`,
    ...renderIptablesChainRules(opts, family),
  ];
  const jumps = findJumps(saveText);
  for (const hook of IPTABLES_HOOKS) {
    const present = jumps.filter((j) => j.startsWith(`-A ${hook} `));
    if (present.length === 0) lines.push(`-I ${hook} 1 ${JUMP_SPEC}`);
    for (const extra of present.slice(1)) lines.push("-D" + extra.slice(2));
  }
  lines.push("COMMIT", "");
  return lines.join("\n");
}

/** `iptables-restore --noflush` input removing our jumps and chain; undefined if none exist. */
export function renderIptablesUninstall(saveText: string): string | undefined {
  const lines = findJumps(saveText).map((j) => "-D" + j.slice(2));
  if (hasChain(saveText)) lines.push(`-F ${IPTABLES_CHAIN}`, `-X ${IPTABLES_CHAIN}`);
  if (lines.length === 0) return undefined;
  return ["*filter", ...lines, "COMMIT", ""].join("\n");
}

const FAMILIES: readonly IPFamily[] = [4, 6];
/** Wait for the xtables lock (legacy) instead of failing when kube-proxy holds it. */
const RESTORE_ARGS = ["--noflush", "--wait", "5"];

export class IptablesBackend implements RuleBackend {
  readonly name: "iptables-nft" | "iptables-legacy";
  private readonly sets: IpsetSets;

  constructor(
    readonly flavour: IptablesFlavour,
    private readonly opts: RuleOptions,
    private readonly run: CommandRunner = denoCommandRunner,
    private readonly log?: Logger,
  ) {
    validateRuleOptions(opts);
    this.name = `iptables-${flavour}`;
    this.sets = new IpsetSets(run);
  }

  private save(family: IPFamily): Promise<string> {
    return runChecked(this.run, iptablesBinary(this.flavour, family, "save"), ["-t", "filter"]);
  }

  private async restore(family: IPFamily, text: string): Promise<void> {
    await runChecked(this.run, iptablesBinary(this.flavour, family, "restore"), RESTORE_ARGS, text);
  }

  async install(): Promise<void> {
    // Sets first: the rules reference them by name.
    await this.sets.create();
    for (const family of FAMILIES) {
      await this.restore(family, renderIptablesInstall(this.opts, family, await this.save(family)));
    }
  }

  async sync(ips: QueuedIPs): Promise<{ added: number; removed: number }> {
    const { members, invalid } = desiredMembers(ips);
    // A bad IP must not block the others from being protected: skip it and say so.
    if (invalid.length) this.log?.warn("not queuing invalid pod IPs", { ips: invalid });
    return await this.sets.sync(members);
  }

  async uninstall(): Promise<void> {
    await removeIptablesRules(this.flavour, this.run);
    await this.sets.destroy();
  }
}

/** Remove our jumps and chain from both families of one flavour; true if anything was removed. */
export async function removeIptablesRules(
  flavour: IptablesFlavour,
  run: CommandRunner,
): Promise<boolean> {
  let removed = false;
  for (const family of FAMILIES) {
    const saved = await run.run(iptablesBinary(flavour, family, "save"), []);
    if (saved.code !== 0) continue; // flavour not installed: nothing of ours
    const text = renderIptablesUninstall(filterSection(saved.stdout));
    if (text === undefined) continue;
    await runChecked(run, iptablesBinary(flavour, family, "restore"), RESTORE_ARGS, text);
    removed = true;
  }
  return removed;
}
