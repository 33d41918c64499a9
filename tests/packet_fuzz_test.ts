/**
 * The parser against many generated inputs (fixed seeds, so a failure reproduces): it never throws,
 * every answer is well formed, and packets generated with a known layout read back exactly.
 * Expected addresses come from the engine's own canonicalIP (src/net/ip.ts), so the test also
 * proves the parser and the engine key pods by the same text.
 */
import assert from "node:assert/strict";
import { parsePacket, type ParseResult } from "../src/packet/parse.ts";
import { formatIPv6 } from "../src/net/ip.ts";
import { canonicalIP } from "../src/net/ip.ts";
import {
  authHeader,
  fragmentHeader,
  fromHex,
  ipv4,
  ipv6,
  optionsHeader,
  PROTO,
} from "./fixtures/packets/build.ts";
import tcp4Syn from "./fixtures/packets/tcp4-syn.json" with { type: "json" };
import tcp6DstoptsSyn from "./fixtures/packets/tcp6-dstopts-syn.json" with { type: "json" };
import udp4Options from "./fixtures/packets/udp4-options.json" with { type: "json" };
import udp6FragFirst from "./fixtures/packets/udp6-frag-first.json" with { type: "json" };
import ah6TcpSyn from "./fixtures/packets/ah6-tcp-syn.json" with { type: "json" };
import icmp6Echo from "./fixtures/packets/icmp6-echo.json" with { type: "json" };

/** mulberry32: a tiny seeded PRNG, good enough to spread test inputs. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    int: (n: number) => Math.floor(next() * n), // 0..n-1
    chance: (p: number) => next() < p,
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
  };
}
type Rng = ReturnType<typeof prng>;

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const PORTED = new Set([PROTO.TCP, PROTO.UDP, PROTO.SCTP] as number[]);
const REASONS = new Set(["truncated", "bad-version", "bad-header", "fragment", "unsupported"]);
const PROTOCOL_NAMES: Record<number, string> = {
  6: "TCP",
  17: "UDP",
  132: "SCTP",
  1: "ICMP",
  58: "ICMPv6",
};

function parseOrFail(bytes: Uint8Array): ParseResult {
  try {
    return parsePacket(bytes);
  } catch (e) {
    assert.fail(`parsePacket threw ${e} on ${hex(bytes)}`);
  }
}

/** The invariants every answer must keep, whatever the input. */
function checkWellFormed(bytes: Uint8Array, r: ParseResult): void {
  if (!r.ok) {
    if (!REASONS.has(r.reason)) assert.fail(`unknown reason ${r.reason} for ${hex(bytes)}`);
    // Addresses, when named, are the header's own and canonical (the deny log prints them).
    const named = r.family === undefined
      ? r.src === undefined && r.dst === undefined
      : r.family === bytes[0]! >> 4 && r.src !== undefined && r.dst !== undefined &&
        canonicalIP(r.src) === r.src && canonicalIP(r.dst) === r.dst;
    if (!named) assert.fail(`malformed failure ${JSON.stringify(r)} for ${hex(bytes)}`);
    return;
  }
  const p = r.packet;
  const ok = p.family === bytes[0]! >> 4 &&
    Number.isInteger(p.protocolNumber) && p.protocolNumber >= 0 && p.protocolNumber <= 255 &&
    p.protocol === (PROTOCOL_NAMES[p.protocolNumber] ?? "OTHER") &&
    Number.isInteger(p.srcPort) && p.srcPort >= 0 && p.srcPort <= 65535 &&
    Number.isInteger(p.dstPort) && p.dstPort >= 0 && p.dstPort <= 65535 &&
    (PORTED.has(p.protocolNumber) || (p.srcPort === 0 && p.dstPort === 0)) &&
    canonicalIP(p.src) === p.src && canonicalIP(p.dst) === p.dst &&
    (p.family === 6 || (p.src.includes(".") && p.dst.includes(".")));
  if (!ok) assert.fail(`malformed result ${JSON.stringify(r)} for ${hex(bytes)}`);
}

function randomBytes(rng: Rng, n: number): number[] {
  return Array.from({ length: n }, () => rng.int(256));
}

/** An IPv6 address with zero runs and, sometimes, the IPv4-mapped prefix. */
function randomV6(rng: Rng): number[] {
  const b: number[] = [];
  for (let g = 0; g < 8; g++) {
    const zero = rng.chance(0.4);
    b.push(zero ? 0 : rng.int(256), zero ? 0 : rng.int(256));
  }
  if (rng.chance(0.1)) b.splice(0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff);
  return b;
}

/** Full uncompressed text, for the engine's parser to canonicalize. */
function fullV6(b: readonly number[]): string {
  const groups = [];
  for (let g = 0; g < 8; g++) groups.push(((b[2 * g]! << 8) | b[2 * g + 1]!).toString(16));
  return groups.join(":");
}

interface Generated {
  bytes: Uint8Array;
  /** Bytes needed before the parser can answer ok; below this it must say "truncated". */
  needed: number;
  expected: ParseResult;
}

const PROTOCOL_CHOICES = [
  PROTO.TCP,
  PROTO.UDP,
  PROTO.SCTP,
  PROTO.ICMP,
  PROTO.ICMPV6,
  PROTO.GRE,
  4,
  41,
  103,
  253,
];

/** A well-formed IPv4 or IPv6 packet (not a fragment) with a layout the generator knows. */
function generate(rng: Rng): Generated {
  const protocol = rng.pick(PROTOCOL_CHOICES);
  const srcPort = rng.int(65536), dstPort = rng.int(65536);
  const l4 = [
    srcPort >> 8,
    srcPort & 0xff,
    dstPort >> 8,
    dstPort & 0xff,
    ...randomBytes(rng, rng.int(40)),
  ];
  const ported = PORTED.has(protocol);
  const name = (PROTOCOL_NAMES[protocol] ?? "OTHER") as "TCP";
  if (rng.chance(0.5)) {
    const src = randomBytes(rng, 4), dst = randomBytes(rng, 4);
    const options = new Array<number>(4 * rng.int(11)).fill(1);
    const flagsFragment = rng.pick([0, 0x2000, 0x4000]); // offset 0: first fragment or whole
    const bytes = ipv4({ protocol, src, dst, options, flagsFragment }, l4);
    const l4At = 20 + options.length;
    return {
      bytes,
      needed: ported ? l4At + 4 : l4At,
      expected: {
        ok: true,
        packet: {
          family: 4,
          src: src.join("."),
          dst: dst.join("."),
          protocol: name,
          protocolNumber: protocol,
          srcPort: ported ? srcPort : 0,
          dstPort: ported ? dstPort : 0,
        },
      },
    };
  }
  const src = randomV6(rng), dst = randomV6(rng);
  // A random chain of extension headers, each told what follows it.
  const kinds = Array.from(
    { length: rng.int(6) },
    () => rng.pick([PROTO.HOP, PROTO.DST, PROTO.ROUTING, PROTO.FRAGMENT, PROTO.AH]),
  );
  const chain: number[] = [];
  let needed = 40;
  for (let i = 0; i < kinds.length; i++) {
    const next = i + 1 < kinds.length ? kinds[i + 1]! : protocol;
    const kind = kinds[i]!;
    needed = 40 + chain.length + (kind === PROTO.FRAGMENT ? 4 : 2);
    if (kind === PROTO.FRAGMENT) chain.push(...fragmentHeader(next, 0, rng.chance(0.5)));
    else if (kind === PROTO.AH) chain.push(...authHeader(next, 1 + 2 * rng.int(4)));
    else chain.push(...optionsHeader(next, rng.int(4)));
  }
  const bytes = ipv6(kinds[0] ?? protocol, [...chain, ...l4], { src, dst });
  return {
    bytes,
    needed: ported ? 40 + chain.length + 4 : needed,
    expected: {
      ok: true,
      packet: {
        family: 6,
        src: canonicalIP(fullV6(src))!,
        dst: canonicalIP(fullV6(dst))!,
        protocol: name,
        protocolNumber: protocol,
        srcPort: ported ? srcPort : 0,
        dstPort: ported ? dstPort : 0,
      },
    },
  };
}

function sameResult(a: ParseResult, b: ParseResult): boolean {
  if (a.ok !== b.ok) return false;
  if (!a.ok || !b.ok) return !a.ok && !b.ok && a.reason === b.reason;
  const p = a.packet, q = b.packet;
  return p.family === q.family && p.src === q.src && p.dst === q.dst && p.protocol === q.protocol &&
    p.protocolNumber === q.protocolNumber && p.srcPort === q.srcPort && p.dstPort === q.dstPort;
}

const GENERATED = 40_000;
const MUTATED = 40_000;
const RANDOM = 40_000;

Deno.test(`${GENERATED} generated packets read back exactly, and truncated below what they need`, () => {
  const rng = prng(0x6b6e7001);
  for (let i = 0; i < GENERATED; i++) {
    const g = generate(rng);
    // Cut somewhere: often after what the parser needs (the agent's 128-byte copy), sometimes before.
    const cut = rng.chance(0.7) ? g.bytes.length : rng.int(g.bytes.length + 1);
    const input = g.bytes.subarray(0, cut);
    const r = parseOrFail(input);
    const expected: ParseResult = cut >= g.needed ? g.expected : { ok: false, reason: "truncated" };
    if (!sameResult(r, expected)) {
      assert.fail(
        `case ${i}: got ${JSON.stringify(r)}, expected ${JSON.stringify(expected)} for ${
          hex(input)
        }`,
      );
    }
  }
});

Deno.test(`${MUTATED} mutated packets: never throws, always well formed`, () => {
  const rng = prng(0x6b6e7002);
  const seeds = [tcp4Syn, tcp6DstoptsSyn, udp4Options, udp6FragFirst, ah6TcpSyn, icmp6Echo].map((
    f,
  ) => fromHex(f.hex));
  for (let i = 0; i < MUTATED; i++) {
    const base = rng.chance(0.5) ? rng.pick(seeds) : generate(rng).bytes;
    const bytes = new Uint8Array(base.length + (rng.chance(0.2) ? rng.int(32) : 0));
    bytes.set(base);
    const flips = 1 + rng.int(4);
    for (let f = 0; f < flips; f++) {
      // Mostly hit the headers, where the length and next-header fields live.
      const at = rng.chance(0.8) ? rng.int(Math.min(bytes.length, 80)) : rng.int(bytes.length);
      bytes[at] = rng.chance(0.5) ? rng.int(256) : bytes[at]! ^ (1 << rng.int(8));
    }
    // Keep the version nibble valid most of the time, so the deeper paths are exercised.
    if (rng.chance(0.8)) bytes[0] = (base[0]! & 0xf0) | (bytes[0]! & 0x0f);
    const input = bytes.subarray(0, rng.chance(0.5) ? bytes.length : rng.int(bytes.length + 1));
    checkWellFormed(input, parseOrFail(input));
  }
});

Deno.test(`${RANDOM} random byte strings: never throws, always well formed`, () => {
  const rng = prng(0x6b6e7003);
  let parsed = 0;
  for (let i = 0; i < RANDOM; i++) {
    const bytes = new Uint8Array(randomBytes(rng, rng.int(161)));
    if (bytes.length > 0 && rng.chance(0.6)) bytes[0] = rng.pick([0x45, 0x46, 0x4f, 0x60, 0x6f]);
    const r = parseOrFail(bytes);
    checkWellFormed(bytes, r);
    if (r.ok) parsed++;
  }
  // Guard against a parser that refuses everything: random headers often are parseable.
  assert.ok(parsed > RANDOM / 10, `only ${parsed} random inputs parsed`);
});

/** Text for an IPv6 address in one of the many ways people write it. */
function randomV6Text(rng: Rng, b: readonly number[]): string {
  const groups = [];
  for (let g = 0; g < 8; g++) {
    let t = ((b[2 * g]! << 8) | b[2 * g + 1]!).toString(16);
    if (rng.chance(0.3)) t = t.padStart(4, "0");
    groups.push(rng.chance(0.3) ? t.toUpperCase() : t);
  }
  if (rng.chance(0.2)) {
    groups.splice(6, 2, `${b[12]}.${b[13]}.${b[14]}.${b[15]}`);
  }
  // Compress one zero run (any one, not only the longest) with "::".
  const zeroRuns: [number, number][] = [];
  for (let i = 0; i < groups.length; i++) {
    if (!/^0+$/.test(groups[i]!)) continue;
    let j = i;
    while (j < groups.length && /^0+$/.test(groups[j]!)) j++;
    zeroRuns.push([i, j - i]);
    i = j;
  }
  if (zeroRuns.length > 0 && rng.chance(0.7)) {
    const [start, len] = rng.pick(zeroRuns);
    const take = 1 + rng.int(len);
    const head = groups.slice(0, start).join(":");
    const tail = groups.slice(start + take).join(":");
    return `${head}::${tail}`;
  }
  return groups.join(":");
}

Deno.test("canonicalIP turns every text form of an address into the parser's text; junk is null or stable", () => {
  const rng = prng(0x6b6e7004);
  const alphabet = "0123456789abcdefABCDEF:.:::. x%";
  for (let i = 0; i < 10_000; i++) {
    const b = randomV6(rng);
    const text = randomV6Text(rng, b);
    const want = formatIPv6(new Uint8Array(b), 0);
    assert.equal(canonicalIP(text), want, text);
    let junk = "";
    for (let n = rng.int(24); n > 0; n--) junk += alphabet[rng.int(alphabet.length)];
    const c = canonicalIP(junk);
    if (c !== null) assert.equal(canonicalIP(c), c, JSON.stringify(junk));
  }
});
