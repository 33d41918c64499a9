/**
 * A plain netlink socket of our own (besides the queue's): requests built in JS-owned buffers
 * go out with one `send`, answers come back into JS-owned buffers; nothing else crosses. The
 * verdict worker uses one (NETLINK_NETFILTER) to empty the verdict cache's sets.
 */
import { check, Errno, FfiError, hintFor, type Libraries, loadLibraries } from "./library.ts";

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const MSG_DONTWAIT = 0x40;

export class NetlinkSocket {
  private closed = false;

  private constructor(private readonly libs: Libraries, readonly fd: number) {}

  /** Opens a socket of netlink `protocol`; `recvTimeoutMs` bounds every blocking recv. */
  static open(protocol: number, recvTimeoutMs: number): NetlinkSocket {
    const libs = loadLibraries();
    const fd = libs.libc.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
    check(libs, fd >= 0, `netlink socket (protocol ${protocol})`);
    const s = new NetlinkSocket(libs, fd);
    try {
      const us = Math.max(1000, Math.round(recvTimeoutMs * 1000));
      const tv = BigInt64Array.of(BigInt(Math.floor(us / 1e6)), BigInt(us % 1e6));
      const ok = libs.libc.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, new Uint8Array(tv.buffer), 16);
      check(libs, ok === 0, "setsockopt SO_RCVTIMEO");
    } catch (e) {
      s.close();
      throw e;
    }
    return s;
  }

  /** Sends `bytes` (netlink messages) to the kernel with one system call. */
  send(bytes: Uint8Array): void {
    if (this.closed) throw new Error("netlink socket is closed");
    const n = Number(this.libs.libc.send(this.fd, bytes, BigInt(bytes.length), 0));
    if (n !== bytes.length) {
      const errno = n < 0 ? this.libs.errno() : Errno.EINVAL;
      throw new FfiError("sending a netlink request", errno, hintFor(errno));
    }
  }

  /**
   * One datagram into `buf`: its length, or 0 when nothing came within the receive timeout (or
   * at once, with `dontWait`). Throws on real failures.
   */
  recv(buf: Uint8Array, dontWait = false): number {
    if (this.closed) throw new Error("netlink socket is closed");
    const flags = dontWait ? MSG_DONTWAIT : 0;
    const n = Number(this.libs.libc.recv(this.fd, buf, BigInt(buf.byteLength), flags));
    if (n >= 0) return n;
    const errno = this.libs.errno();
    if (errno === Errno.EAGAIN || errno === Errno.EINTR) return 0;
    throw new FfiError("receiving a netlink answer", errno, hintFor(errno));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.libs.libc.close(this.fd);
  }
}
