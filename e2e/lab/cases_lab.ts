/**
 * `deno task e2e:lab`: every connectivity case of e2e/cases and e2e/cases/tiers against the real
 * agent in the lab. One lab, one agent per node: per case the policy file is rewritten (a live
 * change) with the case's NetworkPolicies and cluster-scoped policies, every agent is awaited until
 * it enforces exactly them, then every ordered pair of distinct pods is probed with NEW
 * connections for each expected (protocol, port) and compared with the case, and so are the
 * case's extra probes (`probes:`; the `node` endpoint is the lab's first node: its address, and a
 * hostNetwork server in its netns answering with its name). The lab's Node objects (labelled
 * kubernetes.io/os=linux) are in the manifest directory for `nodes` peers. With `--nodes n` the
 * model's pods are spread over n node netns joined by a router (see cluster.ts `spreadPlan`), each
 * with its own agent, all fed by one manifest directory.
 *
 *   deno run --frozen -A e2e/lab/cases_lab.ts [--nodes 2] [--case <name>]... [--keep]
 *     [--max-seconds 900] [--no-tiers]
 *
 * Exit code 0 when every case matched, 1 on a mismatch, 2 on a usage or set-up error.
 */
import { parseArgs } from "node:util";
import { LabAgent, ManifestDir } from "./agent.ts";
import { defaultPlan, labLayout, nodeObjects, spreadPlan } from "./cluster.ts";
import {
  allPairs,
  describeResult,
  observedVerdict,
  probeFrom,
  probeMatrices,
  type ProbeResult,
  reprobeInconclusive,
  verdictMatrix,
} from "./probe.ts";
import { sctpSupport, startNodeServers, startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab, type Lab } from "./topology.ts";
import {
  type CaseProbe,
  type ClusterScopedPolicy,
  type ConnectivityCase,
  formatMatrixDiff,
  loadCases,
  type Matrix,
  NODE_ENDPOINT,
  resolvePlaceholders,
  type Verdict,
} from "../cases/format.ts";
import { modelNamespaces, modelPods } from "../cases/model.ts";
import type { NetworkPolicy } from "../../src/policy/types.ts";

export const CASES_DIR = new URL("../cases/", import.meta.url).pathname;
/** The cases with cluster-scoped policies (Admin and Baseline tiers). */
export const TIER_CASES_DIR = new URL("../cases/tiers/", import.meta.url).pathname;

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
  /** Cells probed a second time because the first probe was inconclusive (reprobeInconclusive). */
  retried: string[];
}

/** "<Kind>/<name>": how the agent's /debug/policies names a cluster-scoped policy. */
export function clusterPolicyKey(p: ClusterScopedPolicy): string {
  return `${p.kind}/${p.metadata.name}`;
}

export interface LabCaseRunnerOptions {
  verbose?: boolean;
  /** Node netns, each with its own agent; default 1 (the single-node lab, model IPs). */
  nodes?: number;
  /** Name prefix of the lab's netns; default "knpcase". */
  prefix?: string;
  /** The agents' `-v` (default 2; 4 logs every verdict). */
  verbosity?: number;
  /** More agent flags, e.g. ["--log-format", "json"]. */
  agentArgs?: string[];
}

/** One lab, servers and agents shared by every case; policies are swapped live between cases. */
export class LabCaseRunner {
  /** The policy names last applied, and what they were. */
  private inForce = new Set<string>();
  private inForceContent = JSON.stringify([[], []]);

  private constructor(
    readonly lab: Lab,
    /** One per lab node, in the lab's node order. */
    readonly agents: LabAgent[],
    readonly dir: ManifestDir,
    private readonly sctpReason: string,
  ) {}

  static async start(opts: LabCaseRunnerOptions = {}): Promise<LabCaseRunner> {
    const prefix = opts.prefix ?? "knpcase";
    await cleanupStaleLabs(prefix);
    const nodes = opts.nodes ?? 1;
    const plan = nodes === 1 ? defaultPlan() : spreadPlan(nodes);
    const lab = await createLab({ prefix, ...labLayout(plan) });
    const dir = await ManifestDir.create();
    const agents: LabAgent[] = [];
    try {
      await startServers(lab);
      const model = [
        ...modelNamespaces(),
        ...modelPods((ns, name) => {
          const pod = lab.pod(`${ns}/${name}`);
          const node = lab.node(pod.node);
          return {
            ip: pod.ip,
            ...(pod.ip6 ? { ips: [pod.ip, pod.ip6] } : {}),
            nodeName: plan.nodes ? node.name : plan.nodeName,
            hostIP: node.ip,
          };
        }),
      ];
      await dir.writeModel(model);
      // Always: `nodes` peers need them; the agents read them like any other object.
      await dir.writeNodes(nodeObjects(lab));
      await dir.writePolicies([]);
      // The `node` probe endpoint: a hostNetwork server on the first node.
      await startNodeServers(lab, { nodes: [lab.nodes[0]!.name] });
      // In parallel: each agent's start-up is mostly waiting for Deno to load.
      const started = await Promise.allSettled(lab.nodes.map((n) =>
        LabAgent.start(lab, {
          nodeName: plan.nodes ? n.name : plan.nodeName,
          manifestsDir: dir.path,
          echoLogs: opts.verbose,
          ...(opts.verbosity !== undefined ? { verbosity: opts.verbosity } : {}),
          ...(opts.agentArgs ? { extraArgs: opts.agentArgs } : {}),
        })
      ));
      for (const s of started) if (s.status === "fulfilled") agents.push(s.value);
      const failed = started.find((s) => s.status === "rejected");
      if (failed) throw (failed as PromiseRejectedResult).reason;
      return new LabCaseRunner(lab, agents, dir, sctpSupport().reason);
    } catch (e) {
      for (const a of agents) await a.kill("SIGTERM").catch(() => {});
      await lab.destroy();
      await dir.remove();
      throw e;
    }
  }

  /**
   * Write `policies` and `clusterPolicies` (one file, one live change) and wait until every agent
   * enforces exactly them.
   */
  async applyPolicies(
    policies: NetworkPolicy[],
    clusterPolicies: ClusterScopedPolicy[] = [],
  ): Promise<void> {
    const keys = policies.map((p) => `${p.metadata.namespace ?? "default"}/${p.metadata.name}`);
    const clusterKeys = clusterPolicies.map(clusterPolicyKey);
    const content = JSON.stringify([policies, clusterPolicies]);
    // "Enforced" is judged by the names in force: a new version of a policy under the same name
    // (a case that changes one step of the previous one) would look enforced before the agent
    // read it. Going through the empty set first makes the names tell.
    const reused = [...keys, ...clusterKeys].some((k) => this.inForce.has(k));
    if (reused && content !== this.inForceContent) await this.applyPolicies([], []);
    await this.dir.writePolicies([...policies, ...clusterPolicies]);
    await Promise.all(this.agents.map((a) => a.waitEnforced(keys, 20_000, clusterKeys)));
    this.inForce = new Set([...keys, ...clusterKeys]);
    this.inForceContent = content;
    await this.forgetFlows();
  }

  /**
   * Empty every node's conntrack table. Policies govern new connections; the kernel keeps the
   * flows of earlier cases (a UDP flow for up to 2 minutes), and a probe whose new socket happens
   * to get the source port of such a flow would pass as that flow, unjudged.
   */
  private async forgetFlows(): Promise<void> {
    await Promise.all(this.lab.nodes.map(async (n) => {
      const r = await this.lab.exec(n.netns, ["conntrack", "-F"], { timeoutMs: 10_000 });
      if (r.code !== 0) throw new Error(`conntrack -F in ${n.netns}: ${r.stderr.trim()}`);
    }));
  }

  /** The address a probe endpoint ("ns/pod" or `node`) is reached at, and the netns it runs in. */
  endpoint(name: string): { ip: string; netns: string; answers: string } {
    if (name === NODE_ENDPOINT) {
      const node = this.lab.nodes[0]!;
      return { ip: node.ip, netns: node.netns, answers: node.name };
    }
    const pod = this.lab.pod(name);
    return { ip: pod.ip, netns: pod.netns, answers: name };
  }

  /**
   * The case's extra probes (pod to node, node to pod): one NEW connection each; an expected
   * allow that did not connect and was not refused is tried once more (a busy machine), as for
   * the matrix. Returns one line per probe that differs from the case.
   */
  async runProbes(probes: CaseProbe[], retried: string[], skipped: string[]): Promise<string[]> {
    const runnable = probes.filter((p) => {
      if (p.protocol !== "SCTP") return true;
      skipped.push(`SCTP ${p.from} -> ${p.to}:${p.port} (${this.sctpReason})`);
      return false;
    });
    const attempt = async (list: CaseProbe[]): Promise<ProbeResult[]> => {
      const results: ProbeResult[] = new Array(list.length);
      const bySource = Map.groupBy(list.map((p, i) => ({ p, i })), ({ p }) => p.from);
      await Promise.all([...bySource].map(async ([from, items]) => {
        const got = await probeFrom(
          this.lab,
          this.endpoint(from).netns,
          items.map(({ p }) => ({
            ip: this.endpoint(p.to).ip,
            protocol: p.protocol as "TCP" | "UDP",
            port: p.port,
          })),
        );
        items.forEach(({ i }, k) => results[i] = got[k]!);
      }));
      return results;
    };
    const seen = (p: CaseProbe, r: ProbeResult) => observedVerdict(r, this.endpoint(p.to).answers);
    const first = await attempt(runnable);
    const again = runnable.flatMap((p, i) =>
      p.expect === "allow" && first[i]!.outcome !== "refused" && seen(p, first[i]!) === "deny"
        ? [i]
        : []
    );
    const second = await attempt(again.map((i) => runnable[i]!));
    again.forEach((i, k) => {
      const p = runnable[i]!;
      retried.push(
        `probe ${p.from} -> ${p.to} ${p.protocol}/${p.port}: ${describeResult(first[i]!)}, then ${
          describeResult(second[k]!)
        }`,
      );
      first[i] = second[k]!;
    });
    return runnable.flatMap((p, i) => {
      const got = seen(p, first[i]!);
      return got === p.expect ? [] : [
        `probe ${p.from} -> ${p.to} ${p.protocol}/${p.port}: expected ${p.expect}, observed ${got} (${
          describeResult(first[i]!)
        })`,
      ];
    });
  }

  /**
   * Runs one case as a test: throws with the case, its cell diffs and the agents' logs unless
   * every cell matched. Probes that needed a second try are printed even on a pass: they say how
   * busy the machine was.
   */
  async runExpectingPass(c: ConnectivityCase): Promise<void> {
    const o = await this.run(c);
    const retried = o.retried.map((r) => `probed again: ${r}`);
    for (const r of retried) console.log(r);
    if (o.status === "pass") return;
    throw new Error(
      [`${c.file}: ${c.description}`, ...retried, ...o.diffs, this.agentLogs()].join("\n"),
    );
  }

  async run(c: ConnectivityCase): Promise<CaseOutcome> {
    const start = Date.now();
    const skipped: string[] = [];
    const ipOf = (ns: string, pod: string) => this.lab.pod(`${ns}/${pod}`).ip;
    const policies = resolvePlaceholders(c.policies, ipOf);
    await this.applyPolicies(policies, resolvePlaceholders(c.clusterPolicies, ipOf));
    const combos = c.expect.filter((e) => {
      if (e.protocol !== "SCTP") return true;
      skipped.push(`SCTP ${e.port} (${this.sctpReason})`);
      return false;
    }) as { protocol: "TCP" | "UDP"; port: number; matrix: Matrix }[];
    const observed = await probeMatrices(this.lab, allPairs(this.lab), combos);
    const retried = await reprobeInconclusive(
      this.lab,
      combos,
      observed,
      (i, from, to) => combos[i]!.matrix.get(from)?.get(to),
    );
    const diffs: string[] = [];
    combos.forEach((e, i) => {
      const seen = verdictMatrix(observed[i]!);
      const want = restrict(e.matrix, seen);
      if (!sameMatrix(want, seen)) {
        diffs.push(`${e.protocol}/${e.port}:\n${formatMatrixDiff(want, seen)}`);
      }
    });
    diffs.push(...await this.runProbes(c.probes, retried, skipped));
    return {
      name: c.name,
      status: diffs.length ? "fail" : "pass",
      checked: combos.length,
      skipped,
      ms: Date.now() - start,
      diffs,
      retried,
    };
  }

  /** The last `lines` log lines of every agent, headed by its node. */
  agentLogs(lines = 30): string {
    return this.agents.map((a) =>
      `--- agent ${a.nodeName} log (tail) ---\n${a.logs().split("\n").slice(-lines).join("\n")}`
    ).join("\n");
  }

  describe(): string {
    const nodes = this.lab.nodes.map((n) => `${n.name}: ${n.netns}`).join(", ");
    const router = this.lab.routerNetns ? `, router netns ${this.lab.routerNetns}` : "";
    return `node netns ${nodes}${router}, manifests ${this.dir.path}`;
  }

  async stop(): Promise<void> {
    await Promise.all(this.agents.map((a) => a.kill("SIGTERM").catch(() => {})));
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
        nodes: { type: "string", default: "1" },
        keep: { type: "boolean", default: false },
        "max-seconds": { type: "string", default: "900" },
        verbose: { type: "boolean", default: false },
        "no-tiers": { type: "boolean", default: false },
      },
    }).values;
  } catch (e) {
    console.error(
      `${(e as Error).message}\nusage: cases_lab.ts [--nodes n] [--case <name>]... [--keep]`,
    );
    return 2;
  }
  const nodes = Number(args.nodes);
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 11) {
    console.error(`--nodes must be a whole number from 1 to 11, got ${args.nodes}`);
    return 2;
  }
  if (Deno.uid() !== 0) {
    console.error("cases_lab.ts needs root (it creates network namespaces)");
    return 2;
  }
  const deadline = Date.now() + Number(args["max-seconds"]) * 1000;
  let all = [
    ...await loadCases(CASES_DIR),
    ...(args["no-tiers"] ? [] : await loadCases(TIER_CASES_DIR)),
  ];
  if (args.case?.length) {
    const wanted = new Set(args.case);
    const unknown = [...wanted].filter((n) => !all.some((c) => c.name === n));
    if (unknown.length) {
      console.error(`unknown case(s): ${unknown.join(", ")}`);
      return 2;
    }
    all = all.filter((c) => wanted.has(c.name));
  }
  const setupStart = Date.now();
  const runner = await LabCaseRunner.start({ verbose: args.verbose, nodes });
  console.log(`lab with ${nodes} node(s) ready in ${Date.now() - setupStart} ms`);
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
        for (const r of o.retried) console.log(`  probed again: ${r}`);
        for (const d of o.diffs) console.log(`  expected vs observed, ${d}`);
        console.log(
          `  ${o.status.toUpperCase()} in ${o.ms} ms` +
            (o.skipped.length ? `; skipped ${o.skipped.join(", ")}` : ""),
        );
      } catch (e) {
        outcomes.push({
          name: c.name,
          status: "error",
          checked: 0,
          skipped: [],
          ms: 0,
          diffs: [],
          retried: [],
        });
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
