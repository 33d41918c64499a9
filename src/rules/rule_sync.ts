/**
 * Keeps the kernel's queue sets equal to what the engine says must be queued on this node.
 *
 * Changes are coalesced (a burst of informer events becomes one sync), each sync hands the
 * backend the full desired set and the backend applies only the difference. A failed sync is
 * retried with backoff; `syncedGeneration` tells tests and /debug/policies which engine state the
 * kernel reflects.
 */
import type { Logger } from "../log.ts";
import type { AgentMetrics } from "../metrics.ts";
import type { PolicyEngine } from "../policy/engine.ts";
import type { RuleBackend, RuleOptions } from "./backend.ts";
import { chooseBackend } from "./choose.ts";

const COALESCE_MS = 10;
const RETRY_MAX_MS = 10_000;

export class RuleSync {
  /** Engine generation the kernel sets last matched; -1 before the first sync. */
  syncedGeneration = -1;
  private timer?: ReturnType<typeof setTimeout>;
  private running?: Promise<void>;
  private again = false;
  private failures = 0;
  private stopped = false;

  private constructor(
    private readonly backend: RuleBackend,
    private readonly opts: RuleOptions,
    private readonly engine: PolicyEngine,
    private readonly node: string,
    private readonly metrics: AgentMetrics,
    private readonly log: Logger,
  ) {}

  static async start(
    opts: RuleOptions,
    engine: PolicyEngine,
    node: string,
    metrics: AgentMetrics,
    log: Logger,
  ): Promise<RuleSync> {
    const backend = await chooseBackend(opts, log);
    await backend.install();
    log.info("queue rules installed", { backend: backend.name, queue: opts.queueId });
    return new RuleSync(backend, opts, engine, node, metrics, log);
  }

  get backendName(): string {
    return this.backend.name;
  }

  /** True once the sets have matched the engine at least once. */
  get ready(): boolean {
    return this.syncedGeneration >= 0;
  }

  /** Ask for a sync soon; many calls within the coalescing window make one sync. */
  schedule(delayMs = COALESCE_MS): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.running = this.syncOnce().finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.schedule();
        }
      });
    }, delayMs);
  }

  private async syncOnce(): Promise<void> {
    const generation = this.engine.generation;
    const started = performance.now();
    const ips = this.engine.queuedIPs(this.node);
    try {
      const { added, removed } = await this.backend.sync(ips);
      const seconds = (performance.now() - started) / 1000;
      this.metrics.ruleSyncDuration.labels(this.backend.name).observe(seconds);
      this.metrics.queuedPods.labels("ingress").set(ips.ingress.length);
      this.metrics.queuedPods.labels("egress").set(ips.egress.length);
      this.syncedGeneration = generation;
      this.failures = 0;
      if (added || removed) {
        this.log.v(2).info("queue sets synced", {
          added,
          removed,
          ingress: ips.ingress.length,
          egress: ips.egress.length,
          ms: Math.round(seconds * 1000),
        });
      }
    } catch (e) {
      this.failures++;
      this.metrics.ruleSyncErrors.labels(this.backend.name).inc();
      const retryMs = Math.min(RETRY_MAX_MS, 100 * 2 ** Math.min(this.failures, 10));
      this.log.error("rule sync failed; retrying", {
        backend: this.backend.name,
        error: e instanceof Error ? e.message : String(e),
        retryMs,
      });
      this.again = false;
      setTimeout(() => this.schedule(0), retryMs);
    }
  }

  /**
   * Settle the rules for shutdown. Fail-open: remove everything (traffic flows unjudged while the
   * agent is away, as fail-open promises anyway). Fail-closed: keep the rules, so selected pods
   * stay protected until the agent is back (`kube-netpol cleanup` removes them for good).
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
    if (this.opts.failOpen) {
      await this.backend.uninstall();
      this.log.info("queue rules removed (fail-open)", { backend: this.backend.name });
    } else {
      this.log.info("queue rules kept (fail-closed): run `kube-netpol cleanup` to remove them", {
        backend: this.backend.name,
      });
    }
  }
}
