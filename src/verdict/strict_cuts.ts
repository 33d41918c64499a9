/**
 * Strict mode (`--strict-mode`, default on): when a state change makes a connection that conntrack
 * still tracks on this node denied, cut it; when a later change allows it again, un-cut it.
 * Event-driven: nothing runs until the engine replica applied a change, and then only for the
 * connections of the addresses the change touched.
 *
 * How a connection is cut: the "cut" bit (`--cut-mark`, default 0x00400000, src/verdict/marks.ts)
 * is set in its conntrack entry's ct mark, and rule 2 of our chain (src/rules, docs/rules.md)
 * refuses every packet of a marked connection, in BOTH directions: TCP with a reset, UDP with
 * ICMP port unreachable, anything else dropped. Deleting the entry instead would not hold: if the
 * server's packet came first, conntrack would pick the connection up as a new one from the
 * server's side (TCP loose pick-up, any UDP packet), which a policy on the client never sees.
 * The marked entry lives as conntrack keeps it (each refused packet refreshes it), so the
 * connection stays cut for as long as either side keeps trying; its timeout does the rest.
 * Un-cutting clears the bit, so a new connection reusing the same 5-tuple (a UDP client on a
 * fixed port) is not refused by an old entry once the policy allows it.
 *
 * One round of work per burst of changes:
 *   1. the addresses whose verdicts may have changed (engine.takeChangedAddresses), or this
 *      node's pod addresses when those are fewer (every connection this node judges has a local
 *      pod at one end, so they cover everything);
 *   2. their conntrack entries, filtered by the kernel: for an IPv4 address the entries whose
 *      original source is it (its egress) and those whose reply source is it (its ingress, after
 *      any DNAT). Every dump, filtered or not, costs one walk of the kernel's whole hash table
 *      (about 13 ms for 262144 buckets here, not on the Worker's thread), so a round with more than
 *      MAX_FILTERED_V4 IPv4 addresses dumps the IPv4 family once and filters here instead. For
 *      IPv6 the kernel's address filter is broken (src/netlink/conntrack.ts): the IPv6 family is
 *      dumped once per round and filtered here;
 *   3. each entry judged as the filter hooks saw its first packet: source = original source,
 *      destination = reply source, port = reply source port (a Service's DNAT already applied);
 *      denied and not cut -> cut; allowed and cut -> un-cut; anything else is never touched.
 *
 * It runs in the verdict Worker between packet turns (work()): the kernel walks its table for a
 * dump while packets are judged (conntrack_kernel.ts), and reading, judging entries and changing
 * marks are bounded by a time budget per call. It reports counts, latencies (change applied -> entry cut) and rate-limited records.
 */
import type { ConntrackEntry, DumpSide } from "../netlink/conntrack.ts";
import type { PolicyEngine } from "../policy/engine.ts";
import type { Connection, Decision } from "../policy/types.ts";
import type { ConnectionProtocol } from "../net/protocol.ts";
import { RateLimiter } from "../log.ts";

/** What strict mode needs of conntrack: the kernel's (conntrack_kernel.ts) or a fake (tests). */
export interface ConntrackPort {
  /**
   * Starts reading the entries of one family; with `filter`, only those whose `side` address is
   * `filter.ip`. One dump at a time; poll it until it is done.
   */
  startDump(family: 4 | 6, filter?: { ip: string; side: DumpSide }): ConntrackDump;
  /**
   * Sets `value` under `mask` in each entry's ct mark. One errno per update, in order: 0 when
   * done, ENOENT (2) when the entry went away meanwhile.
   */
  setMarks(updates: readonly MarkUpdate[]): number[];
  close(): void;
}

/** A dump under way. */
export interface ConntrackDump {
  /** What arrived since the last call, without waiting; `done` once complete. Throws on failure. */
  poll(): { entries: ConntrackEntry[]; done: boolean };
}

export interface MarkUpdate {
  entry: ConntrackEntry;
  value: number;
  mask: number;
}

const ENOENT = 2;

/** The connection a conntrack entry holds, as the filter hooks judged its first packet. */
export function flowOf(e: ConntrackEntry): Connection {
  const protocol = protocolName(e.orig.protocolNumber);
  const ported = protocol === "TCP" || protocol === "UDP" || protocol === "SCTP";
  return { src: e.orig.src, dst: e.reply.src, protocol, port: ported ? e.reply.srcPort : 0 };
}

function protocolName(n: number): ConnectionProtocol {
  switch (n) {
    case 6:
      return "TCP";
    case 17:
      return "UDP";
    case 132:
      return "SCTP";
    case 1:
      return "ICMP";
    case 58:
      return "ICMPv6";
    default:
      return "OTHER";
  }
}

export type EntryAction =
  | { kind: "cut"; flow: Connection; decision: Decision }
  | { kind: "uncut"; flow: Connection };

/**
 * What strict mode does to one entry: cut it (denied now, not cut yet), un-cut it (allowed now,
 * cut before), or nothing (undefined): an allowed connection without the bit is never touched,
 * and neither is one the engine cannot judge.
 */
export function decideEntry(
  entry: ConntrackEntry,
  engine: PolicyEngine,
  node: string,
  cutMark: number,
): EntryAction | undefined {
  const flow = flowOf(entry);
  const isCut = ((entry.mark & cutMark) >>> 0) === (cutMark >>> 0);
  let decision: Decision;
  try {
    decision = engine.evaluate(flow, node);
  } catch {
    return undefined;
  }
  if (decision.verdict === "deny") return isCut ? undefined : { kind: "cut", flow, decision };
  return isCut ? { kind: "uncut", flow } : undefined;
}

/** One cut, for the log (the main thread explains `decision`). */
export interface CutRecord {
  /** Date.now() when the entry was marked. */
  time: number;
  /** Date.now() when the change that led to it was applied (absent for the start-up round). */
  changedAt?: number;
  family: 4 | 6;
  protocol: ConnectionProtocol;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  /** The side that denies it: egress of the source pod, or ingress of the destination pod. */
  direction: "egress" | "ingress";
  decision: Decision;
}

/** What the Worker posts to the main thread (see verdict_loop.ts and strict_report.ts). */
export interface StrictReport {
  cut: { egress: number; ingress: number };
  uncut: number;
  /** Change applied -> entry marked, in seconds, one per cut (not for the start-up round). */
  latencies: number[];
  records: CutRecord[];
  /** Cut records the rate limit held back. */
  heldBack: number;
  warnings: string[];
}

export interface StrictCutsOptions {
  nodeName: string;
  cutMark: number;
  /** Longest stretch of work per work() call, in ms; default 5 (see conntrack_kernel.ts). */
  budgetMs?: number;
  /** Monotonic milliseconds; default performance.now. */
  clock?: () => number;
  /** Wall-clock milliseconds for records; default Date.now. */
  wallClock?: () => number;
  /** Cut records per second at most (burst twice that); default 20. */
  recordsPerSecond?: number;
}

/** Updates handed to the port at once (each is one netlink message and one ack). */
const UPDATES_PER_STEP = 256;
/** Entries judged between two looks at the clock. */
const ENTRIES_PER_STEP = 256;
/**
 * IPv4 addresses per round read with kernel-filtered dumps (two each); beyond that one dump of
 * the family costs fewer table walks: at most 8 walks, about 100 ms here, per round.
 */
export const MAX_FILTERED_V4 = 4;

interface DumpTask {
  family: 4 | 6;
  filter?: { ip: string; side: DumpSide };
}

interface Round {
  tasks: DumpTask[];
  next: number;
  /** The dump under way and its task. */
  dump?: { reader: ConntrackDump; task: DumpTask };
  /** Entries read; those from `judged` on are not judged yet. */
  entries: ConntrackEntry[];
  judged: number;
  /** This round's addresses: an unfiltered (family) dump keeps only their entries. */
  addresses: Set<string>;
  /** Entries already judged this round (a pod-to-pod entry shows up for both pods). */
  seen: Set<string>;
  /** Mark changes decided; those from `applied` on are not made yet. */
  updates: { update: MarkUpdate; action: EntryAction }[];
  applied: number;
  /** When the first change of this round was applied: monotonic, and wall clock for records. */
  changedAt?: number;
  changedAtWall?: number;
}

export class StrictCuts {
  private round: Round | undefined;
  private pendingSince: { at: number; wall: number; startUp?: boolean } | undefined;
  /** Whether work() ran before: changes applied until then are the start-up state. */
  private working = false;
  private readonly clock: () => number;
  private readonly wallClock: () => number;
  private readonly budgetMs: number;
  private readonly recordGate: RateLimiter;
  private readonly warnGate: RateLimiter;
  private report: StrictReport = emptyReport();

  constructor(
    private readonly engine: PolicyEngine,
    private readonly port: ConntrackPort,
    private readonly opts: StrictCutsOptions,
  ) {
    this.clock = opts.clock ?? (() => performance.now());
    this.wallClock = opts.wallClock ?? (() => Date.now());
    this.budgetMs = opts.budgetMs ?? 5;
    const rate = opts.recordsPerSecond ?? 20;
    this.recordGate = new RateLimiter(rate, rate * 2, this.clock);
    this.warnGate = new RateLimiter(1, 10, this.clock);
    engine.trackChangedAddresses();
  }

  /**
   * A burst of state events was applied: remember when, for the latency of what it cuts. Call it
   * for the events of the initial sync too (before the first work()): their round then judges
   * the whole loaded state, cutting connections it denies that were opened while no agent judged
   * (an agent restart, a fail-open outage) and un-cutting those a previous run cut.
   */
  changed(): void {
    this.pendingSince ??= { at: this.clock(), wall: this.wallClock() };
  }

  /** Whether a round is under way. */
  get busy(): boolean {
    return this.round !== undefined;
  }

  /** A dump is under way (the kernel walks its table while work() keeps returning). */
  get waiting(): boolean {
    return this.round?.dump !== undefined;
  }

  /**
   * Continue (or start) a round for at most the time budget. Call between packet turns once the
   * state is synced; cheap when nothing changed.
   */
  work(): void {
    if (!this.working) {
      // The worker calls work() once the state is synced: what was applied before is the state
      // loaded at start-up, judged as a whole, with no change to time its cuts from.
      this.working = true;
      if (this.pendingSince) this.pendingSince.startUp = true;
    }
    const start = this.clock();
    this.round ??= this.startRound();
    const round = this.round;
    if (!round) return;
    while (this.clock() - start < this.budgetMs) {
      if (round.applied < round.updates.length) {
        this.applyUpdates(round, takeStep(round, "updates", "applied", UPDATES_PER_STEP));
      } else if (round.judged < round.entries.length) {
        this.judge(round, takeStep(round, "entries", "judged", ENTRIES_PER_STEP));
      } else if (round.dump) {
        if (!this.pollDump(round, round.dump)) return; // nothing yet: look again next turn
      } else {
        const task = round.tasks[round.next++];
        if (!task) {
          this.round = undefined;
          return;
        }
        this.startDump(round, task);
      }
    }
  }

  private startRound(): Round | undefined {
    const changed = this.engine.takeChangedAddresses();
    if (!changed.length) return undefined;
    const since = this.pendingSince;
    this.pendingSince = undefined;
    const local = this.engine.podIPsOn(this.opts.nodeName);
    const addresses = changed.length > local.length ? local : changed;
    if (!addresses.length) return undefined;
    const v4 = addresses.filter((ip) => !ip.includes(":"));
    const tasks: DumpTask[] = v4.length > MAX_FILTERED_V4 ? [{ family: 4 }] : v4.flatMap((ip) => [
      { family: 4 as const, filter: { ip, side: "orig-src" as const } },
      { family: 4 as const, filter: { ip, side: "reply-src" as const } },
    ]);
    if (v4.length < addresses.length) tasks.push({ family: 6 });
    const round: Round = {
      tasks,
      next: 0,
      entries: [],
      judged: 0,
      addresses: new Set(addresses),
      seen: new Set(),
      updates: [],
      applied: 0,
    };
    if (since && !since.startUp) {
      round.changedAt = since.at;
      round.changedAtWall = since.wall;
    }
    return round;
  }

  private startDump(round: Round, task: DumpTask): void {
    try {
      round.dump = { reader: this.port.startDump(task.family, task.filter), task };
    } catch (e) {
      this.dumpFailed(task, e);
    }
  }

  /** Takes what the dump has; false when it had nothing new (the kernel is still walking). */
  private pollDump(round: Round, dump: NonNullable<Round["dump"]>): boolean {
    let got: { entries: ConntrackEntry[]; done: boolean };
    try {
      got = dump.reader.poll();
    } catch (e) {
      round.dump = undefined;
      this.dumpFailed(dump.task, e);
      return true;
    }
    if (got.done) round.dump = undefined;
    if (dump.task.filter) { for (const e of got.entries) round.entries.push(e); }
    else {
      const mine = round.addresses;
      for (const e of got.entries) {
        if (mine.has(e.orig.src) || mine.has(e.reply.src)) round.entries.push(e);
      }
    }
    return got.done || got.entries.length > 0;
  }

  private dumpFailed(task: DumpTask, e: unknown): void {
    const what = task.filter ? `${task.filter.ip} (${task.filter.side})` : `IPv${task.family}`;
    this.warn(`strict mode: reading conntrack entries of ${what} failed: ${message(e)}`);
  }

  private judge(round: Round, entries: ConntrackEntry[]): void {
    const cutMark = this.opts.cutMark;
    for (const entry of entries) {
      const key = entryKey(entry);
      if (round.seen.has(key)) continue;
      round.seen.add(key);
      const action = decideEntry(entry, this.engine, this.opts.nodeName, cutMark);
      if (!action) continue;
      const value = action.kind === "cut" ? cutMark : 0;
      round.updates.push({ update: { entry, value, mask: cutMark }, action });
    }
  }

  private applyUpdates(round: Round, step: { update: MarkUpdate; action: EntryAction }[]): void {
    let results: number[];
    try {
      results = this.port.setMarks(step.map((s) => s.update));
    } catch (e) {
      this.warn(`strict mode: changing ${step.length} conntrack marks failed: ${message(e)}`);
      return;
    }
    const now = this.clock();
    step.forEach(({ update, action }, i) => {
      const errno = results[i];
      if (errno === ENOENT) return; // the connection ended meanwhile: nothing left to cut
      if (errno !== 0) {
        this.warn(`strict mode: conntrack refused a mark change (errno ${errno})`);
        return;
      }
      if (action.kind === "uncut") {
        this.report.uncut++;
        return;
      }
      const direction = action.decision.egress.verdict === "deny" ? "egress" : "ingress";
      this.report.cut[direction]++;
      if (round.changedAt !== undefined) {
        this.report.latencies.push(Math.max(0, now - round.changedAt) / 1000);
      }
      if (this.recordGate.take()) {
        this.report.records.push(this.record(round, update, action, direction));
      }
    });
  }

  private record(
    round: Round,
    update: MarkUpdate,
    action: Extract<EntryAction, { kind: "cut" }>,
    direction: "egress" | "ingress",
  ): CutRecord {
    const r: CutRecord = {
      time: this.wallClock(),
      family: update.entry.family,
      protocol: action.flow.protocol,
      src: action.flow.src,
      srcPort: update.entry.orig.srcPort,
      dst: action.flow.dst,
      dstPort: action.flow.port,
      direction,
      decision: action.decision,
    };
    if (round.changedAtWall !== undefined) r.changedAt = round.changedAtWall;
    return r;
  }

  private warn(text: string): void {
    if (this.warnGate.take()) this.report.warnings.push(text);
  }

  /** What happened since the last call, or undefined when nothing did. */
  takeReport(): StrictReport | undefined {
    const r = this.report;
    r.heldBack += this.recordGate.drainSuppressed();
    if (
      !r.cut.egress && !r.cut.ingress && !r.uncut && !r.records.length && !r.heldBack &&
      !r.warnings.length
    ) return undefined;
    this.report = emptyReport();
    return r;
  }

  close(): void {
    this.port.close();
  }
}

/**
 * The next `n` items of one of a round's queues, moving its cursor (a queue is emptied once
 * consumed): no splice, which would move the rest of a large dump for every step.
 */
function takeStep<Q extends "updates" | "entries">(
  round: Round,
  queue: Q,
  cursor: "applied" | "judged",
  n: number,
): Round[Q] {
  const list = round[queue];
  const at = round[cursor];
  const step = list.slice(at, at + n) as Round[Q];
  if (at + n >= list.length) {
    round[queue] = [] as Round[Q];
    round[cursor] = 0;
  } else round[cursor] = at + n;
  return step;
}

function emptyReport(): StrictReport {
  return {
    cut: { egress: 0, ingress: 0 },
    uncut: 0,
    latencies: [],
    records: [],
    heldBack: 0,
    warnings: [],
  };
}

function entryKey(e: ConntrackEntry): string {
  const o = e.orig;
  const icmp = o.icmp ? `${o.icmp.id}/${o.icmp.type}/${o.icmp.code}` : "";
  return `${e.zone}|${o.protocolNumber}|${o.src}|${o.srcPort}|${o.dst}|${o.dstPort}|${icmp}`;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
