/**
 * ctnetlink (nfnetlink_conntrack) wire format, decoded and encoded in TypeScript (pure: no I/O).
 * Strict mode uses three messages (src/verdict/strict_cuts.ts):
 *
 *   - a dump of the entries whose original source, or reply source, is one address: filtered by
 *     the kernel (CTA_FILTER, Linux 5.9+), so only those entries cross into user space (IPv4; see
 *     encodeDumpRequest for IPv6, where the kernel's filter is broken);
 *   - a change of the ct mark of one existing entry, named by its original tuple: IPCTNL_MSG_CT_NEW
 *     without NLM_F_CREATE updates an entry and never creates one; CTA_MARK_MASK keeps every
 *     bit outside the mask, so other components' ct mark bits survive;
 *   - a delete of one entry (not used by strict mode today; for tools and tests).
 *
 * Layout (linux/netlink.h, linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h):
 *
 *   nlmsghdr   u32 len | u16 type | u16 flags | u32 seq | u32 pid        host order (LE here)
 *   nfgenmsg   u8 family (AF_INET/AF_INET6) | u8 version | be16 res_id
 *   nlattr*    u16 len | u16 type | value, each padded to 4 bytes; nested ones carry NLA_F_NESTED
 *
 * Attribute values are big-endian (addresses, ports, CTA_MARK, CTA_ZONE), except the two filter
 * flag words (CTA_FILTER_ORIG_FLAGS / _REPLY_FLAGS), which the kernel reads in host order.
 */
import { formatIPv4, formatIPv6, ipBytes, parseIP } from "../net/ip.ts";

export const NLMSG_HDRLEN = 16;
const NFGENMSG_LEN = 4;
const NLA_HDRLEN = 4;
const NLA_F_NESTED = 0x8000;
const NLA_TYPE_MASK = 0x3fff;

const NLMSG_NOOP = 1;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
/** NLM_F_ROOT | NLM_F_MATCH */
const NLM_F_DUMP = 0x300;

const NFNL_SUBSYS_CTNETLINK = 1;
const IPCTNL_MSG_CT_NEW = 0;
const IPCTNL_MSG_CT_GET = 1;
const IPCTNL_MSG_CT_DELETE = 2;
export const CT_MSG_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
export const CT_MSG_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
export const CT_MSG_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
const NFNETLINK_V0 = 0;

const AF_INET = 2;
const AF_INET6 = 10;

/** enum ctattr_type (the ones read or written here). */
export const CTA = {
  TUPLE_ORIG: 1,
  TUPLE_REPLY: 2,
  STATUS: 3,
  MARK: 8,
  ID: 12,
  ZONE: 18,
  MARK_MASK: 21,
  FILTER: 25,
} as const;
/** enum ctattr_tuple */
const CTA_TUPLE_IP = 1;
const CTA_TUPLE_PROTO = 2;
/** enum ctattr_ip */
const CTA_IP_V4_SRC = 1;
const CTA_IP_V4_DST = 2;
const CTA_IP_V6_SRC = 3;
const CTA_IP_V6_DST = 4;
/** enum ctattr_l4proto */
const CTA_PROTO_NUM = 1;
const CTA_PROTO_SRC_PORT = 2;
const CTA_PROTO_DST_PORT = 3;
const CTA_PROTO_ICMP_ID = 4;
const CTA_PROTO_ICMP_TYPE = 5;
const CTA_PROTO_ICMP_CODE = 6;
const CTA_PROTO_ICMPV6_ID = 7;
const CTA_PROTO_ICMPV6_TYPE = 8;
const CTA_PROTO_ICMPV6_CODE = 9;
/** enum ctattr_filter */
const CTA_FILTER_ORIG_FLAGS = 1;
const CTA_FILTER_REPLY_FLAGS = 2;
/** Filter flag: match the tuple's source address (CTA_FILTER_F_CTA_IP_SRC). */
const CTA_FILTER_F_IP_SRC = 1 << 0;

/** One direction of a conntrack entry: what a packet of that direction carries. */
export interface CtTuple {
  src: string;
  dst: string;
  /** IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, ...). */
  protocolNumber: number;
  /** Ports for protocols that have them (TCP, UDP, SCTP, UDP-Lite, DCCP; GRE keys); else 0. */
  srcPort: number;
  dstPort: number;
  /** ICMP and ICMPv6: echo id, type, code; else undefined. */
  icmp?: { id: number; type: number; code: number };
}

export interface ConntrackEntry {
  family: 4 | 6;
  orig: CtTuple;
  reply: CtTuple;
  /** The entry's ct mark (0 when the kernel sent none). */
  mark: number;
  /** Conntrack zone (0: the default zone, which the kernel does not send). */
  zone: number;
  /**
   * The CTA_TUPLE_ORIG attribute exactly as the kernel sent it (header included): an update names
   * the entry with these bytes, so nothing the decoder does not model is lost on the way back.
   */
  origAttr: Uint8Array;
}

/** Which tuple address a dump filters on. */
export type DumpSide = "orig-src" | "reply-src";

// ---------------------------------------------------------------- encoding

/** Appends netlink attributes to a growing buffer; nests are closed by `end(start)`. */
class AttrWriter {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const bigger = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
    bigger.set(this.buf);
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }

  header(type: number, flags: number, seq: number, family: number): void {
    this.reserve(NLMSG_HDRLEN + NFGENMSG_LEN);
    const v = this.view;
    v.setUint32(0, 0, true); // length, set by finish()
    v.setUint16(4, type, true);
    v.setUint16(6, flags, true);
    v.setUint32(8, seq >>> 0, true);
    v.setUint32(12, 0, true); // to the kernel
    v.setUint8(16, family);
    v.setUint8(17, NFNETLINK_V0);
    v.setUint16(18, 0, false); // res_id
    this.length = NLMSG_HDRLEN + NFGENMSG_LEN;
  }

  begin(type: number): number {
    const start = this.length;
    this.reserve(NLA_HDRLEN);
    this.view.setUint16(start + 2, type | NLA_F_NESTED, true);
    this.length += NLA_HDRLEN;
    return start;
  }

  end(start: number): void {
    this.view.setUint16(start, this.length - start, true);
  }

  bytes(type: number, value: Uint8Array): void {
    const len = NLA_HDRLEN + value.length;
    this.reserve(align4(len));
    this.view.setUint16(this.length, len, true);
    this.view.setUint16(this.length + 2, type, true);
    this.buf.set(value, this.length + NLA_HDRLEN);
    this.buf.fill(0, this.length + len, this.length + align4(len));
    this.length += align4(len);
  }

  be32(type: number, value: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, false);
    this.bytes(type, b);
  }

  be16(type: number, value: number): void {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, value, false);
    this.bytes(type, b);
  }

  hostU32(type: number, value: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    this.bytes(type, b);
  }

  /** An attribute already encoded (header included), copied as it is. */
  raw(attr: Uint8Array): void {
    this.reserve(align4(attr.length));
    this.buf.set(attr, this.length);
    this.buf.fill(0, this.length + attr.length, this.length + align4(attr.length));
    this.length += align4(attr.length);
  }

  /** The attributes written so far, without a message header (for encodeOrigTupleAttr). */
  attributes(): Uint8Array {
    return this.buf.slice(0, this.length);
  }

  finish(): Uint8Array {
    this.view.setUint32(0, this.length, true);
    return this.buf.slice(0, this.length);
  }
}

function familyOf(ip: string): { family: 4 | 6; bytes: Uint8Array } {
  const parsed = parseIP(ip);
  if (!parsed) throw new RangeError(`not an IP address: ${JSON.stringify(ip)}`);
  return { family: parsed.family, bytes: ipBytes(parsed) };
}

/**
 * A dump request for the entries of one address family; with `filter`, only those whose original
 * source (`orig-src`) or reply source (`reply-src`) is `filter.ip` (same family). The kernel walks
 * its table and sends only the matching entries.
 *
 * IPv4 only, in practice: the kernel's IPv6 address filter is inverted (ctnetlink_filter_match_tuple
 * skips an entry when `!ipv6_addr_cmp(...)`, i.e. when the addresses are EQUAL; Linux 5.9 to at
 * least 6.18, see tests/fixtures/conntrack/dump-v6-filter-inverted.json), so an IPv6 filter
 * returns every entry but the wanted ones. IPv6 callers dump the family and filter themselves.
 */
export function encodeDumpRequest(
  seq: number,
  family: 4 | 6,
  filter?: { ip: string; side: DumpSide },
): Uint8Array {
  const w = new AttrWriter();
  w.header(CT_MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family === 4 ? AF_INET : AF_INET6);
  if (filter) {
    const ip = familyOf(filter.ip);
    if (ip.family !== family) {
      throw new RangeError(`${filter.ip} is not an IPv${family} address`);
    }
    const tuple = w.begin(filter.side === "orig-src" ? CTA.TUPLE_ORIG : CTA.TUPLE_REPLY);
    const ipNest = w.begin(CTA_TUPLE_IP);
    w.bytes(family === 4 ? CTA_IP_V4_SRC : CTA_IP_V6_SRC, ip.bytes);
    w.end(ipNest);
    w.end(tuple);
    const nest = w.begin(CTA.FILTER);
    w.hostU32(
      filter.side === "orig-src" ? CTA_FILTER_ORIG_FLAGS : CTA_FILTER_REPLY_FLAGS,
      CTA_FILTER_F_IP_SRC,
    );
    w.end(nest);
  }
  return w.finish();
}

/**
 * Sets the bits of `value` under `mask` in one entry's ct mark, keeping the others: the kernel
 * computes `(mark & ~mask) ^ value`, so `value` must lie within `mask`. Asks for an ack, so
 * every update is answered (0, or ENOENT when the entry is gone meanwhile).
 */
export function encodeMarkUpdate(
  seq: number,
  entry: ConntrackEntry,
  value: number,
  mask: number,
): Uint8Array {
  if ((value & ~mask) !== 0) throw new RangeError("the mark value must lie within its mask");
  const w = new AttrWriter();
  w.header(CT_MSG_NEW, NLM_F_REQUEST | NLM_F_ACK, seq, entry.family === 4 ? AF_INET : AF_INET6);
  w.raw(entry.origAttr);
  if (entry.zone) w.be16(CTA.ZONE, entry.zone);
  w.be32(CTA.MARK, value);
  w.be32(CTA.MARK_MASK, mask);
  return w.finish();
}

/**
 * The CTA_TUPLE_ORIG attribute naming a tuple, as the kernel writes it: for entries built without
 * a dump (tests, tools). Ports are written for every protocol but ICMP/ICMPv6, which get id, type
 * and code instead.
 */
export function encodeOrigTupleAttr(family: 4 | 6, t: CtTuple): Uint8Array {
  const w = new AttrWriter();
  const tuple = w.begin(CTA.TUPLE_ORIG);
  const ipNest = w.begin(CTA_TUPLE_IP);
  w.bytes(family === 4 ? CTA_IP_V4_SRC : CTA_IP_V6_SRC, familyOf(t.src).bytes);
  w.bytes(family === 4 ? CTA_IP_V4_DST : CTA_IP_V6_DST, familyOf(t.dst).bytes);
  w.end(ipNest);
  const proto = w.begin(CTA_TUPLE_PROTO);
  w.bytes(CTA_PROTO_NUM, Uint8Array.of(t.protocolNumber));
  if (t.icmp) {
    const v6 = family === 6;
    w.be16(v6 ? CTA_PROTO_ICMPV6_ID : CTA_PROTO_ICMP_ID, t.icmp.id);
    w.bytes(v6 ? CTA_PROTO_ICMPV6_TYPE : CTA_PROTO_ICMP_TYPE, Uint8Array.of(t.icmp.type));
    w.bytes(v6 ? CTA_PROTO_ICMPV6_CODE : CTA_PROTO_ICMP_CODE, Uint8Array.of(t.icmp.code));
  } else {
    w.be16(CTA_PROTO_SRC_PORT, t.srcPort);
    w.be16(CTA_PROTO_DST_PORT, t.dstPort);
  }
  w.end(proto);
  w.end(tuple);
  return w.attributes();
}

/** Deletes one entry, named by its original tuple; acked. */
export function encodeDelete(seq: number, entry: ConntrackEntry): Uint8Array {
  const w = new AttrWriter();
  w.header(CT_MSG_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, entry.family === 4 ? AF_INET : AF_INET6);
  w.raw(entry.origAttr);
  if (entry.zone) w.be16(CTA.ZONE, entry.zone);
  return w.finish();
}

// ---------------------------------------------------------------- decoding

export interface ConntrackSink {
  entry(e: ConntrackEntry, seq: number): void;
  /** An ack (errno 0) or a failure (a positive errno) of the request numbered `seq`. */
  ack(errno: number, seq: number): void;
  /** The end of the dump numbered `seq`. */
  done(seq: number): void;
  /** Bytes that are not a well-formed message; decoding of the datagram stops there. */
  malformed(reason: string): void;
}

/** Decodes every message in `bytes[0, length)`. Never throws on bad input: `malformed` says why. */
export function decodeConntrackMessages(
  bytes: Uint8Array,
  length: number,
  sink: ConntrackSink,
): void {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = Math.min(length, bytes.byteLength);
  let off = 0;
  while (off + NLMSG_HDRLEN <= end) {
    const len = v.getUint32(off, true);
    if (len < NLMSG_HDRLEN || off + len > end) {
      sink.malformed(`message length ${len} at offset ${off} exceeds the ${end}-byte datagram`);
      return;
    }
    const type = v.getUint16(off + 4, true);
    const seq = v.getUint32(off + 8, true);
    if (type === NLMSG_ERROR) {
      // struct nlmsgerr: int error (negative errno, 0 = ack), then the request's header.
      if (len < NLMSG_HDRLEN + 4 + NLMSG_HDRLEN) sink.malformed("short NLMSG_ERROR");
      else {
        const err = v.getInt32(off + NLMSG_HDRLEN, true);
        sink.ack(err === 0 ? 0 : -err, v.getUint32(off + NLMSG_HDRLEN + 12, true));
      }
    } else if (type === NLMSG_DONE) {
      sink.done(seq);
    } else if (type === CT_MSG_NEW) {
      const problem = decodeEntry(bytes, v, off, off + len, seq, sink);
      if (problem) {
        sink.malformed(problem);
        return;
      }
    } else if (type !== NLMSG_NOOP) {
      sink.malformed(`unexpected message type 0x${type.toString(16)}`);
    }
    off += align4(len);
  }
  if (off < end) sink.malformed(`${end - off} trailing bytes`);
}

/** Calls `fn(type, valueStart, valueEnd, attrStart)` for each attribute in [start, end). */
function eachAttr(
  v: DataView,
  start: number,
  end: number,
  fn: (type: number, val: number, valEnd: number, at: number) => string | undefined,
): string | undefined {
  let off = start;
  while (off + NLA_HDRLEN <= end) {
    const alen = v.getUint16(off, true);
    if (alen < NLA_HDRLEN || off + alen > end) return `attribute length ${alen} at offset ${off}`;
    const problem = fn(
      v.getUint16(off + 2, true) & NLA_TYPE_MASK,
      off + NLA_HDRLEN,
      off + alen,
      off,
    );
    if (problem) return problem;
    off += align4(alen);
  }
  return undefined;
}

function decodeEntry(
  bytes: Uint8Array,
  v: DataView,
  start: number,
  end: number,
  seq: number,
  sink: ConntrackSink,
): string | undefined {
  if (start + NLMSG_HDRLEN + NFGENMSG_LEN > end) return "short conntrack message";
  const af = bytes[start + NLMSG_HDRLEN]!;
  if (af !== AF_INET && af !== AF_INET6) return `conntrack entry of address family ${af}`;
  const family: 4 | 6 = af === AF_INET ? 4 : 6;
  let orig: CtTuple | undefined;
  let reply: CtTuple | undefined;
  let origAttr: Uint8Array | undefined;
  let mark = 0;
  let zone = 0;
  const problem = eachAttr(v, start + NLMSG_HDRLEN + NFGENMSG_LEN, end, (type, val, valEnd, at) => {
    switch (type) {
      case CTA.TUPLE_ORIG: {
        const t = decodeTuple(bytes, v, val, valEnd, family);
        if (typeof t === "string") return t;
        orig = t;
        origAttr = bytes.slice(at, valEnd);
        break;
      }
      case CTA.TUPLE_REPLY: {
        const t = decodeTuple(bytes, v, val, valEnd, family);
        if (typeof t === "string") return t;
        reply = t;
        break;
      }
      case CTA.MARK:
        if (valEnd - val >= 4) mark = v.getUint32(val, false);
        break;
      case CTA.ZONE:
        if (valEnd - val >= 2) zone = v.getUint16(val, false);
        break;
    }
    return undefined;
  });
  if (problem) return problem;
  if (!orig || !reply || !origAttr) return "conntrack entry without both tuples";
  sink.entry({ family, orig, reply, mark, zone, origAttr }, seq);
  return undefined;
}

function decodeTuple(
  bytes: Uint8Array,
  v: DataView,
  start: number,
  end: number,
  family: 4 | 6,
): CtTuple | string {
  const t: CtTuple = { src: "", dst: "", protocolNumber: -1, srcPort: 0, dstPort: 0 };
  const addrLen = family === 4 ? 4 : 16;
  const format = family === 4 ? formatIPv4 : formatIPv6;
  const problem = eachAttr(v, start, end, (type, val, valEnd) => {
    if (type === CTA_TUPLE_IP) {
      return eachAttr(v, val, valEnd, (ipType, a, aEnd) => {
        const isSrc = ipType === CTA_IP_V4_SRC || ipType === CTA_IP_V6_SRC;
        const isDst = ipType === CTA_IP_V4_DST || ipType === CTA_IP_V6_DST;
        if (!isSrc && !isDst) return undefined;
        if (aEnd - a !== addrLen) return `address of ${aEnd - a} bytes in an IPv${family} tuple`;
        if (isSrc) t.src = format(bytes, a);
        else t.dst = format(bytes, a);
        return undefined;
      });
    }
    if (type === CTA_TUPLE_PROTO) {
      return eachAttr(v, val, valEnd, (p, a, aEnd) => {
        const n = aEnd - a;
        switch (p) {
          case CTA_PROTO_NUM:
            if (n >= 1) t.protocolNumber = bytes[a]!;
            break;
          case CTA_PROTO_SRC_PORT:
            if (n >= 2) t.srcPort = v.getUint16(a, false);
            break;
          case CTA_PROTO_DST_PORT:
            if (n >= 2) t.dstPort = v.getUint16(a, false);
            break;
          case CTA_PROTO_ICMP_ID:
          case CTA_PROTO_ICMPV6_ID:
            if (n >= 2) (t.icmp ??= { id: 0, type: 0, code: 0 }).id = v.getUint16(a, false);
            break;
          case CTA_PROTO_ICMP_TYPE:
          case CTA_PROTO_ICMPV6_TYPE:
            if (n >= 1) (t.icmp ??= { id: 0, type: 0, code: 0 }).type = bytes[a]!;
            break;
          case CTA_PROTO_ICMP_CODE:
          case CTA_PROTO_ICMPV6_CODE:
            if (n >= 1) (t.icmp ??= { id: 0, type: 0, code: 0 }).code = bytes[a]!;
            break;
        }
        return undefined;
      });
    }
    return undefined;
  });
  if (problem) return problem;
  if (!t.src || !t.dst || t.protocolNumber < 0) {
    return "conntrack tuple without addresses or protocol";
  }
  return t;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}
