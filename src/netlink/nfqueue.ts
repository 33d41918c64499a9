/**
 * nfnetlink_queue wire format, decoded and encoded in TypeScript (pure: no I/O, no FFI).
 *
 * The agent receives the kernel's raw netlink datagrams into a buffer it owns and decodes them
 * here, and builds its verdict messages here too, so no callback and no C-owned memory is ever
 * involved. Layout (linux/netlink.h, linux/netfilter/nfnetlink*.h):
 *
 *   nlmsghdr   u32 len | u16 type | u16 flags | u32 seq | u32 pid        host order (LE here)
 *   nfgenmsg   u8 family | u8 version | be16 res_id (= queue number)
 *   nlattr*    u16 len | u16 type | value, each padded to 4 bytes
 *
 * Attribute VALUES are big-endian (network order): the packet id in NFQA_PACKET_HDR, NFQA_MARK,
 * the verdict header. Only the netlink headers themselves are in host order.
 */

export const NLMSG_HDRLEN = 16;
const NFGENMSG_LEN = 4;
const NLA_HDRLEN = 4;
/** Upper bits of nla_type are flags (NLA_F_NESTED, NLA_F_NET_BYTEORDER). */
const NLA_TYPE_MASK = 0x3fff;

export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLM_F_REQUEST = 1;

export const NFNL_SUBSYS_QUEUE = 3;
export const NFQNL_MSG_PACKET = 0;
export const NFQNL_MSG_VERDICT = 1;
const NFNETLINK_V0 = 0;

/** enum nfqnl_attr_type (the ones read or written here). */
export const NFQA = {
  PACKET_HDR: 1,
  VERDICT_HDR: 2,
  MARK: 3,
  IFINDEX_INDEV: 5,
  IFINDEX_OUTDEV: 6,
  PAYLOAD: 10,
  CAP_LEN: 13,
} as const;

/** Netfilter verdicts (linux/netfilter.h). */
export const NF_DROP = 0;
export const NF_ACCEPT = 1;
export const NF_REPEAT = 4;
export type NfVerdict = typeof NF_DROP | typeof NF_ACCEPT | typeof NF_REPEAT;

/**
 * One queued packet. The decoder reuses a single instance and `payload` is a view into the
 * receive buffer: both are valid only until the next decode (copy what must outlive it).
 */
export interface QueuedPacket {
  queueId: number;
  /** Kernel packet id; the verdict must name it. */
  id: number;
  /** EtherType of the packet (0x0800 IPv4, 0x86dd IPv6). */
  hwProtocol: number;
  /** Netfilter hook number (1 = LOCAL_IN, 2 = FORWARD, ...). */
  hook: number;
  /** skb mark; 0 when the kernel sent no NFQA_MARK (it omits a zero mark). */
  mark: number;
  inIfindex: number;
  outIfindex: number;
  /** Length of the packet on the wire (NFQA_CAP_LEN), or payload length when not truncated. */
  wireLength: number;
  /** The packet from its IP header, cut to the queue's copy range. */
  payload: Uint8Array;
}

export interface NetlinkSink {
  packet(p: QueuedPacket): void;
  /** An NLMSG_ERROR carrying a failure (e.g. a verdict for an unknown id): -error, seq. */
  error(errno: number, seq: number): void;
  /** Bytes that are not a well-formed message; decoding of the datagram stops there. */
  malformed(reason: string): void;
}

const EMPTY = new Uint8Array(0);

/** Decodes datagrams into a reused QueuedPacket; allocation per packet is one payload view. */
export class NetlinkDecoder {
  private readonly p: QueuedPacket = {
    queueId: 0,
    id: 0,
    hwProtocol: 0,
    hook: 0,
    mark: 0,
    inIfindex: 0,
    outIfindex: 0,
    wireLength: 0,
    payload: EMPTY,
  };
  private view?: DataView;
  private viewOf?: Uint8Array;

  /** Decode every message in `bytes[0, length)`; calls the sink once per message. */
  decode(bytes: Uint8Array, length: number, sink: NetlinkSink): void {
    if (this.viewOf !== bytes) {
      this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      this.viewOf = bytes;
    }
    const v = this.view!;
    const end = Math.min(length, bytes.byteLength);
    let off = 0;
    while (off + NLMSG_HDRLEN <= end) {
      const len = v.getUint32(off, true);
      if (len < NLMSG_HDRLEN || off + len > end) {
        sink.malformed(`message length ${len} at offset ${off} exceeds the ${end}-byte datagram`);
        return;
      }
      const type = v.getUint16(off + 4, true);
      if (type === NLMSG_ERROR) {
        // struct nlmsgerr: int error (negative errno, 0 = ack), then the offending header.
        if (len >= NLMSG_HDRLEN + 4) {
          const err = v.getInt32(off + NLMSG_HDRLEN, true);
          if (err !== 0) sink.error(-err, v.getUint32(off + NLMSG_HDRLEN + 12, true));
        } else sink.malformed("short NLMSG_ERROR");
      } else if (type === ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) {
        this.decodePacket(bytes, v, off, off + len, sink);
      } else if (type !== NLMSG_NOOP && type !== NLMSG_DONE) {
        sink.malformed(`unexpected message type 0x${type.toString(16)}`);
      }
      off += align4(len);
    }
    if (off < end) sink.malformed(`${end - off} trailing bytes`);
  }

  private decodePacket(
    bytes: Uint8Array,
    v: DataView,
    start: number,
    end: number,
    sink: NetlinkSink,
  ): void {
    const p = this.p;
    if (start + NLMSG_HDRLEN + NFGENMSG_LEN > end) return sink.malformed("short packet message");
    p.queueId = v.getUint16(start + NLMSG_HDRLEN + 2, false);
    p.mark = 0;
    p.inIfindex = 0;
    p.outIfindex = 0;
    p.wireLength = -1;
    p.payload = EMPTY;
    let haveHeader = false;
    let off = start + NLMSG_HDRLEN + NFGENMSG_LEN;
    while (off + NLA_HDRLEN <= end) {
      const alen = v.getUint16(off, true);
      if (alen < NLA_HDRLEN || off + alen > end) {
        return sink.malformed(`attribute length ${alen} at offset ${off - start}`);
      }
      const type = v.getUint16(off + 2, true) & NLA_TYPE_MASK;
      const val = off + NLA_HDRLEN;
      const vlen = alen - NLA_HDRLEN;
      switch (type) {
        case NFQA.PACKET_HDR:
          // struct nfqnl_msg_packet_hdr { __be32 packet_id; __be16 hw_protocol; __u8 hook; }
          if (vlen < 7) return sink.malformed("short NFQA_PACKET_HDR");
          p.id = v.getUint32(val, false);
          p.hwProtocol = v.getUint16(val + 4, false);
          p.hook = bytes[val + 6]!;
          haveHeader = true;
          break;
        case NFQA.MARK:
          if (vlen >= 4) p.mark = v.getUint32(val, false);
          break;
        case NFQA.IFINDEX_INDEV:
          if (vlen >= 4) p.inIfindex = v.getUint32(val, false);
          break;
        case NFQA.IFINDEX_OUTDEV:
          if (vlen >= 4) p.outIfindex = v.getUint32(val, false);
          break;
        case NFQA.CAP_LEN:
          if (vlen >= 4) p.wireLength = v.getUint32(val, false);
          break;
        case NFQA.PAYLOAD:
          p.payload = bytes.subarray(val, val + vlen);
          break;
      }
      off += align4(alen);
    }
    if (!haveHeader) return sink.malformed("packet message without NFQA_PACKET_HDR");
    if (p.wireLength < 0) p.wireLength = p.payload.length;
    sink.packet(p);
  }
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/** Bytes of one verdict message: header, nfgenmsg, NFQA_VERDICT_HDR, optional NFQA_MARK. */
export const VERDICT_MESSAGE_LEN = NLMSG_HDRLEN + NFGENMSG_LEN + (NLA_HDRLEN + 8);
export const VERDICT_WITH_MARK_LEN = VERDICT_MESSAGE_LEN + (NLA_HDRLEN + 4);

/**
 * Writes one NFQNL_MSG_VERDICT at `offset` and returns the offset after it. `mark` (when given)
 * replaces the packet's mark, so pass the packet's mark with the wanted bits OR-ed in.
 */
export function encodeVerdict(
  view: DataView,
  offset: number,
  queueId: number,
  packetId: number,
  verdict: NfVerdict,
  mark?: number,
): number {
  const len = mark === undefined ? VERDICT_MESSAGE_LEN : VERDICT_WITH_MARK_LEN;
  view.setUint32(offset, len, true);
  view.setUint16(offset + 4, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT, true);
  view.setUint16(offset + 6, NLM_F_REQUEST, true);
  view.setUint32(offset + 8, 0, true); // seq: unused, errors are matched by packet id in logs
  view.setUint32(offset + 12, 0, true); // pid 0: to the kernel
  let o = offset + NLMSG_HDRLEN;
  view.setUint8(o, 0); // AF_UNSPEC
  view.setUint8(o + 1, NFNETLINK_V0);
  view.setUint16(o + 2, queueId, false);
  o += NFGENMSG_LEN;
  view.setUint16(o, NLA_HDRLEN + 8, true);
  view.setUint16(o + 2, NFQA.VERDICT_HDR, true);
  view.setUint32(o + 4, verdict, false);
  view.setUint32(o + 8, packetId, false);
  o += NLA_HDRLEN + 8;
  if (mark !== undefined) {
    view.setUint16(o, NLA_HDRLEN + 4, true);
    view.setUint16(o + 2, NFQA.MARK, true);
    view.setUint32(o + 4, mark >>> 0, false);
    o += NLA_HDRLEN + 4;
  }
  return o;
}

/**
 * Several verdicts sent with one send(): the kernel processes each message of a datagram in
 * turn, so one system call answers every packet read in one wake-up.
 */
export class VerdictBatch {
  readonly buffer: Uint8Array;
  private readonly view: DataView;
  private used = 0;
  private n = 0;

  constructor(readonly queueId: number, readonly capacity = 64) {
    this.buffer = new Uint8Array(capacity * VERDICT_WITH_MARK_LEN);
    this.view = new DataView(this.buffer.buffer);
  }

  /** False when full (send and clear first). */
  add(packetId: number, verdict: NfVerdict, mark?: number): boolean {
    if (this.n >= this.capacity) return false;
    this.used = encodeVerdict(this.view, this.used, this.queueId, packetId, verdict, mark);
    this.n++;
    return true;
  }

  get count(): number {
    return this.n;
  }

  /** Bytes to send. */
  get byteLength(): number {
    return this.used;
  }

  clear(): void {
    this.used = 0;
    this.n = 0;
  }
}
