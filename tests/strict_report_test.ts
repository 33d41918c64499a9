/** Strict mode's reports on the main thread: the metrics they feed and the cut log lines. */
import assert from "node:assert/strict";
import { createLogger } from "../src/log.ts";
import { AgentMetrics } from "../src/metrics.ts";
import { recordStrictReport } from "../src/verdict/strict_report.ts";
import type { StrictReport } from "../src/verdict/strict_cuts.ts";

Deno.test("strict report: counters by direction, latency histogram, one line per cut naming the policy", async () => {
  const metrics = new AgentMetrics();
  const lines: string[] = [];
  const log = createLogger({ verbosity: 2, write: (l) => lines.push(l) });
  const report: StrictReport = {
    cut: { egress: 1, ingress: 2 },
    uncut: 1,
    latencies: [0.04, 0.12, 0.2],
    records: [{
      time: 1_700_000_000_150,
      changedAt: 1_700_000_000_100,
      family: 4,
      protocol: "TCP",
      src: "10.0.2.2",
      srcPort: 40000,
      dst: "10.0.1.1",
      dstPort: 80,
      direction: "ingress",
      decision: {
        verdict: "deny",
        egress: { verdict: "allow", reason: { kind: "not-isolated", pod: "y/b" } },
        ingress: {
          verdict: "deny",
          reason: { kind: "denied", pod: "x/a", isolatedBy: ["x/only-ya"] },
        },
        srcPod: "y/b",
        dstPod: "x/a",
      },
    }],
    heldBack: 7,
    warnings: ["strict mode: something"],
  };
  recordStrictReport(metrics, log, report);
  const text = await metrics.registry.metrics();
  assert.match(text, /^kube_netpol_connections_cut_total\{direction="egress"\} 1$/m);
  assert.match(text, /^kube_netpol_connections_cut_total\{direction="ingress"\} 2$/m);
  assert.match(text, /^kube_netpol_connections_uncut_total 1$/m);
  assert.match(text, /^kube_netpol_connection_cut_latency_seconds_count 3$/m);
  assert.match(text, /^kube_netpol_connection_cut_latency_seconds_bucket\{le="0.05"\} 1$/m);
  const cut = lines.find((l) => l.includes("connection cut (strict mode)"))!;
  assert.match(cut, / src=10\.0\.2\.2:40000 dst=10\.0\.1\.1:80 srcPod=y\/b dstPod=x\/a /);
  assert.match(cut, /why="ingress: x\/a isolated by x\/only-ya; no rule matched"/);
  assert.match(cut, /changeAppliedAt=2023-11-14T22:13:20\.100Z cutAfterMs=50$/);
  assert.ok(lines.some((l) => /cut log lines suppressed by rate limit count=7/.test(l)));
  assert.ok(lines.some((l) => /no longer cut count=1/.test(l)));
  assert.ok(lines.some((l) => l.startsWith("W") && l.includes("strict mode: something")));
});
