/**
 * Counts packets the kernel let through without a verdict. Under --fail-open the queue is bound
 * with the fail-open flag: when it is full (or the netlink socket buffer is), the kernel accepts
 * the packet instead of queueing it, and counts that nowhere (queue_dropped and user_dropped stay
 * 0; id_sequence counts only packets really queued). Our queue rules' own packet counters do see
 * every packet sent to the queue, so:
 *
 *   unjudged = queue rule packets - packets the agent received - packets in the queue now
 *              - packets the kernel dropped and counted (fail-closed)
 *
 * all since the rules were last installed (install resets the rule counters). The agent's
 * received count reaches the main thread in reports up to 250 ms late, so the other three are
 * read `settleMs` after the rule counters: a packet matched before the counters were read has
 * been received and reported by then, or is still queued. The estimate can only come out low
 * (packets matched after the counter read, received before the settle), never high, and it
 * catches up at the next check. Only its growth is counted.
 *
 * The dataplane check reads the rule counters every check period; while the queue is half full
 * or more (packets are let through only when it is full), a check is asked for every
 * `fullCheckMs`, so a flood is reported within a few seconds.
 */
import { type Clock, realClock, type TimerHandle } from "../clock.ts";
import type { Logger } from "../log.ts";
import type { AgentMetrics } from "../metrics.ts";
import type { DataplaneStatus } from "./backend.ts";
import type { DataplaneObserver } from "./rule_sync.ts";

export interface QueueCounters {
  /** Packets the agent received from the queue since it started (cumulative). */
  received: number;
  /** Packets waiting in the kernel queue now. */
  queued: number;
  /** Packets the kernel dropped and counted (queue full or socket full, fail-closed). */
  dropped: number;
}

export interface UnjudgedMonitorOptions {
  /**
   * The latest counters; undefined while the queue is not bound yet, or when `notBefore` (a
   * Clock time) is given and no reading taken after it has arrived yet.
   */
  read(notBefore?: number): QueueCounters | undefined;
  /** Ask the rule sync for a dataplane check now. */
  requestCheck(): void;
  queueMaxLen: number;
  failOpen: boolean;
  metrics: AgentMetrics;
  log: Logger;
  clock?: Clock;
  settleMs?: number;
  /** How often the queue length is looked at (a /proc read). */
  pollMs?: number;
  /** Least time between checks asked for because the queue is full. */
  fullCheckMs?: number;
}

/** How often an estimate waits another settle period for fresh queue counters. */
const MAX_SETTLE_RETRIES = 10;

export class UnjudgedMonitor implements DataplaneObserver {
  /** Packets counted as let through unjudged since start. */
  total = 0;
  private readonly clock: Clock;
  private epoch = 0;
  /** Counters when the current rules were installed; undefined until they could be read. */
  private base?: QueueCounters;
  /** Largest estimate seen in this epoch: only growth beyond it is counted. */
  private seen = 0;
  private pollTimer?: TimerHandle;
  private lastFullCheck = -Infinity;
  /** The queue was (nearly) full at the last poll. */
  private wasFull = false;
  private baselineAsked = false;
  private stopped = false;

  constructor(private readonly o: UnjudgedMonitorOptions) {
    this.clock = o.clock ?? realClock;
    this.poll();
  }

  installed(): void {
    this.epoch++;
    this.base = this.o.read();
    this.seen = 0;
    this.baselineAsked = false;
  }

  checked(status: DataplaneStatus): void {
    const hits = status.queueRulePackets;
    if (hits === undefined || this.stopped) return;
    if (!this.base) {
      // Installed before the queue was bound (start-up): what matched until now is the baseline.
      // Read at once, beside the rule counters: anything received later only lowers the estimate.
      const now = this.o.read();
      if (now) {
        this.base = { received: now.received, queued: 0, dropped: now.dropped };
        this.seen = Math.max(0, hits - now.queued);
      }
      return;
    }
    const epoch = this.epoch;
    const countersRead = this.clock.now();
    this.clock.setTimeout(
      () => this.evaluate(epoch, hits, countersRead, 0),
      this.o.settleMs ?? 300,
    );
  }

  stop(): void {
    this.stopped = true;
    this.clock.clearTimeout(this.pollTimer);
  }

  private evaluate(epoch: number, hits: number, countersRead: number, attempt: number): void {
    if (epoch !== this.epoch || this.stopped) return; // re-installed meanwhile: counters reset
    // Only counters read after the rule counters were: an older reading of a filling queue would
    // count queued packets as unjudged. A busy agent may deliver it late: wait a little longer.
    const now = this.o.read(countersRead);
    if (!now && attempt < MAX_SETTLE_RETRIES) {
      this.clock.setTimeout(
        () => this.evaluate(epoch, hits, countersRead, attempt + 1),
        this.o.settleMs ?? 300,
      );
      return;
    }
    if (!now) {
      // No fresh counters came (a very busy agent): measure again rather than guess.
      this.o.requestCheck();
      return;
    }
    if (!this.base) return;
    const estimate = hits - (now.received - this.base.received) - now.queued -
      (now.dropped - this.base.dropped);
    if (estimate <= this.seen) return;
    const grown = estimate - this.seen;
    this.seen = estimate;
    this.total += grown;
    this.o.metrics.unjudgedPackets.inc(grown);
    this.o.log.warn(
      "packets let through without a verdict: the queue was full and --fail-open accepts what " +
        "does not fit, so a flood can open this node's policies while it lasts " +
        "(--fail-open=false drops them instead)",
      { packets: grown, total: this.total, queueMaxLen: this.o.queueMaxLen },
    );
  }

  private poll(): void {
    if (this.stopped) return;
    this.pollTimer = this.clock.setTimeout(() => {
      const c = this.o.read();
      const now = this.clock.now();
      const fullCheckMs = this.o.fullCheckMs ?? 2000;
      // The queue just became readable (bound): a check now sets the baseline, so that a flood
      // starting right after start-up is measured against it and counted.
      const needBaseline = c !== undefined && this.base === undefined && !this.baselineAsked;
      // Fail-closed: a full queue drops, and the kernel counts that itself.
      const nearlyFull = c !== undefined && this.o.failOpen &&
        c.queued >= Math.max(1, this.o.queueMaxLen / 2);
      // The queue just drained after being (nearly) full: a check now counts the whole burst,
      // instead of waiting for the next periodic one.
      const drained = this.wasFull && c !== undefined && !nearlyFull;
      if (
        needBaseline || drained || (nearlyFull && now - this.lastFullCheck >= fullCheckMs)
      ) {
        if (nearlyFull) this.lastFullCheck = now;
        this.baselineAsked ||= needBaseline;
        this.o.requestCheck();
      }
      if (c !== undefined) this.wasFull = nearlyFull;
      this.poll();
    }, this.o.pollMs ?? 1000);
  }
}
