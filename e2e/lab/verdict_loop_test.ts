/**
 * The verdict loop on real packets (root): a lab node netns queues every new forwarded
 * connection to the VerdictLoop running inside it, with minimal mark/reject rules, and policies
 * arrive as StateEvents exactly as the agent feeds them.
 *
 *   deno test --frozen -A e2e/lab/verdict_loop_test.ts
 */
import assert from "node:assert/strict";
import { cleanupStaleLabs, createLab, type Lab } from "./topology.ts";
import { startServers } from "./servers.ts";
import { probeFrom, type ProbeResult } from "./probe.ts";
import { installQueueRules, VlAgent } from "./vl_driver.ts";
import { craft } from "./attacker.ts";
import { serverPolicy, upsertPolicy, VL_PODS as PODS, vlPodObject } from "./vl_fixture.ts";
import type { StateEvent } from "../../src/state/events.ts";

const PREFIX = "knpvl";
const NODE = "vl-node";
const QUEUE = 4242;
const MARK = 0x100000;

async function probe1(lab: Lab, from: string, to: string, protocol: "TCP" | "UDP", port: number) {
  const [r] = await probeFrom(lab, lab.pod(from).netns, [
    { ip: lab.pod(to).ip, protocol, port },
  ], 1500);
  return r as ProbeResult;
}

Deno.test({
  name: "verdict loop judges real first packets in a namespace lab",
  ignore: Deno.uid() !== 0,
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await cleanupStaleLabs(PREFIX);
  const lab = await createLab({
    prefix: PREFIX,
    ipv6: true,
    pods: PODS.map(({ namespace, name, ip }) => ({ namespace, name, ip })),
  });
  let agent: VlAgent | undefined;
  try {
    await startServers(lab, { ports: [80, 81] });
    await installQueueRules(lab, { queueId: QUEUE, denyMark: MARK, ipv6: true });
    agent = await VlAgent.start(lab, {
      queueId: QUEUE,
      nodeName: NODE,
      denyMark: MARK,
      failOpen: false,
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
    const a = agent;

    await t.step("allowed TCP connects to the right pod", async () => {
      const r = await probe1(lab, "x/client", "x/server", "TCP", 80);
      assert.equal(r.outcome, "connected", JSON.stringify(r));
      assert.equal(r.server, "x/server");
    });

    await t.step("denied TCP is refused with a reset, fast", async () => {
      const r = await probe1(lab, "x/other", "x/server", "TCP", 80);
      assert.equal(r.outcome, "refused", JSON.stringify(r));
      assert.ok(r.ms < 300, `refused after ${r.ms} ms`);
      const wrongPort = await probe1(lab, "x/client", "x/server", "TCP", 81);
      assert.equal(wrongPort.outcome, "refused", JSON.stringify(wrongPort));
    });

    await t.step("UDP is allowed and denied by the same policy", async () => {
      const ok = await probe1(lab, "x/client", "x/server", "UDP", 80);
      assert.equal(ok.outcome, "connected", JSON.stringify(ok));
      const denied = await probe1(lab, "x/other", "x/server", "UDP", 80);
      assert.notEqual(denied.outcome, "connected", JSON.stringify(denied));
    });

    await t.step("deny records name the policy that isolates the pod", async () => {
      await a.next(() => false, 200).catch(() => {}); // let the worker's records arrive
      const deny = a.records.find((r) =>
        r.kind === "judged" && r.verdict === "deny" && r.src === "10.244.1.13" &&
        r.protocol === "TCP"
      );
      assert.ok(deny?.kind === "judged", `no deny record among ${a.records.length}`);
      assert.equal(deny.dst, "10.244.1.12");
      assert.equal(deny.dstPort, 80);
      assert.deepEqual(deny.decision.ingress.reason, {
        kind: "denied",
        pod: "x/server",
        isolatedBy: ["x/server-ingress"],
      });
    });

    await t.step("a live policy change flips the verdict for new connections", async () => {
      const t0 = performance.now();
      await a.apply([upsertPolicy(serverPolicy(["client", "other"]))]);
      const r = await probe1(lab, "x/other", "x/server", "TCP", 80);
      const took = performance.now() - t0;
      assert.equal(r.outcome, "connected", JSON.stringify(r));
      console.log(`  policy change -> enforced connection in ${took.toFixed(0)} ms (incl. probe)`);
      await a.apply([upsertPolicy(serverPolicy(["client"]))]);
      const back = await probe1(lab, "x/other", "x/server", "TCP", 80);
      assert.equal(back.outcome, "refused", JSON.stringify(back));
    });

    await t.step("IPv6 behind a 256-byte options header: judged on its real ports", async () => {
      // The whole packet is copied: the ports past the first 128 bytes are read, so the allowed
      // client is allowed and the other pod denied, as without the header.
      for (const [from, verdict] of [["x/client", "allow"], ["x/other", "deny"]] as const) {
        const py = [
          "import socket",
          "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)",
          "opt=bytes([0,31])+bytes([0x1e,252])+bytes(252)",
          "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_DSTOPTS,opt)",
          `s.sendto(b'x',('${lab.pod("x/server").ip6}',80))`,
        ].join(";");
        const sent = await lab.exec(lab.pod(from).netns, ["python3", "-c", py]);
        assert.equal(sent.code, 0, sent.stderr);
        const src = lab.pod(from).ip6;
        let record;
        for (let i = 0; i < 20 && !record; i++) {
          await a.next(() => false, 100).catch(() => {}); // let the worker's records arrive
          record = a.records.find((r) => r.src === src && r.protocol === "UDP");
        }
        assert.equal(record?.kind, "judged", JSON.stringify(record));
        assert.equal(record?.verdict, verdict, JSON.stringify(record));
        assert.equal(record?.dstPort, 80);
      }
      assert.doesNotMatch((await a.metrics()).text, /parse_failures_total\{[^}]*\} [1-9]/);
    });

    await t.step("metrics and heartbeat reflect the judged packets", async () => {
      const { text, heartbeat } = await a.metrics();
      assert.ok(Date.now() - heartbeat < 1000, `heartbeat ${Date.now() - heartbeat} ms old`);
      assert.match(text, /packet_count\{verdict="allow",protocol="TCP",family="4"\} [1-9]/);
      assert.match(text, /packet_count\{verdict="deny",protocol="TCP",family="4"\} [1-9]/);
      assert.match(text, /kube_netpol_verdicts_total\{direction="ingress",verdict="deny"\} [1-9]/);
      assert.match(text, /packet_process_time_count\{[^}]*\} [1-9]/);
    });
  } finally {
    await agent?.stop();
    await lab.destroy();
  }
});

Deno.test({
  name: "verdict loop: a packet whose transport cannot be read is denied even failing open",
  ignore: Deno.uid() !== 0,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  await cleanupStaleLabs(PREFIX);
  const lab = await createLab({
    prefix: PREFIX,
    ipv6: true,
    pods: PODS.slice(0, 2).map(({ namespace, name, ip }) => ({ namespace, name, ip })),
  });
  let agent: VlAgent | undefined;
  try {
    await startServers(lab, { ports: [80] });
    await installQueueRules(lab, { queueId: QUEUE, denyMark: MARK, ipv6: true, bypass: true });
    // A copy range of 128 bytes stands in for any packet the parser cannot read: the client's
    // SYN behind a 256-byte options header then ends before its ports.
    agent = await VlAgent.start(lab, {
      queueId: QUEUE,
      nodeName: NODE,
      denyMark: MARK,
      failOpen: true,
      copyRange: 128,
    });
    await agent.apply([
      { op: "upsert", kind: "Namespace", object: { metadata: { name: "x" } } },
      ...PODS.slice(0, 2).map((p): StateEvent => ({
        op: "upsert",
        kind: "Pod",
        object: vlPodObject(NODE, p, lab.pods.find((lp) => lp.name === p.name)!.ip6!),
      })),
      upsertPolicy(serverPolicy(["client"])),
    ]);
    await agent.markSynced();
    const client = lab.pod("x/client"), server = lab.pod("x/server");
    const r = await craft(lab, client, ["connect6", server.ip6!, "80", "dstopts256"]);
    assert.equal(r.outcome, "timeout", `an allowed pair, but unreadable: ${JSON.stringify(r)}`);
    const { text } = await agent.metrics();
    assert.match(text, /kube_netpol_packet_parse_failures_total\{reason="truncated"\} [1-9]/);
    assert.match(text, /packet_count\{verdict="deny",protocol="unparsed",family="6"\} [1-9]/);
    const a = agent;
    let record;
    for (let i = 0; i < 20 && !record; i++) {
      await a.next(() => false, 100).catch(() => {});
      record = a.records.find((x) => x.kind === "unjudged");
    }
    assert.deepEqual(
      record && { reason: record.reason, src: record.src, dst: record.dst, family: record.family },
      { reason: "truncated", src: client.ip6, dst: server.ip6, family: 6 },
    );
    // The loop goes on: the same pair without the header connects.
    const plain = await probe1(lab, "x/client", "x/server", "TCP", 80);
    assert.equal(plain.outcome, "connected", JSON.stringify(plain));
  } finally {
    await agent?.stop();
    await lab.destroy();
  }
});
