/**
 * The ipsets the iptables backends match on: `kube-netpol-<direction>-v4|v6`, type hash:ip, and
 * the pod-start race's `kube-netpol-podcidr-v4|v6` (hash:net) and `kube-netpol-known-v4|v6`
 * (hash:ip; see unknown_pod_sets.ts), and the verdict cache's `kube-netpol-cache-*`
 * (verdict_cache_rules.ts). Rendering is pure (unit-tested); `IpsetSets` runs the batches
 * through a CommandRunner.
 */
import { type CommandRunner, runChecked } from "./command.ts";
import { diffMembers, QUEUE_SETS } from "./queue_sets.ts";
import { memberKey, UNKNOWN_POD_SETS } from "./unknown_pod_sets.ts";
import { canonicalIP, type IPFamily } from "../net/ip.ts";
import {
  allIpsetCacheNames,
  cacheSetsInUse,
  ipsetCacheName,
  renderIpsetCacheCreate,
  type VerdictCacheRuleOptions,
} from "./verdict_cache_rules.ts";

/** Every ipset we own starts with this; nothing else is ever created, changed or destroyed. */
export const IPSET_PREFIX = "kube-netpol-";

export function ipsetName(set: { name: string }): string {
  return IPSET_PREFIX + set.name;
}

/** One set we own: its short name, ipset type and how its members compare. */
interface OwnedSet {
  name: string;
  family: IPFamily;
  type: "hash:ip" | "hash:net";
  key: (text: string) => string | null;
}

const OWNED_SETS: readonly OwnedSet[] = [
  ...QUEUE_SETS.map((s) => ({
    name: s.name,
    family: s.family,
    type: "hash:ip" as const,
    key: canonicalIP,
  })),
  ...UNKNOWN_POD_SETS.map((s) => ({
    name: s.name,
    family: s.family,
    type: s.kind === "cidrs" ? "hash:net" as const : "hash:ip" as const,
    key: memberKey(s),
  })),
];

/** `ipset restore -exist` input creating our sets (no-op for those that exist). */
export function renderIpsetCreate(): string {
  return OWNED_SETS.map((s) =>
    `create ${ipsetName(s)} ${s.type} family ${s.family === 4 ? "inet" : "inet6"}\n`
  ).join("");
}

/** `ipset restore -exist` input applying one set's diff: deletions first, then additions. */
export function renderIpsetDiff(name: string, diff: { add: string[]; del: string[] }): string {
  return diff.del.map((ip) => `del ${name} ${ip}\n`).join("") +
    diff.add.map((ip) => `add ${name} ${ip}\n`).join("");
}

/** Members from `ipset save <name>` output (`add <name> <ip>` lines). */
export function parseIpsetSave(name: string, text: string): string[] {
  const members: string[] = [];
  const prefix = `add ${name} `;
  for (const line of text.split("\n")) {
    if (line.startsWith(prefix)) {
      const ip = line.slice(prefix.length).trim().split(/\s+/)[0];
      if (ip) members.push(ip);
    }
  }
  return members;
}

/** Our sets (short name -> members) in full `ipset save` output; other sets are ignored. */
export function parseIpsetSaveAll(text: string): Map<string, string[]> {
  const byName = new Map(OWNED_SETS.map((s) => [ipsetName(s), s.name]));
  const sets = new Map<string, string[]>();
  for (const line of text.split("\n")) {
    const [op, name, member] = line.trim().split(/\s+/);
    const short = name === undefined ? undefined : byName.get(name);
    if (short === undefined) continue;
    if (op === "create") sets.set(short, sets.get(short) ?? []);
    else if (op === "add" && member) {
      const list = sets.get(short) ?? [];
      list.push(member);
      sets.set(short, list);
    }
  }
  return sets;
}

export class IpsetSets {
  constructor(
    private readonly run: CommandRunner,
    private readonly cache?: VerdictCacheRuleOptions,
  ) {}

  /** The queue sets (kept with their members) and the verdict cache's sets (always fresh). */
  async create(): Promise<void> {
    await runChecked(this.run, "ipset", ["restore", "-exist"], renderIpsetCreate());
    if (!this.cache) return;
    const batch = renderIpsetCacheCreate(this.cache, new Set(await this.existing()));
    if (batch) await runChecked(this.run, "ipset", ["restore"], batch);
  }

  /**
   * Bring each set to `desired` (keyed by short set name; a set not named is emptied) with one
   * `ipset restore` batch.
   */
  async sync(desired: Map<string, string[]>): Promise<{ added: number; removed: number }> {
    const installed = await Promise.all(
      OWNED_SETS.map(async (s) => {
        const name = ipsetName(s);
        return parseIpsetSave(name, await runChecked(this.run, "ipset", ["save", name]));
      }),
    );
    let batch = "";
    let added = 0;
    let removed = 0;
    OWNED_SETS.forEach((s, i) => {
      const diff = diffMembers(desired.get(s.name) ?? [], installed[i] ?? [], s.key);
      added += diff.add.length;
      removed += diff.del.length;
      batch += renderIpsetDiff(ipsetName(s), diff);
    });
    // -exist: a member that appeared or vanished meanwhile is not an error.
    if (batch) await runChecked(this.run, "ipset", ["restore", "-exist"], batch);
    return { added, removed };
  }

  /** Our sets and their members, from one `ipset save` of every set. */
  async list(): Promise<Map<string, string[]>> {
    return parseIpsetSaveAll(await runChecked(this.run, "ipset", ["save"]));
  }

  /**
   * Destroy cache sets the current options do not use (left by a run with other flags); call once
   * the rules no longer reference them.
   */
  async destroyUnusedCacheSets(): Promise<void> {
    const inUse = new Set(cacheSetsInUse(this.cache).map(ipsetCacheName));
    const cacheNames = new Set(allIpsetCacheNames());
    const unused = (await this.existing()).filter((n) => cacheNames.has(n) && !inUse.has(n));
    if (unused.length === 0) return;
    await runChecked(this.run, "ipset", ["restore"], unused.map((n) => `destroy ${n}\n`).join(""));
  }

  /** Destroy those of our sets that exist. Fails while some rule still references one. */
  async destroy(): Promise<void> {
    const names = await this.existing();
    if (names.length === 0) return;
    await runChecked(this.run, "ipset", ["restore"], names.map((n) => `destroy ${n}\n`).join(""));
  }

  /** Names of our sets present in the kernel (empty when ipset itself is missing). */
  async existing(): Promise<string[]> {
    const res = await this.run.run("ipset", ["list", "-n"]);
    if (res.code !== 0) return [];
    const ours = new Set([...OWNED_SETS.map(ipsetName), ...allIpsetCacheNames()]);
    return res.stdout.split("\n").map((l) => l.trim()).filter((l) => ours.has(l));
  }
}
