/**
 * The ctnetlink codec over real bytes: requests our encoder built and the kernel's answers to
 * them, captured in a throwaway netns (tests/fixtures/conntrack, made by
 * e2e/lab/capture_conntrack_fixtures.ts; each file says how). The encoder must reproduce the
 * captured requests byte for byte, and the decoder must read the kernel's datagrams.
 */
import assert from "node:assert/strict";
import {
  type ConntrackEntry,
  type ConntrackSink,
  decodeConntrackMessages,
  encodeDelete,
  encodeDumpRequest,
  encodeMarkUpdate,
  encodeOrigTupleAttr,
} from "../src/netlink/conntrack.ts";

interface Fixture {
  request?: string;
  replies?: string[];
  reply?: string;
  missingRequest?: string;
  missingReply?: string;
  dumpAfter?: string[];
}

function fixture(name: string): Fixture {
  return JSON.parse(
    Deno.readTextFileSync(new URL(`./fixtures/conntrack/${name}`, import.meta.url)),
  ) as Fixture;
}

function bytes(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g)!.map((h) => parseInt(h, 16)));
}

interface Decoded {
  entries: [ConntrackEntry, number][];
  acks: [number, number][];
  done: number[];
  malformed: string[];
}

function decode(...datagrams: Uint8Array[]): Decoded {
  const out: Decoded = { entries: [], acks: [], done: [], malformed: [] };
  const sink: ConntrackSink = {
    entry: (e, seq) => out.entries.push([e, seq]),
    ack: (errno, seq) => out.acks.push([errno, seq]),
    done: (seq) => out.done.push(seq),
    malformed: (r) => out.malformed.push(r),
  };
  for (const d of datagrams) decodeConntrackMessages(d, d.length, sink);
  return out;
}

/** The fields a reader checks, without the raw tuple bytes. */
function plain(e: ConntrackEntry) {
  const { origAttr: _, ...rest } = e;
  return rest;
}

Deno.test("conntrack codec: dump requests are byte-identical to the captured ones", () => {
  assert.deepEqual(
    encodeDumpRequest(1, 4, { ip: "10.0.0.1", side: "orig-src" }),
    bytes(fixture("dump-v4-orig-src.json").request!),
  );
  assert.deepEqual(
    encodeDumpRequest(1, 4, { ip: "10.0.0.1", side: "reply-src" }),
    bytes(fixture("dump-v4-reply-src.json").request!),
  );
  assert.deepEqual(encodeDumpRequest(1, 6), bytes(fixture("dump-v6.json").request!));
  // Any spelling of the address encodes the same bytes.
  assert.deepEqual(
    encodeDumpRequest(1, 6, { ip: "fd00:0::1", side: "orig-src" }),
    bytes(fixture("dump-v6-filter-inverted.json").request!),
  );
  assert.throws(() => encodeDumpRequest(1, 4, { ip: "10.0.0", side: "orig-src" }), /not an IP/);
  assert.throws(() => encodeDumpRequest(1, 4, { ip: "fd00::1", side: "orig-src" }), /IPv4/);
});

Deno.test("conntrack codec: a dump filtered on an original source (IPv4)", () => {
  const d = decode(...fixture("dump-v4-orig-src.json").replies!.map(bytes));
  assert.deepEqual(d.malformed, []);
  assert.deepEqual(d.done, [1]);
  // Hash-table order: sorted here by protocol number.
  const sorted = d.entries.sort(([a], [b]) => a.orig.protocolNumber - b.orig.protocolNumber);
  assert.deepEqual(sorted.map(([e, seq]) => [plain(e), seq]), [
    [{
      family: 4,
      orig: {
        src: "10.0.0.1",
        dst: "10.0.0.9",
        protocolNumber: 1,
        srcPort: 0,
        dstPort: 0,
        icmp: { id: 77, type: 8, code: 0 },
      },
      reply: {
        src: "10.0.0.9",
        dst: "10.0.0.1",
        protocolNumber: 1,
        srcPort: 0,
        dstPort: 0,
        icmp: { id: 77, type: 0, code: 0 },
      },
      mark: 0,
      zone: 0,
    }, 1],
    [{
      family: 4,
      orig: { src: "10.0.0.1", dst: "10.0.0.2", protocolNumber: 6, srcPort: 1234, dstPort: 80 },
      reply: { src: "10.0.0.2", dst: "10.0.0.1", protocolNumber: 6, srcPort: 80, dstPort: 1234 },
      mark: 5,
      zone: 0,
    }, 1],
  ]);
});

Deno.test("conntrack codec: a dump filtered on a reply source holds the entries towards it", () => {
  const d = decode(...fixture("dump-v4-reply-src.json").replies!.map(bytes));
  assert.deepEqual(d.entries.map(([e]) => [e.orig.src, e.orig.dst, e.orig.dstPort, e.reply.src]), [
    ["10.0.0.3", "10.0.0.1", 22, "10.0.0.1"],
  ]);
});

Deno.test("conntrack codec: IPv6 entries, a zone and ICMPv6", () => {
  const d = decode(...fixture("dump-v6.json").replies!.map(bytes));
  assert.deepEqual(d.malformed, []);
  assert.equal(d.entries.length, 3);
  const byProto = new Map(
    d.entries.filter(([e]) => e.orig.src === "fd00::1").map(([e]) => [e.orig.protocolNumber, e]),
  );
  const udp = byProto.get(17)!;
  assert.deepEqual(plain(udp), {
    family: 6,
    orig: { src: "fd00::1", dst: "fd00::2", protocolNumber: 17, srcPort: 4000, dstPort: 81 },
    reply: { src: "fd00::2", dst: "fd00::1", protocolNumber: 17, srcPort: 81, dstPort: 4000 },
    mark: 0,
    zone: 3,
  });
  const icmp = byProto.get(58)!;
  assert.deepEqual(icmp.orig.icmp, { id: 9, type: 128, code: 0 });
  assert.equal(icmp.zone, 0);
});

Deno.test("conntrack codec: the kernel's IPv6 address filter is inverted (why it is not used)", () => {
  const d = decode(...fixture("dump-v6-filter-inverted.json").replies!.map(bytes));
  // Asked for original source fd00::1, the kernel sent the one entry that does NOT have it.
  assert.deepEqual(d.entries.map(([e]) => e.orig.src), ["fd00::3"]);
});

Deno.test("conntrack codec: the mark update the kernel acked, and ENOENT for a missing entry", () => {
  const f = fixture("mark-update.json");
  const tcp = decode(...fixture("dump-v4-orig-src.json").replies!.map(bytes)).entries
    .map(([e]) => e).find((e) => e.orig.protocolNumber === 6);
  assert.deepEqual(encodeMarkUpdate(2, tcp!, 0x400000, 0x400000), bytes(f.request!));
  assert.deepEqual(decode(bytes(f.reply!)).acks, [[0, 2]]);
  assert.deepEqual(decode(bytes(f.missingReply!)).acks, [[2, 3]]);
  // The kernel kept the other component's bit: 5 | 0x400000.
  const after = decode(...f.dumpAfter!.map(bytes)).entries.map(([e]) => e)
    .find((e) => e.orig.protocolNumber === 6)!;
  assert.equal(after.mark, 0x400005);
  assert.throws(() => encodeMarkUpdate(2, tcp!, 0x1, 0x400000), /within its mask/);
});

Deno.test("conntrack codec: a tuple encoded from its fields equals the kernel's own bytes", () => {
  const entries = [
    ...decode(...fixture("dump-v4-orig-src.json").replies!.map(bytes)).entries,
    ...decode(...fixture("dump-v6.json").replies!.map(bytes)).entries,
  ].map(([e]) => e);
  assert.equal(entries.length, 5);
  for (const e of entries) assert.deepEqual(encodeOrigTupleAttr(e.family, e.orig), e.origAttr);
});

Deno.test("conntrack codec: a zone travels with updates and deletes", () => {
  const udp = decode(...fixture("dump-v6.json").replies!.map(bytes)).entries
    .map(([e]) => e).find((e) => e.zone === 3);
  const update = encodeMarkUpdate(9, udp!, 0, 0x400000);
  const del = encodeDelete(9, udp!);
  for (const msg of [update, del]) {
    const view = new DataView(msg.buffer);
    assert.equal(view.getUint32(0, true), msg.length);
    assert.equal(msg[16], 10, "AF_INET6");
    // CTA_ZONE (18), big-endian 3, right after the tuple.
    const at = 20 + udp!.origAttr.length;
    assert.deepEqual([...msg.subarray(at, at + 6)], [6, 0, 18, 0, 0, 3]);
  }
  assert.equal(new DataView(del.buffer).getUint16(4, true), 0x102, "IPCTNL_MSG_CT_DELETE");
});

Deno.test("conntrack codec: malformed datagrams are reported, never thrown", () => {
  const good = bytes(fixture("dump-v4-orig-src.json").replies![0]!);
  const cut = decode(good.slice(0, 60));
  assert.equal(cut.entries.length, 0);
  assert.match(cut.malformed[0]!, /exceeds/);
  // Lie about an attribute's length inside the first entry.
  const bad = good.slice();
  bad[20] = 0xff;
  assert.match(decode(bad).malformed[0]!, /attribute length/);
  // Random bytes: whatever they say, the decoder returns.
  let seed = 42;
  const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff;
  for (let i = 0; i < 2000; i++) {
    const junk = good.slice();
    for (let k = 0; k < 4; k++) junk[rand() % junk.length] = rand();
    decode(junk, Uint8Array.from({ length: rand() }, rand));
  }
});
