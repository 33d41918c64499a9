/**
 * Connectivity cases: a YAML file per case with the policies and the expected matrix side by
 * side, read by both drivers (namespace lab, kind). Matrix text: a header row of destination
 * pods, then one row per source pod; "." allow, "X" deny, "-" the pod itself (never probed: a
 * pod reaching its own IP never leaves its network namespace).
 *
 *   name: deny-all-ingress-x
 *   description: ...
 *   policies: [ <NetworkPolicy>, ... ]     # strings may use {{ip x/a}} for a pod's IP
 *   clusterPolicies: [ <ClusterNetworkPolicy | AdminNetworkPolicy | BaselineAdminNetworkPolicy> ]
 *   expect:
 *     - ports: [TCP/80, UDP/80]            # columns that share this matrix
 *       matrix: |
 *         from\to x/a x/b ...
 *         x/a      -   X  ...
 *   probes:                                # optional: endpoints outside the matrix
 *     - { from: x/a, to: node, ports: [TCP/80], expect: deny }
 *
 * `clusterPolicies` (cluster-scoped, no namespace) and `probes` are optional. `node` in a probe is
 * the node the model's pods run on (the lab's node address; a real node in kind), a Node object
 * labelled kubernetes.io/os=linux (see modelNodes). Cases with cluster policies live in
 * e2e/cases/tiers/, which the lab and kind drivers read once they install those kinds.
 */
import { parse } from "yaml";
import type {
  AdminNetworkPolicy,
  BaselineAdminNetworkPolicy,
  ClusterNetworkPolicy,
  NetworkPolicy,
} from "../../src/policy/types.ts";
import type { Protocol } from "../../src/net/protocol.ts";
import { MODEL_PODS } from "./model.ts";

export type Verdict = "allow" | "deny";
export type Matrix = Map<string, Map<string, Verdict>>;

export interface CaseExpectation {
  protocol: Protocol;
  port: number;
  matrix: Matrix;
}

export type ClusterScopedPolicy =
  | ClusterNetworkPolicy
  | AdminNetworkPolicy
  | BaselineAdminNetworkPolicy;

export const CLUSTER_POLICY_KINDS = [
  "ClusterNetworkPolicy",
  "AdminNetworkPolicy",
  "BaselineAdminNetworkPolicy",
] as const;

/** The probe endpoint that stands for the node the model's pods run on. */
export const NODE_ENDPOINT = "node";

/** One connection outside the pod matrix, e.g. a pod to its node. */
export interface CaseProbe {
  from: string;
  to: string;
  protocol: Protocol;
  port: number;
  expect: Verdict;
}

export interface ConnectivityCase {
  name: string;
  file: string;
  description: string;
  policies: NetworkPolicy[];
  /** Cluster-scoped policies (Admin and Baseline tiers); [] when the case has none. */
  clusterPolicies: ClusterScopedPolicy[];
  expect: CaseExpectation[];
  probes: CaseProbe[];
}

export class CaseError extends Error {
  override name = "CaseError";
}

/** Parse the matrix text; every model pod must appear once as a row and as a column. */
export function parseMatrix(text: string, where: string): Matrix {
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const [header, ...rows] = lines;
  if (!header) throw new CaseError(`${where}: empty matrix`);
  const cols = header.split(/\s+/).slice(1);
  const expectOrder = (list: string[], what: string) => {
    if (list.join(" ") !== MODEL_PODS.join(" ")) {
      throw new CaseError(
        `${where}: ${what} must be ${MODEL_PODS.join(" ")}, got ${list.join(" ")}`,
      );
    }
  };
  expectOrder(cols, "columns");
  const m: Matrix = new Map();
  for (const [i, line] of rows.entries()) {
    const [from, ...cells] = line.split(/\s+/) as [string, ...string[]];
    if (cells.length !== cols.length) {
      throw new CaseError(
        `${where}: row ${i + 1} (${from}) has ${cells.length} cells, want ${cols.length}`,
      );
    }
    const row = new Map<string, Verdict>();
    cells.forEach((c, j) => {
      const to = cols[j]!;
      if (from === to) {
        if (c !== "-" && c !== ".") throw new CaseError(`${where}: ${from} -> itself must be "-"`);
        row.set(to, "allow");
      } else if (c === ".") row.set(to, "allow");
      else if (c === "X") row.set(to, "deny");
      else {throw new CaseError(
          `${where}: ${from} -> ${to}: cell ${JSON.stringify(c)} is not . or X`,
        );}
    });
    m.set(from, row);
  }
  expectOrder([...m.keys()], "rows");
  return m;
}

function parseColumn(text: unknown, where: string): { protocol: Protocol; port: number } {
  const m = typeof text === "string" ? /^(TCP|UDP|SCTP)\/(\d+)$/.exec(text) : null;
  if (!m) throw new CaseError(`${where}: port ${JSON.stringify(text)} is not like TCP/80`);
  return { protocol: m[1] as Protocol, port: Number(m[2]) };
}

export function parseCase(text: string, file: string): ConnectivityCase {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text);
  } catch (e) {
    throw new CaseError(`${file}: ${(e as Error).message}`);
  }
  if (!doc || typeof doc !== "object") throw new CaseError(`${file}: not a YAML mapping`);
  const name = doc.name;
  if (typeof name !== "string" || !name) throw new CaseError(`${file}: name is required`);
  const policies = (doc.policies ?? []) as NetworkPolicy[];
  if (!Array.isArray(policies)) throw new CaseError(`${file}: policies must be a list`);
  const expect = doc.expect;
  if (!Array.isArray(expect) || expect.length === 0) {
    throw new CaseError(`${file}: expect must list at least one matrix`);
  }
  return {
    name,
    file,
    description: typeof doc.description === "string" ? doc.description.trim() : "",
    policies,
    clusterPolicies: parseClusterPolicies(doc.clusterPolicies, file),
    probes: parseProbes(doc.probes, file),
    expect: expect.flatMap((e: { ports?: unknown; matrix?: unknown }, i: number) => {
      const where = `${file}: expect[${i}]`;
      if (!Array.isArray(e?.ports) || !e.ports.length) {
        throw new CaseError(`${where}: ports required`);
      }
      if (typeof e.matrix !== "string") throw new CaseError(`${where}: matrix required`);
      const columns = e.ports.map((p) => parseColumn(p, where));
      const matrix = parseMatrix(e.matrix, where);
      return columns.map((col) => ({ ...col, matrix }));
    }),
  };
}

function parseClusterPolicies(raw: unknown, file: string): ClusterScopedPolicy[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw new CaseError(`${file}: clusterPolicies must be a list`);
  return raw.map((p, i) => {
    const where = `${file}: clusterPolicies[${i}]`;
    if (!p || typeof p !== "object") throw new CaseError(`${where}: must be an object`);
    if (!(CLUSTER_POLICY_KINDS as readonly string[]).includes(p.kind)) {
      throw new CaseError(
        `${where}: kind must be one of ${CLUSTER_POLICY_KINDS.join(", ")}, not ${
          JSON.stringify(p.kind)
        }`,
      );
    }
    if (typeof p.metadata?.name !== "string" || !p.metadata.name) {
      throw new CaseError(`${where}: metadata.name is required`);
    }
    if (p.metadata.namespace !== undefined) {
      throw new CaseError(`${where}: ${p.kind} is cluster-scoped; remove metadata.namespace`);
    }
    return p as ClusterScopedPolicy;
  });
}

function parseProbes(raw: unknown, file: string): CaseProbe[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw new CaseError(`${file}: probes must be a list`);
  const endpoints = [...MODEL_PODS, NODE_ENDPOINT];
  return raw.flatMap((p: Record<string, unknown>, i: number) => {
    const where = `${file}: probes[${i}]`;
    for (const end of ["from", "to"] as const) {
      if (!endpoints.includes(p?.[end] as string)) {
        throw new CaseError(
          `${where}.${end}: must be a model pod or "${NODE_ENDPOINT}", not ${
            JSON.stringify(p?.[end])
          }`,
        );
      }
    }
    if (p.from === p.to) throw new CaseError(`${where}: from and to are the same endpoint`);
    if (p.expect !== "allow" && p.expect !== "deny") {
      throw new CaseError(`${where}.expect: must be allow or deny`);
    }
    if (!Array.isArray(p.ports) || !p.ports.length) {
      throw new CaseError(`${where}.ports: required`);
    }
    return p.ports.map((port) => ({
      from: p.from as string,
      to: p.to as string,
      ...parseColumn(port, where),
      expect: p.expect as Verdict,
    }));
  });
}

/** Every case file in `dir` (*.yaml), sorted by file name; names must be unique. */
export async function loadCases(dir: string): Promise<ConnectivityCase[]> {
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(".yaml")) files.push(`${dir.replace(/\/$/, "")}/${e.name}`);
  }
  files.sort();
  const cases = await Promise.all(files.map(async (f) => parseCase(await Deno.readTextFile(f), f)));
  const seen = new Map<string, string>();
  for (const c of cases) {
    const other = seen.get(c.name);
    if (other) throw new CaseError(`${c.file}: name ${c.name} already used by ${other}`);
    seen.set(c.name, c.file);
  }
  return cases;
}

/** Replace `{{ip ns/pod}}` in every string of the policies with that pod's IP. */
export function resolvePlaceholders<T>(
  policies: T[],
  ipOf: (namespace: string, pod: string) => string,
): T[] {
  const walk = (v: unknown): unknown => {
    if (typeof v === "string") {
      return v.replace(
        /\{\{\s*ip\s+([a-z0-9-]+)\/([a-z0-9-]+)\s*\}\}/g,
        (_, ns, pod) => ipOf(ns, pod),
      );
    }
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === "object") {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    }
    return v;
  };
  return walk(policies) as T[];
}

/**
 * Expected next to observed for every cell probed; a differing cell is shown as
 * "<expected>><observed>" (e.g. ".>X": expected allow, observed deny).
 */
export function formatMatrixDiff(expected: Matrix, observed: Matrix): string {
  const cell = (v: Verdict | undefined) => (v === undefined ? "?" : v === "allow" ? "." : "X");
  const lines = [`from\\to ${MODEL_PODS.map((p) => p.padEnd(5)).join("")}`];
  let diffs = 0;
  for (const from of MODEL_PODS) {
    let row = from.padEnd(8);
    for (const to of MODEL_PODS) {
      if (from === to) {
        row += "-".padEnd(5);
        continue;
      }
      const want = expected.get(from)?.get(to);
      const got = observed.get(from)?.get(to);
      if (got === undefined) row += " ".padEnd(5);
      else if (want === got) row += cell(want).padEnd(5);
      else {
        row += `${cell(want)}>${cell(got)}`.padEnd(5);
        diffs++;
      }
    }
    lines.push(row);
  }
  lines.push(`${diffs} cell(s) differ (shown as expected>observed; . allow, X deny)`);
  return lines.join("\n");
}
