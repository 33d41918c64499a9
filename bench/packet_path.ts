/**
 * Packet-path benchmark (performance issues §1 and §2): new TCP connections per second and
 * connect() latency from a client pod netns to a server pod netns through a node netns, the same
 * flow (client, server, port 80) repeated, for
 *   none       no queue rule (the kernel alone),
 *   cache      the product's iptables rules with the kernel verdict cache and the VerdictLoop
 *              that fills it: the first connection is judged, the rest answered in the kernel,
 *   deno       kube-netpol's VerdictLoop judging every first packet (policy selects the server
 *              and allows the client), cache off, batching up to 64 verdicts per send,
 *   c          the minimal C loop of nfq_reference.c (libnetfilter_queue, one verdict per packet),
 * and with `--contenders all` also
 *   deno-b1    the loop answering each packet with its own send (no batching),
 *   deno-2q    two loops on two queues, flows spread by the kernel (--queue-balance).
 * Contenders alternate within each round, so drift (thermal, noisy neighbours) hits all alike.
 * The client and server are small C programs built here, so the load generator is not the limit.
 * Last, with the cache loop: how long a state change takes to be in force, cache emptied
 * (posted to the loop -> worker applied it and flushed the cache, as the loop reports it).
 *
 *   deno run --frozen -A bench/packet_path.ts [--json] [--rounds N] [--seconds S]
 *            [--contenders all|name,name,...]
 *
 * Needs root (network namespaces), gcc and libnetfilter-queue-dev. Nothing outside the lab's
 * namespaces is touched.
 */
import { cleanupStaleLabs, createLab, type Lab } from "../e2e/lab/topology.ts";
import { flushQueueRules, installQueueRules, productRules, VlAgent } from "../e2e/lab/vl_driver.ts";
import type { IptablesBackend } from "../src/rules/iptables.ts";
import type { StateEvent } from "../src/state/events.ts";

const CLIENT_C = String.raw`
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in dst;
static int threads, duration_ms;
static double interval_ns; /* per thread, 0 = as fast as possible */
typedef struct { long n, errors; unsigned *lat; long cap; } result_t;

static long now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000L + t.tv_nsec; }

static void *client(void *arg) {
  result_t *r = arg;
  long start = now_ns(), end = start + (long)duration_ms * 1000000L, next = start;
  struct linger lg = {1, 0}; /* close with RST: no TIME_WAIT, ports never run out */
  while (now_ns() < end) {
    if (interval_ns > 0) {
      next += (long)interval_ns;
      struct timespec ts = {next / 1000000000L, next % 1000000000L};
      clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { r->errors++; continue; }
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    long t0 = now_ns();
    int rc = connect(fd, (struct sockaddr *)&dst, sizeof dst);
    long t1 = now_ns();
    if (rc == 0) { if (r->n < r->cap) r->lat[r->n] = (unsigned)((t1 - t0) / 1000); r->n++; }
    else r->errors++;
    close(fd);
  }
  return NULL;
}

static int cmp(const void *a, const void *b) { unsigned x = *(const unsigned *)a, y = *(const unsigned *)b; return x < y ? -1 : x > y; }

static void *server(void *arg) {
  int lfd = *(int *)arg;
  for (;;) { int fd = accept(lfd, NULL, NULL); if (fd >= 0) close(fd); }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc >= 3 && !strcmp(argv[1], "serve")) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 4096)) { perror("serve"); return 1; }
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, server, &lfd);
    printf("ready\n"); fflush(stdout);
    pthread_join(t[0], NULL);
    return 0;
  }
  if (argc < 6) { fprintf(stderr, "usage: client <ip> <port> <threads> <ms> <rate|0> | serve <port>\n"); return 2; }
  dst.sin_family = AF_INET; dst.sin_port = htons(atoi(argv[2]));
  inet_pton(AF_INET, argv[1], &dst.sin_addr);
  threads = atoi(argv[3]); duration_ms = atoi(argv[4]);
  double rate = atof(argv[5]);
  interval_ns = rate > 0 ? 1e9 * threads / rate : 0;
  pthread_t t[64]; result_t r[64];
  for (int i = 0; i < threads; i++) {
    r[i] = (result_t){0, 0, malloc(sizeof(unsigned) * 4000000), 4000000};
    pthread_create(&t[i], NULL, client, &r[i]);
  }
  long n = 0, errors = 0, k = 0;
  for (int i = 0; i < threads; i++) { pthread_join(t[i], NULL); n += r[i].n; errors += r[i].errors; }
  unsigned *all = malloc(sizeof(unsigned) * (n ? n : 1));
  for (int i = 0; i < threads; i++) for (long j = 0; j < r[i].n && j < r[i].cap; j++) all[k++] = r[i].lat[j];
  qsort(all, k, sizeof *all, cmp);
  printf("{\"connections\":%ld,\"errors\":%ld,\"seconds\":%.3f,\"p50_us\":%u,\"p99_us\":%u}\n", n, errors,
         duration_ms / 1000.0, k ? all[k / 2] : 0, k ? all[(long)(k * 0.99)] : 0);
  return 0;
}
`;

interface Phase {
  name: string;
  threads: number;
  /** Connections per second in total; 0 = as fast as possible. */
  rate: number;
}

const PHASES: Phase[] = [
  { name: "1 thread", threads: 1, rate: 0 },
  { name: "2 threads", threads: 2, rate: 0 },
  { name: "~1000 conn/s", threads: 1, rate: 1000 },
];
const ALL_CONTENDERS = ["none", "cache", "deno", "c", "deno-b1", "deno-2q"] as const;
type Contender = (typeof ALL_CONTENDERS)[number];
const DEFAULT_CONTENDERS: Contender[] = ["none", "cache", "deno", "c"];
const QUEUES: Record<Exclude<Contender, "none">, number> = {
  deno: 3101,
  "deno-b1": 3102,
  c: 3103,
  // Two loops, on 3104 and 3105, flows spread between them by the kernel (--queue-balance).
  "deno-2q": 3104,
  cache: 3106,
};
const CACHE = { mark: 0x200000, timeoutSeconds: 60, maxEntries: 65536, denies: true };
const MARK = 0x100000;
const NODE = "bench-node";

interface Sample {
  connections: number;
  errors: number;
  seconds: number;
  p50_us: number;
  p99_us: number;
}

function arg(name: string, dflt: number): number {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Number(Deno.args[i + 1]) : dflt;
}

async function build(dir: string): Promise<{ client: string; reference: string }> {
  const client = `${dir}/conn_client`;
  const reference = `${dir}/nfq_reference`;
  await Deno.writeTextFile(`${client}.c`, CLIENT_C);
  const gcc = async (args: string[]) => {
    const r = await new Deno.Command("gcc", { args, stderr: "piped" }).output();
    if (!r.success) throw new Error(`gcc ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  };
  await gcc(["-O2", "-o", client, `${client}.c`, "-lpthread"]);
  await gcc([
    "-O2",
    "-o",
    reference,
    new URL("./nfq_reference.c", import.meta.url).pathname,
    "-lnetfilter_queue",
  ]);
  return { client, reference };
}

async function waitLine(child: Deno.ChildProcess, text: string): Promise<void> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const deadline = Date.now() + 10_000;
  while (!buf.includes(text)) {
    if (Date.now() > deadline) throw new Error(`no "${text}" within 10 s`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`exited before "${text}"`);
    buf += value;
  }
  reader.releaseLock();
}

async function route(
  lab: Lab,
  contender: Contender,
  serverIP: string,
  product: IptablesBackend,
): Promise<void> {
  await flushQueueRules(lab);
  if (contender === "none") return;
  // The product's chain (re-hooked; install also starts the verdict cache empty).
  if (contender === "cache") return await product.install();
  await installQueueRules(lab, {
    queueId: QUEUES[contender],
    denyMark: MARK,
    dst: serverIP,
    queues: contender === "deno-2q" ? 2 : 1,
  });
}

function contendersArg(): Contender[] {
  const i = Deno.args.indexOf("--contenders");
  if (i < 0) return DEFAULT_CONTENDERS;
  const text = Deno.args[i + 1] ?? "";
  if (text === "all") return [...ALL_CONTENDERS];
  const list = text.split(",").filter(Boolean) as Contender[];
  const bad = list.filter((c) => !ALL_CONTENDERS.includes(c));
  if (bad.length) throw new Error(`unknown contenders ${bad.join(",")} (${ALL_CONTENDERS})`);
  return list;
}

type Fig = { connPerSec: number; p50Us: number; p99Us: number; errors: number };

interface Ratios {
  cacheOverNone: number;
  denoOverNone: number;
  denoOverC: number;
  unbatchedOverC: number;
  twoQueuesOverC: number;
  addedP50UsCache: number;
  addedP50UsDeno: number;
  addedP50UsC: number;
}

export interface PacketPathReport {
  rounds: number;
  seconds: number;
  contenders: Contender[];
  /** phase -> contender -> medians over rounds. */
  summary: Record<string, Partial<Record<Contender, Fig>>>;
  ratios: Record<string, Ratios>;
  /** A state change posted to the cache loop until it is applied and the cache emptied. */
  change?: { p50Ms: number; p99Ms: number; maxMs: number };
  results: Record<string, Partial<Record<Contender, Sample[]>>>;
}

export function formatPacketPath(r: PacketPathReport): string {
  const { contenders, summary, ratios, change } = r;
  const lines = [
    `Packet path: new TCP connections/s and connect() p50/p99 us, one flow repeated ` +
    `(medians of ${r.rounds} rounds x ${r.seconds} s, contenders alternating)`,
  ];
  const x = (v: number) => Number.isNaN(v) ? "-" : `${v.toFixed(2)}x`;
  const us = (v: number) => Number.isNaN(v) ? "-" : `+${v} us`;
  for (const [phase, s] of Object.entries(summary)) {
    const line = contenders.map((c) => `${c} ${s[c]!.connPerSec} (${s[c]!.p50Us}/${s[c]!.p99Us})`);
    const q = ratios[phase]!;
    lines.push(`  ${phase.padEnd(13)} ${line.join("  ")}`);
    lines.push(
      `  ${"".padEnd(13)} cache/none ${x(q.cacheOverNone)}  deno/c ${x(q.denoOverC)}` +
        (contenders.includes("deno-b1") ? `  deno-b1/c ${x(q.unbatchedOverC)}` : "") +
        (contenders.includes("deno-2q") ? `  deno-2q/c ${x(q.twoQueuesOverC)}` : ""),
    );
    lines.push(
      `  ${"".padEnd(13)} added p50: cache ${us(q.addedP50UsCache)}, deno ${
        us(q.addedP50UsDeno)
      }, c ${us(q.addedP50UsC)}`,
    );
  }
  if (change) {
    lines.push(
      `  a state change in force, verdict cache emptied (20 changes, posted -> flushed): ` +
        `p50 ${change.p50Ms.toFixed(1)} ms, max ${change.maxMs.toFixed(1)} ms`,
    );
  }
  return lines.join("\n");
}

const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const pctl = (xs: number[], q: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))] ?? 0;

async function main(): Promise<void> {
  const json = Deno.args.includes("--json");
  const rounds = arg("--rounds", 2);
  const seconds = arg("--seconds", 2);
  const contenders = contendersArg();
  const say = (s: string) => json ? console.error(s) : console.log(s);
  const dir = await Deno.makeTempDir({ prefix: "knp-bench-" });
  const bin = await build(dir);
  await cleanupStaleLabs("knpvb");
  const lab = await createLab({
    prefix: "knpvb",
    pods: [
      { namespace: "b", name: "client", ip: "10.244.1.11" },
      { namespace: "b", name: "server", ip: "10.244.1.12" },
    ],
  });
  const agents: VlAgent[] = [];
  try {
    const server = lab.pod("b/server");
    const srv = lab.spawn(server.netns, [bin.client, "serve", "80"], { stdout: "piped" });
    await waitLine(srv, "ready");
    const ref = lab.spawn(lab.nodeNetns, [bin.reference, String(QUEUES.c)], { stdout: "piped" });
    await waitLine(ref, "ready");
    const policy = (fromApp: string): StateEvent => ({
      op: "upsert",
      kind: "NetworkPolicy",
      object: {
        metadata: { namespace: "b", name: "server" },
        spec: {
          podSelector: { matchLabels: { app: "server" } },
          ingress: [{ from: [{ podSelector: { matchLabels: { app: fromApp } } }] }],
        },
      },
    });
    const state: StateEvent[] = [
      { op: "upsert", kind: "Namespace", object: { metadata: { name: "b" } } },
      ...["client", "server"].map((name): StateEvent => ({
        op: "upsert",
        kind: "Pod",
        object: {
          metadata: { namespace: "b", name, labels: { app: name } },
          spec: { nodeName: NODE },
          status: { phase: "Running", podIP: lab.pod(`b/${name}`).ip },
        },
      })),
      policy("client"),
    ];
    const { backend: product, cache } = await productRules(lab, {
      queueId: QUEUES.cache,
      failOpen: false,
      denyMark: MARK,
      verdictCache: CACHE,
      ingress: [server.ip],
    });
    await flushQueueRules(lab);
    const loops: [number, Partial<Parameters<typeof VlAgent.start>[1]>][] = [
      [QUEUES.deno, { maxBatch: 64 }],
      [QUEUES["deno-b1"], { maxBatch: 1 }],
      [3104, { maxBatch: 64 }],
      [3105, { maxBatch: 64 }],
      [QUEUES.cache, { maxBatch: 64, verdictCache: cache }],
    ];
    let cacheAgent: VlAgent | undefined;
    for (const [queueId, extra] of loops) {
      const a = await VlAgent.start(lab, {
        queueId,
        nodeName: NODE,
        denyMark: MARK,
        failOpen: false,
        logAllows: false,
        ...extra,
      });
      agents.push(a);
      await a.apply(state);
      await a.markSynced();
      if (queueId === QUEUES.cache) cacheAgent = a;
    }

    const results: Record<string, Partial<Record<Contender, Sample[]>>> = {};
    const clientNs = lab.pod("b/client").netns;
    for (let r = 0; r < rounds; r++) {
      for (const phase of PHASES) {
        const per = results[phase.name] ??= {};
        for (const c of contenders) {
          await route(lab, c, server.ip, product);
          const out = await lab.exec(clientNs, [
            bin.client,
            server.ip,
            "80",
            String(phase.threads),
            String(seconds * 1000),
            String(phase.rate),
          ], { timeoutMs: seconds * 1000 + 15_000 });
          if (out.code !== 0) throw new Error(`client: ${out.stderr}`);
          const s = JSON.parse(out.stdout) as Sample;
          (per[c] ??= []).push(s);
          say(
            `round ${r + 1} ${phase.name.padEnd(13)} ${c.padEnd(9)} ${
              (s.connections / s.seconds).toFixed(0).padStart(6)
            } conn/s  p50 ${s.p50_us} us  p99 ${s.p99_us} us  errors ${s.errors}`,
          );
        }
      }
    }

    // How long a change takes to be in force with the cache: posted -> applied and flushed.
    const changeMs: number[] = [];
    if (cacheAgent && contenders.includes("cache")) {
      await route(lab, "cache", server.ip, product);
      for (let i = 0; i < 20; i++) {
        const t0 = performance.now();
        await cacheAgent.apply([policy(i % 2 ? "client" : "other")], { current: true });
        changeMs.push(performance.now() - t0);
      }
      await cacheAgent.apply([policy("client")], { current: true });
    }

    // Median over rounds of each figure.
    const summary: Record<string, Partial<Record<Contender, Fig>>> = Object.fromEntries(
      Object.entries(results).map(([phase, per]) => [
        phase,
        Object.fromEntries(contenders.map((c) => {
          const xs = per[c] ?? [];
          return [c, {
            connPerSec: Math.round(med(xs.map((s) => s.connections / s.seconds))),
            p50Us: med(xs.map((s) => s.p50_us)),
            p99Us: med(xs.map((s) => s.p99_us)),
            errors: xs.reduce((n, s) => n + s.errors, 0),
          }];
        })),
      ]),
    );
    const ratio = (a?: Fig, b?: Fig) => a && b && b.connPerSec ? a.connPerSec / b.connPerSec : NaN;
    const added = (a?: Fig, none?: Fig) => a && none ? a.p50Us - none.p50Us : NaN;
    const ratios = Object.fromEntries(
      Object.entries(summary).map(([phase, s]) => [phase, {
        cacheOverNone: ratio(s.cache, s.none),
        denoOverNone: ratio(s.deno, s.none),
        denoOverC: ratio(s.deno, s.c),
        unbatchedOverC: ratio(s["deno-b1"], s.c),
        twoQueuesOverC: ratio(s["deno-2q"], s.c),
        addedP50UsCache: added(s.cache, s.none),
        addedP50UsDeno: added(s.deno, s.none),
        addedP50UsC: added(s.c, s.none),
      }]),
    );
    const change = changeMs.length
      ? { p50Ms: pctl(changeMs, 0.5), p99Ms: pctl(changeMs, 0.99), maxMs: Math.max(...changeMs) }
      : undefined;
    const report: PacketPathReport = {
      rounds,
      seconds,
      contenders,
      summary,
      ratios,
      change,
      results,
    };
    say(formatPacketPath(report));
    if (json) console.log(JSON.stringify(report, null, 2));
  } finally {
    for (const a of agents) await a.stop().catch(() => {});
    await lab.destroy();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await main();
