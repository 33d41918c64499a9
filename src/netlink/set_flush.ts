/**
 * Netlink messages that empty kernel sets, for the verdict cache's invalidation (pure: encoding
 * and ack decoding only; the worker sends them on a NETLINK_NETFILTER socket of its own).
 *
 * - ipset: one IPSET_CMD_FLUSH per set (nfnetlink subsystem IPSET), attributes PROTOCOL and
 *   SETNAME, as `ipset flush <name>` sends it.
 * - nftables: one transaction (NFNL_MSG_BATCH_BEGIN ... END) holding an NFT_MSG_DELSETELEM
 *   without an element list per set, which the kernel treats as "flush this set" (what
 *   `nft flush set` sends).
 *
 * Every request asks for an acknowledgement (NLM_F_ACK) and carries its own sequence number, so
 * the caller knows each set was emptied, or why not, before it judges another packet.
 */
import { NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDRLEN } from "./nfqueue.ts";

const NLM_F_ACK = 4;
const NFGENMSG_LEN = 4;
const NLA_HDRLEN = 4;
const NFNETLINK_V0 = 0;

const NFNL_SUBSYS_IPSET = 6;
const NFNL_SUBSYS_NFTABLES = 10;
const IPSET_CMD_FLUSH = 4;
const IPSET_ATTR_PROTOCOL = 1;
const IPSET_ATTR_SETNAME = 2;
/**
 * The oldest ipset protocol the kernel takes for FLUSH (IPSET_PROTOCOL_MIN; kernels before 5.5
 * know only this one, later ones accept 6 and 7 alike).
 */
const IPSET_PROTOCOL = 6;
/** ipset names, NUL included (IPSET_MAXNAMELEN). */
export const IPSET_MAX_NAME_BYTES = 32;
const NFNL_MSG_BATCH_BEGIN = 0x10;
const NFNL_MSG_BATCH_END = 0x11;
const NFT_MSG_DELSETELEM = 14;
const NFTA_SET_ELEM_LIST_TABLE = 1;
const NFTA_SET_ELEM_LIST_SET = 2;
const AF_INET = 2;
const NFPROTO_INET = 1;
/** nft names (table, set), NUL included (NFT_NAME_MAXLEN). */
const NFT_MAX_NAME_BYTES = 256;

/** The sets to empty, as the rule backend created them. */
export type FlushTarget =
  | { kind: "ipset"; sets: string[] }
  | { kind: "nftables"; table: string; sets: string[] };

/** One datagram of requests and the sequence numbers whose acknowledgement it asks for. */
export interface FlushRequest {
  bytes: Uint8Array;
  /** Sequence number -> set name, one per set. */
  acks: Map<number, string>;
}

const encoder = new TextEncoder();

function cString(name: string, max: number, what: string): Uint8Array {
  const b = encoder.encode(`${name}\0`);
  if (b.length > max || name.includes("\0") || name === "") {
    throw new RangeError(`${what} ${JSON.stringify(name)} is not a valid name`);
  }
  return b;
}

const align4 = (n: number) => (n + 3) & ~3;

/** Appends messages to a growing buffer; lengths are fixed up when each message ends. */
class MessageWriter {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  private used = 0;
  private start = 0;

  private ensure(n: number): void {
    if (this.used + n <= this.buf.length) return;
    const bigger = new Uint8Array(Math.max(this.buf.length * 2, this.used + n));
    bigger.set(this.buf.subarray(0, this.used));
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }

  begin(type: number, flags: number, seq: number, family: number, resId: number): void {
    this.ensure(NLMSG_HDRLEN + NFGENMSG_LEN);
    this.start = this.used;
    const v = this.view;
    v.setUint32(this.used, 0, true); // length, set by end()
    v.setUint16(this.used + 4, type, true);
    v.setUint16(this.used + 6, flags, true);
    v.setUint32(this.used + 8, seq, true);
    v.setUint32(this.used + 12, 0, true); // to the kernel
    v.setUint8(this.used + 16, family);
    v.setUint8(this.used + 17, NFNETLINK_V0);
    v.setUint16(this.used + 18, resId, false);
    this.used += NLMSG_HDRLEN + NFGENMSG_LEN;
  }

  attr(type: number, value: Uint8Array): void {
    const len = NLA_HDRLEN + value.length;
    this.ensure(align4(len));
    this.view.setUint16(this.used, len, true);
    this.view.setUint16(this.used + 2, type, true);
    this.buf.set(value, this.used + NLA_HDRLEN);
    this.buf.fill(0, this.used + len, this.used + align4(len));
    this.used += align4(len);
  }

  end(): void {
    this.view.setUint32(this.start, this.used - this.start, true);
  }

  bytes(): Uint8Array {
    return this.buf.slice(0, this.used);
  }
}

/**
 * The datagram that empties every set of `target`; sequence numbers start at `firstSeq`. Throws
 * RangeError on a name the kernel could not take (never for the names the backends create).
 */
export function encodeFlush(target: FlushTarget, firstSeq: number): FlushRequest {
  const w = new MessageWriter();
  const acks = new Map<number, string>();
  let seq = firstSeq >>> 0;
  const next = () => {
    const s = seq;
    seq = (seq + 1) >>> 0;
    return s;
  };
  if (target.kind === "ipset") {
    for (const name of target.sets) {
      const s = next();
      w.begin((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_FLUSH, NLM_F_REQUEST | NLM_F_ACK, s, AF_INET, 0);
      w.attr(IPSET_ATTR_PROTOCOL, Uint8Array.of(IPSET_PROTOCOL));
      w.attr(IPSET_ATTR_SETNAME, cString(name, IPSET_MAX_NAME_BYTES, "ipset name"));
      w.end();
      acks.set(s, name);
    }
    return { bytes: w.bytes(), acks };
  }
  const table = cString(target.table, NFT_MAX_NAME_BYTES, "nft table");
  w.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, next(), 0, NFNL_SUBSYS_NFTABLES);
  w.end();
  for (const name of target.sets) {
    const s = next();
    w.begin(
      (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM,
      NLM_F_REQUEST | NLM_F_ACK,
      s,
      NFPROTO_INET,
      0,
    );
    w.attr(NFTA_SET_ELEM_LIST_TABLE, table);
    w.attr(NFTA_SET_ELEM_LIST_SET, cString(name, NFT_MAX_NAME_BYTES, "nft set"));
    w.end();
    acks.set(s, name);
  }
  w.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, next(), 0, NFNL_SUBSYS_NFTABLES);
  w.end();
  return { bytes: w.bytes(), acks };
}

/** Acknowledgements and errors found in one received datagram: sequence number -> errno (0 = ok). */
export function decodeAcks(bytes: Uint8Array, length: number): Map<number, number> {
  const out = new Map<number, number>();
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = Math.min(length, bytes.byteLength);
  let off = 0;
  while (off + NLMSG_HDRLEN <= end) {
    const len = v.getUint32(off, true);
    if (len < NLMSG_HDRLEN || off + len > end) break;
    if (v.getUint16(off + 4, true) === NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 + NLMSG_HDRLEN) {
      // struct nlmsgerr: int error (negative errno, 0 = ack), then the request's own header.
      const err = v.getInt32(off + NLMSG_HDRLEN, true);
      out.set(v.getUint32(off + NLMSG_HDRLEN + 4 + 8, true), err === 0 ? 0 : -err);
    }
    off += align4(len);
  }
  return out;
}
