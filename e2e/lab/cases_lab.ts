/**
 * `deno task e2e:lab`: every connectivity case of e2e/cases against the real agent in the lab.
 * One lab, one agent: per case the policy file is rewritten (a live change), the agent is awaited
 * until it enforces exactly the case's policies, then every ordered pair of distinct pods is
 * probed with NEW connections for each expected (protocol, port) and compared with the case.
 *
 *   deno run --frozen -A e2e/lab/cases_lab.ts [--case <name>]... [--keep] [--max-seconds 900]
 *
 * Exit code 0 when every case matched, 1 on a mismatch, 2 on a usage or set-up error.
 */
import { parseArgs } from "node:util";
import { LabAgent, ManifestDir } from "./agent.ts";
import { clusterObjects, defaultPlan, type LabClusterPlan } from "./cluster.ts";
import { allPairs, probeMatrices, verdictMatrix } from "./probe.ts";
import { sctpSupport, startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab, type Lab } from "./topology.ts";
import type { NetworkPolicy } from "../../src/policy/types.ts";

type Verdict = "allow" | "deny";
type Matrix = Map<string, Map<string, Verdict>>;

/** The part of e2e/cases (another engineer's module) this runner relies on. */
export interface ConnectivityCase {
  name: string;
  file: string;
  description: string;
  policies: NetworkPolicy[];
  expect: { protocol: "TCP" | "UDP" | "SCTP"; port: number; matrix: Matrix }[];
}
interface CasesModule {
  loadCases(dir: string): Promise<ConnectivityCase[]> | ConnectivityCase[];
  formatMatrixDiff(expected: Matrix, observed: Matrix): string;
}

const CASES_DIR = new URL("../cases/", import.meta.url).pathname;

/** Loaded at run time, so this file type-checks while e2e/cases is still being written. */
async function loadCasesModule(): Promise<CasesModule> {
  const url = new URL("../cases/model.ts", import.meta.url).href;
  const mod = await import(url) as Partial<CasesModule>;
  if (typeof mod.loadCases !== "function" || typeof mod.formatMatrixDiff !== "function") {
    throw new Error(`${url} does not export loadCases and formatMatrixDiff`);
  }
  return mod as CasesModule;
}

/** Own fallback diff, used only if the cases module's formatter throws. */
function simpleDiff(expected: Matrix, observed: Matrix): string {
  const lines: string[] = [];
  for (const [from, row] of observed) {
    for (const [to, got] of row) {
      const want = expected.get(from)?.get(to);
      if (want !== got) lines.push(`  ${from} -> ${to}: expected ${want}, observed ${got}`);
    }
  }
  return lines.join("\n");
}

/** Keep only what the probes covered (no diagonal), so the comparison is like for like. */
function restrict(expected: Matrix, observed: Matrix): Matrix {
  const out: Matrix = new Map();
  for (const [from, row] of observed) {
    const r = new Map<string, Verdict>();
    for (const to of row.keys()) {
      const want = expected.get(from)?.get(to);
      if (want) r.set(to, want);
    }
    out.set(from, r);
  }
  return out;
}

function sameMatrix(a: Matrix, b: Matrix): boolean {
  for (const [from, row] of b) {
    for (const [to, v] of row) if (a.get(from)?.get(to) !== v) return false;
  }
  return true;
}

interface CaseOutcome {
  name: string;
  status: "pass" | "fail" | "error";
  checked: number;
  skipped: string[];
  ms: number;
}

async function runCase(
  c: ConnectivityCase,
  ctx: { lab: Lab; agent: LabAgent; dir: ManifestDir; cases: CasesModule; sctp: string },
): Promise<CaseOutcome> {
  const start = Date.now();
  const skipped: string[] = [];
  await ctx.dir.writePolicies(c.policies);
  const enforceMs = await ctx.agent.waitEnforced(
    c.policies.map((p) => `${p.metadata.namespace ?? "default"}/${p.metadata.name}`),
  );
  const combos = c.expect.filter((e) => {
    if (e.protocol !== "SCTP") return true;
    skipped.push(`SCTP ${e.port} (${ctx.sctp})`);
    return false;
  }) as { protocol: "TCP" | "UDP"; port: number; matrix: Matrix }[];
  const observed = await probeMatrices(ctx.lab, allPairs(ctx.lab), combos);
  let failed = false;
  combos.forEach((e, i) => {
    const seen = verdictMatrix(observed[i]!);
    const want = restrict(e.matrix, seen);
    if (sameMatrix(want, seen)) return;
    failed = true;
    let diff: string;
    try {
      diff = ctx.cases.formatMatrixDiff(want, seen);
    } catch {
      diff = simpleDiff(want, seen);
    }
    console.log(`  ${e.protocol} ${e.port}: expected vs observed\n${diff}`);
  });
  console.log(`  enforced in ${enforceMs} ms`);
  return {
    name: c.name,
    status: failed ? "fail" : "pass",
    checked: combos.length,
    skipped,
    ms: Date.now() - start,
  };
}

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: Deno.args,
      options: {
        case: { type: "string", multiple: true },
        keep: { type: "boolean", default: false },
        "max-seconds": { type: "string", default: "900" },
        verbose: { type: "boolean", default: false },
      },
    }).values;
  } catch (e) {
    console.error(`${(e as Error).message}\nusage: cases_lab.ts [--case <name>]... [--keep]`);
    return 2;
  }
  if (Deno.uid() !== 0) {
    console.error("cases_lab.ts needs root (it creates network namespaces)");
    return 2;
  }
  const deadline = Date.now() + Number(args["max-seconds"]) * 1000;
  const cases = await loadCasesModule();
  let all = await cases.loadCases(CASES_DIR);
  if (args.case?.length) {
    const wanted = new Set(args.case);
    const unknown = [...wanted].filter((n) => !all.some((c) => c.name === n));
    if (unknown.length) {
      console.error(`unknown case(s): ${unknown.join(", ")}`);
      return 2;
    }
    all = all.filter((c) => wanted.has(c.name));
  }
  const sctp = sctpSupport();

  const removed = await cleanupStaleLabs("knpcase");
  if (removed.length) console.log(`removed ${removed.length} stale lab namespaces`);
  const plan: LabClusterPlan = defaultPlan();
  const lab = await createLab({ prefix: "knpcase", pods: plan.pods });
  const dir = await ManifestDir.create();
  const outcomes: CaseOutcome[] = [];
  let agent: LabAgent | undefined;
  try {
    await startServers(lab);
    await dir.writeModel(clusterObjects(plan, lab));
    await dir.writePolicies([]);
    agent = await LabAgent.start(lab, {
      nodeName: plan.nodeName,
      manifestsDir: dir.path,
      echoLogs: args.verbose,
    });
    for (const c of all) {
      if (Date.now() > deadline) {
        console.log(`time limit reached: ${all.length - outcomes.length} case(s) not run`);
        break;
      }
      console.log(`case ${c.name} (${c.file}): ${c.description}`);
      try {
        const o = await runCase(c, { lab, agent, dir, cases, sctp: sctp.reason });
        outcomes.push(o);
        console.log(
          `  ${o.status.toUpperCase()} in ${o.ms} ms` +
            (o.skipped.length ? `; skipped ${o.skipped.join(", ")}` : ""),
        );
      } catch (e) {
        outcomes.push({ name: c.name, status: "error", checked: 0, skipped: [], ms: 0 });
        console.log(`  ERROR ${(e as Error).message}`);
      }
    }
  } finally {
    if (args.keep) {
      console.log(`kept lab ${lab.prefix}: node netns ${lab.nodeNetns}, manifests ${dir.path}`);
      console.log(
        `remove with: for n in $(ip netns list | grep -o '^${lab.prefix}-[^ ]*'); ` +
          `do ip netns pids $n | xargs -r kill -9; ip netns del $n; done`,
      );
    } else {
      await agent?.kill("SIGTERM");
      await lab.destroy();
      await dir.remove();
    }
  }
  const pass = outcomes.filter((o) => o.status === "pass").length;
  const bad = outcomes.filter((o) => o.status !== "pass");
  const skipped = outcomes.reduce((n, o) => n + o.skipped.length, 0);
  console.log(
    `\n${pass}/${all.length} cases passed, ${bad.length} failed` +
      (skipped ? `, ${skipped} SCTP matrices skipped (${sctp.reason})` : ""),
  );
  for (const o of bad) console.log(`  ${o.status}: ${o.name}`);
  return bad.length === 0 && outcomes.length === all.length ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
