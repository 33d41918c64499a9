/**
 * `run`: the node agent. Wires a state source (Kubernetes informers, or a manifest directory)
 * into the authoritative engine, the verdict loop's engine replica and the rule sync, and serves
 * metrics and health. Start-up order matters:
 *   1. rules installed (own chains, sets kept from a previous run so pods stay protected),
 *   2. verdict loop bound to the queue (judges nothing until the state is synced),
 *   3. source started; once it has a full view: loop marked synced, sets synced, ready.
 */
import { AgentMetrics } from "../metrics.ts";
import { PolicyEngine } from "../policy/engine.ts";
import { explainDecision } from "../policy/explain.ts";
import { formatObjectError, type ObjectError } from "../policy/types.ts";
import { createLogger, type Logger, RateLimiter } from "../log.ts";
import { startServer } from "../server.ts";
import { applyEvent } from "../state/apply.ts";
import type { StateEvent } from "../state/events.ts";
import type { ClusterSource } from "../state/source.ts";
import { DEFAULT_DENY_MARK } from "../dataplane/marks.ts";
import type { VerdictLoop, VerdictRecord } from "../dataplane/verdict_loop.ts";
import { RuleSync } from "../dataplane/rule_sync.ts";
import { flagHelp, type FlagSpec, parseFlags, UsageError } from "./args.ts";

const FLAGS: FlagSpec = {
  kubeconfig: { type: "string" },
  manifests: { type: "string", multiple: true },
  "hostname-override": { type: "string" },
  "fail-open": { type: "boolean", default: true },
  "nfqueue-id": { type: "string", default: "100" },
  "queue-maxlen": { type: "string", default: "4096" },
  "deny-mark": { type: "string", default: `0x${DEFAULT_DENY_MARK.toString(16)}` },
  "metrics-bind-address": { type: "string", default: ":9080" },
  v: { type: "string", short: "v", default: "2" },
  "log-format": { type: "string", default: "text" },
  "deny-log-rate": { type: "string", default: "50" },
  help: { type: "boolean", short: "h", default: false },
};

const HELP: Record<string, string> = {
  kubeconfig: "kubeconfig file (default: in-cluster config, or $KUBECONFIG)",
  manifests: "run without Kubernetes: Namespace/Pod/NetworkPolicy files or directories, " +
    "watched for changes (repeatable)",
  "hostname-override": "this node's name (pods with this spec.nodeName are local; " +
    "default $NODE_NAME, else the hostname)",
  "fail-open": "let packets through when the agent cannot judge them (queue bypass)",
  "nfqueue-id": "netfilter queue number",
  "queue-maxlen": "kernel queue length before packets are dropped (or bypassed when fail-open)",
  "deny-mark": "packet mark bit used to reject denied connections fast",
  "metrics-bind-address": "address for /metrics, /healthz, /readyz",
  v: "log verbosity: 0 errors and warnings, 2 normal, 4 every verdict",
  "log-format": "text or json",
  "deny-log-rate": "deny log lines per second at most (the rest are counted and summarized)",
  help: "show this help",
};

export interface RunOptions {
  kubeconfig?: string;
  manifests: string[];
  nodeName: string;
  failOpen: boolean;
  queueId: number;
  queueMaxLen: number;
  denyMark: number;
  metricsAddress: string;
  verbosity: number;
  logFormat: "text" | "json";
  denyLogRate: number;
}

function intFlag(values: Record<string, unknown>, name: string, min: number, max: number): number {
  const text = String(values[name]);
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(
      `--${name} must be an integer from ${min} to ${max}, not ${JSON.stringify(text)}`,
    );
  }
  return n;
}

export function parseRunFlags(args: string[]): RunOptions | "help" {
  const { values, positionals } = parseFlags(args, FLAGS);
  if (values.help) return "help";
  if (positionals.length) {
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`);
  }
  const logFormat = values["log-format"];
  if (logFormat !== "text" && logFormat !== "json") {
    throw new UsageError(`--log-format must be text or json, not ${JSON.stringify(logFormat)}`);
  }
  const numbers = {
    queueId: intFlag(values, "nfqueue-id", 0, 65535),
    queueMaxLen: intFlag(values, "queue-maxlen", 1, 1 << 20),
    denyMark: intFlag(values, "deny-mark", 1, 0xffffffff),
    verbosity: intFlag(values, "v", 0, 10),
    denyLogRate: intFlag(values, "deny-log-rate", 1, 100000),
  };
  // Last: the hostname fallback needs a permission, and flag mistakes should be reported first.
  const nodeName = (values["hostname-override"] as string | undefined) ||
    Deno.env.get("NODE_NAME") || Deno.hostname();
  return {
    ...numbers,
    kubeconfig: values.kubeconfig as string | undefined,
    manifests: (values.manifests as string[] | undefined) ?? [],
    nodeName,
    failOpen: values["fail-open"] as boolean,
    metricsAddress: values["metrics-bind-address"] as string,
    logFormat,
  };
}

export async function runCommand(args: string[], version: string): Promise<number> {
  const opts = parseRunFlags(args);
  if (opts === "help") {
    console.log(`Usage: kube-netpol run [flags]\n\n${flagHelp(FLAGS, HELP)}`);
    return 0;
  }
  const log = createLogger({ verbosity: opts.verbosity, format: opts.logFormat });
  const agent = new Agent(opts, log);
  log.info("starting kube-netpol", {
    version,
    node: opts.nodeName,
    source: opts.manifests.length ? `manifests ${opts.manifests.join(",")}` : "kubernetes",
    failOpen: opts.failOpen,
    queue: opts.queueId,
  });
  const stopped = new Promise<number>((resolve) => {
    const onSignal = (sig: Deno.Signal) => {
      log.info("signal received, shutting down", { signal: sig });
      agent.stop().then(() => resolve(0), (e) => {
        log.error("shutdown failed", { error: String(e) });
        resolve(1);
      });
    };
    for (const sig of ["SIGTERM", "SIGINT"] as const) {
      Deno.addSignalListener(sig, () => onSignal(sig));
    }
  });
  try {
    await agent.start();
  } catch (e) {
    log.error("start-up failed", { error: e instanceof Error ? e.message : String(e) });
    await agent.stop().catch(() => {});
    return 1;
  }
  return await stopped;
}

/** The running agent: owns every long-lived part and the order they start and stop in. */
export class Agent {
  readonly metrics = new AgentMetrics();
  readonly engine = new PolicyEngine();
  private source?: ClusterSource;
  private loop?: VerdictLoop;
  private rules?: RuleSync;
  private server?: { port: number; close(): Promise<void> };
  private readonly invalid = new Map<string, ObjectError[]>();
  private readonly denyLimiter: RateLimiter;
  private statsTimer?: ReturnType<typeof setInterval>;
  private stopping?: Promise<void>;

  constructor(readonly opts: RunOptions, private readonly log: Logger) {
    this.denyLimiter = new RateLimiter(opts.denyLogRate, opts.denyLogRate * 2);
  }

  get port(): number | undefined {
    return this.server?.port;
  }

  async start(): Promise<void> {
    const { opts, log } = this;
    this.server = startServer(opts.metricsAddress, this.metrics, {
      live: () => this.liveness(),
      ready: () => this.readiness(),
      debugPolicies: () => ({
        policies: this.engine.policyKeys(),
        generation: this.engine.generation,
        rulesSyncedGeneration: this.rules?.syncedGeneration ?? -1,
        invalid: [...this.invalid.values()].flat().concat(this.source?.errors?.() ?? [])
          .map(formatObjectError),
      }),
    }, log);

    this.rules = await RuleSync.start(
      {
        queueId: opts.queueId,
        failOpen: opts.failOpen,
        denyMark: opts.denyMark,
      },
      this.engine,
      opts.nodeName,
      this.metrics,
      log,
    );

    const { VerdictLoop } = await import("../dataplane/verdict_loop.ts");
    this.loop = await VerdictLoop.start(
      {
        queueId: opts.queueId,
        queueMaxLen: opts.queueMaxLen,
        failOpen: opts.failOpen,
        denyMark: opts.denyMark,
        nodeName: opts.nodeName,
        logAllows: opts.verbosity >= 4,
      },
      this.metrics,
      (r) => this.onVerdict(r),
      log,
    );

    this.source = await this.createSource();
    await this.source.start((ev) => this.onEvent(ev));
    // A kind with no objects delivers no event: check once more now that start() is done.
    this.afterChange();
    this.statsTimer = setInterval(() => this.refreshGauges(), 5000);
  }

  private async createSource(): Promise<ClusterSource> {
    if (this.opts.manifests.length) {
      const { createManifestSource } = await import("../manifests/source.ts");
      return createManifestSource(this.opts.manifests, this.log);
    }
    const { createKubernetesSource } = await import("../k8s/source.ts");
    return createKubernetesSource({
      kubeconfig: this.opts.kubeconfig,
      log: this.log,
      metrics: this.metrics,
    });
  }

  /** One object change: the authoritative engine, the loop's replica, then the rules. */
  private onEvent(ev: StateEvent): void {
    const key = ev.op === "delete"
      ? `${ev.kind} ${ev.namespace ?? ""}/${ev.name}`
      : `${ev.kind} ${ev.object.metadata?.namespace ?? ""}/${ev.object.metadata?.name}`;
    const errors = applyEvent(this.engine, ev);
    if (errors.length) {
      this.invalid.set(key, errors);
      for (const e of errors) {
        this.log.error("invalid object skipped", { error: formatObjectError(e) });
      }
    } else this.invalid.delete(key);
    this.loop?.applyEvent(ev);
    this.afterChange();
  }

  /** Once the source has a full view, judging starts and every change reaches the rules. */
  private afterChange(): void {
    if (!this.source?.synced()) return;
    if (!this.loop?.synced) {
      this.loop?.markSynced();
      this.log.info(
        "state synced; judging packets",
        this.engine.stats() as unknown as Record<string, unknown>,
      );
    }
    this.rules?.schedule();
  }

  private refreshGauges(): void {
    const s = this.engine.stats();
    this.metrics.policies.set(s.policies);
    // Objects the engine rejected, plus those the source could not even read or recognise.
    this.metrics.invalidObjects.set(this.invalid.size + (this.source?.errors?.().length ?? 0));
  }

  private onVerdict(r: VerdictRecord): void {
    const d = r.decision;
    const fields = {
      verdict: r.verdict,
      proto: r.protocol,
      src: `${r.src}:${r.srcPort}`,
      dst: `${r.dst}:${r.dstPort}`,
      srcPod: d.srcPod ?? "-",
      dstPod: d.dstPod ?? "-",
      direction: d.egress.verdict === "deny" ? "egress" : "ingress",
      why: explainDecision(d),
    };
    if (r.verdict === "allow") {
      this.log.v(4).info("connection allowed", fields);
      return;
    }
    if (!this.denyLimiter.take()) return;
    const suppressed = this.denyLimiter.drainSuppressed();
    this.log.info(
      "connection denied",
      suppressed ? { ...fields, suppressedBefore: suppressed } : fields,
    );
  }

  private liveness(): { ok: boolean; detail: string } {
    const beat = this.loop?.lastHeartbeat() ?? 0;
    const age = Date.now() - beat;
    if (age > 10_000) return { ok: false, detail: `verdict loop heartbeat is ${age} ms old` };
    return { ok: true, detail: "ok" };
  }

  private readiness(): { ok: boolean; detail: string } {
    if (!this.source?.synced()) return { ok: false, detail: "waiting for the first full state" };
    const health = this.source.health();
    if (!health.ok) return { ok: false, detail: health.detail };
    if (!this.rules?.ready) return { ok: false, detail: "rules not yet synced" };
    return { ok: true, detail: "ok" };
  }

  /** Idempotent: stop taking packets, settle the rules per --fail-open, close the server. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearInterval(this.statsTimer);
      await this.source?.stop().catch((e) => this.log.warn("source stop", { error: String(e) }));
      await this.loop?.stop().catch((e) => this.log.warn("loop stop", { error: String(e) }));
      await this.rules?.stop().catch((e) => this.log.warn("rules stop", { error: String(e) }));
      await this.server?.close();
    })();
    return this.stopping;
  }
}
