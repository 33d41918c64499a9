/**
 * Packet-path benchmark (issue 6 §2): new TCP connections per second and connect() latency from
 * a client pod netns to a server pod netns through a node netns, for
 *   none       no queue rule (the kernel alone),
 *   deno       kube-netpol's VerdictLoop judging every first packet (policy selects the server
 *              and allows the client), batching up to 64 verdicts per send,
 *   deno-b1    the same loop answering each packet with its own send (the unbatched design),
 *   c          the minimal C loop of nfq_reference.c (libnetfilter_queue, one verdict per packet).
 * Contenders alternate within each round, so drift (thermal, noisy neighbours) hits all alike.
 * The client and server are small C programs built here, so the load generator is not the limit.
 *
 *   deno run --frozen -A bench/packet_path.ts [--json] [--rounds N] [--seconds S]
 *
 * Needs root (network namespaces), gcc and libnetfilter-queue-dev. Nothing outside the lab's
 * namespaces is touched.
 */
import { cleanupStaleLabs, createLab, type Lab } from "../e2e/lab/topology.ts";
import { flushQueueRules, installQueueRules, VlAgent } from "../e2e/lab/vl_driver.ts";
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
const CONTENDERS = ["none", "deno", "deno-b1", "deno-2q", "c"] as const;
type Contender = (typeof CONTENDERS)[number];
const QUEUES: Record<Exclude<Contender, "none">, number> = {
  deno: 3101,
  "deno-b1": 3102,
  c: 3103,
  // Two loops, on 3104 and 3105, flows spread between them by the kernel (--queue-balance).
  "deno-2q": 3104,
};
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

async function route(lab: Lab, contender: Contender, serverIP: string): Promise<void> {
  await flushQueueRules(lab);
  if (contender === "none") return;
  await installQueueRules(lab, {
    queueId: QUEUES[contender],
    denyMark: MARK,
    dst: serverIP,
    queues: contender === "deno-2q" ? 2 : 1,
  });
}

function pct(a: number, b: number): string {
  return b ? `${(a / b).toFixed(2)}x` : "-";
}

async function main(): Promise<void> {
  const json = Deno.args.includes("--json");
  const rounds = arg("--rounds", 2);
  const seconds = arg("--seconds", 2);
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
      {
        op: "upsert",
        kind: "NetworkPolicy",
        object: {
          metadata: { namespace: "b", name: "server" },
          spec: {
            podSelector: { matchLabels: { app: "server" } },
            ingress: [{ from: [{ podSelector: { matchLabels: { app: "client" } } }] }],
          },
        },
      },
    ];
    const loops = [[QUEUES.deno, 64], [QUEUES["deno-b1"], 1], [3104, 64], [3105, 64]] as const;
    for (const [queueId, maxBatch] of loops) {
      const a = await VlAgent.start(lab, {
        queueId,
        nodeName: NODE,
        denyMark: MARK,
        failOpen: false,
        maxBatch,
        logAllows: false,
      });
      agents.push(a);
      await a.apply(state);
      await a.markSynced();
    }

    const results: Record<string, Record<Contender, Sample[]>> = {};
    const clientNs = lab.pod("b/client").netns;
    for (let r = 0; r < rounds; r++) {
      for (const phase of PHASES) {
        const per = results[phase.name] ??= {
          none: [],
          deno: [],
          "deno-b1": [],
          "deno-2q": [],
          c: [],
        };
        for (const c of CONTENDERS) {
          await route(lab, c, server.ip);
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
          per[c].push(s);
          say(
            `round ${r + 1} ${phase.name.padEnd(13)} ${c.padEnd(8)} ${
              (s.connections / s.seconds).toFixed(0).padStart(6)
            } conn/s  p50 ${s.p50_us} us  p99 ${s.p99_us} us  errors ${s.errors}`,
          );
        }
      }
    }

    // Median over rounds of each figure.
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
    const summary = Object.fromEntries(
      Object.entries(results).map(([phase, per]) => [
        phase,
        Object.fromEntries(CONTENDERS.map((c) => [c, {
          connPerSec: Math.round(med(per[c].map((s) => s.connections / s.seconds))),
          p50Us: med(per[c].map((s) => s.p50_us)),
          p99Us: med(per[c].map((s) => s.p99_us)),
          errors: per[c].reduce((n, s) => n + s.errors, 0),
        }])),
      ]),
    ) as unknown as Record<
      string,
      Record<Contender, { connPerSec: number; p50Us: number; p99Us: number }>
    >;
    const ratios = Object.fromEntries(
      Object.entries(summary).map(([phase, s]) => [phase, {
        denoOverNone: s.deno.connPerSec / s.none.connPerSec,
        denoOverC: s.deno.connPerSec / s.c.connPerSec,
        unbatchedOverC: s["deno-b1"].connPerSec / s.c.connPerSec,
        twoQueuesOverC: s["deno-2q"].connPerSec / s.c.connPerSec,
        addedP50UsDeno: s.deno.p50Us - s.none.p50Us,
        addedP50UsC: s.c.p50Us - s.none.p50Us,
      }]),
    );
    say("\nmedians over rounds (conn/s; connect p50/p99 us):");
    for (const [phase, s] of Object.entries(summary)) {
      const line = CONTENDERS.map((c) => `${c} ${s[c].connPerSec} (${s[c].p50Us}/${s[c].p99Us})`);
      const q = ratios[phase]!;
      say(`  ${phase.padEnd(13)} ${line.join("  ")}`);
      say(
        `  ${"".padEnd(13)} deno/none ${pct(s.deno.connPerSec, s.none.connPerSec)}  deno/c ${
          pct(s.deno.connPerSec, s.c.connPerSec)
        }  deno-b1/c ${pct(s["deno-b1"].connPerSec, s.c.connPerSec)}  deno-2q/c ${
          pct(s["deno-2q"].connPerSec, s.c.connPerSec)
        }  added p50: deno +${q.addedP50UsDeno} us, c +${q.addedP50UsC} us`,
      );
    }
    if (json) console.log(JSON.stringify({ rounds, seconds, summary, ratios, results }, null, 2));
  } finally {
    for (const a of agents) await a.stop().catch(() => {});
    await lab.destroy();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await main();
