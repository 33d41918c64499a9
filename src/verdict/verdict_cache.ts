/**
 * The verdict worker's half of the kernel verdict cache (the rules are in
 * src/rules/verdict_cache_rules.ts; docs/rules.md "Verdict cache" states the invariant):
 *
 * - which verdicts the kernel may remember (`cacheable`): TCP, UDP and SCTP packets whose ports
 *   the kernel's set lookup reads at the same place our parser did (IPv4, or IPv6 without
 *   extension headers), so the key the kernel stores is the key we judged;
 * - emptying every cache set after each state change, before the next packet is judged
 *   (`WorkerCache`). The kernel re-injects a packet inside the `send` that carries its verdict,
 *   so when the worker applies a change no verdict of the old state is still on its way: every
 *   entry of the old state is in the sets already, and the flush removes them all.
 *
 * When emptying fails the worker stops asking the kernel to remember anything and retries; what
 * the sets still hold then expires within the cache timeout.
 */
import type { ParsedPacket } from "../packet/parse.ts";
import { decodeAcks, encodeFlush, type FlushTarget } from "../netlink/set_flush.ts";

const ENOENT = 2;
const IPV6_NEXT_HEADER_OFFSET = 6;
const TCP = 6;
const UDP = 17;
const SCTP = 132;
/** Least time between two retries of a failed flush (each may wait for the kernel's answer). */
export const FLUSH_RETRY_MS = 1000;

/** Whether the kernel may remember the verdict on this (parsed) packet under its own key. */
export function cacheable(payload: Uint8Array, p: ParsedPacket): boolean {
  const proto = p.protocolNumber;
  if (proto !== TCP && proto !== UDP && proto !== SCTP) return false;
  // The kernel's set lookup walks IPv6 extension headers its own way; only a transport header
  // right after the fixed header is certainly read where the parser read it.
  return p.family === 4 || payload[IPV6_NEXT_HEADER_OFFSET] === proto;
}

/** The socket the flushes go through (a NETLINK_NETFILTER NetlinkSocket in the worker). */
export interface NetlinkIO {
  send(bytes: Uint8Array): void;
  /** One datagram; 0 when nothing is there (at once with `dontWait`, else after a timeout). */
  recv(buf: Uint8Array, dontWait?: boolean): number;
}

export type FlushResult = { ok: true } | { ok: false; error: string };

/** Empties every set of `target`, synchronously, and says whether each one was emptied. */
export class CacheFlusher {
  private seq = 1;
  private readonly buf = new Uint8Array(16384);

  constructor(private readonly target: FlushTarget, private readonly io: NetlinkIO) {}

  flush(): FlushResult {
    const req = encodeFlush(this.target, this.seq);
    this.seq = (this.seq + req.acks.size + 2) >>> 0;
    try {
      this.io.send(req.bytes);
    } catch (e) {
      return { ok: false, error: (e as Error).message };
    }
    const pending = new Map(req.acks);
    const failures: string[] = [];
    // The kernel handles a request inside send() and queues its answer before send returns, so
    // the answers are normally there at once; one blocking wait covers anything else.
    let waited = false;
    while (pending.size) {
      let n: number;
      try {
        n = this.io.recv(this.buf, !waited);
      } catch (e) {
        failures.push((e as Error).message);
        break;
      }
      if (n === 0) {
        if (waited) break;
        waited = true;
        continue;
      }
      for (const [seq, errno] of decodeAcks(this.buf, n)) {
        const name = pending.get(seq);
        if (name === undefined) continue; // a late answer to an earlier attempt
        pending.delete(seq);
        // A set that does not exist holds nothing a rule could read.
        if (errno !== 0 && errno !== ENOENT) failures.push(`${name}: errno ${errno}`);
      }
    }
    if (pending.size) failures.push(`no answer for ${[...pending.values()].join(", ")}`);
    return failures.length ? { ok: false, error: failures.join("; ") } : { ok: true };
  }
}

/** Counts the worker reports to the main thread (kube_netpol_verdict_cache_*). */
export interface CacheCounts {
  /** Packets judged in user space while the cache is on: each missed the kernel's cache. */
  misses: number;
  /** The cache sets were emptied after a state change. */
  invalidations: number;
  /** Emptying failed (the cache is off until it works again). */
  failures: number;
}

/**
 * The worker's cache state: whether verdicts may be marked for caching now, and whether a state
 * change still has to be flushed out. Time comes from the caller (monotonic milliseconds).
 */
export class WorkerCache {
  /** A state change was applied since the sets were last emptied. */
  private dirty = true;
  /** The last flush worked: verdicts may carry the cache mark. */
  private healthy = false;
  private lastAttempt = -Infinity;
  private counts: CacheCounts = { misses: 0, invalidations: 0, failures: 0 };
  /** The last flush failure, for the worker's warning (taken once). */
  private failure?: string;

  constructor(private readonly flusher: { flush(): FlushResult }) {}

  /** Verdicts judged now may be remembered by the kernel. */
  get usable(): boolean {
    return this.healthy && !this.dirty;
  }

  /** A state event was applied: nothing judged before may be served after the next flush. */
  stateChanged(): void {
    this.dirty = true;
  }

  /**
   * Before judging: flush if a change is pending (a failed flush is retried at most every
   * FLUSH_RETRY_MS, meanwhile nothing is marked). True when this call emptied the sets.
   */
  beforeJudging(now: number): boolean {
    if (!this.dirty && this.healthy) return false;
    if (!this.healthy && now - this.lastAttempt < FLUSH_RETRY_MS) return false;
    this.lastAttempt = now;
    const r = this.flusher.flush();
    if (r.ok) {
      this.dirty = false;
      this.healthy = true;
      this.counts.invalidations++;
      return true;
    }
    this.healthy = false;
    this.counts.failures++;
    this.failure = r.error;
    return false;
  }

  /** Empties the sets now and marks nothing more (the loop is stopping). */
  empty(): FlushResult {
    this.healthy = false;
    return this.flusher.flush();
  }

  miss(): void {
    this.counts.misses++;
  }

  /** The last failure since the previous call, if any. */
  takeFailure(): string | undefined {
    const f = this.failure;
    this.failure = undefined;
    return f;
  }

  /** Counts since the last drain; starts over. */
  drain(): CacheCounts | undefined {
    const c = this.counts;
    if (!c.misses && !c.invalidations && !c.failures) return undefined;
    this.counts = { misses: 0, invalidations: 0, failures: 0 };
    return c;
  }
}
