/**
 * IPv6 extension headers must not get past a policy (root; real agent, real packets). A pod
 * connects over IPv6 with extension headers in front of TCP: before the fix, the agent copied
 * only 128 bytes of each queued packet, a first packet whose ports lay further in failed to parse,
 * and `--fail-open` (the default) accepted it, so the connect to a denied pod succeeded.
 *
 * x/attacker may reach x/open on TCP 80; x/closed is isolated with no rule. Ordinary sockets
 * (what any pod with NET_RAW can do): a 256-byte Destination Options header (IPV6_DSTOPTS), an
 * 88-byte Hop-by-Hop header (IPV6_HOPOPTS): refused by x/closed, connected to x/open. Raw packets
 * (what no socket option sends): a SYN behind a 264-byte type 0 routing header with segments left
 * 0, and behind a chain of 17 destination options headers: never arrive in x/closed, arrive in
 * x/open.
 *
 *   deno test --frozen -A e2e/lab/ipv6_exthdr_test.ts
 */
import assert from "node:assert/strict";
import { LabAgent, ManifestDir } from "./agent.ts";
import { ArrivalCounter, craft } from "./attacker.ts";
import { clusterObjects, type LabClusterPlan, networkPolicy, servePorts } from "./cluster.ts";
import { startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab } from "./topology.ts";

const PREFIX = "knpext";
const PLAN: LabClusterPlan = {
  nodeName: "lab-node",
  namespaces: [{ name: "x", labels: { "kubernetes.io/metadata.name": "x" } }],
  pods: ["attacker", "open", "closed"].map((name, i) => ({
    namespace: "x",
    name,
    ip: `10.244.1.${11 + i}`,
    labels: { pod: name },
    ports: servePorts([80]),
  })),
};
const POLICIES = [
  networkPolicy("x", "open-from-attacker", {
    podSelector: { matchLabels: { pod: "open" } },
    ingress: [{
      from: [{ podSelector: { matchLabels: { pod: "attacker" } } }],
      ports: [{ protocol: "TCP", port: 80 }],
    }],
  }),
  networkPolicy("x", "closed", { podSelector: { matchLabels: { pod: "closed" } } }),
];

/** Polls `counter` until it reaches `atLeast` (bounded); its last reading. */
async function waitCount(counter: ArrivalCounter, atLeast: number, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  let n = await counter.count();
  while (n < atLeast && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    n = await counter.count();
  }
  return n;
}

Deno.test({
  name: "lab: IPv6 extension headers are judged on the real transport, never let through",
  ignore: Deno.uid() !== 0,
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  await cleanupStaleLabs(PREFIX);
  const lab = await createLab({ prefix: PREFIX, pods: PLAN.pods, ipv6: true });
  const dir = await ManifestDir.create();
  let agent: LabAgent | undefined;
  try {
    await startServers(lab, { ports: [80] });
    await dir.writeModel(clusterObjects(PLAN, lab));
    await dir.writePolicies(POLICIES);
    agent = await LabAgent.start(lab, { nodeName: PLAN.nodeName, manifestsDir: dir.path });
    await agent.waitEnforced(["x/open-from-attacker", "x/closed"]);
    const attacker = lab.pod("x/attacker"), open = lab.pod("x/open"), closed = lab.pod("x/closed");

    for (const kind of ["dstopts256", "hbh88"]) {
      await t.step(
        `${kind} on an ordinary socket: refused when denied, connects when allowed`,
        async () => {
          const denied = await craft(lab, attacker, ["connect6", closed.ip6!, "80", kind]);
          assert.equal(denied.outcome, "refused", `to x/closed: ${JSON.stringify(denied)}`);
          const allowed = await craft(lab, attacker, ["connect6", open.ip6!, "80", kind]);
          assert.equal(allowed.outcome, "connected", `to x/open: ${JSON.stringify(allowed)}`);
        },
      );
    }

    const atOpen = await ArrivalCounter.install(lab, open, attacker.ip6!, 6);
    const atClosed = await ArrivalCounter.install(lab, closed, attacker.ip6!, 6);
    for (const kind of ["rh0", "chain17"]) {
      await t.step(
        `${kind} SYN on a raw socket: never arrives when denied, arrives when allowed`,
        async () => {
          const closedBefore = await atClosed.count();
          const openBefore = await atOpen.count();
          await craft(lab, attacker, ["raw6", attacker.ip6!, closed.ip6!, "80", kind]);
          await craft(lab, attacker, ["raw6", attacker.ip6!, open.ip6!, "80", kind]);
          // Both pass the node's queue in order: once the allowed one has arrived, the denied one
          // has had its verdict too.
          assert.ok(
            await waitCount(atOpen, openBefore + 1) > openBefore,
            "the allowed SYN arrived",
          );
          assert.equal(await atClosed.count() - closedBefore, 0, "the denied SYN never arrived");
        },
      );
    }

    await t.step(
      "the agent judged them all: no parse failures, denies logged with addresses",
      async () => {
        const metrics = (await agent!.get("/metrics")).body;
        assert.doesNotMatch(metrics, /kube_netpol_packet_parse_failures_total\{[^}]*\} [1-9]/);
        assert.match(
          agent!.logs(),
          new RegExp(`connection denied .*dst=\\[${closed.ip6!.replaceAll(".", "\\.")}\\]:80`),
        );
      },
    );
  } catch (e) {
    if (agent) console.error(`--- agent log (tail) ---\n${agent.logs()}`);
    throw e;
  } finally {
    await agent?.kill("SIGTERM");
    await dir.remove();
    await lab.destroy();
  }
});
