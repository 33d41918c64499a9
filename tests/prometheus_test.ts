/**
 * Our Prometheus client (src/prometheus.ts): the text exposition format scrapers and promtool
 * read, in the shapes prom-client wrote before it (label order, `le` first, always-present
 * unlabelled metrics), and a summary whose memory stays bounded over its sliding window.
 */
import assert from "node:assert/strict";
import { Counter, Gauge, Histogram, Registry, Summary } from "../src/prometheus.ts";

Deno.test("counters and gauges: HELP/TYPE, labels in declared order, escaping, unlabelled at 0", async () => {
  const r = new Registry();
  const c = new Counter({
    name: "a_total",
    help: "first line\nsecond \\ line",
    labelNames: ["direction", "verdict"] as const,
    registers: [r],
  });
  const plain = new Counter({ name: "b_total", help: "plain", registers: [r] });
  const g = new Gauge({ name: "g", help: "gauge", labelNames: ["kind"] as const, registers: [r] });
  c.inc({ verdict: "deny", direction: "egress" }, 2);
  c.labels("ingress", "allow").inc();
  g.set({ kind: 'we"ird\\' }, 1.5);
  g.labels({ kind: "x" }).set(-Infinity);
  assert.equal(
    await r.metrics(),
    [
      "# HELP a_total first line\\nsecond \\\\ line",
      "# TYPE a_total counter",
      'a_total{direction="egress",verdict="deny"} 2',
      'a_total{direction="ingress",verdict="allow"} 1',
      "",
      "# HELP b_total plain",
      "# TYPE b_total counter",
      "b_total 0",
      "",
      "# HELP g gauge",
      "# TYPE g gauge",
      'g{kind="we\\"ird\\\\"} 1.5',
      'g{kind="x"} -Inf',
      "",
    ].join("\n"),
  );
  assert.throws(() => plain.inc(-1), /cannot decrease/);
  assert.throws(() => c.inc({ nope: "x" } as never), /has no label nope/);
  const json = await r.getMetricsAsJSON();
  assert.deepEqual(json.find((m) => m.name === "b_total")?.values, [{ labels: {}, value: 0 }]);
  c.reset();
  assert.deepEqual((await c.get()).values, []);
});

Deno.test("histogram: cumulative buckets with le first, +Inf, sum and count", async () => {
  const r = new Registry();
  const h = new Histogram({
    name: "h",
    help: "h",
    labelNames: ["verdict"] as const,
    buckets: [10, 5],
    registers: [r],
  });
  h.labels({ verdict: "allow" }).observe(3);
  h.observe({ verdict: "allow" }, 7);
  h.observe({ verdict: "allow" }, 70);
  assert.equal(
    await r.getSingleMetricAsString("h"),
    [
      "# HELP h h",
      "# TYPE h histogram",
      'h_bucket{le="5",verdict="allow"} 1',
      'h_bucket{le="10",verdict="allow"} 2',
      'h_bucket{le="+Inf",verdict="allow"} 3',
      'h_sum{verdict="allow"} 80',
      'h_count{verdict="allow"} 3',
    ].join("\n"),
  );
});

Deno.test("summary: quantiles over the window only; memory bounded; sum and count exact", async () => {
  const clock = { now: 0 };
  const s = new Summary({
    name: "s",
    help: "s",
    percentiles: [0.5, 0.99],
    maxAgeSeconds: 10,
    ageBuckets: 2,
    samplesPerBucket: 100,
    now: () => clock.now,
  });
  for (let i = 1; i <= 1000; i++) s.observe(i);
  const first = await s.get();
  const q = (v: typeof first) => v.values.filter((x) => "quantile" in x.labels).map((x) => x.value);
  const [p50, p99] = q(first);
  // A uniform sample of 1..1000 (100 kept): the median lands well inside, p99 near the top.
  assert.ok(p50! > 300 && p50! < 700, `p50 ${p50}`);
  assert.ok(p99! > 900, `p99 ${p99}`);
  clock.now = 6_000; // a new age bucket
  for (let i = 0; i < 10; i++) s.observe(5);
  clock.now = 11_000; // the first bucket (started at 0) has aged out
  const later = await s.get();
  assert.deepEqual(q(later), [5, 5]);
  const sum = later.values.find((x) => x.metricName === "s_sum")?.value;
  const count = later.values.find((x) => x.metricName === "s_count")?.value;
  assert.deepEqual([sum, count], [500_500 + 50, 1010]);
});

Deno.test("registry: one name once; collect callbacks run before reading", async () => {
  const r = new Registry();
  let calls = 0;
  const gauges: Gauge[] = [];
  gauges.push(
    new Gauge({
      name: "x",
      help: "x",
      registers: [r],
      collect: () => {
        calls++;
        gauges[0]!.set(42);
      },
    }),
  );
  assert.match(await r.metrics(), /^x 42$/m);
  assert.equal(calls, 1);
  assert.throws(() => new Counter({ name: "x", help: "again", registers: [r] }), /already/);
});
