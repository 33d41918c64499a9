/**
 * Which cases a kind run takes, and in which IP families each is probed.
 *
 * The cases (e2e/cases) are written for one address per pod. On an IPv6 or dual-stack cluster:
 * - a case without ipBlock peers means the same in every family, so it is probed in each;
 * - `{{ip ns/pod}}` placeholders in ipBlocks name one family's address, so such a case is applied
 *   and probed in one family only (the run's first), and `{{ip ns/pod}}/32` ("exactly this
 *   pod") becomes /128 for IPv6;
 * - a literal CIDR (e.g. 0.0.0.0/0) restricts the case to its own family; when the run has no
 *   such family the case is skipped, with the reason, rather than reported as a failure.
 */
import { type ConnectivityCase, resolvePlaceholders } from "../cases/format.ts";
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

/** Every cidr and except string of the policies' ipBlock peers. */
function ipBlockStrings(policies: NetworkPolicy[]): string[] {
  const out: string[] = [];
  for (const p of policies) {
    const peers = [
      ...(p.spec?.ingress ?? []).flatMap((r) => r.from ?? []),
      ...(p.spec?.egress ?? []).flatMap((r) => r.to ?? []),
    ];
    for (const peer of peers) {
      if (peer.ipBlock) out.push(peer.ipBlock.cidr, ...(peer.ipBlock.except ?? []));
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
  const blocks = ipBlockStrings(c.policies);
  let families = [...run];
  const skipped: string[] = [];
  for (const b of blocks.filter((s) => !PLACEHOLDER.test(s))) {
    const fam: Family = b.includes(":") ? 6 : 4;
    for (const f of families.filter((f) => f !== fam)) {
      skipped.push(`IPv${f}: ipBlock ${b} is an IPv${fam} range`);
    }
    families = families.filter((f) => f === fam);
  }
  if (families.length > 1 && blocks.some((s) => PLACEHOLDER.test(s))) {
    for (const f of families.slice(1)) {
      skipped.push(`IPv${f}: ipBlocks name pod addresses, filled in IPv${families[0]}`);
    }
    families = families.slice(0, 1);
  }
  return { resolveIn: families[0] ?? run[0]!, probeIn: families, skipped };
}

/** Policies with `{{ip ns/pod}}` filled in for `family` (a host /32 becomes /128 for IPv6). */
export function policiesFor(
  c: ConnectivityCase,
  family: Family,
  ipOf: (pod: string, family: Family) => string,
): NetworkPolicy[] {
  const host = new RegExp(`(${PLACEHOLDER.source})/32\\b`, "g");
  const walk = (v: unknown): unknown => {
    if (typeof v === "string") return family === 6 ? v.replace(host, "$1/128") : v;
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === "object") {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    }
    return v;
  };
  return resolvePlaceholders(
    walk(c.policies) as NetworkPolicy[],
    (ns, pod) => ipOf(`${ns}/${pod}`, family),
  );
}
