/**
 * Issue 9 §2 with real processes (root only): the agent serves its HTTP endpoints on every
 * address of the node (the DaemonSet's `:9080`), so any pod can connect to it. One pod opens
 * 3,000 connections with half-sent requests and holds them. The agent runs with 1,024 file
 * descriptors (a common container limit; with Deno.serve that many idle connections made it exit
 * with "Too many open files", and under --fail-open every denied pair then connected).
 *
 * Afterwards the agent must still run, answer /healthz and /metrics on the node, keep denying
 * what policy denies, serve /metrics to another pod, refuse /debug/policies to pods and serve it
 * on loopback, and cut the held connections at the header timeout.
 *
 *   deno test --frozen -A e2e/lab/http_attack_test.ts
 */
import assert from "node:assert/strict";
import { curlGet, MetricsScrape } from "./agent.ts";
import { networkPolicy as policy } from "./cluster.ts";
import { labTest, pollUntil, withLabAgent } from "./harness.ts";
import { assertMatrix } from "./matrix.ts";
import { probeMatrix, type ProbePair } from "./probe.ts";
import type { Lab } from "./topology.ts";

const PREFIX = "knphttp";

const ATTACKER = new URL("./http_attacker.ts", import.meta.url).pathname;
const PORT = 9080;
const CONNECTIONS = 3_000;

interface AttackReport {
  event: string;
  connected: number;
  failed: number;
  closedByServer: number;
}

/** GET from inside a pod's netns, to the node's address: what any pod can do. */
function getFromPod(
  lab: Lab,
  pod: string,
  path: string,
): Promise<{ status: number; body: string }> {
  return curlGet(lab, lab.pod(pod).netns, `http://${lab.nodeIP}:${PORT}${path}`, 3);
}

/** The first line of a child's stdout, as JSON; bounded in time. */
async function firstJsonLine(
  reader: ReadableStreamDefaultReader<string>,
  timeoutMs: number,
): Promise<AttackReport> {
  let buf = "";
  const deadline = Date.now() + timeoutMs;
  while (!buf.includes("\n")) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) =>
      timer = setTimeout(() => r("late"), Math.max(0, deadline - Date.now()))
    );
    const next = await Promise.race([reader.read(), late]);
    clearTimeout(timer);
    if (next === "late") throw new Error(`attacker reported nothing within ${timeoutMs} ms`);
    if (next.done) throw new Error(`attacker ended without a report (got ${JSON.stringify(buf)})`);
    buf += next.value;
  }
  return JSON.parse(buf.slice(0, buf.indexOf("\n"))) as AttackReport;
}

interface Attack {
  /** The attacker's report once it has tried every connection (and holds what it got). */
  holding: Promise<AttackReport>;
  stop(): Promise<void>;
}

function startAttack(lab: Lab, pod: string, count: number, reconnect = false): Attack {
  const child = lab.spawn(lab.pod(pod).netns, [
    Deno.execPath(),
    "run",
    "--no-config",
    "--allow-net",
    ATTACKER,
    lab.nodeIP,
    String(PORT),
    String(count),
    "60000",
    ...(reconnect ? ["reconnect"] : []),
  ], { stdout: "piped", stderr: "inherit" });
  const out = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  return {
    holding: firstJsonLine(out, 60_000),
    async stop() {
      try {
        child.kill("SIGKILL");
      } catch { /* ended */ }
      await child.status;
      await out.cancel().catch(() => {});
    },
  };
}

/** GET on the node's own address from the node netns: the path kubelet probes take. */
async function getViaNodeIP(lab: Lab, path: string): Promise<number> {
  return (await curlGet(lab, lab.nodeNetns, `http://${lab.nodeIP}:${PORT}${path}`, 3)).status;
}

Deno.test(
  "lab: pods flooding the agent's HTTP port neither stop it, nor open policy, nor read /debug",
  labTest,
  async (t) => {
    const denyX = policy("x", "deny-ingress", { podSelector: {}, policyTypes: ["Ingress"] });
    const setup = {
      prefix: PREFIX,
      servers: [80],
      policies: [denyX],
      agent: { metricsPort: PORT, metricsBindAll: true, maxOpenFiles: 1024 },
    };
    await withLabAgent(setup, async ({ lab, agent }) => {
      // y/a -> x/a is denied by policy; y/a -> z/a is allowed (the control).
      const pairs: ProbePair[] = [{ from: "y/a", to: "x/a" }, { from: "y/a", to: "z/a" }];
      const expect = (_f: string, to: string) => to.startsWith("x/") ? "deny" : "allow";
      assertMatrix("before the attack", await probeMatrix(lab, pairs, "TCP", 80), expect);
      // Before any attack a pod can scrape /metrics but not read /debug.
      assert.equal((await getFromPod(lab, "y/b", "/metrics")).status, 200);
      assert.equal((await getFromPod(lab, "y/b", "/debug/policies")).status, 403);

      await t.step("one pod holds 3,000 half-sent requests", async () => {
        const attack = startAttack(lab, "z/c", CONNECTIONS);
        try {
          const report = await attack.holding;
          console.error(`attacker: ${JSON.stringify(report)}`);
          assert.ok(report.connected > 0, "the attacker never reached the agent's port");

          // While the attacker holds what it got:
          const running = agent.running;
          const matrix = await probeMatrix(lab, pairs, "TCP", 80);
          assert.ok(running && agent.running, "the agent exited under the attack");
          assertMatrix("during the attack", matrix, expect);

          const health = await agent.get("/healthz");
          assert.equal(health.status, 200, `/healthz: ${health.status} ${health.body}`);
          const { status, body } = await agent.get("/metrics");
          assert.equal(status, 200, "/metrics on the node");
          const metrics = new MetricsScrape(body);
          assert.ok(
            metrics.value("kube_netpol_http_connections_rejected_total", {
              reason: "peer_limit",
            }) > 0,
            "no connection of the flood was refused at the cap",
          );
          assert.ok(
            metrics.value("kube_netpol_http_open_connections") <= 64 + 16,
            "more connections open than the caps allow",
          );

          // Another pod (Prometheus, say) still scrapes; no pod reads /debug; the node does.
          assert.equal((await getFromPod(lab, "y/b", "/metrics")).status, 200);
          const debugFromPod = await getFromPod(lab, "y/b", "/debug/policies");
          assert.equal(debugFromPod.status, 403);
          assert.ok(!debugFromPod.body.includes("deny-ingress"), "policy names leaked to a pod");
          assert.deepEqual((await agent.debugPolicies()).policies, ["x/deny-ingress"]);

          // The held connections are cut at the header timeout (5 s), not kept forever.
          const timeouts = await pollUntil(
            // A scrape that fails under the attack reads as none yet, and the poll goes on.
            () => agent.metric("kube_netpol_http_header_timeouts_total").catch(() => 0),
            (n) => n > 0,
            20_000,
            500,
          );
          assert.ok(timeouts > 0, "held connections were never timed out");
        } finally {
          await attack.stop();
        }
      });

      await t.step(
        "every pod at once, coming back when cut: the node's probes still pass",
        async () => {
          // 9 pods x 8 connections each (the per-address cap) > the 64 for other hosts.
          const attacks = lab.pods.map((p) =>
            startAttack(lab, `${p.namespace}/${p.name}`, 16, true)
          );
          try {
            const reports = await Promise.all(attacks.map((a) => a.holding));
            assert.ok(reports.every((r) => r.connected > 0), JSON.stringify(reports));
            assert.ok(agent.running, "the agent exited under the attack");
            assert.ok(
              await agent.metric("kube_netpol_http_connections_rejected_total", {
                reason: "limit",
              }) > 0,
              "the pods never filled the cap",
            );
            // kubelet probes the node's address from the node: the node's own slots answer.
            for (let i = 0; i < 5; i++) {
              assert.equal(await getViaNodeIP(lab, "/healthz"), 200);
              assert.equal(await getViaNodeIP(lab, "/readyz"), 200);
            }
            assertMatrix("during the attack", await probeMatrix(lab, pairs, "TCP", 80), expect);
          } finally {
            await Promise.all(attacks.map((a) => a.stop()));
          }
        },
      );
    });
  },
);
