/**
 * How the lab reads the agent's /metrics (LabAgent.metric and .scrape): samples summed by exact
 * name over those carrying the asked labels, 0 when none does. Read from the agent's own registry
 * (src/metrics.ts), so the parser is proved on the text prom-client really writes.
 */
import assert from "node:assert/strict";
import { AgentMetrics } from "../src/metrics.ts";
import { MetricsScrape, parseMetrics } from "../e2e/lab/agent.ts";

async function scrapeOf(fill: (m: AgentMetrics) => void): Promise<MetricsScrape> {
  const m = new AgentMetrics();
  fill(m);
  return new MetricsScrape(await m.registry.metrics());
}

Deno.test("lab metrics: one labelled sample, the sum over a label, every label set", async () => {
  const m = await scrapeOf((m) => {
    m.verdicts.inc({ direction: "ingress", verdict: "deny" }, 3);
    m.verdicts.inc({ direction: "egress", verdict: "deny" }, 2);
    m.verdicts.inc({ direction: "ingress", verdict: "accept" }, 7);
  });
  assert.equal(m.value("kube_netpol_verdicts_total", { direction: "ingress", verdict: "deny" }), 3);
  assert.equal(m.value("kube_netpol_verdicts_total", { verdict: "deny" }), 5);
  assert.equal(m.value("kube_netpol_verdicts_total"), 12);
  assert.equal(m.value("kube_netpol_verdicts_total", { verdict: "drop" }), 0, "no such sample");
  assert.ok(m.text.includes("# HELP kube_netpol_verdicts_total"), "the text is kept as read");
});

Deno.test("lab metrics: a labelled counter never counted reads 0, a gauge its value", async () => {
  const m = await scrapeOf((m) => m.invalidObjects.set(2));
  assert.equal(m.value("kube_netpol_http_header_timeouts_total"), 0);
  assert.equal(m.value("kube_netpol_http_connections_rejected_total", { reason: "limit" }), 0);
  assert.equal(m.value("kube_netpol_invalid_objects"), 2);
});

Deno.test("lab metrics: names match exactly; a histogram's _count and _sum are their own", async () => {
  const m = await scrapeOf((m) => {
    m.ruleSyncDuration.observe({ backend: "iptables" }, 0.25);
    m.ruleSyncDuration.observe({ backend: "iptables" }, 0.5);
  });
  assert.equal(m.value("kube_netpol_rule_sync_duration_seconds_count"), 2);
  assert.equal(m.value("kube_netpol_rule_sync_duration_seconds_sum"), 0.75);
  assert.equal(m.value("kube_netpol_rule_sync_duration_seconds"), 0, "no sample of that name");
  assert.equal(
    m.value("kube_netpol_rule_sync_duration_seconds_bucket", { le: "+Inf" }),
    2,
    "the +Inf bucket, found by its label",
  );
});

Deno.test("lab metrics: escaped label values, special values, lines that are no sample", () => {
  const samples = parseMetrics([
    "# HELP x_total a counter",
    "# TYPE x_total counter",
    'x_total{path="/a\\"b",note="two\\\\lines\\n"} 4',
    'y_bucket{le="+Inf"} +Inf',
    "z 1.5e3 1700000000000",
    "not a sample line",
    "",
  ].join("\n"));
  assert.deepEqual(samples, [
    { name: "x_total", labels: { path: '/a"b', note: "two\\lines\n" }, value: 4 },
    { name: "y_bucket", labels: { le: "+Inf" }, value: Infinity },
    { name: "z", labels: {}, value: 1500 },
  ]);
});
