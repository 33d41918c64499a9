/**
 * Driver side of the probes: runs one probe_client per source pod (inside its netns), all in
 * parallel, and assembles what was observed into a from -> to matrix keyed by "namespace/name".
 */
import type { Lab, LabPod } from "./topology.ts";
import type { ProbeOutcome, ProbeResult, ProbeTarget } from "./probe_client.ts";

export type { ProbeOutcome, ProbeResult, ProbeTarget };

const PROBE_CLIENT = new URL("./probe_client.ts", import.meta.url).pathname;

export type LabProtocol = "TCP" | "UDP";
export type Observed = "allow" | "deny";
/** from -> to -> what one new connection did. */
export type ProbeMatrix = Map<string, Map<string, ProbeResult>>;

export interface ProbePair {
  from: string;
  to: string;
}

export interface ProbeOptions {
  /** Per-connection timeout inside the client (default 1500 ms). */
  timeoutMs?: number;
  /** Probe the pods' IPv6 addresses instead of IPv4. */
  ipv6?: boolean;
}

export function podKey(p: { namespace: string; name: string }): string {
  return `${p.namespace}/${p.name}`;
}

/** Every ordered pair of distinct pods (the diagonal is loopback inside one pod: not policed). */
export function allPairs(lab: Lab): ProbePair[] {
  return lab.pods.flatMap((a) =>
    lab.pods.filter((b) => b !== a).map((b) => ({ from: podKey(a), to: podKey(b) }))
  );
}

/** A connection is allowed iff it connected to the pod it was meant for. */
export function observedVerdict(r: ProbeResult, expectedServer?: string): Observed {
  if (r.outcome !== "connected") return "deny";
  return expectedServer === undefined || r.server === expectedServer ? "allow" : "deny";
}

function targetIP(pod: LabPod, ipv6: boolean): string {
  if (!ipv6) return pod.ip;
  if (!pod.ip6) {
    throw new Error(`pod ${podKey(pod)} has no IPv6 address (create the lab with ipv6)`);
  }
  return pod.ip6;
}

/** Run probe_client in `netns` against `targets`; one process, all targets in parallel. */
export async function probeFrom(
  lab: Lab,
  netns: string,
  targets: ProbeTarget[],
  timeoutMs = 1500,
): Promise<ProbeResult[]> {
  if (targets.length === 0) return [];
  const r = await lab.exec(netns, [
    Deno.execPath(),
    "run",
    "--no-config",
    "--allow-net",
    PROBE_CLIENT,
    JSON.stringify(targets),
    String(timeoutMs),
  ], { timeoutMs: timeoutMs + 15_000 });
  if (r.code !== 0) {
    throw new Error(`probe_client in ${netns} failed (exit ${r.code}): ${r.stderr.trim()}`);
  }
  return JSON.parse(r.stdout) as ProbeResult[];
}

/**
 * Probe several (protocol, port) combinations over the same pairs at once: one client process
 * per source pod covers them all. Returns one matrix per combination, in the given order.
 */
export async function probeMatrices(
  lab: Lab,
  pairs: ProbePair[],
  combos: { protocol: LabProtocol; port: number }[],
  opts: ProbeOptions = {},
): Promise<ProbeMatrix[]> {
  const bySource = new Map<string, ProbePair[]>();
  for (const p of pairs) bySource.set(p.from, [...(bySource.get(p.from) ?? []), p]);
  const matrices: ProbeMatrix[] = combos.map(() => new Map());
  await Promise.all([...bySource].map(async ([from, ps]) => {
    const src = lab.pod(from);
    const targets: ProbeTarget[] = [];
    const owners: { combo: number; to: string }[] = [];
    combos.forEach((c, ci) => {
      for (const p of ps) {
        targets.push({
          ip: targetIP(lab.pod(p.to), !!opts.ipv6),
          protocol: c.protocol,
          port: c.port,
        });
        owners.push({ combo: ci, to: p.to });
      }
    });
    const results = await probeFrom(lab, src.netns, targets, opts.timeoutMs);
    results.forEach((r, i) => {
      const o = owners[i]!;
      const m = matrices[o.combo]!;
      if (!m.has(from)) m.set(from, new Map());
      m.get(from)!.set(o.to, r);
    });
  }));
  return matrices;
}

/** Probe one protocol and port over `pairs` (default: all ordered pairs of distinct pods). */
export async function probeMatrix(
  lab: Lab,
  pairs: ProbePair[] | undefined,
  protocol: LabProtocol,
  port: number,
  opts: ProbeOptions = {},
): Promise<ProbeMatrix> {
  const [m] = await probeMatrices(lab, pairs ?? allPairs(lab), [{ protocol, port }], opts);
  return m!;
}

/** Reduce a probe matrix to allow/deny, checking each answer came from the intended pod. */
export function verdictMatrix(m: ProbeMatrix): Map<string, Map<string, Observed>> {
  const out = new Map<string, Map<string, Observed>>();
  for (const [from, row] of m) {
    const r = new Map<string, Observed>();
    for (const [to, res] of row) r.set(to, observedVerdict(res, to));
    out.set(from, r);
  }
  return out;
}

/** What a probe saw, for messages: "refused after 3 ms", "connected, answered by y/b". */
export function describeResult(r: ProbeResult): string {
  if (r.outcome !== "connected") return `${r.outcome} after ${r.ms} ms`;
  return r.server ? `connected, answered by ${r.server}` : "connected, no answer in time";
}

/**
 * A denied probe that should have been allowed is inconclusive unless the connection was refused
 * (a reset or ICMP unreachable): a timeout or a missing greeting may be a starved process on a
 * busy machine. Such cells get one more NEW connection, whose result replaces the first in
 * `observed`. A refusal, and an allow where a deny was expected, are never retried, and a wrong
 * verdict repeats itself on the second probe. Returns one line per retried cell.
 */
export async function reprobeInconclusive(
  lab: Lab,
  combos: { protocol: LabProtocol; port: number }[],
  observed: ProbeMatrix[],
  expected: (combo: number, from: string, to: string) => Observed | undefined,
  opts: ProbeOptions = {},
): Promise<string[]> {
  const cells: { combo: number; from: string; to: string; first: ProbeResult }[] = [];
  combos.forEach((_, i) => {
    for (const [from, row] of observed[i]!) {
      for (const [to, res] of row) {
        const inconclusive = res.outcome !== "refused" && observedVerdict(res, to) === "deny";
        if (inconclusive && expected(i, from, to) === "allow") {
          cells.push({ combo: i, from, to, first: res });
        }
      }
    }
  });
  await Promise.all([...Map.groupBy(cells, (c) => c.from)].map(async ([from, list]) => {
    const results = await probeFrom(
      lab,
      lab.pod(from).netns,
      list.map((c) => ({
        ip: targetIP(lab.pod(c.to), !!opts.ipv6),
        protocol: combos[c.combo]!.protocol,
        port: combos[c.combo]!.port,
      })),
      opts.timeoutMs,
    );
    list.forEach((c, i) => observed[c.combo]!.get(from)!.set(c.to, results[i]!));
  }));
  return cells.map((c) => {
    const { protocol, port } = combos[c.combo]!;
    const again = observed[c.combo]!.get(c.from)!.get(c.to)!;
    return `${protocol}/${port} ${c.from} -> ${c.to}: ${describeResult(c.first)}, then ${
      describeResult(again)
    }`;
  });
}
