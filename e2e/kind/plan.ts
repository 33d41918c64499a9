/**
 * Which cases a kind run takes, and in which IP families each is probed.
 *
 * The cases (e2e/cases, e2e/cases/tiers) are written for one address per pod. On an IPv6 or
 * dual-stack cluster:
 * - a case without address peers (NetworkPolicy ipBlocks, cluster policy `networks`) means the
 *   same in every family, so it is probed in each;
 * - `{{ip ns/pod}}` placeholders in them name one family's address, so such a case is applied
 *   and probed in one family only (the run's first), and `{{ip ns/pod}}/32` ("exactly this
 *   pod") becomes /128 for IPv6;
 * - a peer of literal CIDRs restricts the case to the families it covers (0.0.0.0/0: IPv4; a
 *   `networks` list of 0.0.0.0/0 and ::/0: both); when the run has none of them the case is
 *   skipped, with the reason, rather than reported as a failure.
 */
import {
  type ClusterScopedPolicy,
  type ConnectivityCase,
  resolvePlaceholders,
} from "../cases/format.ts";
import type { NetworkPolicy } from "../../src/policy/types.ts";

export type IpFamily = "ipv4" | "ipv6" | "dual";
export type Family = 4 | 6;

export class PlanError extends Error {
  override name = "PlanError";
}

export function familiesOf(ipFamily: IpFamily): Family[] {
  return ipFamily === "ipv4" ? [4] : ipFamily === "ipv6" ? [6] : [4, 6];
}

/** The cases named by `--case` (a case's `name:` or its file name without .yaml); all if none. */
export function selectCases(cases: ConnectivityCase[], wanted: string[]): ConnectivityCase[] {
  if (!wanted.length) return cases;
  const stem = (c: ConnectivityCase) => c.file.replace(/^.*\//, "").replace(/\.yaml$/, "");
  const unknown = wanted.filter((w) => !cases.some((c) => c.name === w || stem(c) === w));
  if (unknown.length) {
    throw new PlanError(
      `unknown case ${unknown.join(", ")}; the cases (name, then file) are:\n  ${
        cases.map((c) => `${c.name.padEnd(40)} ${stem(c)}`).join("\n  ")
      }`,
    );
  }
  return cases.filter((c) => wanted.includes(c.name) || wanted.includes(stem(c)));
}

const PLACEHOLDER = /\{\{\s*ip\s+[a-z0-9-]+\/[a-z0-9-]+\s*\}\}/;

/** One peer's address strings, and what to call them in a message. */
interface AddressPeer {
  what: "ipBlock" | "networks";
  cidrs: string[];
}

/**
 * Every address peer of the case: each ipBlock cidr and except string alone (an except is of its
 * block's family), and each cluster policy `networks` list as one (it may name both families).
 */
function addressPeers(policies: NetworkPolicy[], cluster: ClusterScopedPolicy[]): AddressPeer[] {
  const out: AddressPeer[] = [];
  for (const p of policies) {
    const peers = [
      ...(p.spec?.ingress ?? []).flatMap((r) => r.from ?? []),
      ...(p.spec?.egress ?? []).flatMap((r) => r.to ?? []),
    ];
    for (const peer of peers) {
      if (!peer.ipBlock) continue;
      for (const cidr of [peer.ipBlock.cidr, ...(peer.ipBlock.except ?? [])]) {
        out.push({ what: "ipBlock", cidrs: [cidr] });
      }
    }
  }
  for (const p of cluster) {
    for (const rule of p.spec?.egress ?? []) {
      for (const peer of rule.to ?? []) {
        if (Array.isArray(peer.networks)) out.push({ what: "networks", cidrs: peer.networks });
      }
    }
  }
  return out;
}

export interface CasePlan {
  /** The family whose pod addresses fill the placeholders. */
  resolveIn: Family;
  /** Families probed; empty when the case cannot run here (see `skipped`). */
  probeIn: Family[];
  /** Why a family of the run is not probed, one line each. */
  skipped: string[];
}

export function planCase(c: ConnectivityCase, run: Family[]): CasePlan {
  const peers = addressPeers(c.policies, c.clusterPolicies);
  let families = [...run];
  const skipped: string[] = [];
  for (const peer of peers) {
    const literals = peer.cidrs.filter((s) => !PLACEHOLDER.test(s));
    if (!literals.length) continue;
    const covered = new Set<Family>(literals.map((b) => (b.includes(":") ? 6 : 4)));
    for (const f of families.filter((f) => !covered.has(f))) {
      const fam = [...covered][0]!;
      skipped.push(`IPv${f}: ${peer.what} ${literals.join(", ")} is an IPv${fam} range`);
    }
    families = families.filter((f) => covered.has(f));
  }
  const named = peers.filter((p) => p.cidrs.some((s) => PLACEHOLDER.test(s)));
  if (families.length > 1 && named.length) {
    const what = named.some((p) => p.what === "ipBlock") ? "ipBlocks" : "networks";
    for (const f of families.slice(1)) {
      skipped.push(`IPv${f}: ${what} name pod addresses, filled in IPv${families[0]}`);
    }
    families = families.slice(0, 1);
  }
  return { resolveIn: families[0] ?? run[0]!, probeIn: families, skipped };
}

/** `{{ip ns/pod}}` filled in for `family` (a host /32 becomes /128 for IPv6). */
function resolveFor<T>(
  items: T[],
  family: Family,
  ipOf: (pod: string, family: Family) => string,
): T[] {
  const host = new RegExp(`(${PLACEHOLDER.source})/32\\b`, "g");
  const walk = (v: unknown): unknown => {
    if (typeof v === "string") return family === 6 ? v.replace(host, "$1/128") : v;
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === "object") {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    }
    return v;
  };
  return resolvePlaceholders(walk(items) as T[], (ns, pod) => ipOf(`${ns}/${pod}`, family));
}

/** The case's NetworkPolicies for `family` (see resolveFor). */
export function policiesFor(
  c: ConnectivityCase,
  family: Family,
  ipOf: (pod: string, family: Family) => string,
): NetworkPolicy[] {
  return resolveFor(c.policies, family, ipOf);
}

/** The case's cluster-scoped policies for `family` (see resolveFor). */
export function clusterPoliciesFor(
  c: ConnectivityCase,
  family: Family,
  ipOf: (pod: string, family: Family) => string,
): ClusterScopedPolicy[] {
  return resolveFor(c.clusterPolicies, family, ipOf);
}
