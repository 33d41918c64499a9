/**
 * `run`: the node agent. Wires a state source (Kubernetes informers, or a manifest directory)
 * into the authoritative engine, the verdict loop's engine replica and the rule sync, and serves
 * metrics and health. Start-up order matters:
 *   1. rules installed (own chains, sets kept from a previous run so pods stay protected),
 *   2. verdict loop bound to the queue (judges nothing until the state is synced),
 *   3. source started; once it has a full view: loop marked synced, sets synced, ready.
 */
import { AgentMetrics } from "../metrics.ts";
import { releaseMemory } from "../release_memory.ts";
import { PolicyEngine } from "../policy/engine.ts";
import { formatObjectError, type ObjectError } from "../policy/types.ts";
import { createLogger, type Logger } from "../log.ts";
import { DEBUG_ENDPOINTS, type DebugEndpoints, startServer } from "../server.ts";
import { applyEvent } from "../state/apply.ts";
import type { StateEvent } from "../state/events.ts";
import type { ClusterSource } from "../state/source.ts";
import { DEFAULT_CUT_MARK, DEFAULT_DENY_MARK } from "../verdict/marks.ts";
import type { VerdictLoop } from "../verdict/verdict_loop.ts";
import type { SpawnedVerdictWorker } from "../verdict/worker_spawn.ts";
import { DEFAULT_DENY_LOG_RATE, DenyLog } from "../verdict/deny_log.ts";
import { DEFAULT_CHECK_INTERVAL_MS, RuleSync } from "../rules/rule_sync.ts";
import { type QueueCounters, UnjudgedMonitor } from "../rules/unjudged.ts";
// Not source.ts: a --manifests run never needs the Kubernetes source.
import { DEFAULT_STALL_TIMEOUT_MS } from "../k8s/watch_transport.ts";
import { DEFAULT_ABSENT_RECHECK_MS } from "../k8s/kinds.ts";
import { flagHelp, type FlagSpec, intFlag, parseDuration, parseFlags, UsageError } from "./args.ts";
import { LocalPodAddresses, parsePodCIDRs, type UnknownPodMembers } from "../policy/local_pods.ts";
import { DEFAULT_UNKNOWN_POD_TIMEOUT_MS } from "../verdict/held_verdicts.ts";
import { InterfaceAddressWatch } from "./interface_addresses.ts";
import type { VerdictCacheRuleOptions } from "../rules/verdict_cache_rules.ts";
import { allObservers, CacheHitCounter } from "../rules/cache_hits.ts";
import {
  parseVerdictCacheFlags,
  VERDICT_CACHE_FLAGS,
  VERDICT_CACHE_HELP,
  workerCacheOptions,
} from "./verdict_cache_flags.ts";

const FLAGS: FlagSpec = {
  kubeconfig: { type: "string" },
  manifests: { type: "string", multiple: true },
  "hostname-override": { type: "string" },
  "fail-open": { type: "boolean", default: true },
  "nfqueue-id": { type: "string", default: "100" },
  "queue-maxlen": { type: "string", default: "4096" },
  "deny-mark": { type: "string", default: `0x${DEFAULT_DENY_MARK.toString(16)}` },
  "strict-mode": { type: "boolean", default: true },
  "cut-mark": { type: "string", default: `0x${DEFAULT_CUT_MARK.toString(16)}` },
  "metrics-bind-address": { type: "string", default: ":9080" },
  "metrics-max-connections": { type: "string", default: "64" },
  "debug-endpoints": { type: "string", default: "loopback" },
  v: { type: "string", short: "v", default: "2" },
  "log-format": { type: "string", default: "text" },
  "logging-format": { type: "string" },
  "deny-log-rate": { type: "string", default: String(DEFAULT_DENY_LOG_RATE) },
  "dataplane-check-interval": { type: "string", default: `${DEFAULT_CHECK_INTERVAL_MS / 1000}s` },
  "watch-stall-timeout": { type: "string", default: `${DEFAULT_STALL_TIMEOUT_MS / 1000}s` },
  "pod-cidr": { type: "string", multiple: true },
  "unknown-pod-timeout": {
    type: "string",
    default: `${DEFAULT_UNKNOWN_POD_TIMEOUT_MS / 1000}s`,
  },
  "crd-recheck-interval": { type: "string", default: `${DEFAULT_ABSENT_RECHECK_MS / 1000}s` },
  ...VERDICT_CACHE_FLAGS,
  help: { type: "boolean", short: "h", default: false },
};

const HELP: Record<string, string> = {
  kubeconfig: "kubeconfig file (default: in-cluster config, or $KUBECONFIG)",
  manifests: "run without Kubernetes: Namespace/Pod/NetworkPolicy files or directories, " +
    "watched for changes (repeatable)",
  "hostname-override": "this node's name (pods with this spec.nodeName are local; " +
    "default $NODE_NAME, else the hostname)",
  "fail-open": "let packets through while the agent is down or its queue is full (queue bypass); " +
    "a queued packet it cannot parse is denied either way",
  "nfqueue-id": "netfilter queue number",
  "queue-maxlen": "kernel queue length before packets are dropped (or bypassed when fail-open)",
  "deny-mark": "packet mark bit used to reject denied connections fast",
  "strict-mode": "cut established connections a policy, pod, namespace or node change denies " +
    "(within about a second; allowed ones are never touched); false: only new connections see " +
    "a change",
  "cut-mark": "conntrack mark bit strict mode sets on the connections it cuts",
  "metrics-bind-address": "address for /metrics, /healthz, /readyz (and /debug/*, see " +
    "--debug-endpoints)",
  "metrics-max-connections": "concurrent HTTP connections from other hosts (8 per address at " +
    "most); more are closed at once. The node itself has 16 more of its own",
  "debug-endpoints": "who may read /debug/*: loopback (clients on the node's loopback only) " +
    "or anywhere",
  v: "log verbosity: 0 errors and warnings, 2 normal, 4 every verdict",
  "log-format": "text or json",
  "logging-format": "the Kubernetes spelling of --log-format",
  "deny-log-rate": "deny log lines per second at most (the rest are counted and summarized)",
  "dataplane-check-interval": "how often our rules and sets are checked, and repaired when " +
    "something flushed or deleted them",
  "watch-stall-timeout": "a watch with no event and no bookmark for this long is presumed hung: " +
    "/readyz fails and it is re-opened (the API server sends bookmarks about every minute)",
  "pod-cidr": "this node's pod CIDR, instead of its Node object's spec.podCIDRs (repeatable; for " +
    "clusters whose Node objects lack them)",
  "unknown-pod-timeout": "how long a new connection from or to an address of this node's pod " +
    "CIDRs that no known pod owns waits for its pod (then --fail-open decides); 0 turns it off",
  "crd-recheck-interval": "how often a policy kind the API server does not serve (its CRD is " +
    "not installed) is looked for again; until then none of it exists",
  ...VERDICT_CACHE_HELP,
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
  strictMode: boolean;
  cutMark: number;
  metricsAddress: string;
  metricsMaxConnections: number;
  debugEndpoints: DebugEndpoints;
  /** Reported as kube_netpol_build_info{version}; main.ts's VERSION. */
  version?: string;
  verbosity: number;
  logFormat: "text" | "json";
  denyLogRate: number;
  dataplaneCheckIntervalMs: number;
  watchStallTimeoutMs: number;
  /** `--pod-cidr`, canonical; empty: the Node object's spec.podCIDRs. */
  podCIDRs: string[];
  /** 0: the pod-start race is not handled (sets empty, nothing held). */
  unknownPodTimeoutMs: number;
  crdRecheckIntervalMs: number;
  /** The kernel verdict cache; undefined with --verdict-cache=false. */
  verdictCache?: VerdictCacheRuleOptions;
}

/** `--log-format`, or its Kubernetes spelling `--logging-format`; both given must agree. */
function logFormatFlag(values: Record<string, unknown>): "text" | "json" {
  const k8s = values["logging-format"] as string | undefined;
  const ours = values["log-format"] as string;
  const explicit = k8s !== undefined && ours !== "text" && ours !== k8s;
  if (explicit) {
    throw new UsageError(`--log-format ${ours} and --logging-format ${k8s} disagree`);
  }
  const format = k8s ?? ours;
  if (format !== "text" && format !== "json") {
    const flag = k8s !== undefined ? "--logging-format" : "--log-format";
    throw new UsageError(`${flag} must be text or json, not ${JSON.stringify(format)}`);
  }
  return format;
}

export function parseRunFlags(args: string[]): RunOptions | "help" {
  const { values, positionals } = parseFlags(args, FLAGS);
  if (values.help) return "help";
  if (positionals.length) {
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`);
  }
  const logFormat = logFormatFlag(values);
  const debugEndpoints = values["debug-endpoints"] as DebugEndpoints;
  if (!DEBUG_ENDPOINTS.includes(debugEndpoints)) {
    throw new UsageError(
      `--debug-endpoints must be ${DEBUG_ENDPOINTS.join(" or ")}, not ${
        JSON.stringify(debugEndpoints)
      }`,
    );
  }
  const numbers = {
    queueId: intFlag(values, "nfqueue-id", 0, 65535),
    queueMaxLen: intFlag(values, "queue-maxlen", 1, 1 << 20),
    denyMark: intFlag(values, "deny-mark", 1, 0xffffffff),
    cutMark: intFlag(values, "cut-mark", 1, 0xffffffff),
    verbosity: intFlag(values, "v", 0, 10),
    denyLogRate: intFlag(values, "deny-log-rate", 1, 100000),
    metricsMaxConnections: intFlag(values, "metrics-max-connections", 1, 10000),
    dataplaneCheckIntervalMs: parseDuration(
      "dataplane-check-interval",
      String(values["dataplane-check-interval"]),
      100,
      3_600_000,
    ),
    watchStallTimeoutMs: parseDuration(
      "watch-stall-timeout",
      String(values["watch-stall-timeout"]),
      1000,
      3_600_000,
    ),
    unknownPodTimeoutMs: parseDuration(
      "unknown-pod-timeout",
      String(values["unknown-pod-timeout"]),
      0,
      60_000,
    ),
    crdRecheckIntervalMs: parseDuration(
      "crd-recheck-interval",
      String(values["crd-recheck-interval"]),
      1000,
      3_600_000,
    ),
  };
  const podCIDRs = parsePodCIDRs((values["pod-cidr"] as string[] | undefined) ?? []);
  if (typeof podCIDRs === "string") throw new UsageError(`--pod-cidr: ${podCIDRs}`);
  // Last: the hostname fallback needs a permission, and flag mistakes should be reported first.
  const nodeName = (values["hostname-override"] as string | undefined) ||
    Deno.env.get("NODE_NAME") || Deno.hostname();
  const verdictCache = parseVerdictCacheFlags(
    values,
    numbers.denyMark,
    values["strict-mode"] === false ? undefined : numbers.cutMark,
  );
  return {
    ...numbers,
    podCIDRs,
    ...(verdictCache ? { verdictCache } : {}),
    kubeconfig: values.kubeconfig as string | undefined,
    manifests: (values.manifests as string[] | undefined) ?? [],
    nodeName,
    failOpen: values["fail-open"] as boolean,
    strictMode: values["strict-mode"] as boolean,
    metricsAddress: values["metrics-bind-address"] as string,
    debugEndpoints,
    logFormat,
  };
}

/** `verdictWorker`: started by main.ts before any npm package was loaded (see worker_spawn.ts). */
export async function runCommand(
  args: string[],
  version: string,
  verdictWorker?: SpawnedVerdictWorker,
): Promise<number> {
  const opts = parseRunFlags(args);
  if (opts === "help") {
    console.log(`Usage: kube-netpol run [flags]\n\n${flagHelp(FLAGS, HELP)}`);
    return 0;
  }
  const log = createLogger({ verbosity: opts.verbosity, format: opts.logFormat });
  const agent = new Agent({ ...opts, version }, log, verdictWorker);
  log.info("starting kube-netpol", {
    version,
    node: opts.nodeName,
    source: opts.manifests.length ? `manifests ${opts.manifests.join(",")}` : "kubernetes",
    failOpen: opts.failOpen,
    strictMode: opts.strictMode,
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
  /** Scoped to this node: the agent judges (and queues) only its own pods. */
  readonly engine: PolicyEngine;
  private source?: ClusterSource;
  private loop?: VerdictLoop;
  private rules?: RuleSync;
  private unjudged?: UnjudgedMonitor;
  /** Reads the kernel's counters of our queue; set once the verdict loop is bound. */
  private queueCounters?: (notBefore?: number) => QueueCounters | undefined;
  private server?: { port: number; close(): Promise<void> };
  private readonly invalid = new Map<string, ObjectError[]>();
  private statsTimer?: ReturnType<typeof setInterval>;
  private releaseTimer?: ReturnType<typeof setTimeout>;
  private stopping?: Promise<void>;
  /** [pod-start race] This node's pod CIDRs and known addresses; absent when turned off. */
  private localPods?: LocalPodAddresses;
  private interfaces?: InterfaceAddressWatch;
  private loggedPodCIDRs?: string;
  private interfaceIPs?: string[];

  constructor(
    readonly opts: RunOptions,
    private readonly log: Logger,
    private readonly verdictWorker?: SpawnedVerdictWorker,
  ) {
    this.metrics.buildInfo.set({ version: opts.version ?? "unknown" }, 1);
    this.engine = new PolicyEngine({ node: opts.nodeName });
  }

  get port(): number | undefined {
    return this.server?.port;
  }

  async start(): Promise<void> {
    const { opts, log } = this;
    const http = {
      address: opts.metricsAddress,
      maxConnections: opts.metricsMaxConnections,
      debugEndpoints: opts.debugEndpoints,
    };
    this.server = startServer(http, this.metrics, {
      live: () => this.liveness(),
      ready: () => this.readiness(),
      debugPolicies: () => ({
        policies: this.engine.policyKeys(),
        clusterPolicies: this.engine.clusterPolicyKeys(),
        generation: this.engine.generation,
        rulesSyncedGeneration: this.rules?.syncedGeneration ?? -1,
        invalid: [...this.invalid.values()].flat().concat(this.source?.errors?.() ?? [])
          .map(formatObjectError),
      }),
    }, log);

    this.unjudged = new UnjudgedMonitor({
      read: (notBefore) => this.queueCounters?.(notBefore),
      requestCheck: () => this.rules?.checkNow(),
      queueMaxLen: opts.queueMaxLen,
      failOpen: opts.failOpen,
      metrics: this.metrics,
      log,
    });
    this.startLocalPods();
    const cacheHits = opts.verdictCache
      ? new CacheHitCounter(this.metrics, log, opts.verdictCache.timeoutSeconds)
      : undefined;
    this.rules = await RuleSync.start(
      {
        queueId: opts.queueId,
        failOpen: opts.failOpen,
        denyMark: opts.denyMark,
        ...(opts.strictMode ? { cutMark: opts.cutMark } : {}),
        ...(opts.verdictCache ? { verdictCache: opts.verdictCache } : {}),
      },
      this.engine,
      opts.nodeName,
      this.metrics,
      log,
      {
        checkIntervalMs: opts.dataplaneCheckIntervalMs,
        observer: allObservers(this.unjudged, cacheHits),
        ...(this.localPods ? { unknownPods: { members: () => this.unknownPodMembers() } } : {}),
      },
    );

    const { VerdictLoop } = await import("../verdict/verdict_loop.ts");
    this.loop = await VerdictLoop.start(
      {
        queueId: opts.queueId,
        queueMaxLen: opts.queueMaxLen,
        failOpen: opts.failOpen,
        denyMark: opts.denyMark,
        nodeName: opts.nodeName,
        logAllows: opts.verbosity >= 4,
        denyLogRate: opts.denyLogRate,
        unknownPodTimeoutMs: opts.unknownPodTimeoutMs,
        podCIDRs: opts.podCIDRs,
        ...(opts.strictMode ? { strictCutMark: opts.cutMark } : {}),
        ...workerCacheOptions(opts.verdictCache, this.rules.backendName),
      },
      this.metrics,
      new DenyLog(log),
      log,
      this.verdictWorker,
    );
    this.queueCounters = queueCounterReader(this.loop);
    if (this.interfaceIPs) this.loop.setLocalAddresses(this.interfaceIPs);
    // The queue is bound: a check now is the baseline of the unjudged-packet count.
    this.rules.checkNow();

    this.source = await this.createSource();
    await this.source.start((ev) => this.onEvent(ev));
    // A kind with no objects delivers no event: check once more now that start() is done.
    this.afterChange();
    // The initial lists are applied and dropped: hand their memory back (once they are gone).
    this.releaseTimer = setTimeout(releaseMemory, 1000);
    this.statsTimer = setInterval(() => this.refreshGauges(), 5000);
  }

  /**
   * The pod-start race: which addresses of this node's pod CIDRs are known (local_pods.ts), with
   * the node's interface addresses read now and every few seconds.
   */
  private startLocalPods(): void {
    const { opts, log } = this;
    if (opts.unknownPodTimeoutMs === 0) {
      log.info("pods the agent does not know yet are not held (--unknown-pod-timeout=0)");
      return;
    }
    const localPods = new LocalPodAddresses(this.engine, opts.nodeName, opts.podCIDRs);
    this.localPods = localPods;
    this.interfaces = new InterfaceAddressWatch((ips) => {
      this.interfaceIPs = ips;
      if (!localPods.setInterfaceAddresses(ips)) return;
      this.loop?.setLocalAddresses(ips);
      if (this.loop?.synced) this.rules?.schedule();
    }, log);
    this.interfaces.start();
  }

  /** What the rule sync puts in the race's sets; says when the pod CIDRs change. */
  private unknownPodMembers(): UnknownPodMembers {
    const members = this.localPods!.members();
    const key = members.podCIDRs.join(",");
    if (key !== this.loggedPodCIDRs) {
      this.loggedPodCIDRs = key;
      const source = this.opts.podCIDRs.length ? "--pod-cidr" : `Node ${this.opts.nodeName}`;
      if (members.podCIDRs.length) {
        this.log.info("pods of this node's pod CIDRs are judged from their first packet", {
          podCIDRs: members.podCIDRs,
          source,
        });
      } else {
        this.log.warn(
          "no pod CIDRs known for this node: a pod that sends before the agent knows it is not " +
            "judged (give the Node object spec.podCIDRs, or --pod-cidr)",
          { source },
        );
      }
    }
    return members;
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
      stallTimeoutMs: this.opts.watchStallTimeoutMs,
      absentRecheckMs: this.opts.crdRecheckIntervalMs,
    });
  }

  /** One object change: the authoritative engine, the loop's replica, then the rules. */
  private onEvent(ev: StateEvent): void {
    const key = ev.op === "delete"
      ? `${ev.kind} ${ev.namespace ?? ""}/${ev.name}`
      : `${ev.kind} ${ev.object.metadata?.namespace ?? ""}/${ev.object.metadata?.name}`;
    const problems = applyEvent(this.engine, ev);
    // Warnings come with objects that were applied (e.g. a domainNames peer, which matches
    // nothing in this version): said once, not counted as invalid.
    const errors = problems.filter((e) => e.severity !== "warning");
    for (const w of problems) {
      if (w.severity === "warning") {
        this.log.warn("object applied with a warning", {
          warning: formatObjectError(w),
        });
      }
    }
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
    for (const [tier, n] of Object.entries(this.engine.clusterPoliciesByTier())) {
      this.metrics.clusterPolicies.set({ tier }, n);
    }
    // Objects the engine rejected, plus those the source could not even read or recognise.
    this.metrics.invalidObjects.set(this.invalid.size + (this.source?.errors?.().length ?? 0));
  }

  private liveness(): { ok: boolean; detail: string } {
    const beat = this.loop?.lastHeartbeat() ?? 0;
    const age = Date.now() - beat;
    if (age > 10_000) return { ok: false, detail: `verdict loop heartbeat is ${age} ms old` };
    return { ok: true, detail: "ok" };
  }

  private readiness(): { ok: boolean; detail: string } {
    const health = this.source?.health();
    if (!this.source?.synced() || !health) {
      // Say why: e.g. the API server's certificate does not match the CA.
      const why = health && !health.ok ? `: ${health.detail}` : "";
      return { ok: false, detail: `waiting for the first full state${why}` };
    }
    if (!health.ok) return { ok: false, detail: health.detail };
    const rules = this.rules?.health() ?? { ok: false, detail: "rules not installed" };
    if (!rules.ok) return rules;
    // `/readyz?verbose` shows it: which kinds are watched, and which are not served (no CRD).
    return { ok: true, detail: health.detail };
  }

  /** Idempotent: stop taking packets, settle the rules per --fail-open, close the server. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearInterval(this.statsTimer);
      clearTimeout(this.releaseTimer);
      this.unjudged?.stop();
      this.interfaces?.stop();
      await this.source?.stop().catch((e) => this.log.warn("source stop", { error: String(e) }));
      await this.loop?.stop().catch((e) => this.log.warn("loop stop", { error: String(e) }));
      await this.rules?.stop().catch((e) => this.log.warn("rules stop", { error: String(e) }));
      await this.server?.close();
    })();
    return this.stopping;
  }
}

/**
 * What the unjudged-packet accounting reads: the packets the Worker received and our queue's
 * counters from /proc, read together by the Worker (every 100 ms; only it can read /proc). With
 * `notBefore`, only a reading taken after that time will do (see UnjudgedMonitor.evaluate); both
 * are wall-clock times, so the Worker's stamp compares. (Not the queue's id_sequence: a packet the
 * kernel numbered but could not hand to a full socket is let through under fail-open, uncounted.)
 */
function queueCounterReader(loop: VerdictLoop): (notBefore?: number) => QueueCounters | undefined {
  return (notBefore) => {
    const latest = loop.latestQueue;
    if (!latest || (notBefore !== undefined && latest.readAt <= notBefore)) return undefined;
    const s = latest.stats;
    return {
      received: latest.received,
      queued: s.queueTotal,
      dropped: s.queueDropped + s.userDropped,
    };
  };
}
