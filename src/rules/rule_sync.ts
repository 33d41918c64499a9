/**
 * Keeps the kernel's rules and queue sets equal to what the engine says must be queued on this
 * node, and keeps checking that they stay so.
 *
 * Changes are coalesced (a burst of informer events becomes one sync), each sync hands the
 * backend the full desired set and the backend applies only the difference. A failed sync is
 * retried with backoff, and the retry first checks the dataplane. Every `checkIntervalMs` (and
 * after any failed sync) the backend compares the kernel with what was installed and synced; when
 * something was flushed or deleted behind our back (firewalld reload, `iptables -F`, `nft flush
 * ruleset`, `ipset flush`) everything is re-installed and re-synced, the repair is counted, and
 * /readyz fails until the kernel is right again. Syncs and checks never overlap. All timing runs
 * on an injectable Clock. `syncedGeneration` tells tests and /debug/policies which engine state
 * the kernel reflects.
 */
import { type Clock, realClock, type TimerHandle } from "../clock.ts";
import type { Logger } from "../log.ts";
import type { AgentMetrics } from "../metrics.ts";
import type { Damage, DataplaneStatus, QueuedIPs, RuleBackend, RuleOptions } from "./backend.ts";
import { chooseBackend } from "./choose.ts";
import type { UnknownPodMembers } from "../policy/local_pods.ts";

export const COALESCE_MS = 10;
export const RETRY_BASE_MS = 100;
export const RETRY_MAX_MS = 10_000;
/** Default period of the dataplane check (`--dataplane-check-interval`). */
export const DEFAULT_CHECK_INTERVAL_MS = 10_000;

/** What RuleSync needs from the engine. */
export interface QueuedIPSource {
  readonly generation: number;
  queuedIPs(node: string): QueuedIPs;
}

/** Told about every install and every successful check (the unjudged-packet accounting). */
export interface DataplaneObserver {
  /** Our rules were (re-)installed: their packet counters start again from zero. */
  installed(): void;
  checked(status: DataplaneStatus): void;
}

export interface RuleSyncOptions {
  backend: RuleBackend;
  failOpen: boolean;
  engine: QueuedIPSource;
  node: string;
  metrics: AgentMetrics;
  log: Logger;
  clock?: Clock;
  /** Dataplane check period; 0 turns the periodic check off (failed syncs still check). */
  checkIntervalMs?: number;
  observer?: DataplaneObserver;
  /** The pod-start race's set members (local_pods.ts); absent: those sets stay empty. */
  unknownPods?: { members(): UnknownPodMembers };
}

/** Delay before retry number `failures` (1, 2, ...): 200 ms doubling, capped. */
export function retryDelayMs(failures: number): number {
  return Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(failures, 10));
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class RuleSync {
  /** Engine generation the kernel sets last matched; -1 before the first sync. */
  syncedGeneration = -1;
  /** Repairs done since start (also in kube_netpol_dataplane_repairs_total). */
  repairs = 0;
  private readonly clock: Clock;
  private readonly checkIntervalMs: number;
  private timer?: TimerHandle;
  private checkTimer?: TimerHandle;
  private running?: Promise<void>;
  private wantSync = false;
  private wantCheck = false;
  private failures = 0;
  /** No run before this time (retry backoff); new changes wait for it too. */
  private notBefore = 0;
  private stopped = false;
  /** Members of the last successful sync: what the sets must hold. */
  private synced?: QueuedIPs;
  /** Why the dataplane is known to be wrong (or could not be checked); empty when fine. */
  private problem = "";

  constructor(private readonly o: RuleSyncOptions) {
    this.clock = o.clock ?? realClock;
    this.checkIntervalMs = o.checkIntervalMs ?? DEFAULT_CHECK_INTERVAL_MS;
    this.o.metrics.dataplaneIntact.set(1);
    this.armCheck();
  }

  /** Choose the backend, install our rules, and start syncing and checking. */
  static async start(
    opts: RuleOptions,
    engine: QueuedIPSource,
    node: string,
    metrics: AgentMetrics,
    log: Logger,
    extra: Pick<RuleSyncOptions, "clock" | "checkIntervalMs" | "observer" | "unknownPods"> = {},
  ): Promise<RuleSync> {
    const backend = await chooseBackend(opts, log);
    await backend.install();
    extra.observer?.installed();
    log.info("queue rules installed", { backend: backend.name, queue: opts.queueId });
    return new RuleSync({ backend, failOpen: opts.failOpen, engine, node, metrics, log, ...extra });
  }

  get backendName(): RuleBackend["name"] {
    return this.o.backend.name;
  }

  /** True once the sets have matched the engine at least once. */
  get ready(): boolean {
    return this.syncedGeneration >= 0;
  }

  /** For /readyz: not ok before the first sync and while the dataplane is known to be wrong. */
  health(): { ok: boolean; detail: string } {
    if (this.problem) return { ok: false, detail: this.problem };
    if (!this.ready) return { ok: false, detail: "rules not yet synced" };
    return { ok: true, detail: "rules synced and intact" };
  }

  /** Ask for a sync soon; many calls within the coalescing window make one sync. */
  schedule(delayMs = COALESCE_MS): void {
    if (this.stopped) return;
    this.wantSync = true;
    this.kick(delayMs);
  }

  /** Ask for a dataplane check now (tests; the periodic timer does it otherwise). */
  checkNow(): void {
    if (this.stopped) return;
    this.wantCheck = true;
    this.kick(0);
  }

  /** Resolves once no sync or check is running or pending (tests). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private kick(delayMs: number): void {
    if (this.running || this.timer !== undefined) return; // the current run picks the flags up
    const wait = Math.max(delayMs, this.notBefore - this.clock.now());
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.running = this.runJobs().finally(() => {
        this.running = undefined;
        if (this.stopped) return;
        if (this.wantCheck) this.kick(0);
        else if (this.wantSync) this.kick(COALESCE_MS);
      });
    }, wait);
  }

  private armCheck(): void {
    if (this.checkIntervalMs <= 0 || this.stopped) return;
    this.clock.clearTimeout(this.checkTimer);
    this.checkTimer = this.clock.setTimeout(() => {
      this.checkTimer = undefined;
      this.checkNow();
    }, this.checkIntervalMs);
  }

  /** Checks first (they may repair), then syncs; a failure stops the run and arms the retry. */
  private async runJobs(): Promise<void> {
    while (!this.stopped && (this.wantCheck || this.wantSync)) {
      if (this.wantCheck) {
        this.wantCheck = false;
        if (!(await this.checkAndRepair())) {
          this.wantCheck = true;
          return this.retryLater();
        }
        this.armCheck();
      }
      if (this.wantSync && !this.stopped) {
        this.wantSync = false;
        if (!(await this.syncOnce())) {
          this.wantSync = true;
          this.wantCheck = true; // a failed sync may mean our sets or rules are gone
          return this.retryLater();
        }
      }
    }
    this.failures = 0;
    this.notBefore = 0;
  }

  private retryLater(): void {
    this.failures++;
    const delay = retryDelayMs(this.failures);
    this.notBefore = this.clock.now() + delay;
    this.o.log.v(2).info("rule work will be retried", { retryMs: delay, failures: this.failures });
  }

  private async syncOnce(): Promise<boolean> {
    const { backend, engine, metrics, log } = this.o;
    const generation = engine.generation;
    const started = performance.now();
    const ips = engine.queuedIPs(this.o.node);
    if (this.o.unknownPods) ips.unknownPods = this.o.unknownPods.members();
    try {
      const { added, removed } = await backend.sync(ips);
      const seconds = (performance.now() - started) / 1000;
      metrics.ruleSyncDuration.labels(backend.name).observe(seconds);
      metrics.queuedPods.labels("ingress").set(ips.ingress.length);
      metrics.queuedPods.labels("egress").set(ips.egress.length);
      this.syncedGeneration = generation;
      this.synced = ips;
      if (added || removed) {
        log.v(2).info("queue sets synced", {
          added,
          removed,
          ingress: ips.ingress.length,
          egress: ips.egress.length,
          ms: Math.round(seconds * 1000),
        });
      }
      return true;
    } catch (e) {
      metrics.ruleSyncErrors.labels(backend.name).inc();
      log.error("rule sync failed; checking the dataplane and retrying", {
        backend: backend.name,
        error: errorText(e),
        retryMs: retryDelayMs(this.failures + 1),
      });
      return false;
    }
  }

  /** One check; on damage: re-install, re-sync, check again. False when that did not work. */
  private async checkAndRepair(): Promise<boolean> {
    const { backend, metrics, log, observer } = this.o;
    let damage: Damage[];
    try {
      const status = await backend.check(this.synced);
      damage = status.damage;
      if (damage.length === 0) {
        observer?.checked(status);
        this.setProblem("");
        return true;
      }
    } catch (e) {
      this.setProblem(`dataplane check failed: ${errorText(e)}`);
      log.error("dataplane check failed", { backend: backend.name, error: errorText(e) });
      return false;
    }
    const details = damage.map((d) => d.detail);
    this.setProblem(`dataplane damaged: ${details.join("; ")}`);
    for (const reason of new Set(damage.map((d) => d.reason))) {
      metrics.dataplaneRepairs.inc({ reason });
    }
    this.repairs++;
    log.warn("dataplane damaged (rules or sets changed behind our back); repairing", {
      backend: backend.name,
      damage: details,
    });
    try {
      await backend.install();
      observer?.installed();
      // Before the first sync the engine may not have the whole cluster yet: the members kept
      // from a previous run stay as they are until the first sync replaces them.
      if (this.synced !== undefined) {
        // This sync covers any sync that was pending; a change after it schedules another.
        this.wantSync = false;
        if (!(await this.syncOnce())) {
          this.wantSync = true;
          return false;
        }
      }
      const after = await backend.check(this.synced);
      if (after.damage.length) {
        const still = after.damage.map((d) => d.detail).join("; ");
        this.setProblem(`dataplane still damaged after repair: ${still}`);
        log.error("dataplane still damaged after repair", { backend: backend.name, damage: still });
        return false;
      }
      observer?.checked(after);
    } catch (e) {
      this.setProblem(`dataplane repair failed: ${errorText(e)}`);
      log.error("dataplane repair failed", { backend: backend.name, error: errorText(e) });
      return false;
    }
    this.setProblem("");
    log.info("dataplane repaired", { backend: backend.name, damage: details });
    return true;
  }

  private setProblem(problem: string): void {
    this.problem = problem;
    this.o.metrics.dataplaneIntact.set(problem ? 0 : 1);
  }

  /**
   * Settle the rules for shutdown. Fail-open: remove everything (traffic flows unjudged while the
   * agent is away, as fail-open promises anyway). Fail-closed: keep the rules, so selected pods
   * stay protected until the agent is back (`kube-netpol cleanup` removes them for good).
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
    this.clock.clearTimeout(this.checkTimer);
    this.timer = this.checkTimer = undefined;
    await this.idle();
    const { backend, log } = this.o;
    if (this.o.failOpen) {
      await backend.uninstall();
      log.info("queue rules removed (fail-open)", { backend: backend.name });
    } else {
      log.info("queue rules kept (fail-closed): run `kube-netpol cleanup` to remove them", {
        backend: backend.name,
      });
    }
  }
}
