/**
 * From one queued packet to one netfilter verdict: parse, ask the engine, pick the verdict the
 * rule backend expects (see marks.ts). Pure apart from the clock the caller passes in; kept out
 * of the worker so it can be unit-tested and benchmarked without a queue.
 */
import { parsePacket } from "../packet/parse.ts";
import type { PolicyEngine } from "../policy/engine.ts";
import type { Connection, Decision } from "../policy/types.ts";
import { NF_ACCEPT, NF_DROP, NF_REPEAT, type NfVerdict } from "../netlink/nfqueue.ts";
import type { PacketStats } from "./verdict_stats.ts";
import type { VerdictRecord } from "./verdict_protocol.ts";

export interface JudgeOptions {
  nodeName: string;
  failOpen: boolean;
  denyMark: number;
}

/** The verdict for one packet: what to send, and the mark to set (for NF_REPEAT). */
export interface PacketVerdict {
  verdict: NfVerdict;
  mark: number | undefined;
  /** Present when the packet parsed: who asked for what, and the engine's decision. */
  record?: VerdictRecord;
}

const ETH_P_IPV6 = 0x86dd;

export class PacketJudge {
  /** Reused for every packet: evaluation is synchronous and keeps no reference to it. */
  private readonly conn: Connection = { src: "", dst: "", protocol: "TCP", port: 0 };
  private readonly out: PacketVerdict = { verdict: NF_ACCEPT, mark: undefined };

  constructor(
    private readonly engine: PolicyEngine,
    private readonly opts: JudgeOptions,
    private readonly stats: PacketStats,
  ) {}

  /**
   * Judges one packet. Never throws: a packet that cannot be parsed or judged gets the fail-open
   * (accept) or fail-closed (drop) verdict and is counted. `started` is performance.now() when
   * the packet was received; the duration is recorded here.
   */
  judge(payload: Uint8Array, mark: number, hwProtocol: number, started: number): PacketVerdict {
    const out = this.out;
    out.record = undefined;
    out.mark = undefined;
    const parsed = parsePacket(payload);
    if (!parsed.ok) {
      return this.failed(parsed.reason, hwProtocol === ETH_P_IPV6 ? "6" : "4", started);
    }
    const p = parsed.packet;
    const conn = this.conn;
    conn.src = p.src;
    conn.dst = p.dst;
    conn.protocol = p.protocol;
    conn.port = p.dstPort;
    let decision: Decision;
    try {
      decision = this.engine.evaluate(conn, this.opts.nodeName);
    } catch {
      // An engine bug must not take the packet path down: same treatment as an unparsable packet.
      return this.failed("evaluation-error", p.family === 6 ? "6" : "4", started);
    }
    const allow = decision.verdict === "allow";
    if (allow) out.verdict = NF_ACCEPT;
    else if (p.protocol === "TCP" || p.protocol === "UDP") {
      // Re-injected with the deny mark, the backend's reject rule answers with a TCP reset or an
      // ICMP port unreachable, so the client fails at once instead of timing out.
      out.verdict = NF_REPEAT;
      out.mark = (mark | this.opts.denyMark) >>> 0;
    } else out.verdict = NF_DROP;
    const verdict = allow ? "allow" : "deny";
    const stats = this.stats;
    const e = decision.egress.reason.kind;
    if (e !== "not-judged" && e !== "not-a-pod") stats.direction("egress", decision.egress.verdict);
    const i = decision.ingress.reason.kind;
    if (i !== "not-judged" && i !== "not-a-pod") {
      stats.direction("ingress", decision.ingress.verdict);
    }
    stats.packet(verdict, p.protocol, p.family === 6 ? "6" : "4", performance.now() - started);
    out.record = {
      time: 0, // set by the caller only when the record is kept
      family: p.family,
      protocol: p.protocol,
      src: p.src,
      srcPort: p.srcPort,
      dst: p.dst,
      dstPort: p.dstPort,
      verdict,
      decision,
    };
    return out;
  }

  private failed(reason: string, family: string, started: number): PacketVerdict {
    const out = this.out;
    out.verdict = this.opts.failOpen ? NF_ACCEPT : NF_DROP;
    this.stats.parseFailure(reason);
    this.stats.packet(
      this.opts.failOpen ? "allow" : "deny",
      "unparsed",
      family,
      performance.now() - started,
    );
    return out;
  }
}
