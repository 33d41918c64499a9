/**
 * A plain netlink socket through libc (socket, bind, send, recv): what strict mode talks to
 * conntrack over (NETLINK_NETFILTER, the ctnetlink subsystem). Only JS-owned buffers cross; the
 * caller encodes and decodes the messages (src/netlink/conntrack.ts).
 */
import { check, Errno, FfiError, hintFor, type Libraries, loadLibraries } from "./library.ts";
import { OptionScratch, setReceiveBuffer, setReceiveTimeout } from "./socket_options.ts";

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
/** Netlink protocol of nfnetlink (conntrack, queue, log...). */
export const NETLINK_NETFILTER = 12;

const MSG_DONTWAIT = 0x40;
/** struct sockaddr_nl: u16 nl_family, u16 pad, u32 nl_pid (0: the kernel picks), u32 nl_groups. */
const SOCKADDR_NL_LEN = 12;

export interface NetlinkSocketOptions {
  /** Longest blocking recv before it returns 0; default 1000 ms. */
  recvTimeoutMs?: number;
  /** Receive buffer; default 1 MiB (forced past rmem_max when permitted). */
  receiveBufferBytes?: number;
}

/** What `recv` returns when nothing arrived within the timeout. */
export const NETLINK_RECV_TIMEOUT = 0;

export class NetlinkSocket {
  private closed = false;
  private readonly options = new OptionScratch();

  private constructor(private readonly libs: Libraries, readonly fd: number) {}

  /** Opens and binds a netlink socket of `protocol`; closes it again if a step fails. */
  static open(protocol: number, opts: NetlinkSocketOptions = {}): NetlinkSocket {
    const libs = loadLibraries();
    const fd = libs.libc.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
    check(libs, fd >= 0, `socket(AF_NETLINK, ${protocol})`);
    const s = new NetlinkSocket(libs, fd);
    try {
      const addr = new Uint8Array(SOCKADDR_NL_LEN);
      new DataView(addr.buffer).setUint16(0, AF_NETLINK, true);
      check(libs, libs.libc.bind(fd, addr, SOCKADDR_NL_LEN) === 0, "bind netlink socket");
      setReceiveBuffer(libs, fd, s.options, opts.receiveBufferBytes ?? 1 << 20);
      setReceiveTimeout(libs, fd, s.options, opts.recvTimeoutMs ?? 1000);
      return s;
    } catch (e) {
      s.close();
      throw e;
    }
  }

  /** Sends `bytes[0, len)` as one datagram; throws FfiError on failure. */
  send(bytes: Uint8Array, len = bytes.byteLength): void {
    if (this.closed) throw new Error("netlink socket is closed");
    const n = Number(this.libs.libc.send(this.fd, bytes, BigInt(len), 0));
    if (n !== len) {
      const errno = n < 0 ? this.libs.errno() : Errno.EINVAL;
      throw new FfiError(`sending ${len} bytes on a netlink socket`, errno, hintFor(errno));
    }
  }

  /**
   * Receives one datagram into `buf`: its length, or NETLINK_RECV_TIMEOUT when nothing arrived
   * within the timeout (at once with `dontWait`). Throws FfiError on failures (ENOBUFS: the
   * kernel dropped messages).
   */
  recv(buf: Uint8Array, dontWait = false): number {
    if (this.closed) throw new Error("netlink socket is closed");
    const flags = dontWait ? MSG_DONTWAIT : 0;
    const n = Number(this.libs.libc.recv(this.fd, buf, BigInt(buf.byteLength), flags));
    if (n >= 0) return n;
    const errno = this.libs.errno();
    if (errno === Errno.EAGAIN || errno === Errno.EINTR) return NETLINK_RECV_TIMEOUT;
    throw new FfiError("recv on a netlink socket", errno, hintFor(errno));
  }

  /**
   * send() on another thread (see LIBC_SYMBOLS.send_off_thread): resolves true when the whole
   * datagram went out. No errno: the call ran on another thread. `bytes` must stay untouched
   * until it settles.
   */
  async sendOffThread(bytes: Uint8Array): Promise<boolean> {
    if (this.closed) throw new Error("netlink socket is closed");
    const n = await this.libs.libc.send_off_thread(this.fd, bytes, BigInt(bytes.byteLength), 0);
    return Number(n) === bytes.byteLength;
  }

  /** Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.libs.libc.close(this.fd);
  }
}
