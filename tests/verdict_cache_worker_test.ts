/**
 * The verdict worker's half of the kernel verdict cache, without a kernel: which verdicts carry
 * the cache mark, the flush messages on the wire, how acknowledgements and failures are read, and
 * when the worker may mark verdicts at all (only once every applied change was flushed out).
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import { NF_ACCEPT, NF_DROP, NF_REPEAT } from "../src/netlink/nfqueue.ts";
import { PacketJudge } from "../src/verdict/packet_judge.ts";
import { PacketStats } from "../src/verdict/verdict_stats.ts";
import {
  cacheable,
  CacheFlusher,
  FLUSH_RETRY_MS,
  type FlushResult,
  type NetlinkIO,
  WorkerCache,
} from "../src/verdict/verdict_cache.ts";
import { decodeAcks, encodeFlush } from "../src/netlink/set_flush.ts";
import { parsePacket } from "../src/packet/parse.ts";
import { ipv4, ipv6, optionsHeader, PROTO, tcpSyn } from "./fixtures/packets/build.ts";
import { parseRunFlags } from "../src/cli/run.ts";

const NODE = "node-1";
const DENY = 0x100000;
const CACHE = 0x200000;
const A = [10, 0, 0, 1], B = [10, 0, 0, 2], C = [10, 0, 0, 3];

function engine(): PolicyEngine {
  const e = new PolicyEngine();
  e.upsertNamespace({ metadata: { name: "x" } });
  for (const [name, ip] of [["a", "10.0.0.1"], ["b", "10.0.0.2"]]) {
    e.upsertPod({
      metadata: { namespace: "x", name: name!, labels: { pod: name! } },
      spec: { nodeName: NODE },
      status: { phase: "Running", podIP: ip },
    });
  }
  e.upsertPolicy({
    metadata: { namespace: "x", name: "b-from-a" },
    spec: {
      podSelector: { matchLabels: { pod: "b" } },
      ingress: [{ from: [{ podSelector: { matchLabels: { pod: "a" } } }] }],
    },
  });
  e.prepare();
  return e;
}

const tcp4 = (src: number[], dst: number[]) =>
  ipv4({ protocol: PROTO.TCP, src, dst }, tcpSyn(40000, 80));

Deno.test("cacheable: TCP, UDP, SCTP over IPv4, or IPv6 without extension headers", () => {
  const ok = (bytes: Uint8Array) => {
    const p = parsePacket(bytes);
    assert.ok(p.ok);
    return cacheable(bytes, p.packet);
  };
  assert.equal(ok(tcp4(A, B)), true);
  assert.equal(ok(ipv4({ protocol: PROTO.UDP, src: A, dst: B }, tcpSyn(1, 53))), true);
  assert.equal(ok(ipv4({ protocol: PROTO.SCTP, src: A, dst: B }, tcpSyn(1, 9))), true);
  assert.equal(ok(ipv4({ protocol: PROTO.ICMP, src: A, dst: B }, [8, 0, 0, 0, 0, 1, 0, 1])), false);
  assert.equal(ok(ipv6(PROTO.TCP, tcpSyn(1, 80))), true);
  // The kernel's lookup could read the port somewhere else behind an extension header chain.
  assert.equal(ok(ipv6(PROTO.DST, [...optionsHeader(PROTO.TCP), ...tcpSyn(1, 80)])), false);
  assert.equal(ok(ipv6(PROTO.HOP, [...optionsHeader(PROTO.UDP), ...tcpSyn(1, 80)])), false);
});

Deno.test("judge: cache marks on cacheable verdicts only, and only while the cache is current", () => {
  const judge = new PacketJudge(engine(), { nodeName: NODE, denyMark: DENY }, new PacketStats());
  // Off (the default): the historical verdicts.
  assert.equal(judge.judge(tcp4(A, B), 0, 0x800, 0).verdict, NF_ACCEPT);
  judge.setCacheMarks(CACHE, CACHE);
  const allow = judge.judge(tcp4(A, B), 0x4000, 0x800, 0);
  assert.deepEqual([allow.verdict, allow.mark, allow.allowed], [NF_REPEAT, 0x204000, true]);
  const deny = judge.judge(tcp4(C, B), 0, 0x800, 0);
  assert.deepEqual([deny.verdict, deny.mark, deny.allowed], [NF_REPEAT, DENY | CACHE, false]);
  // An IPv6 packet with an extension header is judged, never remembered.
  const ext = ipv6(PROTO.DST, [...optionsHeader(PROTO.TCP), ...tcpSyn(1, 80)]);
  const v = judge.judge(ext, 0, 0x86dd, 0);
  assert.equal(v.mark === undefined || (v.mark & CACHE) === 0, true);
  // Denies not cached: the deny mark alone.
  judge.setCacheMarks(CACHE, 0);
  const d2 = judge.judge(tcp4(C, B), 0, 0x800, 0);
  assert.deepEqual([d2.verdict, d2.mark], [NF_REPEAT, DENY]);
  judge.setCacheMarks(0, 0);
  assert.equal(judge.judge(tcp4(A, B), 0, 0x800, 0).verdict, NF_ACCEPT);
  // Unparsable packets are dropped, never remembered.
  judge.setCacheMarks(CACHE, CACHE);
  const bad = judge.judge(new Uint8Array([0x45, 0]), 0, 0x800, 0);
  assert.deepEqual([bad.verdict, bad.mark], [NF_DROP, undefined]);
});

Deno.test("flush messages: ipset FLUSH per set; nft DELSETELEM without elements in one batch", () => {
  const ip = encodeFlush({ kind: "ipset", sets: ["kube-netpol-cache-allow-v4"] }, 7);
  const v = new DataView(ip.bytes.buffer);
  assert.equal(v.getUint32(0, true), ip.bytes.length);
  assert.equal(v.getUint16(4, true), (6 << 8) | 4); // NFNL_SUBSYS_IPSET, IPSET_CMD_FLUSH
  assert.equal(v.getUint16(6, true), 1 | 4); // NLM_F_REQUEST | NLM_F_ACK
  assert.equal(v.getUint32(8, true), 7);
  assert.deepEqual([...ip.acks], [[7, "kube-netpol-cache-allow-v4"]]);
  const name = new TextDecoder().decode(ip.bytes.subarray(32, 32 + 27));
  assert.equal(name, "kube-netpol-cache-allow-v4\0");

  const nft = encodeFlush(
    { kind: "nftables", table: "kube-netpol", sets: ["cache-allow-v4", "cache-deny-v4"] },
    100,
  );
  const types: number[] = [];
  const nv = new DataView(nft.bytes.buffer);
  for (let off = 0; off < nft.bytes.length; off += (nv.getUint32(off, true) + 3) & ~3) {
    types.push(nv.getUint16(off + 4, true));
  }
  assert.deepEqual(types, [0x10, (10 << 8) | 14, (10 << 8) | 14, 0x11]);
  assert.deepEqual([...nft.acks.keys()], [101, 102]);
  assert.throws(() => encodeFlush({ kind: "ipset", sets: ["x".repeat(32)] }, 1), /not a valid/);
});

/** An NLMSG_ERROR answer to request `seq` with `errno` (0 = acknowledgement). */
function ack(seq: number, errno: number): Uint8Array {
  const b = new Uint8Array(36);
  const v = new DataView(b.buffer);
  v.setUint32(0, 36, true);
  v.setUint16(4, 2, true); // NLMSG_ERROR
  v.setInt32(16, -errno, true);
  v.setUint32(20, 16, true);
  v.setUint32(28, seq, true);
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A socket that answers each send with `reply(seqs)` (datagrams), recording the sends. */
class FakeIO implements NetlinkIO {
  sent: Uint8Array[] = [];
  private queue: Uint8Array[] = [];
  constructor(private readonly reply: (seqs: number[]) => Uint8Array[]) {}
  send(bytes: Uint8Array): void {
    this.sent.push(bytes);
    const v = new DataView(bytes.buffer);
    const seqs: number[] = [];
    for (let off = 0; off < bytes.length; off += (v.getUint32(off, true) + 3) & ~3) {
      if (v.getUint16(off + 6, true) & 4) seqs.push(v.getUint32(off + 8, true));
    }
    this.queue.push(...this.reply(seqs));
  }
  recv(buf: Uint8Array): number {
    const d = this.queue.shift();
    if (!d) return 0;
    buf.set(d);
    return d.length;
  }
}

Deno.test("flusher: every set acknowledged; a missing set holds nothing; errors and silence fail", () => {
  const target = { kind: "ipset" as const, sets: ["s1", "s2"] };
  assert.deepEqual(new CacheFlusher(target, new FakeIO((s) => s.map((q) => ack(q, 0)))).flush(), {
    ok: true,
  });
  // Both answers in one datagram, one of them ENOENT (no such set): fine.
  const one = new FakeIO((s) => [concat(ack(s[0]!, 0), ack(s[1]!, 2))]);
  assert.deepEqual(new CacheFlusher(target, one).flush(), { ok: true });
  const eperm = new CacheFlusher(target, new FakeIO((s) => [ack(s[0]!, 0), ack(s[1]!, 1)])).flush();
  assert.equal(eperm.ok, false);
  assert.match((eperm as { error: string }).error, /s2: errno 1/);
  const silent = new CacheFlusher(target, new FakeIO(() => [])).flush();
  assert.match((silent as { error: string }).error, /no answer for s1, s2/);
  // A late answer to an earlier attempt is not taken for this one.
  let first = true;
  const late = new FakeIO((s) => {
    if (first) {
      first = false;
      return [];
    }
    return [ack(s[0]! - 4, 0), ...s.map((q) => ack(q, 0))];
  });
  const f = new CacheFlusher(target, late);
  assert.equal(f.flush().ok, false);
  assert.deepEqual(f.flush(), { ok: true });
  assert.deepEqual([...decodeAcks(ack(5, 0), 36)], [[5, 0]]);
});

Deno.test("worker cache: marks only after every applied change was flushed; failures retry later", () => {
  const results: FlushResult[] = [];
  let flushes = 0;
  const c = new WorkerCache({
    flush: () => {
      flushes++;
      return results.shift() ?? { ok: true };
    },
  });
  assert.equal(c.usable, false, "nothing is marked before the first flush");
  assert.equal(c.beforeJudging(0), true);
  assert.equal(c.usable, true);
  assert.equal(c.beforeJudging(1), false, "no change, no flush");
  c.stateChanged();
  assert.equal(c.usable, false, "a change makes every earlier verdict unusable at once");
  results.push({ ok: false, error: "EPERM" });
  assert.equal(c.beforeJudging(2), false);
  assert.equal(c.usable, false);
  assert.equal(c.takeFailure(), "EPERM");
  assert.equal(c.takeFailure(), undefined);
  assert.equal(c.beforeJudging(3), false, "retried no sooner than FLUSH_RETRY_MS");
  assert.equal(flushes, 2);
  assert.equal(c.beforeJudging(2 + FLUSH_RETRY_MS), true);
  assert.equal(c.usable, true);
  c.miss();
  c.miss();
  assert.deepEqual(c.drain(), { misses: 2, invalidations: 2, failures: 1 });
  assert.equal(c.drain(), undefined);
});

Deno.test("run flags: the cache is on by default, bounded, and can be turned off", () => {
  const on = parseRunFlags(["--hostname-override", "n"]);
  assert.ok(on !== "help");
  assert.deepEqual(on.verdictCache, {
    mark: 0x200000,
    timeoutSeconds: 10,
    maxEntries: 65536,
    denies: true,
  });
  const off = parseRunFlags(["--hostname-override", "n", "--verdict-cache=false"]);
  assert.ok(off !== "help");
  assert.equal(off.verdictCache, undefined);
  const custom = parseRunFlags([
    "--hostname-override",
    "n",
    "--verdict-cache-timeout",
    "1m",
    "--verdict-cache-max-entries",
    "1000",
    "--verdict-cache-denies=false",
    "--verdict-cache-mark",
    "0x400",
  ]);
  assert.ok(custom !== "help");
  assert.deepEqual(custom.verdictCache, {
    mark: 0x400,
    timeoutSeconds: 60,
    maxEntries: 1000,
    denies: false,
  });
  assert.throws(
    () => parseRunFlags(["--hostname-override", "n", "--verdict-cache-timeout", "1500ms"]),
    /whole seconds/,
  );
  assert.throws(
    () => parseRunFlags(["--hostname-override", "n", "--verdict-cache-mark", "0x100000"]),
    /overlaps the deny mark/,
  );
  // Strict mode's ct mark bit stays apart from the cache's packet mark bit (a CNI restoring ct
  // marks into packet marks would otherwise make a cut connection's packets skip the queue).
  assert.throws(
    () => parseRunFlags(["--hostname-override", "n", "--verdict-cache-mark", "0x400000"]),
    /overlaps the cut mark/,
  );
  assert.throws(
    () => parseRunFlags(["--hostname-override", "n", "--cut-mark", "0x200000"]),
    /overlaps the cut mark/,
  );
  const strictOff = parseRunFlags([
    "--hostname-override",
    "n",
    "--strict-mode=false",
    "--verdict-cache-mark",
    "0x400000",
  ]);
  assert.ok(strictOff !== "help");
  assert.equal(strictOff.verdictCache?.mark, 0x400000, "no cut mark without strict mode");
});

Deno.test("judge memo: a key judged in this generation is not evaluated again; a change forgets it", () => {
  const e = engine();
  let evaluations = 0;
  const evaluate = e.evaluate.bind(e);
  e.evaluate = (conn, node) => {
    evaluations++;
    return evaluate(conn, node);
  };
  const judge = new PacketJudge(e, { nodeName: NODE, denyMark: DENY }, new PacketStats());
  const syn = (srcPort: number) =>
    ipv4({ protocol: PROTO.TCP, src: A, dst: B }, tcpSyn(srcPort, 80));
  assert.equal(judge.judge(syn(40000), 0, 0x800, 0).verdict, NF_ACCEPT);
  assert.equal(judge.judge(syn(40001), 0, 0x800, 0).verdict, NF_ACCEPT);
  assert.equal(evaluations, 1, "the second connection of the same key came from the memo");
  // The record of a remembered verdict still names the packet's own ports.
  const r = judge.record(0);
  assert.ok(r.kind === "judged");
  assert.deepEqual([r.src, r.srcPort, r.dst, r.dstPort], ["10.0.0.1", 40001, "10.0.0.2", 80]);
  // A denied key is remembered with its refusal (a fresh mark each time).
  const fromC = (mark: number) =>
    judge.judge(ipv4({ protocol: PROTO.TCP, src: C, dst: B }, tcpSyn(1, 80)), mark, 0x800, 0);
  assert.deepEqual([fromC(0).mark, fromC(0x4000).mark], [DENY, DENY | 0x4000]);
  assert.equal(evaluations, 2);
  // Any state change: judged afresh, with the new state.
  e.upsertPolicy({
    metadata: { namespace: "x", name: "b-from-a" },
    spec: { podSelector: { matchLabels: { pod: "b" } }, ingress: [] },
  });
  e.prepare();
  assert.equal(judge.judge(syn(40002), 0, 0x800, 0).allowed, false);
  assert.equal(evaluations, 3);
  // Not served from the memo: IPv6, and packets the parser would refuse (a fragment).
  judge.judge(ipv6(PROTO.TCP, tcpSyn(1, 80)), 0, 0x86dd, 0);
  judge.judge(ipv6(PROTO.TCP, tcpSyn(2, 80)), 0, 0x86dd, 0);
  assert.equal(evaluations, 5);
  const fragment = ipv4(
    { protocol: PROTO.TCP, src: A, dst: B, flagsFragment: 0x0010 },
    tcpSyn(3, 80),
  );
  assert.equal(judge.judge(fragment, 0, 0x800, 0).verdict, NF_DROP);
});
