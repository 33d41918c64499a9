/**
 * The four queue sets (ingress/egress x IPv4/IPv6) and the member diff both backends apply.
 * Pure: no commands run here.
 */
import type { Damage, QueuedIPs } from "./backend.ts";
import { canonicalIP, formatIP, type IPFamily, parseIP } from "../net/ip.ts";

export type Direction = "ingress" | "egress";

export interface QueueSet {
  direction: Direction;
  family: IPFamily;
  /** Short name, e.g. `ingress-v4`: the nft set name; ipset names add the `kube-netpol-` prefix. */
  name: string;
}

export const QUEUE_SETS: readonly QueueSet[] = [
  { direction: "ingress", family: 4, name: "ingress-v4" },
  { direction: "ingress", family: 6, name: "ingress-v6" },
  { direction: "egress", family: 4, name: "egress-v4" },
  { direction: "egress", family: 6, name: "egress-v6" },
];

export interface SetDiff {
  /** Desired members missing from the kernel, as the caller wrote them. */
  add: string[];
  /** Installed members no longer desired, as the kernel printed them (so the tool accepts them). */
  del: string[];
}

/** Desired members of each queue set; strings that are not IP addresses are reported, not used. */
export function desiredMembers(
  ips: QueuedIPs,
): { members: Map<string, string[]>; invalid: string[] } {
  const members = new Map<string, string[]>(QUEUE_SETS.map((s) => [s.name, []]));
  const invalid: string[] = [];
  for (const set of QUEUE_SETS) {
    for (const ip of ips[set.direction]) {
      const parsed = parseIP(ip);
      if (!parsed) {
        if (set.family === 4) invalid.push(ip); // report each bad string once, not per family
        continue;
      }
      // Canonical text: an IPv4-mapped spelling is its IPv4 address, in the IPv4 set.
      if (parsed.family === set.family) members.get(set.name)?.push(formatIP(parsed));
    }
  }
  return { members, invalid };
}

/**
 * What to add and delete so that `installed` becomes `desired`, comparing addresses (or what `key`
 * says, e.g. blocks for CIDR sets), not text.
 */
export function diffMembers(
  desired: readonly string[],
  installed: readonly string[],
  key: (text: string) => string | null = canonicalIP,
): SetDiff {
  const canonical = key;
  const installedByKey = new Map<string, string>();
  for (const ip of installed) {
    const key = canonical(ip);
    if (key !== null) installedByKey.set(key, ip);
  }
  const desiredKeys = new Set<string>();
  const add: string[] = [];
  for (const ip of desired) {
    const key = canonical(ip);
    if (key === null || desiredKeys.has(key)) continue;
    desiredKeys.add(key);
    if (!installedByKey.has(key)) add.push(ip);
  }
  const del: string[] = [];
  for (const [key, ip] of installedByKey) if (!desiredKeys.has(key)) del.push(ip);
  return { add, del };
}

/**
 * Damage to the queue sets for the dataplane check: `present` maps each of our sets found in the
 * kernel (short name) to its members; `synced` is what the last successful sync installed
 * (member comparison skipped when undefined).
 */
export function setDamage(
  present: ReadonlyMap<string, readonly string[]>,
  synced: QueuedIPs | undefined,
): Damage[] {
  const damage: Damage[] = [];
  const want = synced ? desiredMembers(synced).members : undefined;
  for (const s of QUEUE_SETS) {
    const members = present.get(s.name);
    if (!members) {
      damage.push({ reason: "set", detail: `set ${s.name} missing` });
      continue;
    }
    if (!want) continue;
    const diff = diffMembers(want.get(s.name) ?? [], members);
    if (diff.add.length || diff.del.length) {
      damage.push({
        reason: "members",
        detail: `set ${s.name}: ${diff.add.length} members missing, ${diff.del.length} unexpected`,
      });
    }
  }
  return damage;
}
