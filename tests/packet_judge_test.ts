/**
 * PacketJudge without a queue: bytes in, netfilter verdict out, on a two-pod engine where x/b
 * accepts TCP/UDP 80 only from x/a and x/c is not a pod. Also the unit of the timing metrics
 * (microseconds) through an injected clock, and the deny log's record gate.
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import type { Pod } from "../src/policy/types.ts";
import { NF_ACCEPT, NF_DROP, NF_REPEAT } from "../src/netlink/nfqueue.ts";
import { PacketJudge } from "../src/verdict/packet_judge.ts";
import { PacketStats, recordSnapshot } from "../src/verdict/verdict_stats.ts";
import { AgentMetrics } from "../src/metrics.ts";
import { DenyLog, RecordGate } from "../src/verdict/deny_log.ts";
import type { Logger } from "../src/log.ts";
import { ipv4, ipv6, optionsHeader, PROTO, tcpSyn } from "./fixtures/packets/build.ts";

const NODE = "node-1";
const MARK = 0x100000;
const A = [10, 0, 0, 1], B = [10, 0, 0, 2], C = [10, 0, 0, 3];
const A6 = [0xfd, 0, ...new Array<number>(13).fill(0), 1];
const B6 = [0xfd, 0, ...new Array<number>(13).fill(0), 2];
const ETH_P_IP = 0x0800, ETH_P_IPV6 = 0x86dd;

function pod(name: string, ips: string[]): Pod {
  return {
    metadata: { namespace: "x", name, labels: { pod: name } },
    spec: { nodeName: NODE },
    status: { phase: "Running", podIP: ips[0], podIPs: ips.map((ip) => ({ ip })) },
  };
}

function engine(): PolicyEngine {
  const e = new PolicyEngine();
  e.upsertNamespace({ metadata: { name: "x" } });
  e.upsertPod(pod("a", ["10.0.0.1", "fd00::1"]));
  e.upsertPod(pod("b", ["10.0.0.2", "fd00::2"]));
  e.upsertPolicy({
    metadata: { namespace: "x", name: "b-from-a" },
    spec: {
      podSelector: { matchLabels: { pod: "b" } },
      ingress: [{
        from: [{ podSelector: { matchLabels: { pod: "a" } } }],
        ports: [{ protocol: "TCP", port: 80 }, { protocol: "UDP", port: 80 }],
      }],
    },
  });
  e.prepare();
  return e;
}

/** A judge with a clock the test moves by hand (milliseconds, like performance.now). */
function setup(e = engine()) {
  const stats = new PacketStats();
  const clock = { now: 1000 };
  const judge = new PacketJudge(e, { nodeName: NODE, denyMark: MARK }, stats, () => clock.now);
  return { judge, stats, clock };
}

const tcp4 = (src: number[], dst: number[], port: number) =>
  ipv4({ protocol: PROTO.TCP, src, dst }, tcpSyn(40000, port));
const udp4 = (src: number[], dst: number[], port: number) =>
  ipv4({ protocol: PROTO.UDP, src, dst }, tcpSyn(40000, port));

Deno.test("allowed: accept, no mark, an allow record with the decision", () => {
  const { judge } = setup();
  const v = judge.judge(tcp4(A, B, 80), 0, ETH_P_IP, 1000);
  assert.deepEqual({ ...v }, { verdict: NF_ACCEPT, mark: undefined, allowed: true, held: false });
  const r = judge.record(5);
  assert.equal(r.kind, "judged");
  assert.equal(r.kind === "judged" && r.decision.ingress.reason.kind, "allowed");
  assert.deepEqual(
    { src: r.src, dst: r.dst, dstPort: r.dstPort, protocol: r.protocol, verdict: r.verdict },
    { src: "10.0.0.1", dst: "10.0.0.2", dstPort: 80, protocol: "TCP", verdict: "allow" },
  );
});

Deno.test("denied TCP and UDP: repeat with the deny mark added to the packet's own mark", () => {
  const { judge } = setup();
  for (const bytes of [tcp4(C, B, 80), udp4(C, B, 80), tcp4(A, B, 81)]) {
    const v = judge.judge(bytes, 0x4000, ETH_P_IP, 1000);
    assert.deepEqual({ ...v }, {
      verdict: NF_REPEAT,
      mark: 0x4000 | MARK,
      allowed: false,
      held: false,
    });
  }
  // A mark with the top bit set stays an unsigned 32-bit value.
  const v = judge.judge(tcp4(C, B, 80), 0x80000000, ETH_P_IP, 1000);
  assert.equal(v.mark, (0x80000000 | MARK) >>> 0);
});

Deno.test("denied other protocols: drop (no reject exists for them)", () => {
  const { judge } = setup();
  const icmp = ipv4({ protocol: PROTO.ICMP, src: C, dst: B }, [8, 0, 0, 0, 0, 0, 0, 0]);
  const sctp = ipv4({ protocol: PROTO.SCTP, src: A, dst: B }, tcpSyn(1, 80));
  for (const bytes of [icmp, sctp]) {
    const v = judge.judge(bytes, 0, ETH_P_IP, 1000);
    assert.deepEqual({ ...v }, { verdict: NF_DROP, mark: undefined, allowed: false, held: false });
  }
});

Deno.test("unparsable packets are denied (dropped), counted by reason, recorded with addresses", () => {
  const { judge, stats } = setup();
  // An IPv6 SYN from the allowed pod whose transport lies past the captured bytes: before the fix
  // the agent's 128-byte copy produced exactly this, and fail-open accepted it.
  const whole = ipv6(PROTO.DST, [...optionsHeader(PROTO.TCP, 31), ...tcpSyn(40000, 80)], {
    src: A6,
    dst: B6,
  });
  assert.equal(judge.judge(whole, 0, ETH_P_IPV6, 1000).verdict, NF_ACCEPT, "whole: judged");
  const v = judge.judge(whole.subarray(0, 128), 0, ETH_P_IPV6, 1000);
  assert.deepEqual({ ...v }, { verdict: NF_DROP, mark: undefined, allowed: false, held: false });
  assert.deepEqual(judge.record(7), {
    kind: "unjudged",
    time: 7,
    verdict: "deny",
    reason: "truncated",
    family: 6,
    src: "fd00::1",
    dst: "fd00::2",
  });
  // Nothing readable: the family comes from the frame's EtherType.
  assert.equal(judge.judge(new Uint8Array([0x45, 0]), 0, ETH_P_IP, 1000).verdict, NF_DROP);
  assert.deepEqual(judge.record(8), {
    kind: "unjudged",
    time: 8,
    verdict: "deny",
    reason: "truncated",
    family: 4,
  });
  assert.equal(judge.judge(new Uint8Array([0x70]), 0, ETH_P_IPV6, 1000).verdict, NF_DROP);
  const snap = stats.drain();
  assert.deepEqual(snap.parseFailures, { truncated: 2, "bad-version": 1 });
  assert.equal(snap.durations["deny|unparsed|6"]?.length, 2);
  assert.equal(snap.durations["deny|unparsed|4"]?.length, 1);
  assert.equal(snap.durations["allow|TCP|6"]?.length, 1);
});

Deno.test("an engine failure denies: refused for TCP/UDP, counted, recorded with the error", () => {
  const broken = engine();
  broken.evaluate = () => {
    throw new Error("boom");
  };
  const { judge, stats } = setup(broken);
  const v = judge.judge(tcp4(A, B, 80), 0, ETH_P_IP, 1000);
  assert.deepEqual({ ...v }, { verdict: NF_REPEAT, mark: MARK, allowed: false, held: false });
  const icmp = ipv4({ protocol: PROTO.ICMP, src: A, dst: B }, [8, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(judge.judge(icmp, 0, ETH_P_IP, 1000).verdict, NF_DROP);
  const r = judge.record(1);
  assert.equal(r.kind, "unjudged");
  assert.equal(r.kind === "unjudged" && r.error, "boom");
  assert.equal(r.src, "10.0.0.1");
  assert.deepEqual(stats.drain().parseFailures, { "evaluation-error": 2 });
});

Deno.test("processing time is recorded in microseconds, into the histogram's microsecond buckets", async () => {
  const { judge, stats, clock } = setup();
  clock.now = 1000.25; // 0.25 ms after the packet was received at 1000
  judge.judge(tcp4(A, B, 80), 0, ETH_P_IP, 1000);
  clock.now = 1003; // 3 ms
  judge.judge(tcp4(C, B, 80), 0, ETH_P_IP, 1000);
  const snap = stats.drain();
  assert.deepEqual(snap.durations, { "allow|TCP|4": [250], "deny|TCP|4": [3000] });

  const metrics = new AgentMetrics();
  recordSnapshot(metrics, snap);
  const text = await metrics.registry.metrics();
  const bucket = (verdict: string, le: number) =>
    Number(
      new RegExp(
        `packet_process_time_bucket\\{le="${le}",verdict="${verdict}",protocol="TCP",family="4"\\} (\\d+)`,
      ).exec(text)?.[1],
    );
  assert.equal(bucket("allow", 200), 0);
  assert.equal(bucket("allow", 500), 1);
  assert.equal(bucket("deny", 2000), 0);
  assert.equal(bucket("deny", 5000), 1);
  assert.match(text, /packet_process_duration_microseconds_sum 3250\n/);
});

Deno.test("record gate: denies always (rate-limited, the rest counted), allows only when logged", () => {
  let now = 0;
  const gate = new RecordGate({ denyPerSecond: 2, logAllows: false, clock: () => now });
  const admitted = Array.from({ length: 6 }, () => gate.admit(false)).filter(Boolean).length;
  assert.equal(admitted, 4, "a burst of twice the rate");
  assert.equal(gate.admit(true), false, "allows are not recorded below -v=4");
  assert.equal(gate.takeDeniesHeldBack(), 2);
  now += 1000;
  assert.equal(gate.admit(false), true, "refilled");
  assert.deepEqual(gate.takeHeldBack(), { denies: 0, allows: 0 });
  const verbose = new RecordGate({ denyPerSecond: 1, logAllows: true, clock: () => now });
  assert.equal(verbose.admit(true), true);
});

Deno.test("deny log: one line per record, held-back counts summarized", () => {
  const lines: [string, string, Record<string, unknown>][] = [];
  const logger = (level: string): Logger["info"] => (msg, fields) =>
    lines.push([level, msg, fields ?? {}]);
  const log: Logger = {
    info: logger("info"),
    warn: logger("warn"),
    error: logger("error"),
    v: (n: number) => ({ enabled: n <= 2, info: n <= 2 ? logger("info") : () => {} }),
    with: () => log,
  };
  const { judge } = setup();
  judge.judge(tcp4(C, B, 80), 0, ETH_P_IP, 1000);
  const deny = { ...judge.record(1), suppressedBefore: 3 };
  judge.judge(tcp4(A, B, 80), 0, ETH_P_IP, 1000);
  const allow = judge.record(2);
  const v6 = ipv6(PROTO.DST, [...optionsHeader(PROTO.TCP, 31), ...tcpSyn(1, 80)], {
    src: A6,
    dst: B6,
  });
  judge.judge(v6.subarray(0, 100), 0, ETH_P_IPV6, 1000);
  const unparsed = judge.record(3);
  new DenyLog(log).write([deny, allow, unparsed], { denies: 5, allows: 0 });
  assert.deepEqual(lines.map(([level, msg]) => `${level} ${msg}`), [
    "info connection denied",
    "warn unparsable packet denied",
    "info deny log lines suppressed by rate limit",
  ]);
  assert.equal(lines[0]![2].src, "10.0.0.3:40000");
  assert.equal(lines[0]![2].dst, "10.0.0.2:80");
  assert.equal(lines[0]![2].suppressedBefore, 3);
  assert.match(String(lines[0]![2].why), /x\/b-from-a/);
  assert.deepEqual(lines[1]![2], {
    verdict: "deny",
    reason: "truncated",
    family: 6,
    proto: "-",
    src: "fd00::1",
    dst: "fd00::2",
  });
  assert.equal(lines[2]![2].count, 5);
});
