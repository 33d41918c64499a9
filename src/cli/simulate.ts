/**
 * `simulate`: load manifests into the same engine the agent runs and judge probes, printing
 * verdicts with the policy and rule that decided. No cluster, no root, no packets.
 *
 * A probe names pods or IPs. A pod answers on the address of the family the probe needs: with an
 * IP at the other end, the pod's address of that IP's family; between two dual-stack pods, each
 * family is judged, and both answers are reported when they differ. A hostNetwork pod resolves to
 * its own (its node's) address and is judged as the non-pod endpoint it is.
 */
import { canonicalIP } from "../net/ip.ts";
import { PolicyEngine } from "../policy/engine.ts";
import { explainDecision } from "../policy/explain.ts";
import type { Decision, ObjectError, StateObjectKind } from "../policy/types.ts";
import { type ConnectionProtocol, type Protocol, PROTOCOLS } from "../net/protocol.ts";
import { loadManifests } from "../manifests/load.ts";
import { applyEvent } from "../state/apply.ts";
import { UsageError } from "./args.ts";

export interface Probe {
  from: string;
  to: string;
  protocol: Protocol;
  port: number;
}

/** The answer for one address family of a probe. */
export interface FamilyResult {
  family: 4 | 6;
  src: string;
  dst: string;
  verdict: "allow" | "deny";
  reason: Omit<Decision, "verdict">;
}

export interface ProbeResult extends Probe {
  /** The addresses judged (of the first denying family, when families differ). */
  src: string;
  dst: string;
  /** "deny" when any judged family denies. */
  verdict: "allow" | "deny";
  /** The reason of the (first denying) family. */
  reason: Omit<Decision, "verdict">;
  /** Present only when two families were judged and their answers differ: both of them. */
  families?: FamilyResult[];
}

/** Parse the `--probe "x/a -> y/b tcp/80"` shorthand. */
export function parseProbeShorthand(text: string): Probe {
  const m = /^\s*(\S+)\s*->\s*(\S+)\s+(tcp|udp|sctp)\/(\d+)\s*$/i.exec(text);
  if (!m) {
    throw new UsageError(
      `--probe ${
        JSON.stringify(text)
      }: expected "<ns/pod|IP> -> <ns/pod|IP> <tcp|udp|sctp>/<port>"`,
    );
  }
  return { from: m[1]!, to: m[2]!, protocol: m[3]!.toUpperCase() as Protocol, port: Number(m[4]) };
}

/** Parse a probes file: a JSON array of {from, to, protocol, port}; unknown fields ignored. */
export function parseProbesFile(text: string, file: string): Probe[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${file}: not valid JSON: ${(e as Error).message}`);
  }
  if (!Array.isArray(data)) throw new UsageError(`${file}: must hold a JSON array of probes`);
  return data.map((raw, i) => {
    const p = raw as Record<string, unknown>;
    const where = `${file}: probe [${i}]`;
    if (typeof p?.from !== "string") {
      throw new UsageError(`${where}.from: must be "ns/pod" or an IP`);
    }
    if (typeof p.to !== "string") throw new UsageError(`${where}.to: must be "ns/pod" or an IP`);
    const protocol = typeof p.protocol === "string" ? p.protocol.toUpperCase() : p.protocol;
    if (!PROTOCOLS.includes(protocol as Protocol)) {
      throw new UsageError(`${where}.protocol: must be TCP, UDP or SCTP`);
    }
    if (typeof p.port !== "number" || !Number.isInteger(p.port) || p.port < 1 || p.port > 65535) {
      throw new UsageError(`${where}.port: must be an integer from 1 to 65535`);
    }
    return { from: p.from, to: p.to, protocol: protocol as Protocol, port: p.port };
  });
}

export interface Simulation {
  engine: PolicyEngine;
  /** Objects that were not applied. */
  errors: ObjectError[];
  /** Objects applied with a caveat (e.g. a cluster policy rule that fails closed). */
  warnings: ObjectError[];
  notices: string[];
}

/** Namespaces, nodes and pods first so the order of files never matters. */
const APPLY_ORDER: Record<StateObjectKind, number> = {
  Namespace: 0,
  Node: 1,
  Pod: 2,
  NetworkPolicy: 3,
  ClusterNetworkPolicy: 4,
  AdminNetworkPolicy: 4,
  BaselineAdminNetworkPolicy: 4,
};

/** Load manifests into a fresh engine; every invalid object is reported, the rest applied. */
export async function loadSimulation(paths: string[]): Promise<Simulation> {
  const engine = new PolicyEngine();
  const { objects, errors, notices } = await loadManifests(paths);
  const all = [...errors];
  for (const o of [...objects].sort((a, b) => APPLY_ORDER[a.kind] - APPLY_ORDER[b.kind])) {
    all.push(
      ...applyEvent(
        engine,
        { op: "upsert", kind: o.kind, object: o.object, source: o.source } as never,
      ),
    );
  }
  return {
    engine,
    errors: all.filter((e) => e.severity !== "warning"),
    warnings: all.filter((e) => e.severity === "warning"),
    notices,
  };
}

/** What a probe endpoint stands for: its addresses, and its name when it names a pod. */
interface Endpoint {
  text: string;
  ips: string[];
}

/** Resolve a probe endpoint: "ns/pod" must exist; an IP is itself (a pod owning it is that pod). */
function resolveEndpoint(engine: PolicyEngine, text: string): Endpoint {
  if (text.includes("/") && !text.includes(":") && !/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(text)) {
    const addresses = engine.podAddresses(text);
    if (!addresses?.ips.length) {
      throw new UsageError(`probe names pod ${text}, which is not in the manifests (or has no IP)`);
    }
    return { text, ips: addresses.ips };
  }
  const ip = canonicalIP(text);
  if (!ip) {
    throw new UsageError(`probe endpoint ${JSON.stringify(text)} is neither ns/pod nor an IP`);
  }
  return { text, ips: [ip] };
}

function family(ip: string): 4 | 6 {
  return ip.includes(":") ? 6 : 4;
}

export function runProbes(engine: PolicyEngine, probes: Probe[]): ProbeResult[] {
  return probes.map((p) => {
    const from = resolveEndpoint(engine, p.from);
    const to = resolveEndpoint(engine, p.to);
    const answers: FamilyResult[] = [];
    for (const f of [4, 6] as const) {
      const src = from.ips.find((ip) => family(ip) === f);
      const dst = to.ips.find((ip) => family(ip) === f);
      if (src === undefined || dst === undefined) continue;
      const { verdict, ...reason } = engine.evaluate({
        src,
        dst,
        protocol: p.protocol as ConnectionProtocol,
        port: p.port,
      });
      answers.push({ family: f, src, dst, verdict, reason });
    }
    if (answers.length === 0) {
      const fams = (e: Endpoint) => [...new Set(e.ips.map((ip) => `IPv${family(ip)}`))].join("+");
      throw new UsageError(
        `probe ${p.from} -> ${p.to}: no address family in common (${p.from} has ${
          fams(from)
        }, ${p.to} has ${fams(to)})`,
      );
    }
    const first = answers.find((a) => a.verdict === "deny") ?? answers[0]!;
    const result: ProbeResult = {
      ...p,
      src: first.src,
      dst: first.dst,
      verdict: first.verdict,
      reason: first.reason,
    };
    const differ = answers.length > 1 &&
      JSON.stringify(answers[0]!.reason) !== JSON.stringify(answers[1]!.reason);
    if (differ || (answers.length > 1 && answers[0]!.verdict !== answers[1]!.verdict)) {
      result.families = answers;
    }
    return result;
  });
}

/** Every pod to every pod, for `--matrix tcp/80`. */
export function allPairs(pods: string[], spec: string): Probe[] {
  const m = /^(tcp|udp|sctp)\/(\d+)$/i.exec(spec);
  if (!m) throw new UsageError(`--matrix ${JSON.stringify(spec)}: expected <tcp|udp|sctp>/<port>`);
  const protocol = m[1]!.toUpperCase() as Protocol;
  const port = Number(m[2]);
  // A pod reaching itself never leaves its network namespace: no policy applies, so skip it.
  return pods.flatMap((from) =>
    pods.filter((to) => to !== from).map((to) => ({ from, to, protocol, port }))
  );
}

/**
 * The table view: one matrix per protocol/port (rows: from, columns: to; "." allow, "X" deny,
 * blank: not probed), then, with `explain`, one line per probe naming the deciding policy.
 */
export function renderTable(results: ProbeResult[], explain: boolean): string {
  const out: string[] = [];
  const groups = new Map<string, ProbeResult[]>();
  for (const r of results) {
    const k = `${r.protocol}/${r.port}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  for (const [k, rs] of groups) {
    // One order for rows and columns, so a square matrix has its diagonal on the diagonal.
    const names = [...new Set(rs.flatMap((r) => [r.from, r.to]))];
    const fromSet = new Set(rs.map((r) => r.from));
    const toSet = new Set(rs.map((r) => r.to));
    const froms = names.filter((n) => fromSet.has(n));
    const tos = names.filter((n) => toSet.has(n));
    const cell = new Map(rs.map((r) => [`${r.from}\u0000${r.to}`, cellOf(r)]));
    const mixed = [...cell.values()].some((c) => c === "4" || c === "6");
    const w0 = Math.max(7, ...froms.map((f) => f.length));
    const widths = tos.map((t) => Math.max(t.length, 1));
    out.push(
      `${k}  (. allow, X deny, ${
        mixed ? "4/6 only IPv4/IPv6 allowed, " : ""
      }- self; rows from, columns to)`,
    );
    out.push(`${"from\\to".padEnd(w0)}  ${tos.map((t, i) => t.padEnd(widths[i]!)).join("  ")}`);
    for (const f of froms) {
      const cells = tos.map((t, i) =>
        (cell.get(`${f}\u0000${t}`) ?? (f === t ? "-" : " ")).padEnd(widths[i]!)
      );
      out.push(`${f.padEnd(w0)}  ${cells.join("  ")}`);
    }
    out.push("");
  }
  const allowed = results.filter((r) => r.verdict === "allow").length;
  out.push(`${results.length} probes: ${allowed} allowed, ${results.length - allowed} denied`);
  if (explain) {
    out.push("");
    for (const r of results) {
      const lines = r.families?.map((f) => ({ ...f, tag: ` [IPv${f.family}]` })) ??
        [{ verdict: r.verdict, reason: r.reason, tag: "" }];
      for (const l of lines) {
        out.push(
          `${
            l.verdict === "allow" ? "ALLOW" : "DENY "
          } ${r.from} -> ${r.to} ${r.protocol}/${r.port}${l.tag}: ` +
            explainDecision({ verdict: l.verdict, ...l.reason }),
        );
      }
    }
  }
  return out.join("\n");
}

/** ".", "X", or for families that disagree "4"/"6": only that family is allowed. */
function cellOf(r: ProbeResult): string {
  const allowed = r.families?.filter((f) => f.verdict === "allow");
  if (allowed && allowed.length === 1) return String(allowed[0]!.family);
  return r.verdict === "allow" ? "." : "X";
}
