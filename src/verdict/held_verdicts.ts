/**
 * Packets whose verdict waits for a pod the agent does not know yet (the pod-start race; see
 * src/policy/local_pods.ts). A queued packet from or to an address of this node's pod CIDRs that
 * no known pod owns gets no verdict at once: it stays in the kernel queue (NFQUEUE verdicts may
 * come in any order, by packet id) while the worker keeps judging other packets. It is judged as
 * soon as a state event makes its addresses known, with that pod's policies; after the timeout
 * (`--unknown-pod-timeout`, 2 s) the `--fail-open` rule applies instead: accepted when failing
 * open, dropped when failing closed, as the kernel does when the agent is away.
 *
 * Bounded: held packets occupy the kernel queue too (`--queue-maxlen`), so at most half of it is
 * held; one more releases the oldest at once by the same `--fail-open` rule (reason "overflow"),
 * so the other half stays free for packets that can be judged at once.
 *
 * Pure apart from the time the caller passes in; the worker (verdict_worker.ts) sends verdicts.
 */
import type { ParsedPacket } from "../packet/parse.ts";
import { NF_ACCEPT, NF_DROP, type NfVerdict } from "../netlink/nfqueue.ts";
import type { AgentMetrics } from "../metrics.ts";

/** Default `--unknown-pod-timeout`. */
export const DEFAULT_UNKNOWN_POD_TIMEOUT_MS = 2000;

export interface HeldPacket {
  /** The kernel's packet id, which the verdict names. */
  id: number;
  /** The packet's mark as queued (a deny ORs the deny mark into it). */
  mark: number;
  /** The parsed connection: judged again from it, the payload is not kept. */
  packet: ParsedPacket;
  /** Clock reading (ms) when it was received. */
  since: number;
  /**
   * The kernel's verdict cache may remember its verdict (verdict_cache.ts `cacheable`, decided
   * from the payload, which is not kept). Only a verdict judged on release can carry the mark.
   */
  cacheable?: boolean;
}

export type ReleaseReason = "timeout" | "overflow";

/** What the worker reports to the main thread (held_verdicts metrics). */
export interface HeldStatsSnapshot {
  /** Packets held since the last snapshot. */
  held: number;
  /** Released without a verdict of the engine since the last snapshot, by reason. */
  timeouts: Record<ReleaseReason, number>;
  /** Milliseconds each packet judged after a hold waited (since the last snapshot). */
  waitsMs: number[];
  /** Held now. */
  current: number;
}

/** The verdict of a packet released unjudged: the `--fail-open` rule. */
export function releaseVerdict(failOpen: boolean): NfVerdict {
  return failOpen ? NF_ACCEPT : NF_DROP;
}

/** At most half the kernel queue is held (see the module comment). */
export function maxHeldFor(queueMaxLen: number): number {
  return Math.max(1, Math.floor(queueMaxLen / 2));
}

export class HeldVerdicts {
  /** In arrival order (Map keeps insertion order): the oldest first, for timeouts. */
  private readonly byId = new Map<number, HeldPacket>();
  private held = 0;
  private timeouts: Record<ReleaseReason, number> = { timeout: 0, overflow: 0 };
  private waits: number[] = [];

  constructor(readonly timeoutMs: number, readonly max: number) {
    if (!(timeoutMs > 0)) throw new RangeError(`timeout must be > 0 ms, not ${timeoutMs}`);
    if (!(max >= 1)) throw new RangeError(`max must be >= 1, not ${max}`);
  }

  get size(): number {
    return this.byId.size;
  }

  /** Hold a packet. Over the bound, returns the oldest held packet, to be released unjudged. */
  hold(p: HeldPacket): HeldPacket | undefined {
    this.byId.delete(p.id); // a repeated id (cannot happen) would keep its place otherwise
    this.byId.set(p.id, p);
    this.held++;
    if (this.byId.size <= this.max) return undefined;
    const oldest = this.byId.values().next().value!;
    this.byId.delete(oldest.id);
    this.timeouts.overflow++;
    return oldest;
  }

  /**
   * Remove and return the packets none of whose addresses is unknown any more (call after state
   * changed), counting how long they waited until `now`.
   */
  takeKnown(isUnknown: (ip: string) => boolean, now: number): HeldPacket[] {
    const out: HeldPacket[] = [];
    for (const h of this.byId.values()) {
      if (isUnknown(h.packet.src) || isUnknown(h.packet.dst)) continue;
      out.push(h);
    }
    for (const h of out) {
      this.byId.delete(h.id);
      this.waits.push(now - h.since);
    }
    return out;
  }

  /** Remove and return the packets held `timeoutMs` or longer at `now`. */
  takeExpired(now: number): HeldPacket[] {
    const out: HeldPacket[] = [];
    for (const h of this.byId.values()) {
      if (now - h.since < this.timeoutMs) break; // the rest arrived later
      out.push(h);
    }
    for (const h of out) this.byId.delete(h.id);
    this.timeouts.timeout += out.length;
    return out;
  }

  /** Remove and return every held packet (the loop stops), counted as nothing. */
  takeAll(): HeldPacket[] {
    const out = [...this.byId.values()];
    this.byId.clear();
    return out;
  }

  /** Milliseconds until the oldest held packet times out; undefined when none is held. */
  nextTimeoutIn(now: number): number | undefined {
    const oldest = this.byId.values().next().value;
    return oldest === undefined ? undefined : Math.max(0, oldest.since + this.timeoutMs - now);
  }

  /** True when a snapshot would carry something (or the held count is not zero). */
  get hasStats(): boolean {
    return this.held > 0 || this.waits.length > 0 || this.byId.size > 0 ||
      this.timeouts.timeout > 0 || this.timeouts.overflow > 0;
  }

  /** Counts since the last snapshot; starts them over. */
  snapshot(): HeldStatsSnapshot {
    const snap = {
      held: this.held,
      timeouts: this.timeouts,
      waitsMs: this.waits,
      current: this.byId.size,
    };
    this.held = 0;
    this.timeouts = { timeout: 0, overflow: 0 };
    this.waits = [];
    return snap;
  }
}

/** The log line of a packet released unjudged (rate-limited by the caller). */
export function describeRelease(
  h: HeldPacket,
  reason: ReleaseReason,
  failOpen: boolean,
  unknown: (ip: string) => boolean,
  waitedMs: number,
): string {
  const p = h.packet;
  const addr = (ip: string, port: number) =>
    `${p.family === 6 ? `[${ip}]` : ip}${
      p.protocol === "TCP" || p.protocol === "UDP" ? `:${port}` : ""
    }`;
  const unknownIPs = [p.src, p.dst].filter(unknown);
  const why = reason === "timeout"
    ? `no pod appeared for ${unknownIPs.join(" and ") || "its address"} within ${
      Math.round(waitedMs)
    } ms`
    : "too many packets held";
  return `held packet released unjudged (${why}): ${
    failOpen ? "accepted (fail-open)" : "dropped (fail-closed)"
  } proto=${p.protocol} src=${addr(p.src, p.srcPort)} dst=${addr(p.dst, p.dstPort)}`;
}

/** Replays a snapshot into the Prometheus metrics (main thread). */
export function recordHeldStats(metrics: AgentMetrics, snap: HeldStatsSnapshot): void {
  if (snap.held) metrics.heldPackets.inc(snap.held);
  for (const [reason, n] of Object.entries(snap.timeouts)) {
    if (n) metrics.heldPacketTimeouts.inc({ reason }, n);
  }
  for (const ms of snap.waitsMs) metrics.heldPacketWait.observe(ms / 1000);
  metrics.heldPacketsNow.set(snap.current);
}
