/**
 * The kernel's conntrack table as strict mode sees it (ConntrackPort), over two ctnetlink
 * sockets in the verdict Worker:
 *
 *   - dumps: the kernel walks its whole hash table for every dump, filtered or not (about 13 ms
 *     for 262144 buckets on our machines), and for a dump that finds little it does all of that
 *     inside the send() of the request. So the request is sent off the Worker's thread
 *     (ffi send_off_thread) and the answer polled with non-blocking recv() calls between packet
 *     turns: the packet loop never waits for the walk, and never for its event loop either (a
 *     promise of Deno's FFI settles only when the event loop turns, which the packet loop does
 *     rarely). Each poll decodes at most a few datagrams (a few hundred entries each);
 *   - ct mark updates are synchronous: each is one hash lookup in the kernel, answered at once.
 */
import { errnoName, hintFor } from "../../ffi/library.ts";
import { NETLINK_NETFILTER, NetlinkSocket } from "../../ffi/netlink_socket.ts";
import {
  type ConntrackEntry,
  decodeConntrackMessages,
  type DumpSide,
  encodeDumpRequest,
  encodeMarkUpdate,
} from "../netlink/conntrack.ts";
import type { ConntrackDump, ConntrackPort, MarkUpdate } from "./strict_cuts.ts";

/** Updates per send(): each is acked, and the acks must fit the socket buffer together. */
const UPDATES_PER_SEND = 64;
/** One datagram of a dump: the kernel fills at most what the reader's buffer holds. */
const RECV_BUFFER_BYTES = 64 * 1024;
/** Datagrams read per poll, so one poll stays short however large the dump. */
const DATAGRAMS_PER_POLL = 4;
/** A dump not complete after this long is abandoned (and its socket replaced). */
const DUMP_TIMEOUT_MS = 5000;

export class KernelConntrack implements ConntrackPort {
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private readonly buf = new Uint8Array(RECV_BUFFER_BYTES);
  private dumpSocket: NetlinkSocket | undefined;
  private current: KernelDump | undefined;

  private constructor(private readonly socket: NetlinkSocket) {}

  static open(): KernelConntrack {
    const ct = new KernelConntrack(NetlinkSocket.open(NETLINK_NETFILTER, { recvTimeoutMs: 1000 }));
    try {
      ct.dumpSocket = NetlinkSocket.open(NETLINK_NETFILTER);
    } catch (e) {
      ct.close();
      throw e;
    }
    return ct;
  }

  /** One dump at a time; a failed one takes its socket with it (the kernel may be mid-dump). */
  startDump(family: 4 | 6, filter?: { ip: string; side: DumpSide }): ConntrackDump {
    if (this.current && !this.current.finished) throw new Error("a conntrack dump is running");
    const socket = this.dumpSocket ??= NetlinkSocket.open(NETLINK_NETFILTER);
    const dump = new KernelDump(socket, this.nextSeq(), family, filter, () => {
      socket.close();
      if (this.dumpSocket === socket) this.dumpSocket = undefined;
    });
    this.current = dump;
    return dump;
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
    const first = (this.seq + 1) >>> 0;
    const messages = batch.map((u, i) =>
      encodeMarkUpdate((first + i) >>> 0, u.entry, u.value, u.mask)
    );
    this.seq = (first + batch.length - 1) >>> 0;
    const out = new Uint8Array(messages.reduce((n, m) => n + m.length, 0));
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
    this.dumpSocket?.close();
  }
}

/** One dump: the request sent off-thread, then its datagrams read whenever they are there. */
class KernelDump implements ConntrackDump {
  finished = false;
  private failure: string | undefined;
  private readonly startedAt = performance.now();
  private readonly buf = new Uint8Array(RECV_BUFFER_BYTES);
  private entries: ConntrackEntry[] = [];
  private readonly sink;
  /** Held until the off-thread send is done with it. */
  private readonly request: Uint8Array;

  constructor(
    private readonly socket: NetlinkSocket,
    private readonly seq: number,
    family: 4 | 6,
    filter: { ip: string; side: DumpSide } | undefined,
    private readonly discard: () => void,
  ) {
    this.sink = {
      entry: (e: ConntrackEntry, s: number) => {
        if (s === seq) this.entries.push(e);
      },
      ack: (errno: number, s: number) => {
        // A dump ends in NLMSG_DONE; an error message instead means it never started.
        if (s === seq && errno !== 0) {
          const hint = hintFor(errno);
          this.failure = `the kernel refused the dump: ${errnoName(errno)}${
            hint ? ` (${hint})` : ""
          }`;
        }
      },
      done: (s: number) => {
        if (s === seq) this.finished = true;
      },
      malformed: (reason: string) => {
        this.failure = `malformed conntrack message: ${reason}`;
      },
    };
    this.request = encodeDumpRequest(seq, family, filter);
    // Settles only when the Worker's event loop turns; the dump does not wait for it.
    socket.sendOffThread(this.request).then(
      (sent) => {
        if (!sent) this.failure ??= "sending the conntrack dump request failed";
      },
      (e) => this.failure ??= `sending the conntrack dump request failed: ${e}`,
    );
  }

  poll(): { entries: ConntrackEntry[]; done: boolean } {
    if (this.finished) return { entries: [], done: true };
    try {
      for (let i = 0; i < DATAGRAMS_PER_POLL && !this.finished && !this.failure; i++) {
        const n = this.socket.recv(this.buf, true);
        if (n === 0) break; // nothing yet: the kernel is still walking
        decodeConntrackMessages(this.buf, n, this.sink);
      }
      if (!this.finished && !this.failure && performance.now() - this.startedAt > DUMP_TIMEOUT_MS) {
        this.failure = `no complete answer within ${DUMP_TIMEOUT_MS} ms`;
      }
    } catch (e) {
      this.failure ??= e instanceof Error ? e.message : String(e);
    }
    if (this.failure) {
      this.finished = true;
      this.discard();
      throw new Error(this.failure);
    }
    const entries = this.entries;
    this.entries = [];
    return { entries, done: this.finished };
  }
}
