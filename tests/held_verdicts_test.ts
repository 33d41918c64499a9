/**
 * The pod-start race, verdict side: a packet from or to a local pod the agent does not know yet is
 * held (no verdict), judged with that pod's policies once it appears, released by the --fail-open
 * rule after the timeout or when too many are held; counted for the metrics. No queue: the judge
 * on bytes, the store on a clock the test moves.
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import { LocalPodAddresses } from "../src/policy/local_pods.ts";
import type { Pod } from "../src/policy/types.ts";
import { NF_ACCEPT, NF_DROP, NF_REPEAT } from "../src/netlink/nfqueue.ts";
import { PacketJudge } from "../src/verdict/packet_judge.ts";
import { PacketStats } from "../src/verdict/verdict_stats.ts";
import {
  describeRelease,
  type HeldPacket,
  HeldVerdicts,
  maxHeldFor,
  recordHeldStats,
  releaseVerdict,
} from "../src/verdict/held_verdicts.ts";
import { AgentMetrics } from "../src/metrics.ts";
import type { ParsedPacket } from "../src/packet/parse.ts";
import { ipv4, PROTO, tcpSyn } from "./fixtures/packets/build.ts";

const NODE = "node-1";
const MARK = 0x100000;
const ETH_P_IP = 0x0800;
const SERVER = [10, 244, 1, 1];
const NEW_POD = [10, 244, 2, 2];
const REMOTE = [10, 99, 0, 1];

function pod(namespace: string, name: string, ip: string): Pod {
  return {
    metadata: { namespace, name, labels: { app: name } },
    spec: { nodeName: NODE },
    status: { phase: "Running", podIP: ip, podIPs: [{ ip }] },
  };
}

/** Node with pod CIDR 10.244.0.0/16; a known server pod; namespace `race` denies all egress. */
function cluster() {
  const engine = new PolicyEngine();
  engine.upsertNode({
    metadata: { name: NODE },
    spec: { podCIDRs: ["10.244.0.0/16"] },
    status: { addresses: [{ type: "InternalIP", address: "10.244.0.1" }] },
  });
  engine.upsertNamespace({ metadata: { name: "srv" } });
  engine.upsertNamespace({ metadata: { name: "race" } });
  engine.upsertPod(pod("srv", "server", "10.244.1.1"));
  engine.upsertPolicy({
    metadata: { namespace: "race", name: "default-deny" },
    spec: { podSelector: {}, policyTypes: ["Egress", "Ingress"] },
  });
  engine.prepare();
  const local = new LocalPodAddresses(engine, NODE);
  const stats = new PacketStats();
  const judge = new PacketJudge(engine, { nodeName: NODE, denyMark: MARK }, stats, () => 0);
  judge.unknownEndpoint = (ip) => local.isUnknown(ip);
  return { engine, judge, stats, local };
}

const syn = (src: number[], dst: number[], port = 80) =>
  ipv4({ protocol: PROTO.TCP, src, dst }, tcpSyn(40000, port));

Deno.test("judge: a packet from or to an unknown local pod is held, not judged", () => {
  const { judge, stats } = cluster();
  const out = judge.judge(syn(NEW_POD, SERVER), 0, ETH_P_IP, 0);
  assert.equal(out.held, true, "from a pod we have not seen");
  assert.deepEqual(judge.heldPacket && { ...judge.heldPacket }, {
    family: 4,
    src: "10.244.2.2",
    dst: "10.244.1.1",
    protocol: "TCP",
    protocolNumber: 6,
    srcPort: 40000,
    dstPort: 80,
  });
  assert.equal(judge.judge(syn(SERVER, NEW_POD), 0, ETH_P_IP, 0).held, true, "to it");
  assert.equal(judge.judge(syn(REMOTE, NEW_POD), 0, ETH_P_IP, 0).held, true, "from off the node");
  assert.ok(stats.isEmpty, "nothing judged or counted yet");
  const known = judge.judge(syn(SERVER, REMOTE), 0, ETH_P_IP, 0);
  assert.equal(known.held, false, "known pod to a non-pod address: judged at once");
  assert.equal(judge.heldPacket, undefined);
  const node = judge.judge(syn([10, 244, 0, 1], SERVER), 0, ETH_P_IP, 0);
  assert.equal(node.held, false, "the node's own address is known");
});

Deno.test("judge: once the pod appears the held packet is judged with its own policies", () => {
  const { engine, judge } = cluster();
  judge.judge(syn(NEW_POD, SERVER), 0x10, ETH_P_IP, 0);
  const held = judge.heldPacket!;
  engine.upsertPod(pod("race", "new", "10.244.2.2"));
  const denied = judge.judgeParsed(held, 0x10, 0);
  assert.deepEqual({ ...denied }, {
    verdict: NF_REPEAT,
    mark: 0x10 | MARK,
    allowed: false,
    held: false,
  }, "default-deny egress in its namespace: refused");
  const r = judge.record(1);
  assert.equal(r.kind === "judged" && r.decision.egress.reason.kind, "denied");
  assert.equal(r.kind === "judged" && r.decision.srcPod, "race/new");

  engine.upsertPolicy({
    metadata: { namespace: "race", name: "allow-egress" },
    spec: { podSelector: {}, policyTypes: ["Egress"], egress: [{}] },
  });
  assert.equal(judge.judgeParsed(held, 0, 0).verdict, NF_ACCEPT, "allowed once a policy allows");
  // Without the hook (holding off) the same packet is judged at once, as before.
  judge.unknownEndpoint = undefined;
  assert.equal(judge.judge(syn([10, 244, 3, 3], SERVER), 0, ETH_P_IP, 0).held, false);
});

const CACHE_MARK = 0x200000;

Deno.test("verdict cache: a held packet is judged when released, marked only if the cache is current", () => {
  const { engine, judge } = cluster();
  // The worker emptied the cache for the state now: verdicts may carry the cache mark.
  judge.setCacheMarks(CACHE_MARK, CACHE_MARK);
  assert.equal(judge.judge(syn(NEW_POD, SERVER), 0x10, ETH_P_IP, 0).held, true);
  const packet = judge.heldPacket!;
  assert.equal(judge.heldPacketCacheable, true, "IPv4 TCP: the kernel's key is ours");

  // Its pod appears (a state change) and the packet is released before the cache was emptied
  // again: judged with the new state, and nothing remembered, since entries of the old state
  // may still be in the sets and this verdict would outlive the flush that removes them.
  engine.upsertPod(pod("race", "new", "10.244.2.2"));
  const before = judge.judgeParsed(packet, 0x10, 0, true);
  assert.deepEqual([before.verdict, before.mark, before.allowed], [NF_REPEAT, 0x10 | MARK, false]);
  const r = judge.record(1);
  assert.equal(r.kind === "judged" && r.decision.srcPod, "race/new", "the new state's pod");

  // Emptied for this state: the same release may be remembered (deny cache).
  judge.setCacheMarks(CACHE_MARK, CACHE_MARK);
  const after = judge.judgeParsed(packet, 0x10, 0, true);
  assert.deepEqual([after.verdict, after.mark], [NF_REPEAT, 0x10 | MARK | CACHE_MARK]);
  // A key the kernel would read elsewhere (decided when it was held) is never remembered.
  assert.equal(judge.judgeParsed(packet, 0x10, 0, false).mark, 0x10 | MARK);

  // An allowing change, released again before the flush: accepted, not handed back to be cached.
  engine.upsertPolicy({
    metadata: { namespace: "race", name: "allow-egress" },
    spec: { podSelector: {}, policyTypes: ["Egress"], egress: [{}] },
  });
  assert.equal(judge.judgeParsed(packet, 0, 0, true).verdict, NF_ACCEPT);
  judge.setCacheMarks(CACHE_MARK, CACHE_MARK);
  const allowed = judge.judgeParsed(packet, 0, 0, true);
  assert.deepEqual([allowed.verdict, allowed.mark], [NF_REPEAT, CACHE_MARK]);
});

Deno.test("judge memo: an address that turns unknown without a state change is held again", () => {
  const { judge, local } = cluster();
  let version = 0;
  judge.unknownVersion = () => version;
  // 10.244.2.2 is one of the node's interface addresses: known, judged, remembered by the memo.
  local.setInterfaceAddresses(["10.244.2.2"]);
  assert.equal(judge.judge(syn(SERVER, NEW_POD), 0, ETH_P_IP, 0).held, false);
  assert.equal(judge.judge(syn(SERVER, NEW_POD), 0, ETH_P_IP, 0).held, false);
  // The address leaves the interfaces (no engine change): the next packet must wait for a pod.
  local.setInterfaceAddresses([]);
  version++;
  assert.equal(judge.judge(syn(SERVER, NEW_POD), 0, ETH_P_IP, 0).held, true);
});

function held(id: number, since: number, src = "10.244.2.2", dst = "10.244.1.1"): HeldPacket {
  const packet: ParsedPacket = {
    family: 4,
    src,
    dst,
    protocol: "TCP",
    protocolNumber: 6,
    srcPort: 40000 + id,
    dstPort: 80,
  };
  return { id, mark: 0, packet, since };
}

Deno.test("held store: released when known, in any order; timed out oldest first", () => {
  const store = new HeldVerdicts(2000, 10);
  assert.equal(store.hold(held(1, 0)), undefined);
  assert.equal(store.hold(held(2, 100, "10.244.3.3")), undefined);
  assert.equal(store.hold(held(3, 200)), undefined);
  assert.equal(store.nextTimeoutIn(500), 1500);
  const unknown = new Set(["10.244.2.2", "10.244.3.3"]);
  assert.deepEqual(store.takeKnown((ip) => unknown.has(ip), 600), [], "nothing known yet");
  unknown.delete("10.244.2.2");
  assert.deepEqual(store.takeKnown((ip) => unknown.has(ip), 700).map((h) => h.id), [1, 3]);
  assert.equal(store.size, 1);
  assert.deepEqual(store.takeExpired(2099), [], "not yet");
  assert.deepEqual(store.takeExpired(2100).map((h) => h.id), [2]);
  assert.equal(store.nextTimeoutIn(2100), undefined);
  const snap = store.snapshot();
  assert.deepEqual(snap, {
    held: 3,
    timeouts: { timeout: 1, overflow: 0 },
    waitsMs: [700, 500],
    current: 0,
  });
  assert.equal(store.hasStats, false, "a snapshot starts the counts over");
});

Deno.test("held store: over the bound the oldest is released; half the queue is the bound", () => {
  assert.equal(maxHeldFor(4096), 2048);
  assert.equal(maxHeldFor(1), 1);
  const store = new HeldVerdicts(2000, 2);
  store.hold(held(1, 0));
  store.hold(held(2, 1));
  assert.equal(store.hold(held(3, 2))?.id, 1);
  assert.deepEqual(store.takeAll().map((h) => h.id), [2, 3]);
  assert.deepEqual(store.snapshot().timeouts, { timeout: 0, overflow: 1 });
  assert.throws(() => new HeldVerdicts(0, 1), /timeout must be > 0/);
});

Deno.test("release: --fail-open decides; the log line names the unknown address", () => {
  assert.equal(releaseVerdict(true), NF_ACCEPT);
  assert.equal(releaseVerdict(false), NF_DROP);
  const line = describeRelease(
    held(1, 0),
    "timeout",
    false,
    (ip) => ip === "10.244.2.2",
    2000,
  );
  assert.equal(
    line,
    "held packet released unjudged (no pod appeared for 10.244.2.2 within 2000 ms): " +
      "dropped (fail-closed) proto=TCP src=10.244.2.2:40001 dst=10.244.1.1:80",
  );
  assert.match(describeRelease(held(1, 0), "overflow", true, () => false, 5), /too many.*accepted/);
});

Deno.test("held metrics: counts, timeouts by reason, waits in seconds, held now", async () => {
  const metrics = new AgentMetrics();
  recordHeldStats(metrics, {
    held: 3,
    timeouts: { timeout: 1, overflow: 0 },
    waitsMs: [600, 250],
    current: 1,
  });
  const text = await metrics.registry.metrics();
  assert.match(text, /^kube_netpol_held_packets_total 3$/m);
  assert.match(text, /^kube_netpol_held_packet_timeouts_total\{reason="timeout"\} 1$/m);
  assert.match(text, /^kube_netpol_held_packet_wait_seconds_count 2$/m);
  assert.match(text, /^kube_netpol_held_packet_wait_seconds_sum 0.85$/m);
  assert.match(text, /^kube_netpol_held_packets 1$/m);
});
