/**
 * Strict mode on the main thread: what the Worker's reports (strict_cuts.ts) become: the
 * connection-cut counters and latency histogram, and one log line per cut record naming what now
 * denies the connection (records are rate-limited in the Worker; the rest is counted).
 */
import type { Logger } from "../log.ts";
import type { AgentMetrics } from "../metrics.ts";
import { explainDecision } from "../policy/explain.ts";
import type { CutRecord, StrictReport } from "./strict_cuts.ts";

export function recordStrictReport(metrics: AgentMetrics, log: Logger, r: StrictReport): void {
  for (const direction of ["egress", "ingress"] as const) {
    if (r.cut[direction]) metrics.connectionsCut.inc({ direction }, r.cut[direction]);
  }
  if (r.uncut) {
    metrics.connectionsUncut.inc(r.uncut);
    log.info("connections allowed again by a change: no longer cut", { count: r.uncut });
  }
  for (const s of r.latencies) metrics.connectionCutLatency.observe(s);
  for (const rec of r.records) log.info("connection cut (strict mode)", cutFields(rec));
  if (r.heldBack) log.info("cut log lines suppressed by rate limit", { count: r.heldBack });
  for (const w of r.warnings) log.warn(w);
}

function endpoint(ip: string, port: number): string {
  const host = ip.includes(":") ? `[${ip}]` : ip;
  return port ? `${host}:${port}` : host;
}

function cutFields(r: CutRecord): Record<string, unknown> {
  const fields: Record<string, unknown> = {
    proto: r.protocol,
    src: endpoint(r.src, r.srcPort),
    dst: endpoint(r.dst, r.dstPort),
    srcPod: r.decision.srcPod ?? "-",
    dstPod: r.decision.dstPod ?? "-",
    direction: r.direction,
    why: explainDecision(r.decision),
  };
  if (r.changedAt !== undefined) {
    // When the change was applied, and how long after it the connection was cut.
    fields.changeAppliedAt = new Date(r.changedAt).toISOString();
    fields.cutAfterMs = Math.max(0, r.time - r.changedAt);
  } else fields.at = "start-up";
  return fields;
}
