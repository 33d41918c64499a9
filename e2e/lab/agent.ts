/**
 * The real agent (`main.ts run --manifests`) running inside a lab's node netns (the netns of the
 * lab node it is named after; in a multi-node lab one agent per node), plus what the lab needs to
 * drive it: the manifest directory it watches, readiness, "policies enforced" (the policy set in
 * force equals the expected one and the rules caught up with it), its metrics and log lines.
 *
 * The agent's HTTP endpoints listen on 127.0.0.1 INSIDE the node netns (or on every address of it
 * with `metricsBindAll`, as the DaemonSet's `:9080` does), which the driver (in the root netns)
 * cannot reach; requests therefore go through `curl` run in that netns, on loopback.
 */
import { stringify } from "yaml";
import type { Lab } from "./topology.ts";
import { agentDenoFlags } from "../../src/cli/permissions.ts";
import { runPermissions } from "../../src/cli/run_permissions.ts";

const MAIN_TS = new URL("../../main.ts", import.meta.url).pathname;
const REPO_ROOT = new URL("../../", import.meta.url).pathname;
/**
 * Run by `sh -c` in the agent's own mount namespace ($1: the service-account directory to show, the
 * rest: the agent's command): a tmpfs over /run there (so nothing of the machine's changes), the
 * files where Kubernetes mounts them (/var/run/secrets/kubernetes.io/serviceaccount), then the agent.
 */
const POD_MOUNTS =
  "set -e; mount -t tmpfs tmpfs /run; d=/run/secrets/kubernetes.io/serviceaccount; " +
  'mkdir -p "$d"; cp "$1/ca.crt" "$1/token" "$d/"; shift; exec "$@"';

export interface LabAgentOptions {
  /**
   * Node name the agent runs as (pods in the manifests must carry it as spec.nodeName). It runs in
   * the netns of the lab node of that name; a single-node lab runs it in its node whatever the name.
   */
  nodeName: string;
  /** Directory with the manifests the agent watches (see ManifestDir). */
  manifestsDir?: string;
  /** Instead of manifests: a kubeconfig for an API server (e.g. the fake one, in the node netns). */
  kubeconfig?: string;
  /**
   * Instead of manifests or a kubeconfig: run as in a pod. The API server's address goes into the
   * agent's environment (KUBERNETES_SERVICE_HOST/PORT) and the files of `serviceAccountDir`
   * (`ca.crt`, `token`) appear where Kubernetes mounts them, in a mount namespace of the agent's
   * own (a tmpfs over /run there; the machine's /run is untouched).
   */
  inCluster?: { host: string; port: number; serviceAccountDir: string };
  /** Default true; false starts the agent with --fail-open=false. */
  failOpen?: boolean;
  queueId?: number;
  metricsPort?: number;
  /** Bind `:<metricsPort>` (every address of the node netns, so pods reach it at the node IP)
   * instead of 127.0.0.1. */
  metricsBindAll?: boolean;
  /** Run the agent with this RLIMIT_NOFILE (soft = hard; Deno raises soft to hard anyway). */
  maxOpenFiles?: number;
  verbosity?: number;
  extraArgs?: string[];
  /** Also copy the agent's log lines to our stderr as they come. */
  echoLogs?: boolean;
}

export interface DebugPolicies {
  policies: string[];
  /** "<Kind>/<name>" of the cluster-scoped policies in force, in evaluation order per tier. */
  clusterPolicies?: string[];
  generation: number;
  rulesSyncedGeneration: number;
  invalid?: string[];
}

/**
 * The agent's recent log lines, numbered from its start: the last ones for failure reports, and
 * the lines since a mark for checks that read what the agent said about their own connections.
 */
class LogTail {
  private readonly lines: string[] = [];
  /** Lines seen in total (the number the next line gets). */
  total = 0;
  constructor(private readonly max: number) {}
  push(line: string): void {
    this.lines.push(line);
    this.total++;
    if (this.lines.length > this.max) this.lines.shift();
  }
  /** The lines numbered `from` and later that are still kept. */
  since(from: number): string[] {
    const first = this.total - this.lines.length;
    return this.lines.slice(Math.max(0, from - first));
  }
  text(last = 200): string {
    return this.lines.slice(-last).join("\n");
  }
}

/** `kube_netpol_verdicts_total` as "direction/verdict" -> count ("egress/deny": 3). */
export type VerdictCounts = Record<string, number>;

/** Parse the per-direction verdict counters out of a /metrics body. */
export function parseVerdictCounts(metrics: string): VerdictCounts {
  const out: VerdictCounts = {};
  const re = /^kube_netpol_verdicts_total\{direction="(\w+)",verdict="(\w+)"\} (\d+)$/gm;
  for (const m of metrics.matchAll(re)) out[`${m[1]}/${m[2]}`] = Number(m[3]);
  return out;
}

/** One sample of a /metrics body: `name{label="value",...} value`. */
export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const SAMPLE_LINE = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const LABEL_PAIR = /([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g;

/** The samples of a Prometheus text exposition; comments and lines that are no sample are skipped. */
export function parseMetrics(text: string): MetricSample[] {
  const out: MetricSample[] = [];
  for (const line of text.split("\n")) {
    const m = SAMPLE_LINE.exec(line.trim());
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? "").matchAll(LABEL_PAIR)) {
      labels[k!] = v!.replace(/\\(.)/g, (_, c: string) => c === "n" ? "\n" : c);
    }
    const raw = m[3]!;
    const value = raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw);
    out.push({ name: m[1]!, labels, value });
  }
  return out;
}

/** One reading of the agent's /metrics: its text, and its samples summed by name and labels. */
export class MetricsScrape {
  readonly samples: MetricSample[];
  constructor(readonly text: string) {
    this.samples = parseMetrics(text);
  }

  /**
   * The sum of the samples named `name` (exactly: a histogram's `_count` is a name of its own)
   * that carry every label of `labels`; 0 when none does, as a labelled counter is exported only
   * once it has counted something.
   */
  value(name: string, labels: Record<string, string> = {}): number {
    const wanted = Object.entries(labels);
    return this.samples
      .filter((s) => s.name === name && wanted.every(([k, v]) => s.labels[k] === v))
      .reduce((sum, s) => sum + s.value, 0);
  }
}

/**
 * GET `url` with curl run inside `netns` (the driver in the root netns reaches nothing in the
 * lab), giving up after `maxSeconds`: the HTTP status (0 without an answer) and the body.
 */
export async function curlGet(
  lab: Lab,
  netns: string,
  url: string,
  maxSeconds = 2,
): Promise<{ status: number; body: string }> {
  const r = await lab.exec(netns, [
    "curl",
    "-s",
    "-m",
    String(maxSeconds),
    "-w",
    "\n%{http_code}",
    url,
  ], { timeoutMs: (maxSeconds + 3) * 1000 });
  const cut = r.stdout.lastIndexOf("\n");
  const status = Number(r.stdout.slice(cut + 1)) || 0;
  return { status, body: r.stdout.slice(0, Math.max(cut, 0)) };
}

/** Which netns an agent named `nodeName` runs in. */
function agentNetns(lab: Lab, nodeName: string): string {
  const node = lab.nodes.find((n) => n.name === nodeName);
  if (node) return node.netns;
  if (lab.nodes.length === 1) return lab.nodeNetns;
  throw new Error(`no lab node ${nodeName} (nodes: ${lab.nodes.map((n) => n.name).join(", ")})`);
}

export class LabAgent {
  // Enough for every verdict line of a few probe rounds at -v 4.
  private readonly tail = new LogTail(5000);
  private exited?: Deno.CommandStatus;

  private constructor(
    private readonly lab: Lab,
    private readonly child: Deno.ChildProcess,
    readonly port: number,
    /** The node it runs as, and the netns it runs in. */
    readonly nodeName: string,
    readonly netns: string,
  ) {
    child.status.then((s) => this.exited = s);
  }

  /** Start the agent and wait for /readyz (throws with the agent's log on failure or timeout). */
  static async start(lab: Lab, opts: LabAgentOptions, readyTimeoutMs = 30_000): Promise<LabAgent> {
    const port = opts.metricsPort ?? 9080;
    const metricsAddress = opts.metricsBindAll ? `:${port}` : `127.0.0.1:${port}`;
    // The permission list `deno task agent` computes for these flags, so every lab run proves
    // the narrow permissions (and that the main thread works without FFI).
    const inCluster = opts.inCluster;
    const env: Record<string, string> = inCluster
      ? {
        KUBECONFIG: "",
        KUBERNETES_SERVICE_HOST: inCluster.host,
        KUBERNETES_SERVICE_PORT: String(inCluster.port),
      }
      : {};
    const fromApi = !!(opts.kubeconfig || inCluster);
    const permissions = runPermissions({
      kubeconfig: opts.kubeconfig,
      manifests: fromApi ? [] : [opts.manifestsDir ?? "."],
      metricsAddress,
      sourceRoot: REPO_ROOT,
      env: (name) => inCluster ? env[name] : Deno.env.get(name),
      readTextFile: (path) => Deno.readTextFileSync(path),
      realPath: (path) => {
        try {
          return Deno.realPathSync(path);
        } catch {
          return path;
        }
      },
    });
    const args = [
      ...(inCluster
        ? [
          "unshare",
          "--mount",
          "--propagation",
          "private",
          "sh",
          "-c",
          POD_MOUNTS,
          "sh",
          inCluster.serviceAccountDir,
        ]
        : []),
      ...(opts.maxOpenFiles
        ? ["prlimit", `--nofile=${opts.maxOpenFiles}:${opts.maxOpenFiles}`, "--"]
        : []),
      Deno.execPath(),
      "run",
      "--frozen",
      ...agentDenoFlags(permissions),
      MAIN_TS,
      "run",
      ...(opts.kubeconfig
        ? ["--kubeconfig", opts.kubeconfig]
        : inCluster
        ? []
        : ["--manifests", opts.manifestsDir ?? "."]),
      "--hostname-override",
      opts.nodeName,
      "--metrics-bind-address",
      metricsAddress,
      "--nfqueue-id",
      String(opts.queueId ?? 100),
      `--fail-open=${opts.failOpen ?? true}`,
      "-v",
      String(opts.verbosity ?? 2),
      ...(opts.extraArgs ?? []),
    ];
    const netns = agentNetns(lab, opts.nodeName);
    const child = lab.spawn(netns, args, {
      stdout: "piped",
      stderr: "piped",
      cwd: REPO_ROOT,
      env,
    });
    const agent = new LabAgent(lab, child, port, opts.nodeName, netns);
    agent.collect(child.stdout, !!opts.echoLogs);
    agent.collect(child.stderr, !!opts.echoLogs);
    try {
      await agent.waitReady(readyTimeoutMs);
    } catch (e) {
      await agent.kill("SIGKILL");
      throw e;
    }
    return agent;
  }

  private collect(stream: ReadableStream<Uint8Array>, echo: boolean): void {
    (async () => {
      let rest = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        const parts = (rest + chunk).split("\n");
        rest = parts.pop() ?? "";
        for (const line of parts) {
          this.tail.push(line);
          if (echo) console.error(`[agent] ${line}`);
        }
      }
      if (rest) this.tail.push(rest);
    })().catch(() => {});
  }

  /** The agent's recent log lines (the last 200). */
  logs(): string {
    return this.tail.text();
  }

  /** A mark for `logsSince`: the number of log lines so far. */
  logMark(): number {
    return this.tail.total;
  }

  /** The log lines written after `mark` (as far as they are still kept). */
  logsSince(mark: number): string[] {
    return this.tail.since(mark);
  }

  /** The per-direction verdict counters from /metrics. */
  async verdictCounts(): Promise<VerdictCounts> {
    const r = await this.get("/metrics");
    if (r.status !== 200) throw this.fail(`/metrics answered ${r.status}`);
    return parseVerdictCounts(r.body);
  }

  /** One reading of /metrics (throws with the agent's log unless it answers 200). */
  async scrape(): Promise<MetricsScrape> {
    const r = await this.get("/metrics");
    if (r.status !== 200) throw this.fail(`/metrics answered ${r.status}`);
    return new MetricsScrape(r.body);
  }

  /** The sum of the /metrics samples named `name` with `labels` (see MetricsScrape.value). */
  async metric(name: string, labels?: Record<string, string>): Promise<number> {
    return (await this.scrape()).value(name, labels);
  }

  /** The agent's process id (`ip netns exec` replaces itself with it). */
  get pid(): number {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exited === undefined;
  }

  /** GET a path on the agent's HTTP server (from inside the node netns). */
  get(path: string): Promise<{ status: number; body: string }> {
    return curlGet(this.lab, this.netns, `http://127.0.0.1:${this.port}${path}`);
  }

  private fail(msg: string): Error {
    const exit = this.exited ? ` (agent exited with code ${this.exited.code})` : "";
    return new Error(`${msg}${exit}\n--- agent ${this.nodeName} log (tail) ---\n${this.logs()}`);
  }

  async waitReady(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
      if (!this.running) throw this.fail("agent exited before it was ready");
      const r = await this.get("/readyz?verbose");
      if (r.status === 200) return;
      last = `${r.status} ${r.body.trim()}`;
      await new Promise((res) => setTimeout(res, 100));
    }
    throw this.fail(`agent not ready after ${timeoutMs} ms (last /readyz: ${last})`);
  }

  async debugPolicies(): Promise<DebugPolicies> {
    const r = await this.get("/debug/policies");
    if (r.status !== 200) throw this.fail(`/debug/policies answered ${r.status}: ${r.body}`);
    return JSON.parse(r.body) as DebugPolicies;
  }

  /**
   * Wait until the agent enforces exactly `expected` ("namespace/name" policies) and, when given,
   * exactly `expectedCluster` ("<Kind>/<name>" cluster-scoped policies), and its rules are synced
   * to that state. Returns the milliseconds it took.
   */
  async waitEnforced(
    expected: string[],
    timeoutMs = 20_000,
    expectedCluster?: string[],
  ): Promise<number> {
    const start = Date.now();
    const want = JSON.stringify([...expected].sort());
    const wantCluster = expectedCluster && JSON.stringify([...expectedCluster].sort());
    let last: DebugPolicies | undefined;
    while (Date.now() - start < timeoutMs) {
      if (!this.running) throw this.fail("agent exited");
      last = await this.debugPolicies();
      if (
        JSON.stringify([...last.policies].sort()) === want &&
        (wantCluster === undefined ||
          JSON.stringify([...(last.clusterPolicies ?? [])].sort()) === wantCluster) &&
        last.rulesSyncedGeneration === last.generation
      ) return Date.now() - start;
      await new Promise((res) => setTimeout(res, 50));
    }
    throw this.fail(
      `policies not enforced after ${timeoutMs} ms: want ${want}` +
        (wantCluster ? ` and cluster policies ${wantCluster}` : "") +
        `, have ${JSON.stringify(last)}`,
    );
  }

  /** Send a signal (SIGKILL for the fail-open/closed checks) and wait for the process to end. */
  async kill(signal: Deno.Signal = "SIGTERM", timeoutMs = 10_000): Promise<Deno.CommandStatus> {
    try {
      this.child.kill(signal);
    } catch { /* already gone */ }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), timeoutMs));
    const s = await Promise.race([this.child.status, late]);
    clearTimeout(timer);
    if (s === "late") {
      try {
        this.child.kill("SIGKILL");
      } catch { /* gone */ }
      return await this.child.status;
    }
    return s;
  }
}

/**
 * The directory the agent watches: the cluster model (Namespaces and Pods) in one file and the
 * policies of the current case in another. Files are replaced atomically (write + rename), so the
 * agent never reads half a file; rewriting the policy file applies a change live.
 */
export class ManifestDir {
  private constructor(readonly path: string, private readonly staging: string) {}

  static async create(): Promise<ManifestDir> {
    const path = await Deno.makeTempDir({ prefix: "knplab-manifests-" });
    const staging = await Deno.makeTempDir({ prefix: "knplab-staging-" });
    return new ManifestDir(path, staging);
  }

  private async write(file: string, objects: unknown[]): Promise<void> {
    const text = objects.map((o) => stringify(o)).join("---\n");
    // Staged in a sibling temp dir (same filesystem), so the watcher never sees a partial file.
    const tmp = `${this.staging}/${file}`;
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, `${this.path}/${file}`);
  }

  writeModel(objects: unknown[]): Promise<void> {
    return this.write("model.yaml", objects);
  }

  writePolicies(policies: unknown[]): Promise<void> {
    return this.write("policies.yaml", policies);
  }

  /** Node objects (multi-node labs; the agent reads names, addresses and pod CIDRs). */
  writeNodes(nodes: unknown[]): Promise<void> {
    return this.write("nodes.yaml", nodes);
  }

  /** Any other file of objects (e.g. one pod that appears late), replaced atomically too. */
  writeObjects(file: string, objects: unknown[]): Promise<void> {
    if (!/^[\w.-]+\.yaml$/.test(file)) throw new Error(`not a plain manifest file name: ${file}`);
    return this.write(file, objects);
  }

  async remove(): Promise<void> {
    await Deno.remove(this.path, { recursive: true }).catch(() => {});
    await Deno.remove(this.staging, { recursive: true }).catch(() => {});
  }
}
