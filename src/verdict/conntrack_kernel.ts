/**
 * The kernel's conntrack table as strict mode sees it (ConntrackPort): filtered dumps and ct mark
 * updates over one ctnetlink socket, synchronously. Runs in the verdict Worker (the one thread
 * with FFI), between its packet turns.
 */
import { NETLINK_NETFILTER, NetlinkSocket } from "../../ffi/netlink_socket.ts";
import {
  type ConntrackEntry,
  decodeConntrackMessages,
  type DumpSide,
  encodeDumpRequest,
  encodeMarkUpdate,
} from "../netlink/conntrack.ts";
import type { ConntrackPort, MarkUpdate } from "./strict_cuts.ts";

/** Updates per send(): each is acked, and the acks must fit the socket buffer together. */
const UPDATES_PER_SEND = 64;
/** One datagram of a dump: the kernel fills at most what the reader's buffer holds. */
const RECV_BUFFER_BYTES = 64 * 1024;

export class KernelConntrack implements ConntrackPort {
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private readonly buf = new Uint8Array(RECV_BUFFER_BYTES);

  private constructor(private readonly socket: NetlinkSocket) {}

  static open(): KernelConntrack {
    return new KernelConntrack(NetlinkSocket.open(NETLINK_NETFILTER, { recvTimeoutMs: 1000 }));
  }

  dump(family: 4 | 6, filter?: { ip: string; side: DumpSide }): ConntrackEntry[] {
    const seq = this.nextSeq();
    this.socket.send(encodeDumpRequest(seq, family, filter));
    const entries: ConntrackEntry[] = [];
    let done = false;
    let failure: string | undefined;
    const sink = {
      entry: (e: ConntrackEntry, s: number) => {
        if (s === seq) entries.push(e);
      },
      ack: (errno: number, s: number) => {
        // A dump ends in NLMSG_DONE; an error message instead means it never started.
        if (s === seq && errno !== 0) {
          failure = `conntrack dump failed: errno ${errno}`;
          done = true;
        }
      },
      done: (s: number) => {
        if (s === seq) done = true;
      },
      malformed: (reason: string) => {
        failure = `malformed conntrack message: ${reason}`;
      },
    };
    while (!done) {
      const n = this.socket.recv(this.buf);
      if (n === 0) throw new Error("conntrack dump timed out");
      decodeConntrackMessages(this.buf, n, sink);
      if (failure) throw new Error(failure);
    }
    return entries;
  }

  setMarks(updates: readonly MarkUpdate[]): number[] {
    const results: number[] = [];
    for (let i = 0; i < updates.length; i += UPDATES_PER_SEND) {
      results.push(...this.sendBatch(updates.slice(i, i + UPDATES_PER_SEND)));
    }
    return results;
  }

  /** One datagram of updates, then their acks (one each, matched by sequence number). */
  private sendBatch(batch: readonly MarkUpdate[]): number[] {
    const first = this.nextSeq();
    const messages = batch.map((u, i) =>
      encodeMarkUpdate((first + i) >>> 0, u.entry, u.value, u.mask)
    );
    this.seq = (first + batch.length - 1) >>> 0;
    const total = messages.reduce((n, m) => n + m.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const m of messages) {
      out.set(m, at);
      at += m.length;
    }
    this.socket.send(out);
    const results = new Array<number>(batch.length).fill(-1);
    let pending = batch.length;
    let failure: string | undefined;
    const sink = {
      entry: () => {},
      ack: (errno: number, s: number) => {
        const i = (s - first) >>> 0;
        if (i < batch.length && results[i] === -1) {
          results[i] = errno;
          pending--;
        }
      },
      done: () => {},
      malformed: (reason: string) => {
        failure = `malformed conntrack message: ${reason}`;
      },
    };
    while (pending > 0) {
      const n = this.socket.recv(this.buf);
      if (n === 0) throw new Error(`${pending} conntrack mark updates unanswered`);
      decodeConntrackMessages(this.buf, n, sink);
      if (failure) throw new Error(failure);
    }
    return results;
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  close(): void {
    this.socket.close();
  }
}
