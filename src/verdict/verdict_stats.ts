/**
 * Per-packet statistics gathered in the verdict worker and handed to the main thread in batches,
 * so the packet path never touches the metrics: the worker appends numbers to arrays, and the
 * main thread replays them into the AgentMetrics histograms, summary and counters.
 */
import type { AgentMetrics } from "../metrics.ts";

export interface PacketStatsSnapshot {
  /** "verdict|protocol|family" -> per-packet processing times in microseconds. */
  durations: Record<string, number[]>;
  /** "direction|verdict" -> count, for kube_netpol_verdicts_total. */
  directions: Record<string, number>;
  /** parse failure reason -> count. */
  parseFailures: Record<string, number>;
}

export class PacketStats {
  private durations = new Map<string, number[]>();
  private directions = new Map<string, number>();
  private parseFailures = new Map<string, number>();
  private empty = true;

  packet(verdict: string, protocol: string, family: string, micros: number): void {
    const key = `${verdict}|${protocol}|${family}`;
    let list = this.durations.get(key);
    if (!list) this.durations.set(key, list = []);
    list.push(micros);
    this.empty = false;
  }

  direction(direction: "ingress" | "egress", verdict: string): void {
    const key = `${direction}|${verdict}`;
    this.directions.set(key, (this.directions.get(key) ?? 0) + 1);
    this.empty = false;
  }

  parseFailure(reason: string): void {
    this.parseFailures.set(reason, (this.parseFailures.get(reason) ?? 0) + 1);
    this.empty = false;
  }

  get isEmpty(): boolean {
    return this.empty;
  }

  /** Everything gathered since the last drain; starts over. */
  drain(): PacketStatsSnapshot {
    const snap = {
      durations: Object.fromEntries(this.durations),
      directions: Object.fromEntries(this.directions),
      parseFailures: Object.fromEntries(this.parseFailures),
    };
    this.durations = new Map();
    this.directions = new Map();
    this.parseFailures = new Map();
    this.empty = true;
    return snap;
  }
}

/**
 * Summary observations per label set and snapshot at most: a summary observation costs a few
 * microseconds per observation, and its quantiles need a fair sample, not every packet.
 */
const SUMMARY_SAMPLES_PER_SNAPSHOT = 256;

/** Replays a snapshot into the Prometheus metrics (main thread). */
export function recordSnapshot(metrics: AgentMetrics, snap: PacketStatsSnapshot): void {
  for (const [key, list] of Object.entries(snap.durations)) {
    const [verdict = "", protocol = "", family = ""] = key.split("|");
    const labels = { verdict, protocol, family };
    metrics.packetCount.inc(labels, list.length);
    const hist = metrics.packetProcessTime.labels(labels);
    for (const us of list) hist.observe(us);
    const stride = Math.max(1, Math.floor(list.length / SUMMARY_SAMPLES_PER_SNAPSHOT));
    for (let i = 0; i < list.length; i += stride) metrics.packetProcessDuration.observe(list[i]!);
  }
  for (const [key, n] of Object.entries(snap.directions)) {
    const [direction = "", verdict = ""] = key.split("|");
    metrics.verdicts.inc({ direction, verdict }, n);
  }
  for (const [reason, n] of Object.entries(snap.parseFailures)) {
    metrics.parseFailures.inc({ reason }, n);
  }
}
