/**
 * The one owner of verdict records and deny log lines, in two halves on the two threads:
 *
 * - `RecordGate` (in the verdict Worker): which verdicts become records at all. Every deny, and
 *   allows only when they are logged (-v=4), each kind under its own rate limit. Limiting before a
 *   record is built or posted keeps a flood of denied packets from costing the packet path or the
 *   main thread anything. Records held back are counted; the next deny record carries the count.
 * - `DenyLog` (on the main thread, the loop's record sink): one log line per record (5-tuple,
 *   pods, and why), and a summary line for counts no later record carried.
 *
 * The verdict loop moves records from one to the other; `run` only constructs the DenyLog.
 */
import { type Fields, type Logger, RateLimiter } from "../log.ts";
import { explainDecision } from "../policy/explain.ts";
import type { HeldBack, UnjudgedRecord, VerdictRecord } from "./verdict_protocol.ts";

/** Deny lines per second when `--deny-log-rate` is not given. */
export const DEFAULT_DENY_LOG_RATE = 50;
/** Allow lines per second at most (-v=4 only): generous, they are for debugging. */
export const ALLOW_LOG_RATE = 1000;

export interface RecordGateOptions {
  /** Deny records per second; bursts of twice that pass. */
  denyPerSecond: number;
  /** Make records of allowed verdicts too (at ALLOW_LOG_RATE). */
  logAllows: boolean;
  /** Milliseconds, monotonic; for tests. */
  clock?: () => number;
}

/** Worker side: decides which verdicts become records. */
export class RecordGate {
  private readonly denies: RateLimiter;
  private readonly allows: RateLimiter | undefined;

  constructor(o: RecordGateOptions) {
    this.denies = new RateLimiter(o.denyPerSecond, o.denyPerSecond * 2, o.clock);
    this.allows = o.logAllows
      ? new RateLimiter(ALLOW_LOG_RATE, ALLOW_LOG_RATE * 2, o.clock)
      : undefined;
  }

  /** Whether this verdict becomes a record now; refused ones are counted (allows only if logged). */
  admit(allowed: boolean): boolean {
    if (!allowed) return this.denies.take();
    return this.allows !== undefined && this.allows.take();
  }

  /** Deny records held back since the last call: the next admitted deny record carries them. */
  takeDeniesHeldBack(): number {
    return this.denies.drainSuppressed();
  }

  /** Everything held back since the last call, for the worker's periodic report. */
  takeHeldBack(): HeldBack {
    return { denies: this.denies.drainSuppressed(), allows: this.allows?.drainSuppressed() ?? 0 };
  }
}

/** Where the verdict loop hands records on the main thread. */
export interface RecordSink {
  write(records: readonly VerdictRecord[], heldBack: HeldBack): void;
}

/** Main-thread side: the deny log (and, at -v=4, the allow log). */
export class DenyLog implements RecordSink {
  constructor(private readonly log: Logger) {}

  write(records: readonly VerdictRecord[], heldBack: HeldBack): void {
    for (const r of records) this.line(r);
    if (heldBack.denies) {
      this.log.info("deny log lines suppressed by rate limit", { count: heldBack.denies });
    }
    if (heldBack.allows) {
      this.log.v(4).info("allow log lines suppressed by rate limit", { count: heldBack.allows });
    }
  }

  private line(r: VerdictRecord): void {
    if (r.kind === "unjudged") {
      // Abnormal either way (an attacker's packet, or an engine bug): a warning, not an info.
      this.log.warn(
        r.error === undefined ? "unparsable packet denied" : "evaluation failed; packet denied",
        unjudgedFields(r),
      );
      return;
    }
    const fields = judgedFields(r);
    if (r.verdict === "allow") this.log.v(4).info("connection allowed", fields);
    else this.log.info("connection denied", fields);
  }
}

function endpoint(ip: string | undefined, port: number | undefined): string {
  if (ip === undefined) return "-";
  const host = ip.includes(":") ? `[${ip}]` : ip;
  return port === undefined ? ip : `${host}:${port}`;
}

function judgedFields(r: Extract<VerdictRecord, { kind: "judged" }>): Fields {
  const d = r.decision;
  const fields: Fields = {
    verdict: r.verdict,
    proto: r.protocol,
    src: endpoint(r.src, r.srcPort),
    dst: endpoint(r.dst, r.dstPort),
    srcPod: d.srcPod ?? "-",
    dstPod: d.dstPod ?? "-",
    direction: d.egress.verdict === "deny" ? "egress" : "ingress",
    why: explainDecision(d),
  };
  if (r.suppressedBefore) fields.suppressedBefore = r.suppressedBefore;
  return fields;
}

function unjudgedFields(r: UnjudgedRecord): Fields {
  const fields: Fields = {
    verdict: r.verdict,
    reason: r.reason,
    family: r.family,
    proto: r.protocol ?? "-",
    src: endpoint(r.src, r.srcPort),
    dst: endpoint(r.dst, r.dstPort),
  };
  if (r.error !== undefined) fields.error = r.error;
  if (r.suppressedBefore) fields.suppressedBefore = r.suppressedBefore;
  return fields;
}
