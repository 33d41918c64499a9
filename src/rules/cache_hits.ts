/**
 * Counts what the kernel verdict cache answered on its own: the hit rules' packet counters, read
 * by every dataplane check, become `kube_netpol_verdict_cache_hits_total{verdict}`. Install
 * resets the counters, so only growth since the last install (or the last check) is counted.
 *
 * Denies answered by the cache never reach the verdict loop, so the deny log cannot name them one
 * by one: the first denial of each key in each cache window was logged when it was judged, and
 * the connections refused in the kernel since are summed up in one log line per check.
 */
import type { Logger } from "../log.ts";
import type { AgentMetrics } from "../metrics.ts";
import type { DataplaneStatus } from "./backend.ts";
import type { DataplaneObserver } from "./rule_sync.ts";
import type { CacheHits } from "./verdict_cache_rules.ts";

export class CacheHitCounter implements DataplaneObserver {
  /** Counter values at the last install or check. */
  private last: CacheHits = { allow: 0, deny: 0 };

  constructor(
    private readonly metrics: AgentMetrics,
    private readonly log: Logger,
    private readonly timeoutSeconds: number,
  ) {}

  installed(): void {
    this.last = { allow: 0, deny: 0 };
  }

  checked(status: DataplaneStatus): void {
    const now = status.cacheHits;
    if (!now) return;
    // Lower than before: the rules were replaced without install() (e.g. by someone else).
    const allow = now.allow >= this.last.allow ? now.allow - this.last.allow : now.allow;
    const deny = now.deny >= this.last.deny ? now.deny - this.last.deny : now.deny;
    this.last = { ...now };
    if (allow) this.metrics.verdictCacheHits.inc({ verdict: "allow" }, allow);
    if (deny) {
      this.metrics.verdictCacheHits.inc({ verdict: "deny" }, deny);
      this.log.info(
        "connections refused in the kernel by the verdict cache (the first of each source, " +
          "destination and port was logged when judged, again after each cache window)",
        { count: deny, windowSeconds: this.timeoutSeconds },
      );
    }
  }
}

/** One observer telling several (RuleSync takes one). */
export function allObservers(...list: (DataplaneObserver | undefined)[]): DataplaneObserver {
  const present = list.filter((o): o is DataplaneObserver => o !== undefined);
  return {
    installed: () => present.forEach((o) => o.installed()),
    checked: (s) => present.forEach((o) => o.checked(s)),
  };
}
