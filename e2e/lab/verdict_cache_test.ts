/**
 * The kernel verdict cache on real packets (root): the product's iptables rules with the cache
 * (src/rules/iptables.ts + verdict_cache_rules.ts) in a lab node netns, the verdict loop with its
 * worker-side cache, policies as StateEvents. Proves that repeated first packets are answered in
 * the kernel (hit counters grow, the loop judges nothing new), and that the cache is exact: after
 * a change is in force (the worker applied it and emptied the cache) the very next connection
 * gets the new verdict, both ways, again and again.
 *
 *   deno task test:lab e2e/lab/verdict_cache_test.ts (or its flags on this one file)
 */
import assert from "node:assert/strict";
import { cleanupStaleLabs, createLab, type Lab } from "./topology.ts";
import { labTest } from "./harness.ts";
import { startServers } from "./servers.ts";
import { probeFrom, type ProbeResult } from "./probe.ts";
import { flushQueueRules, productRules, VlAgent } from "./vl_driver.ts";
import { serverPolicy, upsertPolicy, VL_PODS as PODS, vlPodObject } from "./vl_fixture.ts";
import type { StateEvent } from "../../src/state/events.ts";
import type { IptablesBackend } from "../../src/rules/iptables.ts";
import type { CacheHits } from "../../src/rules/verdict_cache_rules.ts";

const PREFIX = "knpvc";
const NODE = "vc-node";
const QUEUE = 4343;
const DENY_MARK = 0x100000;
const CACHE = { mark: 0x200000, timeoutSeconds: 60, maxEntries: 1000, denies: true };

async function probe1(
  lab: Lab,
  from: string,
  protocol: "TCP" | "UDP" = "TCP",
  ipv6 = false,
): Promise<ProbeResult> {
  const server = lab.pod("x/server");
  const [r] = await probeFrom(lab, lab.pod(from).netns, [
    { ip: ipv6 ? server.ip6! : server.ip, protocol, port: 80 },
  ], 1500);
  return r!;
}

async function hits(backend: IptablesBackend): Promise<CacheHits> {
  const status = await backend.check(undefined);
  assert.ok(status.cacheHits, "the check reads the cache hit counters");
  return status.cacheHits;
}

/** Records (judged packets) of TCP or UDP connections to the server from `src`. */
function judged(agent: VlAgent, src: string, protocol = "TCP"): number {
  return agent.records.filter((r) =>
    r.kind === "judged" && (r.src === src) && r.protocol === protocol && r.dstPort === 80
  ).length;
}

/** Lets the worker's records (sent every 50 ms) arrive. */
async function settle(agent: VlAgent): Promise<void> {
  await agent.next(() => false, 150).catch(() => {});
}

Deno.test({
  name: "kernel verdict cache: repeated flows skip the queue, and every change is exact",
  ...labTest,
}, async (t) => {
  await cleanupStaleLabs(PREFIX);
  const lab = await createLab({
    prefix: PREFIX,
    ipv6: true,
    pods: PODS.map(({ namespace, name, ip }) => ({ namespace, name, ip })),
  });
  let agent: VlAgent | undefined;
  try {
    await startServers(lab, { ports: [80] });
    const server = lab.pod("x/server");
    const { backend, cache } = await productRules(lab, {
      queueId: QUEUE,
      failOpen: false,
      denyMark: DENY_MARK,
      verdictCache: CACHE,
      ingress: [server.ip, server.ip6!],
    });
    agent = await VlAgent.start(lab, {
      queueId: QUEUE,
      nodeName: NODE,
      denyMark: DENY_MARK,
      failOpen: false,
      logAllows: true,
      verdictCache: cache,
    });
    await agent.apply([
      { op: "upsert", kind: "Namespace", object: { metadata: { name: "x" } } },
      ...PODS.map((p): StateEvent => ({
        op: "upsert",
        kind: "Pod",
        object: vlPodObject(NODE, p, lab.pods.find((lp) => lp.name === p.name)!.ip6!),
      })),
      upsertPolicy(serverPolicy(["client"])),
    ]);
    await agent.markSynced();
    await agent.apply([], { current: true });
    const a = agent;
    const client = lab.pod("x/client");
    const other = lab.pod("x/other");

    await t.step(
      "a repeated allowed flow is judged once, then answered by the kernel",
      async () => {
        const before = await hits(backend);
        for (let i = 0; i < 5; i++) {
          const r = await probe1(lab, "x/client");
          assert.equal(r.outcome, "connected", JSON.stringify(r));
        }
        await settle(a);
        assert.equal(judged(a, client.ip), 1, "only the first connection reached user space");
        const after = await hits(backend);
        assert.equal(after.allow - before.allow, 4, "four connections hit the cache");
      },
    );

    await t.step("UDP and IPv6 flows are cached too", async () => {
      for (let i = 0; i < 3; i++) {
        assert.equal((await probe1(lab, "x/client", "UDP")).outcome, "connected");
        assert.equal((await probe1(lab, "x/client", "TCP", true)).outcome, "connected");
      }
      await settle(a);
      assert.equal(judged(a, client.ip, "UDP"), 1);
      assert.equal(judged(a, client.ip6!), 1);
    });

    await t.step("a repeated denied flow is judged once, then refused by the kernel", async () => {
      const before = await hits(backend);
      for (let i = 0; i < 4; i++) {
        const r = await probe1(lab, "x/other");
        assert.equal(r.outcome, "refused", JSON.stringify(r));
      }
      await settle(a);
      assert.equal(judged(a, other.ip), 1, "one deny record, for the first connection");
      const after = await hits(backend);
      assert.equal(after.deny - before.deny, 3, "three connections refused from the cache");
    });

    await t.step("a cached allow flips to deny on the next connection, and back", async () => {
      for (let round = 0; round < 4; round++) {
        // Deny the client: its cached allow must not outlive the change.
        await a.apply([upsertPolicy(serverPolicy(["other"]))], { current: true });
        for (let i = 0; i < 2; i++) {
          const r = await probe1(lab, "x/client");
          assert.equal(
            r.outcome,
            "refused",
            `round ${round}, connection ${i}: ${JSON.stringify(r)}`,
          );
          const o = await probe1(lab, "x/other");
          assert.equal(o.outcome, "connected", `round ${round}, other ${i}: ${JSON.stringify(o)}`);
        }
        // Allow it again: the cached deny must not outlive this change either.
        await a.apply([upsertPolicy(serverPolicy(["client"]))], { current: true });
        for (let i = 0; i < 2; i++) {
          const r = await probe1(lab, "x/client");
          assert.equal(r.outcome, "connected", `round ${round}, back ${i}: ${JSON.stringify(r)}`);
          const o = await probe1(lab, "x/other");
          assert.equal(
            o.outcome,
            "refused",
            `round ${round}, other back ${i}: ${JSON.stringify(o)}`,
          );
        }
      }
    });

    await t.step("a pod label change (not only a policy change) empties the cache", async () => {
      assert.equal((await probe1(lab, "x/client")).outcome, "connected");
      const relabelled = vlPodObject(
        NODE,
        { ...PODS[0]!, labels: { app: "stranger" } },
        client.ip6!,
      );
      await a.apply([{ op: "upsert", kind: "Pod", object: relabelled }], { current: true });
      assert.equal((await probe1(lab, "x/client")).outcome, "refused");
      await a.apply([{
        op: "upsert",
        kind: "Pod",
        object: vlPodObject(NODE, PODS[0]!, client.ip6!),
      }], {
        current: true,
      });
      assert.equal((await probe1(lab, "x/client")).outcome, "connected");
    });

    await t.step("the worker's misses and invalidations reach the metrics", async () => {
      await a.next(() => false, 400).catch(() => {}); // a periodic report (every 250 ms)
      const { text } = await a.metrics();
      const value = (name: string) =>
        Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)?.[1] ?? NaN);
      assert.ok(value("kube_netpol_verdict_cache_misses_total") >= 10, text);
      assert.ok(value("kube_netpol_verdict_cache_invalidations_total") >= 10, text);
      assert.equal(value("kube_netpol_verdict_cache_invalidation_failures_total"), 0);
    });

    await t.step("rules re-installed (a repair) start with an empty cache", async () => {
      assert.equal((await probe1(lab, "x/client")).outcome, "connected");
      await flushQueueRules(lab); // the jump goes; install() puts everything back
      await backend.install();
      await backend.sync({ ingress: [server.ip, server.ip6!], egress: [] });
      const listed = await lab.exec(lab.nodeNetns, ["ipset", "list", "kube-netpol-cache-allow-v4"]);
      assert.match(listed.stdout, /Number of entries: 0/);
      assert.equal((await probe1(lab, "x/client")).outcome, "connected");
    });

    await t.step("a stopped verdict loop leaves nothing remembered", async () => {
      assert.equal((await probe1(lab, "x/client")).outcome, "connected");
      assert.equal((await probe1(lab, "x/other")).outcome, "refused");
      const count = async (set: string) => {
        const r = await lab.exec(lab.nodeNetns, ["ipset", "list", set]);
        return Number(/Number of entries: (\d+)/.exec(r.stdout)?.[1]);
      };
      assert.equal(await count("kube-netpol-cache-allow-v4"), 1);
      assert.equal(await count("kube-netpol-cache-deny-v4"), 1);
      agent = undefined;
      await a.stop();
      assert.equal(await count("kube-netpol-cache-allow-v4"), 0);
      assert.equal(await count("kube-netpol-cache-deny-v4"), 0);
      // Fail-closed rules stay: with nobody on the queue, the next connection is not answered.
      assert.equal((await probe1(lab, "x/client")).outcome, "timeout");
    });
  } finally {
    await agent?.stop();
    await lab.destroy();
  }
});
