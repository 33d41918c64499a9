/**
 * One bound NFQUEUE: the only object outside ffi/ sees. Raw handles stay private; the caller
 * passes its own buffers to `recv`, decodes them (src/netlink/nfqueue.ts) and answers with `send`.
 *
 * Configuration goes through libnetfilter_queue (bind, copy mode, length, flags); the socket
 * options through libc setsockopt on the queue's netlink socket.
 */
import { check, Errno, FfiError, hintFor, type Libraries, loadLibraries } from "./library.ts";
import {
  OptionScratch,
  setReceiveBuffer,
  setReceiveTimeout,
  trySetIntOption,
} from "./socket_options.ts";

/** nfq_set_mode: copy (a prefix of) the packet to user space (linux/netfilter/nfnetlink_queue.h). */
const NFQNL_COPY_PACKET = 2;
/** NFQA_CFG_FLAGS bit: accept instead of drop when the queue is full. */
const NFQA_CFG_F_FAIL_OPEN = 1 << 0;

const SOL_NETLINK = 270;
const NETLINK_NO_ENOBUFS = 5;
const MSG_DONTWAIT = 0x40;

export interface QueueConfig {
  queueId: number;
  /** Bytes of each packet copied to user space (the verdict worker asks for the whole packet). */
  copyRange?: number;
  /** Kernel queue length before packets are dropped, or accepted when `failOpen`. */
  maxLen: number;
  /** Kernel accepts packets it cannot queue (NFQA_CFG_F_FAIL_OPEN) instead of dropping them. */
  failOpen: boolean;
  /** Socket receive buffer; default 8 MiB (forced past rmem_max, which needs CAP_NET_ADMIN). */
  receiveBufferBytes?: number;
  /** How long a blocking `recv` waits before returning 0; default 20 ms. */
  recvTimeoutMs?: number;
}

/** What `recv` reports besides data: the caller decides what is worth counting. */
export const RECV_TIMEOUT = 0;
/** The kernel dropped messages because the socket buffer was full (only without NO_ENOBUFS). */
export const RECV_OVERRUN = -1;

export class NfQueue {
  private closed = false;
  private readonly options = new OptionScratch();
  private recvBuf?: Uint8Array;
  private recvLen = 0n;

  private constructor(
    private readonly libs: Libraries,
    private readonly handle: Deno.PointerObject,
    private queueHandle: Deno.PointerValue,
    readonly fd: number,
    readonly queueId: number,
  ) {}

  /** Opens, binds and configures the queue; closes everything again if any step fails. */
  static open(cfg: QueueConfig): NfQueue {
    const libs = loadLibraries();
    const { nfq } = libs;
    const handle = nfq.nfq_open();
    if (handle === null) check(libs, false, "nfq_open");
    const fd = nfq.nfq_fd(handle);
    const q = new NfQueue(libs, handle!, null, fd, cfg.queueId);
    try {
      const qh = nfq.nfq_create_queue(handle, cfg.queueId, null, null);
      check(libs, qh !== null, `binding queue ${cfg.queueId}`);
      q.queueHandle = qh;
      const range = cfg.copyRange ?? 0xffff;
      check(libs, nfq.nfq_set_mode(qh, NFQNL_COPY_PACKET, range) >= 0, "nfq_set_mode");
      check(libs, nfq.nfq_set_queue_maxlen(qh, cfg.maxLen) >= 0, "nfq_set_queue_maxlen");
      const flags = cfg.failOpen ? NFQA_CFG_F_FAIL_OPEN : 0;
      // Older kernels answer EOPNOTSUPP for flags: fail-open is then the rule's --queue-bypass only.
      if (nfq.nfq_set_queue_flags(qh, NFQA_CFG_F_FAIL_OPEN, flags) < 0 && cfg.failOpen) {
        const errno = libs.errno();
        if (errno !== Errno.EOPNOTSUPP) throw new FfiError("nfq_set_queue_flags", errno);
      }
      check(
        libs,
        trySetIntOption(libs, q.fd, q.options, SOL_NETLINK, NETLINK_NO_ENOBUFS, 1),
        "setsockopt NETLINK_NO_ENOBUFS",
      );
      setReceiveBuffer(libs, q.fd, q.options, cfg.receiveBufferBytes ?? 8 << 20);
      q.setRecvTimeout(cfg.recvTimeoutMs ?? 20);
      return q;
    } catch (e) {
      q.close();
      throw e;
    }
  }

  setRecvTimeout(ms: number): void {
    setReceiveTimeout(this.libs, this.fd, this.options, ms);
  }

  /**
   * Receives one datagram into `buf`: its length, or RECV_TIMEOUT when nothing arrived (timeout,
   * interrupted, or nothing pending with `dontWait`), or RECV_OVERRUN. Throws on real failures.
   */
  recv(buf: Uint8Array, dontWait = false): number {
    if (this.closed) throw new Error("queue is closed");
    // The length as a BigInt made once per buffer: a new one per call costs on a busy loop.
    if (buf !== this.recvBuf) {
      this.recvBuf = buf;
      this.recvLen = BigInt(buf.byteLength);
    }
    const n = Number(this.libs.libc.recv(this.fd, buf, this.recvLen, dontWait ? MSG_DONTWAIT : 0));
    if (n >= 0) return n;
    const errno = this.libs.errno();
    if (errno === Errno.EAGAIN || errno === Errno.EINTR) return RECV_TIMEOUT;
    if (errno === Errno.ENOBUFS) return RECV_OVERRUN;
    throw new FfiError("recv on the queue socket", errno, hintFor(errno));
  }

  /** Sends the first `len` bytes of `bytes` (netlink messages) with one system call. */
  send(bytes: Uint8Array, len: number): void {
    if (len === 0) return;
    if (this.closed) throw new Error("queue is closed");
    const n = Number(this.libs.libc.send(this.fd, bytes, BigInt(len), 0));
    if (n !== len) {
      const errno = n < 0 ? this.libs.errno() : Errno.EINVAL;
      throw new FfiError(`sending ${len} bytes of verdicts`, errno, hintFor(errno));
    }
  }

  /**
   * Unbinds the queue and closes the socket; idempotent. Packets still queued are then handled by
   * the kernel: accepted with --queue-bypass / fail-open, dropped otherwise.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.queueHandle !== null) this.libs.nfq.nfq_destroy_queue(this.queueHandle);
    this.queueHandle = null;
    this.libs.nfq.nfq_close(this.handle);
  }
}
