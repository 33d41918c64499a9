/**
 * The nfnetlink_queue codec over real bytes: datagrams captured from a kernel queue in the lab
 * (tests/fixtures/netlink, each file says where it came from), and the verdict messages the
 * kernel must accept, checked byte for byte against the layout in linux/netfilter/nfnetlink_queue.h.
 */
import assert from "node:assert/strict";
import {
  encodeVerdict,
  NetlinkDecoder,
  type NetlinkSink,
  NF_ACCEPT,
  NF_DROP,
  NF_REPEAT,
  type QueuedPacket,
  VERDICT_MESSAGE_LEN,
  VERDICT_WITH_MARK_LEN,
  VerdictBatch,
} from "../src/netlink/nfqueue.ts";
import { parsePacket } from "../src/packet/parse.ts";

interface Fixture {
  packetId: number;
  hex: string;
}

function fixture(name: string): Uint8Array {
  const f = JSON.parse(
    Deno.readTextFileSync(new URL(`./fixtures/netlink/${name}`, import.meta.url)),
  ) as Fixture;
  return Uint8Array.from(f.hex.match(/../g)!.map((h) => parseInt(h, 16)));
}

interface Decoded {
  packets: (Omit<QueuedPacket, "payload"> & { payload: Uint8Array })[];
  errors: [number, number][];
  malformed: string[];
}

function decode(bytes: Uint8Array, length = bytes.length): Decoded {
  const out: Decoded = { packets: [], errors: [], malformed: [] };
  const sink: NetlinkSink = {
    packet: (p) => out.packets.push({ ...p, payload: p.payload.slice() }),
    error: (errno, seq) => out.errors.push([errno, seq]),
    malformed: (r) => out.malformed.push(r),
  };
  new NetlinkDecoder().decode(bytes, length, sink);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

Deno.test("a captured IPv4 TCP SYN decodes to its id, hook, mark and parsable payload", () => {
  const { packets, malformed } = decode(fixture("nfq-tcp4-syn.json"));
  assert.deepEqual(malformed, []);
  assert.equal(packets.length, 1);
  const p = packets[0]!;
  assert.equal(p.queueId, 4343);
  assert.equal(p.id, 1);
  assert.equal(p.hwProtocol, 0x0800);
  assert.equal(p.hook, 2); // NF_INET_FORWARD
  assert.equal(p.mark, 0x2a);
  assert.equal(p.payload.length, 60);
  assert.equal(p.wireLength, 60);
  const parsed = parsePacket(p.payload);
  assert.ok(parsed.ok);
  assert.equal(parsed.packet.src, "10.244.1.11");
  assert.equal(parsed.packet.dst, "10.244.1.12");
  assert.equal(parsed.packet.protocol, "TCP");
  assert.equal(parsed.packet.dstPort, 80);
});

Deno.test("a captured IPv6 UDP packet decodes with its IPv6 ethertype and payload", () => {
  const { packets } = decode(fixture("nfq-udp6.json"));
  const p = packets[0]!;
  assert.equal(p.id, 2);
  assert.equal(p.hwProtocol, 0x86dd);
  const parsed = parsePacket(p.payload);
  assert.ok(parsed.ok);
  assert.equal(parsed.packet.family, 6);
  assert.equal(parsed.packet.src, "fd00:10:244::1:11");
  assert.equal(parsed.packet.protocol, "UDP");
  assert.equal(parsed.packet.dstPort, 80);
});

Deno.test("packet ids are read big-endian", () => {
  const bytes = fixture("nfq-tcp4-syn.json");
  // NFQA_PACKET_HDR is the first attribute, right after nlmsghdr (16) + nfgenmsg (4) + nlattr (4).
  bytes.set([0x01, 0x02, 0x03, 0x04], 24);
  assert.equal(decode(bytes).packets[0]!.id, 0x01020304);
});

Deno.test("several messages in one datagram are all delivered, in order", () => {
  const { packets, malformed } = decode(
    concat(fixture("nfq-tcp4-syn.json"), fixture("nfq-udp6.json")),
  );
  assert.deepEqual(malformed, []);
  assert.deepEqual(packets.map((p) => p.id), [1, 2]);
});

Deno.test("a datagram cut short is reported as malformed, never misread", () => {
  const bytes = fixture("nfq-tcp4-syn.json");
  for (const cut of [0, 10, 16, 40, bytes.length - 1]) {
    const { packets, malformed } = decode(bytes, cut);
    assert.equal(packets.length, 0, `cut at ${cut}`);
    if (cut > 0) assert.equal(malformed.length, 1, `cut at ${cut}`);
  }
});

Deno.test("a bad attribute length stops decoding of that message", () => {
  const bytes = fixture("nfq-tcp4-syn.json");
  bytes[20] = 0xff; // first nlattr's length: past the end of the message
  bytes[21] = 0x7f;
  const { packets, malformed } = decode(bytes);
  assert.equal(packets.length, 0);
  assert.match(malformed[0]!, /attribute length/);
});

Deno.test("NLMSG_ERROR with a failure is reported with its errno; a plain ack is not", () => {
  const err = (code: number) => {
    const b = new Uint8Array(36);
    const v = new DataView(b.buffer);
    v.setUint32(0, 36, true);
    v.setUint16(4, 2, true); // NLMSG_ERROR
    v.setInt32(16, code, true);
    v.setUint32(28, 77, true); // the offending message's seq
    return b;
  };
  assert.deepEqual(decode(err(-2)).errors, [[2, 77]]); // ENOENT: verdict for an unknown id
  assert.deepEqual(decode(err(0)).errors, []);
});

/** The verdict message as the kernel expects it, spelled out field by field. */
function expectedVerdict(queue: number, id: number, verdict: number, mark?: number): number[] {
  const le32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24];
  const be32 = (n: number) => [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
  const len = mark === undefined ? 32 : 40;
  return [
    ...le32(len),
    0x01,
    0x03, // type: NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT, little-endian
    0x01,
    0x00, // flags: NLM_F_REQUEST
    ...le32(0), // seq
    ...le32(0), // pid
    0x00,
    0x00,
    queue >> 8,
    queue & 0xff, // nfgenmsg: AF_UNSPEC, v0, be16 queue
    12,
    0,
    2,
    0, // nlattr NFQA_VERDICT_HDR
    ...be32(verdict),
    ...be32(id),
    ...(mark === undefined ? [] : [8, 0, 3, 0, ...be32(mark)]), // nlattr NFQA_MARK
  ]; // deno-fmt-ignore
}

Deno.test("verdict messages match the kernel's layout byte for byte", () => {
  const buf = new Uint8Array(64);
  const view = new DataView(buf.buffer);
  assert.equal(encodeVerdict(view, 0, 4343, 7, NF_ACCEPT), VERDICT_MESSAGE_LEN);
  assert.deepEqual([...buf.subarray(0, 32)], expectedVerdict(4343, 7, NF_ACCEPT));
  assert.equal(encodeVerdict(view, 0, 100, 0xdeadbeef, NF_REPEAT, 0x8010002a), 40);
  assert.deepEqual(
    [...buf.subarray(0, 40)],
    expectedVerdict(100, 0xdeadbeef, NF_REPEAT, 0x8010002a),
  );
});

Deno.test("a verdict batch packs several verdicts into one datagram the decoder can walk", () => {
  const batch = new VerdictBatch(100, 3);
  assert.ok(batch.add(1, NF_ACCEPT));
  assert.ok(batch.add(2, NF_REPEAT, 0x100000));
  assert.ok(batch.add(3, NF_DROP));
  assert.equal(batch.add(4, NF_ACCEPT), false, "a full batch refuses more");
  assert.equal(batch.count, 3);
  assert.equal(batch.byteLength, VERDICT_MESSAGE_LEN * 2 + VERDICT_WITH_MARK_LEN);
  const bytes = batch.buffer.subarray(0, batch.byteLength);
  assert.deepEqual([...bytes], [
    ...expectedVerdict(100, 1, NF_ACCEPT),
    ...expectedVerdict(100, 2, NF_REPEAT, 0x100000),
    ...expectedVerdict(100, 3, NF_DROP),
  ]);
  batch.clear();
  assert.equal(batch.count, 0);
  assert.equal(batch.byteLength, 0);
});
