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
import { defaultPlan } from "./cluster.ts";
import { allPairs, probeMatrices, verdictMatrix } from "./probe.ts";
import { sctpSupport, startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab, type Lab } from "./topology.ts";
import {
  type ConnectivityCase,
  formatMatrixDiff,
  loadCases,
  type Matrix,
  resolvePlaceholders,
  type Verdict,
} from "../cases/format.ts";
import { modelNamespaces, modelPods } from "../cases/model.ts";

export const CASES_DIR = new URL("../cases/", import.meta.url).pathname;

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

export interface CaseOutcome {
  name: string;
  status: "pass" | "fail" | "error";
  checked: number;
  skipped: string[];
  ms: number;
  /** Expected-vs-observed matrices of the columns that differed. */
  diffs: string[];
}

/** One lab, servers and agent shared by every case; policies are swapped live between cases. */
export class LabCaseRunner {
  private constructor(
    readonly lab: Lab,
    private readonly agent: LabAgent,
    private readonly dir: ManifestDir,
    private readonly sctpReason: string,
  ) {}

  static async start(opts: { verbose?: boolean } = {}): Promise<LabCaseRunner> {
    await cleanupStaleLabs("knpcase");
    const plan = defaultPlan();
    const lab = await createLab({ prefix: "knpcase", pods: plan.pods });
    const dir = await ManifestDir.create();
    try {
      await startServers(lab);
      const model = [
        ...modelNamespaces(),
        ...modelPods((ns, name) => ({
          ip: lab.pod(`${ns}/${name}`).ip,
          nodeName: plan.nodeName,
          hostIP: lab.nodeIP,
        })),
      ];
      await dir.writeModel(model);
      await dir.writePolicies([]);
      const agent = await LabAgent.start(lab, {
        nodeName: plan.nodeName,
        manifestsDir: dir.path,
        echoLogs: opts.verbose,
      });
      return new LabCaseRunner(lab, agent, dir, sctpSupport().reason);
    } catch (e) {
      await lab.destroy();
      await dir.remove();
      throw e;
    }
  }

  async run(c: ConnectivityCase): Promise<CaseOutcome> {
    const start = Date.now();
    const skipped: string[] = [];
    const policies = resolvePlaceholders(c.policies, (ns, pod) => this.lab.pod(`${ns}/${pod}`).ip);
    await this.dir.writePolicies(policies);
    await this.agent.waitEnforced(
      policies.map((p) => `${p.metadata.namespace ?? "default"}/${p.metadata.name}`),
    );
    const combos = c.expect.filter((e) => {
      if (e.protocol !== "SCTP") return true;
      skipped.push(`SCTP ${e.port} (${this.sctpReason})`);
      return false;
    }) as { protocol: "TCP" | "UDP"; port: number; matrix: Matrix }[];
    const observed = await probeMatrices(this.lab, allPairs(this.lab), combos);
    const diffs: string[] = [];
    combos.forEach((e, i) => {
      const seen = verdictMatrix(observed[i]!);
      const want = restrict(e.matrix, seen);
      if (!sameMatrix(want, seen)) {
        diffs.push(`${e.protocol}/${e.port}:\n${formatMatrixDiff(want, seen)}`);
      }
    });
    return {
      name: c.name,
      status: diffs.length ? "fail" : "pass",
      checked: combos.length,
      skipped,
      ms: Date.now() - start,
      diffs,
    };
  }

  agentLogs(): string {
    return this.agent.logs();
  }

  describe(): string {
    return `node netns ${this.lab.nodeNetns}, manifests ${this.dir.path}`;
  }

  async stop(): Promise<void> {
    await this.agent.kill("SIGTERM").catch(() => {});
    await this.lab.destroy();
    await this.dir.remove();
  }
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
  let all = await loadCases(CASES_DIR);
  if (args.case?.length) {
    const wanted = new Set(args.case);
    const unknown = [...wanted].filter((n) => !all.some((c) => c.name === n));
    if (unknown.length) {
      console.error(`unknown case(s): ${unknown.join(", ")}`);
      return 2;
    }
    all = all.filter((c) => wanted.has(c.name));
  }
  const runner = await LabCaseRunner.start({ verbose: args.verbose });
  const outcomes: CaseOutcome[] = [];
  try {
    for (const c of all) {
      if (Date.now() > deadline) {
        console.log(`time limit reached: ${all.length - outcomes.length} case(s) not run`);
        break;
      }
      console.log(`case ${c.name} (${c.file}): ${c.description}`);
      try {
        const o = await runner.run(c);
        outcomes.push(o);
        for (const d of o.diffs) console.log(`  expected vs observed, ${d}`);
        console.log(
          `  ${o.status.toUpperCase()} in ${o.ms} ms` +
            (o.skipped.length ? `; skipped ${o.skipped.join(", ")}` : ""),
        );
      } catch (e) {
        outcomes.push({ name: c.name, status: "error", checked: 0, skipped: [], ms: 0, diffs: [] });
        console.log(`  ERROR ${(e as Error).message}`);
      }
    }
  } finally {
    if (args.keep) console.log(`kept lab: ${runner.describe()}`);
    else await runner.stop();
  }
  const pass = outcomes.filter((o) => o.status === "pass").length;
  const bad = outcomes.filter((o) => o.status !== "pass");
  const skipped = outcomes.reduce((n, o) => n + o.skipped.length, 0);
  console.log(
    `\n${pass}/${all.length} cases passed, ${bad.length} failed` +
      (skipped ? `, ${skipped} SCTP columns skipped (no SCTP sockets in this kernel)` : ""),
  );
  for (const o of bad) console.log(`  ${o.status}: ${o.name}`);
  return bad.length === 0 && outcomes.length === all.length ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
