/**
 * Engine at scale (performance issue §1): per-verdict time at 100/1,000/10,000 pods with
 * 10/500/5,000 policies, memory after loading, and the time to apply one policy change and one
 * pod label change at the largest size. Configurations are measured in alternating rounds so
 * machine noise hits them alike; medians of the rounds are reported.
 *
 *   deno run --allow-read --allow-env --v8-flags=--expose-gc bench/engine_bench.ts [--json]
 */
import { PolicyEngine } from "../src/policy/engine.ts";
import type { Connection } from "../src/policy/types.ts";
import type { Protocol } from "../src/net/protocol.ts";
import { generateCluster, prng } from "./cluster_gen.ts";

export interface EngineSizeResult {
  pods: number;
  policies: number;
  loadMs: number;
  /** What an agent does: connections touching one node's pods, judged for that node. */
  p50us: number;
  p99us: number;
  /** Worst case: random pairs over the whole cluster, both sides judged. */
  clusterP50us: number;
  clusterP99us: number;
  /** Heap of an unscoped engine (every pod judged: simulate, the cluster view). */
  heapMB: number;
  /** Heap of an engine scoped to node-0, as the agent runs it (twice). */
  scopedHeapMB: number;
  rssMB: number;
}

export interface EngineBenchResult {
  sizes: EngineSizeResult[];
  ratioP99LargestToSmallest: number;
  ratioP50LargestToSmallest: number;
  policyChangeMs: number;
  podLabelChangeMs: number;
  timerOverheadUs: number;
}

const SIZES: [number, number][] = [[100, 10], [1000, 500], [10000, 5000]];
const VERDICTS_PER_ROUND = 20000;
const ROUNDS = 5;

function gc() {
  (globalThis as { gc?: () => void }).gc?.();
}

function fill(engine: PolicyEngine, c: ReturnType<typeof generateCluster>): PolicyEngine {
  for (const ns of c.namespaces) engine.upsertNamespace(ns);
  for (const p of c.pods) engine.upsertPod(p);
  for (const np of c.policies) {
    const errors = engine.upsertPolicy(np);
    if (errors.length) {
      throw new Error(`generator made an invalid policy: ${JSON.stringify(errors)}`);
    }
  }
  engine.prepare(); // build rule tables off the verdict path, as the verdict loop does
  return engine;
}

/** An engine scoped to node-0 (the agent's), timed, and an unscoped one for the cluster view. */
function load(pods: number, policies: number) {
  const c = generateCluster(pods, policies);
  gc();
  const h0 = Deno.memoryUsage().heapUsed;
  const t0 = performance.now();
  const scoped = fill(new PolicyEngine({ node: "node-0" }), c);
  const loadMs = performance.now() - t0;
  gc();
  const h1 = Deno.memoryUsage().heapUsed;
  const engine = fill(new PolicyEngine(), c);
  gc();
  const h2 = Deno.memoryUsage().heapUsed;
  return {
    engine,
    scoped,
    cluster: c,
    loadMs,
    scopedHeapMB: (h1 - h0) / 2 ** 20,
    heapMB: (h2 - h1) / 2 ** 20,
  };
}

/**
 * Connections as node-0's agent sees them: half inbound to one of its pods (from any pod or an
 * outside address), half outbound from one of its pods. Without `localIPs`, random pairs.
 */
function connections(ips: string[], n: number, seed: number, localIPs?: string[]): Connection[] {
  const rnd = prng(seed);
  const protos: [Protocol, number][] = [["TCP", 8080], ["TCP", 5432], ["TCP", 9090], ["UDP", 53], [
    "TCP",
    443,
  ], ["TCP", 8050]];
  const out: Connection[] = [];
  for (let i = 0; i < n; i++) {
    const [protocol, port] = protos[Math.floor(rnd() * protos.length)]!;
    let src = rnd() < 0.1
      ? `203.0.113.${Math.floor(rnd() * 250)}`
      : ips[Math.floor(rnd() * ips.length)]!;
    let dst = rnd() < 0.1
      ? `198.51.100.${Math.floor(rnd() * 250)}`
      : ips[Math.floor(rnd() * ips.length)]!;
    if (localIPs) {
      const local = localIPs[Math.floor(rnd() * localIPs.length)]!;
      if (i % 2 === 0) dst = local;
      else src = local;
    }
    out.push({ src, dst, protocol, port });
  }
  return out;
}

function percentile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function timerOverheadUs(): number {
  const d = new Float64Array(100000);
  for (let i = 0; i < d.length; i++) {
    const t0 = performance.now();
    d[i] = performance.now() - t0;
  }
  d.sort();
  return percentile(d, 0.5) * 1000;
}

/** Time each verdict on its own; returns [p50, p99] in microseconds, timer overhead removed. */
function timeVerdicts(
  engine: PolicyEngine,
  conns: Connection[],
  overheadUs: number,
  node?: string,
): [number, number] {
  const d = new Float64Array(conns.length);
  let sink = 0;
  for (let i = 0; i < conns.length; i++) {
    const t0 = performance.now();
    const r = engine.evaluate(conns[i]!, node);
    d[i] = performance.now() - t0;
    sink += r.verdict === "allow" ? 1 : 0;
  }
  if (sink < 0) console.log(sink);
  d.sort();
  return [
    Math.max(0, percentile(d, 0.5) * 1000 - overheadUs),
    Math.max(0, percentile(d, 0.99) * 1000 - overheadUs),
  ];
}

export function runEngineBench(): EngineBenchResult {
  const overheadUs = timerOverheadUs();
  // Largest first, so the process RSS right after it is the largest size's footprint alone.
  let rssLargestMB = 0;
  const loaded = [...SIZES].reverse().map(([pods, policies], i) => {
    const l = load(pods, policies);
    if (i === 0) rssLargestMB = Deno.memoryUsage().rss / 2 ** 20;
    return {
      ...l,
      pods,
      policies,
      conns: connections(l.cluster.podIPs, VERDICTS_PER_ROUND, pods),
      nodeConns: connections(
        l.cluster.podIPs,
        VERDICTS_PER_ROUND,
        pods + 1,
        l.cluster.pods.filter((p) => p.spec?.nodeName === "node-0").map((p) => p.status!.podIP!),
      ),
    };
  });
  loaded.reverse();
  const rssMB = rssLargestMB;
  // warm up every configuration, then alternate rounds
  for (const l of loaded) {
    timeVerdicts(l.engine, l.conns, overheadUs);
    timeVerdicts(l.scoped, l.nodeConns, overheadUs, "node-0");
  }
  const clusterP50s = loaded.map(() => [] as number[]);
  const clusterP99s = loaded.map(() => [] as number[]);
  const p50s = loaded.map(() => [] as number[]);
  const p99s = loaded.map(() => [] as number[]);
  for (let r = 0; r < ROUNDS; r++) {
    loaded.forEach((l, i) => {
      const [p50, p99] = timeVerdicts(l.scoped, l.nodeConns, overheadUs, "node-0");
      p50s[i]!.push(p50);
      p99s[i]!.push(p99);
      const [c50, c99] = timeVerdicts(l.engine, l.conns, overheadUs);
      clusterP50s[i]!.push(c50);
      clusterP99s[i]!.push(c99);
    });
  }
  const sizes: EngineSizeResult[] = loaded.map((l, i) => ({
    pods: l.pods,
    policies: l.policies,
    loadMs: l.loadMs,
    p50us: median(p50s[i]!),
    p99us: median(p99s[i]!),
    clusterP50us: median(clusterP50s[i]!),
    clusterP99us: median(clusterP99s[i]!),
    heapMB: l.heapMB,
    scopedHeapMB: l.scopedHeapMB,
    rssMB,
  }));

  // One policy change and one pod label change at the largest size.
  const largest = loaded[loaded.length - 1]!;
  const policyTimes: number[] = [];
  const labelTimes: number[] = [];
  for (let i = 0; i < 21; i++) {
    const np = structuredClone(largest.cluster.policies[i * 7]!);
    np.spec.ingress = [{
      from: [{ podSelector: { matchLabels: { app: `app-${i}` } } }],
      ports: [{ port: 80 + i }],
    }];
    let t0 = performance.now();
    largest.scoped.upsertPolicy(np);
    largest.scoped.prepare();
    policyTimes.push(performance.now() - t0);
    const pod = structuredClone(largest.cluster.pods[i * 13]!);
    pod.metadata.labels = { ...pod.metadata.labels, app: `app-${(i + 1) % 20}` };
    t0 = performance.now();
    largest.scoped.upsertPod(pod);
    largest.scoped.prepare();
    labelTimes.push(performance.now() - t0);
  }
  const first = sizes[0]!;
  const last = sizes[sizes.length - 1]!;
  return {
    sizes,
    ratioP99LargestToSmallest: last.p99us / Math.max(first.p99us, 1e-3),
    ratioP50LargestToSmallest: last.p50us / Math.max(first.p50us, 1e-3),
    policyChangeMs: median(policyTimes),
    podLabelChangeMs: median(labelTimes),
    timerOverheadUs: overheadUs,
  };
}

export function formatEngineBench(r: EngineBenchResult): string {
  const n = (x: number, d = 2) => x.toFixed(d).padStart(7);
  const lines = [
    "Engine at scale (per-verdict time in us, timer overhead removed; 100 pods per node)",
    "  node view: connections to/from node-0's pods, judged as node-0's agent does (an engine",
    "             scoped to node-0: 'node MB' is its heap, the agent holds two)",
    "  cluster:   random pod pairs across the cluster, both sides judged (worst case; an",
    "             unscoped engine: 'all MB')",
    "  pods    policies  load ms   node p50  node p99  cluster p50  cluster p99  node MB  all MB",
  ];
  for (const s of r.sizes) {
    lines.push(
      `  ${String(s.pods).padEnd(7)} ${String(s.policies).padEnd(9)} ${n(s.loadMs, 0)}  ${
        n(s.p50us)
      }   ${n(s.p99us)}   ${n(s.clusterP50us)}      ${n(s.clusterP99us)}  ${n(s.scopedHeapMB, 1)} ${
        n(s.heapMB, 1)
      }`,
    );
  }
  lines.push(
    `  process RSS with the largest size loaded (both engines + generator input): ${
      r.sizes[0]!.rssMB.toFixed(0)
    } MB`,
    `  node-view p99 largest/smallest: ${r.ratioP99LargestToSmallest.toFixed(2)} (p50: ${
      r.ratioP50LargestToSmallest.toFixed(2)
    })`,
    `  one policy change at the largest size (node-0's engine): ${
      r.policyChangeMs.toFixed(2)
    } ms (median of 21)`,
    `  one pod label change at the largest size: ${
      r.podLabelChangeMs.toFixed(3)
    } ms (median of 21)`,
  );
  return lines.join("\n");
}

if (import.meta.main) {
  const r = runEngineBench();
  console.log(Deno.args.includes("--json") ? JSON.stringify(r, null, 2) : formatEngineBench(r));
}
