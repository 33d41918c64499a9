/**
 * `simulate`: load manifests into the same engine the agent runs and judge probes, printing
 * verdicts with the policy and rule that decided. No cluster, no root, no packets.
 */
import { canonicalIP } from "../net/ip.ts";
import { PolicyEngine } from "../policy/engine.ts";
import { explainDecision } from "../policy/explain.ts";
import type { Decision, ObjectError } from "../policy/types.ts";
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

export interface ProbeResult extends Probe {
  verdict: "allow" | "deny";
  reason: Omit<Decision, "verdict">;
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
  errors: ObjectError[];
  notices: string[];
}

/** Load manifests into a fresh engine; every invalid object is reported, the rest applied. */
export async function loadSimulation(paths: string[]): Promise<Simulation> {
  const engine = new PolicyEngine();
  const { objects, errors, notices } = await loadManifests(paths);
  const all = [...errors];
  // Namespaces and pods first so the order of files never matters.
  const order = { Namespace: 0, Pod: 1, NetworkPolicy: 2 } as const;
  for (const o of [...objects].sort((a, b) => order[a.kind] - order[b.kind])) {
    all.push(
      ...applyEvent(
        engine,
        { op: "upsert", kind: o.kind, object: o.object, source: o.source } as never,
      ),
    );
  }
  return { engine, errors: all, notices };
}

/** Resolve a probe endpoint: "ns/pod" must exist; an IP that a pod owns is that pod. */
function endpointIP(engine: PolicyEngine, text: string): string {
  if (text.includes("/") && !text.includes(":") && !/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(text)) {
    const ip = engine.podIP(text);
    if (!ip) {
      throw new UsageError(`probe names pod ${text}, which is not in the manifests (or has no IP)`);
    }
    return ip;
  }
  const ip = canonicalIP(text);
  if (!ip) {
    throw new UsageError(`probe endpoint ${JSON.stringify(text)} is neither ns/pod nor an IP`);
  }
  return ip;
}

export function runProbes(engine: PolicyEngine, probes: Probe[]): ProbeResult[] {
  return probes.map((p) => {
    const decision = engine.evaluate({
      src: endpointIP(engine, p.from),
      dst: endpointIP(engine, p.to),
      protocol: p.protocol as ConnectionProtocol,
      port: p.port,
    });
    const { verdict, ...reason } = decision;
    return { ...p, verdict, reason };
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
    const cell = new Map(
      rs.map((r) => [`${r.from}\u0000${r.to}`, r.verdict === "allow" ? "." : "X"]),
    );
    const w0 = Math.max(7, ...froms.map((f) => f.length));
    const widths = tos.map((t) => Math.max(t.length, 1));
    out.push(`${k}  (. allow, X deny, - self; rows from, columns to)`);
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
      out.push(
        `${
          r.verdict === "allow" ? "ALLOW" : "DENY "
        } ${r.from} -> ${r.to} ${r.protocol}/${r.port}: ` +
          explainDecision({ verdict: r.verdict, ...r.reason }),
      );
    }
  }
  return out.join("\n");
}
