/**
 * The few Prometheus metric types the agent exports, written in the text exposition format (0.0.4)
 * by our own small code. It replaces the prom-client package, which cost the agent some 12 MB of
 * memory just to import (it pulls in Node's cluster and perf_hooks compatibility), with the same
 * calls metrics.ts makes: Counter, Gauge, Histogram, Summary and a Registry.
 *
 * Conventions kept from prom-client, which dashboards and our tests rely on: labels in the order
 * of `labelNames` (a histogram's `le` first), a metric without labels starts at 0 and is always
 * printed, one with labels only once a label set was used, numbers as JavaScript prints them
 * (`+Inf`, `-Inf`, `NaN` spelled as Prometheus wants).
 */

export type LabelValues<T extends string = string> = Partial<Record<T, string | number>>;

export interface MetricJSON {
  name: string;
  help: string;
  type: string;
  values: { labels: Record<string, string | number>; value: number; metricName?: string }[];
}

interface MetricOptions<T extends string> {
  name: string;
  help: string;
  labelNames?: readonly T[];
  registers?: Registry[];
  /** Called before the metric is read (e.g. to set a gauge from current state). */
  collect?: () => void;
}

interface Sample {
  suffix: string;
  labels: Record<string, string | number>;
  value: number;
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatValue(v: number): string {
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  if (Number.isNaN(v)) return "NaN";
  return String(v);
}

abstract class Metric<T extends string> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly T[];
  private readonly collectFn?: () => void;
  abstract readonly type: string;

  constructor(o: MetricOptions<T>) {
    this.name = o.name;
    this.help = o.help;
    this.labelNames = o.labelNames ?? [];
    this.collectFn = o.collect;
    for (const r of o.registers ?? []) r.register(this);
  }

  /** One key per label set: the values in labelNames order. */
  protected keyOf(labels: LabelValues<T> | undefined): string {
    if (!labels) return "";
    for (const k of Object.keys(labels)) {
      if (!this.labelNames.includes(k as T)) {
        throw new Error(`metric ${this.name} has no label ${k}`);
      }
    }
    return this.labelNames.map((n) => String(labels[n] ?? "")).join("\u0000");
  }

  protected labelsOf(labels: LabelValues<T> | undefined): Record<string, string | number> {
    const out: Record<string, string | number> = {};
    for (const n of this.labelNames) if (labels?.[n] !== undefined) out[n] = labels[n]!;
    return out;
  }

  /** Positional label values (prom-client's `labels("a", "b")`) or one object. */
  protected labelArgs(args: (string | number | LabelValues<T>)[]): LabelValues<T> {
    if (args.length === 1 && typeof args[0] === "object") return args[0] as LabelValues<T>;
    const out: LabelValues<T> = {};
    this.labelNames.forEach((n, i) => {
      if (args[i] !== undefined) out[n] = args[i] as string | number;
    });
    return out;
  }

  abstract samples(): Sample[];

  collect(): void {
    this.collectFn?.();
  }

  text(): string {
    this.collect();
    const lines = [
      `# HELP ${this.name} ${escapeHelp(this.help)}`,
      `# TYPE ${this.name} ${this.type}`,
    ];
    for (const s of this.samples()) {
      const pairs = Object.entries(s.labels).map(([k, v]) => `${k}="${escapeLabel(String(v))}"`);
      const labels = pairs.length ? `{${pairs.join(",")}}` : "";
      lines.push(`${this.name}${s.suffix}${labels} ${formatValue(s.value)}`);
    }
    return lines.join("\n");
  }

  /** The metric's current values (prom-client's `get()`). */
  get(): Promise<MetricJSON> {
    return Promise.resolve(this.json());
  }

  json(): MetricJSON {
    this.collect();
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      values: this.samples().map((s) => ({
        labels: s.labels,
        value: s.value,
        ...(s.suffix ? { metricName: this.name + s.suffix } : {}),
      })),
    };
  }
}

/** Counters and gauges: one number per label set. */
abstract class ValueMetric<T extends string> extends Metric<T> {
  protected readonly values = new Map<
    string,
    { labels: Record<string, string | number>; value: number }
  >();

  constructor(o: MetricOptions<T>) {
    super(o);
    if (this.labelNames.length === 0) this.values.set("", { labels: {}, value: 0 });
  }

  protected entry(labels: LabelValues<T> | undefined) {
    const key = this.keyOf(labels);
    let e = this.values.get(key);
    if (!e) this.values.set(key, e = { labels: this.labelsOf(labels), value: 0 });
    return e;
  }

  /** Forget every label set (and zero the unlabelled value). */
  reset(): void {
    this.values.clear();
    if (this.labelNames.length === 0) this.values.set("", { labels: {}, value: 0 });
  }

  samples(): Sample[] {
    return [...this.values.values()].map((e) => ({ suffix: "", labels: e.labels, value: e.value }));
  }
}

export class Counter<T extends string = string> extends ValueMetric<T> {
  readonly type = "counter";

  inc(labels?: LabelValues<T> | number, n?: number): void {
    const [l, by] = typeof labels === "number" || labels === undefined
      ? [undefined, labels ?? 1]
      : [labels, n ?? 1];
    if (by < 0 || Number.isNaN(by)) throw new Error(`counter ${this.name} cannot decrease`);
    this.entry(l).value += by;
  }

  labels(...args: (string | number | LabelValues<T>)[]): { inc(n?: number): void } {
    const l = this.labelArgs(args);
    return { inc: (n = 1) => this.inc(l, n) };
  }
}

export class Gauge<T extends string = string> extends ValueMetric<T> {
  readonly type = "gauge";

  set(labels: LabelValues<T> | number, value?: number): void {
    if (typeof labels === "number") this.entry(undefined).value = labels;
    else this.entry(labels).value = value ?? 0;
  }

  inc(labels?: LabelValues<T> | number, n?: number): void {
    if (typeof labels === "number" || labels === undefined) {
      this.entry(undefined).value += labels ?? 1;
    } else this.entry(labels).value += n ?? 1;
  }

  dec(labels?: LabelValues<T> | number, n?: number): void {
    if (typeof labels === "number" || labels === undefined) {
      this.entry(undefined).value -= labels ?? 1;
    } else this.entry(labels).value -= n ?? 1;
  }

  labels(...args: (string | number | LabelValues<T>)[]): {
    set(v: number): void;
    inc(n?: number): void;
    dec(n?: number): void;
  } {
    const l = this.labelArgs(args);
    return {
      set: (v) => this.set(l, v),
      inc: (n = 1) => this.inc(l, n),
      dec: (n = 1) => this.dec(l, n),
    };
  }
}

interface HistogramOptions<T extends string> extends MetricOptions<T> {
  buckets?: number[];
}

const DEFAULT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Histogram<T extends string = string> extends Metric<T> {
  readonly type = "histogram";
  private readonly buckets: number[];
  private readonly series = new Map<
    string,
    { labels: Record<string, string | number>; counts: number[]; sum: number; count: number }
  >();

  constructor(o: HistogramOptions<T>) {
    super(o);
    this.buckets = [...(o.buckets ?? DEFAULT_BUCKETS)].sort((a, b) => a - b);
    if (this.labelNames.length === 0) this.seriesOf(undefined);
  }

  private seriesOf(labels: LabelValues<T> | undefined) {
    const key = this.keyOf(labels);
    let s = this.series.get(key);
    if (!s) {
      s = {
        labels: this.labelsOf(labels),
        counts: this.buckets.map(() => 0),
        sum: 0,
        count: 0,
      };
      this.series.set(key, s);
    }
    return s;
  }

  observe(labels: LabelValues<T> | number, value?: number): void {
    const [l, v] = typeof labels === "number" ? [undefined, labels] : [labels, value ?? 0];
    const s = this.seriesOf(l);
    for (let i = 0; i < this.buckets.length; i++) if (v <= this.buckets[i]!) s.counts[i]!++;
    s.sum += v;
    s.count++;
  }

  labels(...args: (string | number | LabelValues<T>)[]): { observe(v: number): void } {
    const l = this.labelArgs(args);
    const s = this.seriesOf(l);
    return {
      observe: (v) => {
        for (let i = 0; i < this.buckets.length; i++) if (v <= this.buckets[i]!) s.counts[i]!++;
        s.sum += v;
        s.count++;
      },
    };
  }

  reset(): void {
    this.series.clear();
    if (this.labelNames.length === 0) this.seriesOf(undefined);
  }

  samples(): Sample[] {
    const out: Sample[] = [];
    for (const s of this.series.values()) {
      this.buckets.forEach((le, i) => {
        out.push({ suffix: "_bucket", labels: { le, ...s.labels }, value: s.counts[i]! });
      });
      out.push({ suffix: "_bucket", labels: { le: "+Inf", ...s.labels }, value: s.count });
      out.push({ suffix: "_sum", labels: s.labels, value: s.sum });
      out.push({ suffix: "_count", labels: s.labels, value: s.count });
    }
    return out;
  }
}

interface SummaryOptions<T extends string> extends MetricOptions<T> {
  percentiles?: number[];
  /** Quantiles cover the last maxAgeSeconds (in ageBuckets rotating windows); 0: forever. */
  maxAgeSeconds?: number;
  ageBuckets?: number;
  /** Samples kept per window at most (a uniform sample of the window beyond that). */
  samplesPerBucket?: number;
  /** Milliseconds, monotonic; for tests. */
  now?: () => number;
}

/**
 * Quantiles over a sliding window, from a bounded uniform sample of each age bucket (reservoir
 * sampling): exact until a window holds more than `samplesPerBucket` observations, then an
 * estimate, with memory fixed whatever the rate. `_sum` and `_count` are exact and cumulative.
 */
export class Summary<T extends string = string> extends Metric<T> {
  readonly type = "summary";
  private readonly percentiles: number[];
  private readonly bucketMs: number;
  private readonly ageBuckets: number;
  private readonly cap: number;
  private readonly now: () => number;
  private windows: { start: number; samples: number[]; seen: number }[] = [];
  private sum = 0;
  private count = 0;

  constructor(o: SummaryOptions<T>) {
    super(o);
    this.percentiles = o.percentiles ?? [0.01, 0.05, 0.5, 0.9, 0.95, 0.99, 0.999];
    this.ageBuckets = Math.max(1, o.ageBuckets ?? 5);
    this.bucketMs = (o.maxAgeSeconds ?? 0) * 1000 / this.ageBuckets;
    this.cap = o.samplesPerBucket ?? 1024;
    this.now = o.now ?? (() => performance.now());
  }

  private current() {
    const now = this.now();
    let w = this.windows[this.windows.length - 1];
    if (!w || (this.bucketMs > 0 && now - w.start >= this.bucketMs)) {
      w = { start: now, samples: [], seen: 0 };
      this.windows.push(w);
    }
    this.expire(now);
    return w;
  }

  /** Windows that started more than maxAgeSeconds ago are gone (at most ageBuckets remain). */
  private expire(now: number): void {
    if (this.bucketMs <= 0) return;
    const maxAgeMs = this.bucketMs * this.ageBuckets;
    while (
      this.windows.length &&
      (this.windows[0]!.start + maxAgeMs <= now || this.windows.length > this.ageBuckets)
    ) this.windows.shift();
  }

  observe(value: number): void {
    const w = this.current();
    w.seen++;
    if (w.samples.length < this.cap) w.samples.push(value);
    else {
      const j = Math.floor(Math.random() * w.seen);
      if (j < this.cap) w.samples[j] = value;
    }
    this.sum += value;
    this.count++;
  }

  reset(): void {
    this.windows = [];
    this.sum = 0;
    this.count = 0;
  }

  samples(): Sample[] {
    this.expire(this.now());
    const all = this.windows.flatMap((w) => w.samples).sort((a, b) => a - b);
    const out: Sample[] = this.percentiles.map((q) => ({
      suffix: "",
      labels: { quantile: q },
      value: all.length ? all[Math.min(all.length - 1, Math.floor(q * all.length))]! : 0,
    }));
    out.push({ suffix: "_sum", labels: {}, value: this.sum });
    out.push({ suffix: "_count", labels: {}, value: this.count });
    return out;
  }
}

export class Registry {
  readonly contentType = "text/plain; version=0.0.4; charset=utf-8";
  private readonly list: Metric<string>[] = [];

  register(metric: Metric<string>): void {
    if (this.list.some((m) => m.name === metric.name)) {
      throw new Error(`a metric named ${metric.name} is already registered`);
    }
    this.list.push(metric);
  }

  metrics(): Promise<string> {
    return Promise.resolve(this.list.map((m) => m.text()).join("\n\n") + "\n");
  }

  getSingleMetricAsString(name: string): Promise<string> {
    const m = this.list.find((x) => x.name === name);
    return Promise.resolve(m ? m.text() : "");
  }

  getMetricsAsJSON(): Promise<MetricJSON[]> {
    return Promise.resolve(this.list.map((m) => m.json()));
  }
}
