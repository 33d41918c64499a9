/**
 * Our metrics follow the Prometheus conventions that `promtool check metrics` (promlint) checks,
 * except the seven names kept from the original project for users' dashboards, which stay as they
 * were on purpose. The rules below are promlint's (Prometheus 2.42); running promtool itself on
 * this machine over the same exposition flagged exactly these three seed names:
 *   nfqueue_queue_total (gauge with _total), packet_count (counter without _total, "_count"
 *   suffix), packet_process_duration_microseconds (not a base unit).
 */
import assert from "node:assert/strict";
import { AgentMetrics } from "../src/metrics.ts";

/** The original project's names (README "Metrics"): exempt from the conventions. */
const SEED_NAMES = new Set([
  "packet_process_time",
  "packet_process_duration_microseconds",
  "packet_count",
  "nfqueue_queue_total",
  "nfqueue_queue_dropped",
  "nfqueue_user_dropped",
  "nfqueue_packet_id",
]);

const NON_BASE_UNITS = [
  "microseconds",
  "milliseconds",
  "nanoseconds",
  "minutes",
  "hours",
  "days",
  "weeks",
  "kilobytes",
  "megabytes",
  "gigabytes",
  "kilometers",
  "millimeters",
  "centimeters",
  "grams",
  "kilograms",
  "fahrenheit",
  "celsius",
  "percent",
];

interface Family {
  name: string;
  type: string;
  help: string;
}

/** Every metric with one sample, so the exposition lists every family. */
async function exposition(): Promise<string> {
  const m = new AgentMetrics();
  for (const metric of m.registry.getMetricsAsArray()) {
    const x = metric as unknown as {
      labelNames?: string[];
      observe?: (l: object, v: number) => void;
      set?: (l: object, v: number) => void;
      inc?: (l: object, v: number) => void;
    };
    const labels = Object.fromEntries((x.labelNames ?? []).map((n) => [n, "x"]));
    if (x.observe) x.observe(labels, 1);
    else if (x.set) x.set(labels, 1);
    else x.inc?.(labels, 1);
  }
  return await m.registry.metrics();
}

function families(text: string): Family[] {
  const help = new Map<string, string>();
  const out: Family[] = [];
  for (const line of text.split("\n")) {
    const h = /^# HELP (\S+) (.*)$/.exec(line);
    if (h) help.set(h[1]!, h[2]!);
    const t = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (t) out.push({ name: t[1]!, type: t[2]!, help: help.get(t[1]!) ?? "" });
  }
  return out;
}

/** promlint's findings for one family. */
function lint(f: Family): string[] {
  const problems: string[] = [];
  if (f.help.trim() === "") problems.push("no help text");
  if (f.type === "counter" && !f.name.endsWith("_total")) problems.push('counter without "_total"');
  if (f.type !== "counter" && f.name.endsWith("_total")) problems.push('non-counter with "_total"');
  if (f.type !== "histogram" && f.type !== "summary" && /_(count|sum|bucket)$/.test(f.name)) {
    problems.push('"_count", "_sum" or "_bucket" suffix on a plain metric');
  }
  for (const unit of NON_BASE_UNITS) {
    if (f.name.split("_").includes(unit)) problems.push(`non-base unit "${unit}"`);
  }
  if (/[A-Z]/.test(f.name)) problems.push("camelCase name");
  return problems.map((p) => `${f.name}: ${p}`);
}

Deno.test("metrics: every metric but the seed names passes promtool's lint rules", async () => {
  const all = families(await exposition());
  const registered = new AgentMetrics().registry.getMetricsAsArray().length;
  assert.equal(all.length, registered, "the exposition lists every metric family");
  const problems = all.filter((f) => !SEED_NAMES.has(f.name)).flatMap(lint);
  assert.deepEqual(problems, []);
});

Deno.test("metrics: the lint rules catch what promtool flagged in the seed names", async () => {
  const seed = families(await exposition()).filter((f) => SEED_NAMES.has(f.name));
  assert.equal(seed.length, SEED_NAMES.size, "every seed name is still exported");
  assert.deepEqual(seed.flatMap(lint).sort(), [
    'nfqueue_queue_total: non-counter with "_total"',
    'packet_count: "_count", "_sum" or "_bucket" suffix on a plain metric',
    'packet_count: counter without "_total"',
    'packet_process_duration_microseconds: non-base unit "microseconds"',
  ]);
});

Deno.test("metrics: process and build metrics are exported under their conventional names", async () => {
  const names = new Set(families(await exposition()).map((f) => f.name));
  for (
    const n of [
      "process_resident_memory_bytes",
      "process_cpu_seconds_total",
      "process_open_fds",
      "process_max_fds",
      "kube_netpol_build_info",
    ]
  ) assert.ok(names.has(n), n);
});
