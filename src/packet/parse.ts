/**
 * Parser for the first packet of a connection as netfilter hands it to the queue (NFQA_PAYLOAD):
 * the bytes start at the IP header. The agent asks for the whole packet (see the verdict loop's
 * copy range), because an IPv6 extension header chain can push the transport header anywhere in
 * it; a capture cut anywhere after the L4 ports still parses.
 *
 * Pure and on the per-packet path: it never throws, it allocates only the result and the two
 * address strings (failures before the addresses are shared constants), and every loop is bounded
 * by the input length. Checksums are not verified: the kernel has already accepted the packet by
 * the time it is queued.
 */

import type { ConnectionProtocol } from "../net/protocol.ts";
import { formatIPv4, formatIPv6 } from "../net/ip.ts";

/**
 * Why a packet has no usable 5-tuple:
 * - "truncated": the captured bytes end before the addresses or the L4 ports (the packet itself
 *   may be fine: the capture was cut short).
 * - "bad-version": the IP version nibble is neither 4 nor 6.
 * - "bad-header": the packet contradicts itself: IHL < 5, total length shorter than the header,
 *   extension headers or L4 ports past the packet's own length.
 * - "fragment": a non-first fragment, which carries no L4 header.
 * - "unsupported": reserved for inputs the parser does not handle (currently none: unknown L4
 *   protocols parse as "OTHER").
 */
export type ParseFailure = "truncated" | "bad-version" | "bad-header" | "fragment" | "unsupported";

export interface ParsedPacket {
  family: 4 | 6;
  /** Canonical text (see ip.ts): dotted quad, or RFC 5952 lower-case IPv6 (IPv4-mapped as IPv4). */
  src: string;
  dst: string;
  protocol: ConnectionProtocol;
  /** IP protocol number of the transport, after any IPv6 extension headers. */
  protocolNumber: number;
  /** 0 when the protocol has no ports. */
  srcPort: number;
  dstPort: number;
}

/** A packet without a usable 5-tuple, and whatever of it could still be read. */
export interface ParseFailureResult {
  ok: false;
  reason: ParseFailure;
  /** Present once the fixed IP header was read: who sent the packet to whom (for the deny log). */
  family?: 4 | 6;
  src?: string;
  dst?: string;
}

export type ParseResult = { ok: true; packet: ParsedPacket } | ParseFailureResult;

/** IP protocol numbers (IANA) the parser distinguishes. */
export const IPPROTO = {
  HOPOPTS: 0,
  ICMP: 1,
  TCP: 6,
  UDP: 17,
  ROUTING: 43,
  FRAGMENT: 44,
  ESP: 50,
  AH: 51,
  ICMPV6: 58,
  NONE: 59,
  DSTOPTS: 60,
  SCTP: 132,
} as const;

const IPV4_MIN_HEADER = 20;
const IPV6_HEADER = 40;

// Failures before the addresses are frozen constants: that path allocates nothing.
const fail = (reason: ParseFailure): ParseResult => Object.freeze({ ok: false, reason });
const TRUNCATED = fail("truncated");
const BAD_VERSION = fail("bad-version");

/** A failure once the fixed header is in hand: it names the addresses. */
function failFrom(b: Uint8Array, family: 4 | 6, reason: ParseFailure): ParseFailureResult {
  return family === 4
    ? { ok: false, reason, family, src: formatIPv4(b, 12), dst: formatIPv4(b, 16) }
    : { ok: false, reason, family, src: formatIPv6(b, 8), dst: formatIPv6(b, 24) };
}

/** Parse the packet; see ParseFailure for when and why it is refused. Never throws. */
export function parsePacket(bytes: Uint8Array): ParseResult {
  if (bytes.length < 1) return TRUNCATED;
  const version = bytes[0]! >> 4;
  if (version === 4) return parseIPv4(bytes);
  if (version === 6) return parseIPv6(bytes);
  return BAD_VERSION;
}

function parseIPv4(b: Uint8Array): ParseResult {
  if (b.length < IPV4_MIN_HEADER) return TRUNCATED;
  const headerLen = (b[0]! & 0x0f) * 4;
  if (headerLen < IPV4_MIN_HEADER) return failFrom(b, 4, "bad-header");
  const totalLen = (b[2]! << 8) | b[3]!;
  if (totalLen !== 0 && totalLen < headerLen) return failFrom(b, 4, "bad-header");
  if (b.length < headerLen) return failFrom(b, 4, "truncated");
  // A non-first fragment (offset != 0) starts mid-payload: there is no L4 header to read.
  const fragmentOffset = ((b[6]! & 0x1f) << 8) | b[7]!;
  if (fragmentOffset !== 0) return failFrom(b, 4, "fragment");
  // Total length 0 is what the kernel writes for a BIG TCP (> 64 KiB) GSO packet: the length is
  // then unknown, and only the captured bytes bound the packet.
  const packetEnd = totalLen === 0 ? UNKNOWN_END : totalLen;
  return transport(b, 4, b[9]!, headerLen, packetEnd, formatIPv4(b, 12), formatIPv4(b, 16));
}

function parseIPv6(b: Uint8Array): ParseResult {
  if (b.length < IPV6_HEADER) return TRUNCATED;
  const payloadLen = (b[4]! << 8) | b[5]!;
  // Payload length 0 means a jumbogram or a BIG TCP GSO packet: the length is not in the header.
  const packetEnd = payloadLen === 0 ? UNKNOWN_END : IPV6_HEADER + payloadLen;
  // Walk the extension headers as the kernel's ipv6_skip_exthdr (and so conntrack) does: the
  // same header types, in any order and any number, so the agent judges the transport the kernel
  // tracks. The walk ends: every header is at least 8 bytes, and it stops at the packet's end.
  let next = b[6]!;
  let off = IPV6_HEADER;
  for (;;) {
    if (
      next !== IPPROTO.HOPOPTS && next !== IPPROTO.ROUTING && next !== IPPROTO.DSTOPTS &&
      next !== IPPROTO.FRAGMENT && next !== IPPROTO.AH
    ) {
      break;
    }
    // Every extension header is at least 8 bytes; its first two say what follows and its length.
    const short = shortOf(b, off + (next === IPPROTO.FRAGMENT ? 4 : 2), packetEnd);
    if (short !== undefined) return failFrom(b, 6, short);
    const following = b[off]!;
    if (next === IPPROTO.FRAGMENT) {
      // Offset in 8-byte units in the top 13 bits; non-zero means a non-first fragment.
      if ((((b[off + 2]! << 8) | b[off + 3]!) & 0xfff8) !== 0) return failFrom(b, 6, "fragment");
      off += 8;
    } else if (next === IPPROTO.AH) {
      off += (b[off + 1]! + 2) * 4; // AH: length in 4-byte units, minus 2
    } else {
      off += (b[off + 1]! + 1) * 8; // the others: 8-byte units, not counting the first 8
    }
    if (off > packetEnd) return failFrom(b, 6, "bad-header");
    next = following;
  }
  return transport(b, 6, next, off, packetEnd, formatIPv6(b, 8), formatIPv6(b, 24));
}

/** The packet's own length is not in its header (see the callers); the capture bounds it. */
const UNKNOWN_END = Number.MAX_SAFE_INTEGER;

/**
 * Whether the bytes up to `need` are missing: "bad-header" when the packet's own length ends
 * before them (a malformed packet), "truncated" when only the capture does; undefined if present.
 */
function shortOf(b: Uint8Array, need: number, packetEnd: number): ParseFailure | undefined {
  if (need > packetEnd) return "bad-header";
  if (need > b.length) return "truncated";
  return undefined;
}

/** Read the transport at `off` (protocol `proto`); ports only for TCP, UDP and SCTP. */
function transport(
  b: Uint8Array,
  family: 4 | 6,
  proto: number,
  off: number,
  packetEnd: number,
  src: string,
  dst: string,
): ParseResult {
  let protocol: ConnectionProtocol;
  switch (proto) {
    case IPPROTO.TCP:
      protocol = "TCP";
      break;
    case IPPROTO.UDP:
      protocol = "UDP";
      break;
    case IPPROTO.SCTP:
      protocol = "SCTP";
      break;
    case IPPROTO.ICMP:
      return portless(family, "ICMP", proto, src, dst);
    case IPPROTO.ICMPV6:
      return portless(family, "ICMPv6", proto, src, dst);
    default:
      // ESP, no-next-header, GRE, ...: no ports we can read; policies match them only by rules
      // without `ports`, so the protocol number is all the engine needs.
      return portless(family, "OTHER", proto, src, dst);
  }
  // TCP, UDP and SCTP all start with the source port then the destination port, 16 bits each.
  const short = shortOf(b, off + 4, packetEnd);
  if (short !== undefined) return { ok: false, reason: short, family, src, dst };
  return {
    ok: true,
    packet: {
      family,
      src,
      dst,
      protocol,
      protocolNumber: proto,
      srcPort: (b[off]! << 8) | b[off + 1]!,
      dstPort: (b[off + 2]! << 8) | b[off + 3]!,
    },
  };
}

function portless(
  family: 4 | 6,
  protocol: ConnectionProtocol,
  proto: number,
  src: string,
  dst: string,
): ParseResult {
  return {
    ok: true,
    packet: { family, src, dst, protocol, protocolNumber: proto, srcPort: 0, dstPort: 0 },
  };
}
