/**
 * From one queued packet to one netfilter verdict: parse, ask the engine, pick the verdict the
 * rule backend expects (see marks.ts). Pure apart from the clock (injectable); kept out of the
 * worker so it can be unit-tested and benchmarked without a queue.
 *
 * What a packet that cannot be judged gets: DENY, whatever `--fail-open` says. Fail-open covers
 * the agent being absent or overloaded (the kernel's bypass flags do that); the bytes of a queued
 * packet are the attacker's to choose, and an unreadable header chain must never be a way past a
 * policy. An unparsable packet is dropped (its transport may be unknown, so it cannot be rejected
 * the way its protocol expects). An engine failure on a parsed packet is a bug, and denying is the
 * safe answer too; since the transport is known it is refused like any deny (TCP reset, ICMP
 * unreachable) so the client does not hang. Both are counted by reason and recorded for the log.
 */
import { type ParsedPacket, type ParseFailureResult, parsePacket } from "../packet/parse.ts";
import type { PolicyEngine } from "../policy/engine.ts";
import type { Connection, Decision } from "../policy/types.ts";
import { NF_ACCEPT, NF_DROP, NF_REPEAT, type NfVerdict } from "../netlink/nfqueue.ts";
import type { PacketStats } from "./verdict_stats.ts";
import type { VerdictRecord } from "./verdict_protocol.ts";
import { cacheable } from "./verdict_cache.ts";
import { type MemoEntry, VerdictMemo } from "./verdict_memo.ts";
import type { ConnectionProtocol } from "../net/protocol.ts";

export interface JudgeOptions {
  nodeName: string;
  denyMark: number;
}

/** The verdict for one packet: what to send, and the mark to set (for NF_REPEAT). */
export interface PacketVerdict {
  verdict: NfVerdict;
  mark: number | undefined;
  allowed: boolean;
  /**
   * No verdict yet: an endpoint is a local pod the agent does not know yet (`unknownEndpoint`);
   * the caller holds the packet (held_verdicts.ts) and asks `judgeParsed` once it is known.
   */
  held: boolean;
}

/** Milliseconds from a monotonic clock (performance.now by default). */
export type Clock = () => number;

const ETH_P_IPV6 = 0x86dd;
const MICROS_PER_MS = 1000;

export class PacketJudge {
  /** Reused for every packet: evaluation is synchronous and keeps no reference to it. */
  private readonly conn: Connection = { src: "", dst: "", protocol: "TCP", port: 0 };
  private readonly out: PacketVerdict = {
    verdict: NF_ACCEPT,
    mark: undefined,
    allowed: true,
    held: false,
  };
  // What the last judge() saw, kept by reference so a record is built only when one is wanted.
  private packet: ParsedPacket | undefined;
  private decision: Decision | undefined;
  private failure: ParseFailureResult | undefined;
  private error: unknown;
  private family: 4 | 6 = 4;
  /**
   * [pod-start race] True for an address of this node's pod CIDRs no known pod owns
   * (LocalPodAddresses.isUnknown); a packet with such an endpoint is held, not judged.
   */
  unknownEndpoint?: (ip: string) => boolean;
  /**
   * [pod-start race] Changes whenever `unknownEndpoint` may answer differently without a new
   * engine generation (this node's interface addresses changed): the memo is forgotten then.
   */
  unknownVersion?: () => number;
  /**
   * The verdict cache's mark for allowed and for denied packets the kernel may remember now; 0
   * when it may not (cache off, or not current: see verdict_cache.ts). Set between turns, and
   * valid only for the engine generation it was set at (`cacheGeneration`): a verdict from any
   * other state is never marked, whatever the caller does in between.
   */
  private cacheAllowMark = 0;
  private cacheDenyMark = 0;
  private cacheGeneration = -1;
  /** Whether the packet judge() last returned `held` for may have its verdict remembered. */
  private heldCacheable = false;
  /** Decisions by raw packet key within one engine generation (verdict_memo.ts). */
  private readonly memo = new VerdictMemo();
  /** The payload of a packet judged from the memo: parsed only if a record is asked for. */
  private unparsed: Uint8Array | undefined;

  constructor(
    private readonly engine: PolicyEngine,
    private readonly opts: JudgeOptions,
    private readonly stats: PacketStats,
    private readonly clock: Clock = () => performance.now(),
  ) {}

  /**
   * What later verdicts mark for the kernel verdict cache (0: nothing); see WorkerCache. Call
   * right after the cache was emptied for the engine's current state: the marks hold for this
   * engine generation only.
   */
  setCacheMarks(allow: number, deny: number): void {
    this.cacheAllowMark = allow >>> 0;
    this.cacheDenyMark = deny >>> 0;
    this.cacheGeneration = this.engine.generation;
  }

  /**
   * Judges one packet. Never throws. `started` is the clock's reading when the packet was
   * received; the time to judge it is recorded here, in microseconds.
   */
  judge(payload: Uint8Array, mark: number, hwProtocol: number, started: number): PacketVerdict {
    const out = this.out;
    out.mark = undefined;
    out.held = false;
    this.decision = undefined;
    this.error = undefined;
    this.unparsed = undefined;
    const memo = this.memo;
    memo.sync(this.engine.generation, this.unknownVersion?.() ?? 0);
    // A remembered key was judged (not held) in this same state, so its endpoints are known.
    const keyed = memo.key(payload);
    if (keyed) {
      const hit = memo.get();
      if (hit) return this.remembered(hit, payload, mark, started);
    }
    const parsed = parsePacket(payload);
    if (!parsed.ok) {
      this.packet = undefined;
      this.failure = parsed;
      this.family = parsed.family ?? (hwProtocol === ETH_P_IPV6 ? 6 : 4);
      this.stats.parseFailure(parsed.reason);
      return this.deny(NF_DROP, "unparsed", started);
    }
    const p = parsed.packet;
    this.packet = p;
    this.failure = undefined;
    this.family = p.family;
    const unknown = this.unknownEndpoint;
    if (unknown && (unknown(p.src) || unknown(p.dst))) {
      // The payload buffer is reused: whether its key is the kernel's is decided now.
      this.heldCacheable = cacheable(payload, p);
      out.held = true;
      return out;
    }
    const decision = this.evaluate(p);
    if (!decision) return this.deny(this.refusal(p.protocol, mark), p.protocol, started);
    if (keyed) memo.set({ decision, protocol: p.protocol });
    return this.decided(decision, p.protocol, p.family, cacheable(payload, p), mark, started);
  }

  /** The packet judge() returned `held` for (its parsed connection), for the caller to keep. */
  get heldPacket(): ParsedPacket | undefined {
    return this.out.held ? this.packet : undefined;
  }

  /** Whether the kernel's verdict cache may remember the held packet's verdict once judged. */
  get heldPacketCacheable(): boolean {
    return this.out.held && this.heldCacheable;
  }

  /**
   * Judge a packet held earlier, now that its addresses are known, with the engine's state now
   * (never a verdict from when it was held). `cacheableKey`: heldPacketCacheable when it was held.
   * Never throws.
   */
  judgeParsed(
    p: ParsedPacket,
    mark: number,
    started: number,
    cacheableKey = false,
  ): PacketVerdict {
    this.out.mark = undefined;
    this.out.held = false;
    this.decision = undefined;
    this.error = undefined;
    this.unparsed = undefined;
    this.packet = p;
    this.failure = undefined;
    this.family = p.family;
    const decision = this.evaluate(p);
    if (!decision) return this.deny(this.refusal(p.protocol, mark), p.protocol, started);
    return this.decided(decision, p.protocol, p.family, cacheableKey, mark, started);
  }

  /** The engine's decision, or undefined (counted, error kept for the record) when it threw. */
  private evaluate(p: ParsedPacket): Decision | undefined {
    const conn = this.conn;
    conn.src = p.src;
    conn.dst = p.dst;
    conn.protocol = p.protocol;
    conn.port = p.dstPort;
    try {
      return this.engine.evaluate(conn, this.opts.nodeName);
    } catch (e) {
      this.error = e;
      this.stats.parseFailure("evaluation-error");
      return undefined;
    }
  }

  /** A packet whose key was judged before in this generation: the same decision, unparsed. */
  private remembered(
    hit: MemoEntry,
    payload: Uint8Array,
    mark: number,
    started: number,
  ): PacketVerdict {
    this.packet = undefined;
    this.failure = undefined;
    this.family = 4;
    this.decision = hit.decision;
    this.unparsed = payload;
    // The memo holds only IPv4 TCP, UDP and SCTP: what the kernel's cache may remember.
    return this.decided(hit.decision, hit.protocol, 4, true, mark, started);
  }

  /** The verdict for a decision, with the statistics and the marks it calls for. */
  private decided(
    decision: Decision,
    protocol: ConnectionProtocol,
    family: 4 | 6,
    cacheableKey: boolean,
    mark: number,
    started: number,
  ): PacketVerdict {
    const out = this.out;
    this.decision = decision;
    const stats = this.stats;
    const e = decision.egress.reason.kind;
    if (e !== "not-judged" && e !== "not-a-pod") stats.direction("egress", decision.egress.verdict);
    const i = decision.ingress.reason.kind;
    if (i !== "not-judged" && i !== "not-a-pod") {
      stats.direction("ingress", decision.ingress.verdict);
    }
    // Marks set for another state (a change applied since the cache was last emptied) are void.
    const remember = cacheableKey && this.cacheGeneration === this.engine.generation;
    if (decision.verdict === "allow") {
      out.allowed = true;
      if (remember && this.cacheAllowMark !== 0) {
        // Handed back once more so the kernel remembers the key (and accepts the packet).
        out.verdict = NF_REPEAT;
        out.mark = (mark | this.cacheAllowMark) >>> 0;
      } else out.verdict = NF_ACCEPT;
      stats.packet("allow", protocol, family === 6 ? "6" : "4", this.micros(started));
      return out;
    }
    const denyMark = remember ? this.cacheDenyMark : 0;
    return this.deny(this.refusal(protocol, mark | denyMark), protocol, started);
  }

  /**
   * How a denied packet with a known transport is answered: TCP and UDP are re-injected with the
   * deny mark, so the backend's reject rule sends a TCP reset or an ICMP port unreachable and the
   * client fails at once; anything else is dropped. Sets the mark on `out`.
   */
  private refusal(protocol: ConnectionProtocol, mark: number): NfVerdict {
    if (protocol !== "TCP" && protocol !== "UDP") return NF_DROP;
    this.out.mark = (mark | this.opts.denyMark) >>> 0;
    return NF_REPEAT;
  }

  private deny(verdict: NfVerdict, protocol: string, started: number): PacketVerdict {
    const out = this.out;
    out.verdict = verdict;
    out.allowed = false;
    this.stats.packet("deny", protocol, this.family === 6 ? "6" : "4", this.micros(started));
    return out;
  }

  private micros(started: number): number {
    return (this.clock() - started) * MICROS_PER_MS;
  }

  /**
   * The record of the packet judged last: who asked for what, and the decision or why there was
   * none. Built on demand (the worker asks only for records it keeps), so judging allocates none.
   */
  record(time: number): VerdictRecord {
    if (this.unparsed && !this.packet) {
      const parsed = parsePacket(this.unparsed);
      if (parsed.ok) this.packet = parsed.packet;
    }
    const p = this.packet;
    if (p && this.decision) {
      return {
        kind: "judged",
        time,
        family: p.family,
        protocol: p.protocol,
        src: p.src,
        srcPort: p.srcPort,
        dst: p.dst,
        dstPort: p.dstPort,
        verdict: this.decision.verdict === "allow" ? "allow" : "deny",
        decision: this.decision,
      };
    }
    if (p) {
      const e = this.error;
      return {
        kind: "unjudged",
        time,
        verdict: "deny",
        reason: "evaluation-error",
        error: e instanceof Error ? e.message : String(e),
        family: p.family,
        protocol: p.protocol,
        src: p.src,
        srcPort: p.srcPort,
        dst: p.dst,
        dstPort: p.dstPort,
      };
    }
    const f = this.failure;
    return {
      kind: "unjudged",
      time,
      verdict: "deny",
      reason: f?.reason ?? "unknown",
      family: this.family,
      ...(f?.src !== undefined ? { src: f.src } : {}),
      ...(f?.dst !== undefined ? { dst: f.dst } : {}),
    };
  }
}
