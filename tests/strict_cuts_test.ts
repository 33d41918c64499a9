/**
 * Strict mode's decisions without a kernel: a real engine, a fake conntrack table (filters and
 * mark updates with the kernel's semantics), and StrictCuts between them. What is cut, what is
 * never touched, what is un-cut, which addresses a change makes it look at, and the bounds it
 * keeps (time budget per call, records per second).
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import type { NetworkPolicy, Pod } from "../src/policy/types.ts";
import {
  type ConntrackEntry,
  type CtTuple,
  type DumpSide,
  encodeOrigTupleAttr,
} from "../src/netlink/conntrack.ts";
import {
  type ConntrackDump,
  type ConntrackPort,
  decideEntry,
  flowOf,
  type MarkUpdate,
  StrictCuts,
  type StrictReport,
} from "../src/verdict/strict_cuts.ts";
import { explainDecision } from "../src/policy/explain.ts";

const NODE = "node-1";
const OTHER_NODE = "node-2";
const CUT = 0x400000;

const IPS: Record<string, string> = {
  "x/a": "10.0.1.1",
  "x/b": "10.0.1.2",
  "y/a": "10.0.2.1",
  "y/b": "10.0.2.2",
  "z/remote": "10.0.9.9",
  "v6/a": "fd00::1:1",
  "v6/b": "fd00::1:2",
};

function pod(key: string, labels?: Record<string, string>, node = NODE): Pod {
  const [namespace, name] = key.split("/") as [string, string];
  return {
    metadata: { namespace, name, labels: labels ?? { pod: name } },
    spec: { nodeName: node },
    status: { phase: "Running", podIP: IPS[key], hostIP: "192.168.0.1" },
  } as Pod;
}

function model(e = new PolicyEngine()): PolicyEngine {
  for (const ns of ["x", "y", "z", "v6"]) {
    e.upsertNamespace({ metadata: { name: ns, labels: { ns } } });
  }
  for (const key of Object.keys(IPS)) {
    e.upsertPod(pod(key, undefined, key === "z/remote" ? OTHER_NODE : NODE));
  }
  return e;
}

function np(namespace: string, name: string, spec: NetworkPolicy["spec"]): NetworkPolicy {
  return { metadata: { namespace, name }, spec };
}

/** x/a accepts ingress only from pod a of namespace y. */
const ONLY_YA_TO_XA = np("x", "only-ya", {
  podSelector: { matchLabels: { pod: "a" } },
  ingress: [{
    from: [{
      namespaceSelector: { matchLabels: { ns: "y" } },
      podSelector: { matchLabels: { pod: "a" } },
    }],
  }],
});

const PROTO: Record<string, number> = { TCP: 6, UDP: 17, ICMP: 1 };

/** A conntrack entry for `from` -> `to` (pod keys or IPs); `dnatTo` rewrites the reply side. */
function entry(
  from: string,
  to: string,
  port: number,
  opts: { proto?: string; sport?: number; mark?: number; dnatTo?: [string, number] } = {},
): ConntrackEntry {
  const src = IPS[from] ?? from;
  const dst = IPS[to] ?? to;
  const protocolNumber = PROTO[opts.proto ?? "TCP"]!;
  const sport = opts.sport ?? 40000;
  const family = src.includes(":") ? 6 : 4;
  const orig: CtTuple = { src, dst, protocolNumber, srcPort: sport, dstPort: port };
  const [rsrc, rport] = opts.dnatTo ? [IPS[opts.dnatTo[0]] ?? opts.dnatTo[0], opts.dnatTo[1]] : [
    dst,
    port,
  ];
  const reply: CtTuple = { src: rsrc, dst: src, protocolNumber, srcPort: rport, dstPort: sport };
  return {
    family,
    orig,
    reply,
    mark: opts.mark ?? 0,
    zone: 0,
    origAttr: encodeOrigTupleAttr(family, orig),
  };
}

/** A conntrack table with the kernel's dump filters and mark arithmetic; records every call. */
class FakeConntrack implements ConntrackPort {
  dumps: string[] = [];
  marked: { key: string; value: number }[] = [];
  /** Errno to answer for an entry (by key), e.g. ENOENT when it went away. */
  refuse = new Map<string, number>();
  onDump?: () => void;
  /** The next dump fails with this message. */
  failNext?: string;

  constructor(public entries: ConntrackEntry[]) {}

  /** Each dump answers nothing at its first poll (the kernel walking), then everything. */
  startDump(family: 4 | 6, filter?: { ip: string; side: DumpSide }): ConntrackDump {
    this.onDump?.();
    this.dumps.push(filter ? `${filter.side} ${filter.ip}` : `family ${family}`);
    const fail = this.failNext;
    this.failNext = undefined;
    let polls = 0;
    return {
      poll: () => {
        // The kernel's IPv6 filter is inverted: strict mode must never ask for one.
        if (filter && family === 6) throw new Error("IPv6 address filter used");
        if (polls++ === 0) return { entries: [], done: false };
        if (fail) throw new Error(fail);
        const entries = this.entries.filter((e) =>
          e.family === family &&
          (!filter || (filter.side === "orig-src" ? e.orig.src : e.reply.src) === filter.ip)
        ).map((e) => ({ ...e }));
        return { entries, done: true };
      },
    };
  }

  setMarks(updates: readonly MarkUpdate[]): number[] {
    return updates.map((u) => {
      const k = key(u.entry);
      const refused = this.refuse.get(k);
      if (refused) return refused;
      const e = this.entries.find((x) => key(x) === k);
      if (!e) return 2;
      e.mark = ((e.mark & ~u.mask) ^ u.value) >>> 0;
      this.marked.push({ key: k, value: u.value });
      return 0;
    });
  }

  close(): void {}

  markOf(e: ConntrackEntry): number {
    return this.entries.find((x) => key(x) === key(e))!.mark;
  }
}

function key(e: ConntrackEntry): string {
  return `${e.orig.src}:${e.orig.srcPort}>${e.orig.dst}:${e.orig.dstPort}/${e.orig.protocolNumber}`;
}

class StepClock {
  t = 1000;
  now = () => this.t;
}

/** Run rounds to the end (bounded), as the worker's turns would, letting dumps complete. */
function runRounds(cuts: StrictCuts): StrictReport | undefined {
  for (let i = 0; i < 1000; i++) {
    cuts.work();
    if (!cuts.busy) break;
  }
  return cuts.takeReport();
}

function setup(entries: ConntrackEntry[], engine = model()) {
  const ct = new FakeConntrack(entries);
  const clock = new StepClock();
  const cuts = new StrictCuts(engine, ct, {
    nodeName: NODE,
    cutMark: CUT,
    clock: clock.now,
    wallClock: () => 1_700_000_000_000 + clock.t,
  });
  const settle = () => runRounds(cuts);
  // The start-up round: the state as a whole, before the test's own change.
  settle();
  ct.dumps = [];
  ct.marked = [];
  return { engine, ct, cuts, clock, settle };
}

const isCut = (mark: number) => (mark & CUT) === CUT;

Deno.test("strict cuts: a denying policy cuts the denied connection, the allowed one beside it is untouched", () => {
  const denied = entry("y/b", "x/a", 80);
  const allowed = entry("y/a", "x/a", 80, { mark: 5 });
  const elsewhere = entry("x/b", "y/b", 80);
  const { engine, ct, cuts, clock, settle } = setup([denied, allowed, elsewhere]);
  engine.upsertPolicy(ONLY_YA_TO_XA);
  cuts.changed();
  clock.t += 3;
  const report = settle()!;
  assert.ok(isCut(ct.markOf(denied)));
  assert.equal(ct.markOf(allowed), 5, "an allowed connection is never touched");
  assert.equal(ct.markOf(elsewhere), 0);
  assert.deepEqual(ct.marked.map((m) => m.key), [key(denied)]);
  assert.deepEqual(report.cut, { egress: 0, ingress: 1 });
  assert.deepEqual(report.latencies, [0.003]);
  const [r] = report.records;
  assert.equal(r?.direction, "ingress");
  assert.equal(`${r?.src} ${r?.dst}:${r?.dstPort} ${r?.protocol}`, "10.0.2.2 10.0.1.1:80 TCP");
  assert.equal(r?.changedAt, 1_700_000_001_000);
  assert.match(explainDecision(r!.decision), /x\/a isolated by x\/only-ya; no rule matched/);
  // Only the re-selected pod's connections were read, filtered by address.
  assert.deepEqual(ct.dumps, ["orig-src 10.0.1.1", "reply-src 10.0.1.1"]);
});

Deno.test("strict cuts: an egress deny cuts a local client's connection to a pod on another node", () => {
  const out = entry("x/b", "z/remote", 443);
  const { engine, ct, cuts, settle } = setup([out]);
  engine.upsertPolicy(np("x", "no-egress", { podSelector: {}, policyTypes: ["Egress"] }));
  cuts.changed();
  const report = settle()!;
  assert.ok(isCut(ct.markOf(out)));
  assert.deepEqual(report.cut, { egress: 1, ingress: 0 });
  assert.match(
    explainDecision(report.records[0]!.decision),
    /^egress: x\/b isolated by x\/no-egress/,
  );
});

Deno.test("strict cuts: allowed again -> un-cut (other mark bits kept); denied and already cut -> left alone", () => {
  const conn = entry("y/b", "x/a", 81, { proto: "UDP", mark: 5 });
  const { engine, ct, cuts, settle } = setup([conn]);
  engine.upsertPolicy(ONLY_YA_TO_XA);
  cuts.changed();
  settle();
  assert.equal(ct.markOf(conn), 5 | CUT);
  // Another change that still denies it: nothing to do.
  engine.upsertPolicy(np("x", "unrelated", { podSelector: { matchLabels: { pod: "a" } } }));
  cuts.changed();
  ct.marked = [];
  assert.equal(settle(), undefined);
  assert.deepEqual(ct.marked, []);
  engine.deletePolicy("x", "only-ya");
  engine.deletePolicy("x", "unrelated");
  cuts.changed();
  const report = settle()!;
  assert.equal(ct.markOf(conn), 5, "cut bit cleared, the other bits kept");
  assert.equal(report.uncut, 1);
  assert.deepEqual(report.cut, { egress: 0, ingress: 0 });
});

Deno.test("strict cuts: a pod's label change re-judges only that pod's connections (peer side too)", () => {
  const fromYB = entry("y/b", "x/a", 80);
  const { engine, ct, cuts, settle } = setup([fromYB, entry("y/a", "x/a", 80)]);
  engine.upsertPolicy(np("x", "from-trusted", {
    podSelector: { matchLabels: { pod: "a" } },
    ingress: [{
      from: [{ namespaceSelector: {}, podSelector: { matchLabels: { trusted: "yes" } } }],
    }],
  }));
  engine.upsertPod(pod("y/b", { pod: "b", trusted: "yes" }));
  engine.upsertPod(pod("y/a", { pod: "a", trusted: "yes" }));
  cuts.changed();
  settle();
  assert.equal(ct.marked.length, 0, "both trusted: nothing cut");
  ct.dumps = [];
  // y/b loses the label: the policy on x/a now denies it. Only y/b's address is looked at.
  engine.upsertPod(pod("y/b", { pod: "b" }));
  cuts.changed();
  settle();
  assert.deepEqual(ct.dumps, ["orig-src 10.0.2.2", "reply-src 10.0.2.2"]);
  assert.deepEqual(ct.marked.map((m) => m.key), [key(fromYB)]);
});

Deno.test("strict cuts: a DNATed connection is judged as the hooks saw it (reply source and port)", () => {
  // Client y/b -> Service 10.96.0.10:80, DNAT to x/a:8080.
  const viaService = entry("y/b", "10.96.0.10", 80, { dnatTo: ["x/a", 8080] });
  assert.deepEqual(flowOf(viaService), {
    src: "10.0.2.2",
    dst: "10.0.1.1",
    protocol: "TCP",
    port: 8080,
  });
  const { engine, ct, cuts, settle } = setup([viaService]);
  engine.upsertPolicy(np("x", "only-8080", {
    podSelector: { matchLabels: { pod: "a" } },
    ingress: [{ ports: [{ port: 8080 }] }],
  }));
  cuts.changed();
  settle();
  assert.equal(ct.markOf(viaService), 0, "port 8080 is allowed: untouched");
  engine.upsertPolicy(np("x", "only-8080", {
    podSelector: { matchLabels: { pod: "a" } },
    ingress: [{ ports: [{ port: 80 }] }],
  }));
  cuts.changed();
  settle();
  assert.ok(isCut(ct.markOf(viaService)), "found by the backend's address (reply source)");
});

Deno.test("strict cuts: nothing verdict-relevant changed -> no conntrack read at all", () => {
  const { engine, ct, cuts, settle } = setup([entry("y/b", "x/a", 80)]);
  // The same pod again (a status heartbeat, say), and the same namespace labels.
  engine.upsertPod(pod("y/b"));
  engine.upsertNamespace({ metadata: { name: "y", labels: { ns: "y" } } });
  cuts.changed();
  assert.equal(settle(), undefined);
  assert.deepEqual(ct.dumps, []);
});

Deno.test("strict cuts: more changed addresses than local pods -> the local pods' connections instead", () => {
  const { engine, ct, cuts, settle } = setup([]);
  // A cluster-wide relabel of 50 remote pods: their addresses are more than this node's pods.
  for (let i = 0; i < 50; i++) {
    engine.upsertPod({
      metadata: { namespace: "z", name: `r${i}`, labels: { pod: `r${i}` } },
      spec: { nodeName: OTHER_NODE },
      status: { phase: "Running", podIP: `10.0.8.${i + 1}` },
    } as Pod);
  }
  cuts.changed();
  settle();
  const local = engine.podIPsOn(NODE).filter((ip) => !ip.includes(":"));
  assert.deepEqual(
    ct.dumps.sort(),
    [...local.map((ip) => `orig-src ${ip}`), ...local.map((ip) => `reply-src ${ip}`), "family 6"]
      .sort(),
  );
});

Deno.test("strict cuts: IPv6 is read as one family dump per round and filtered here", () => {
  const v6denied = entry("v6/b", "v6/a", 80);
  const v6other = entry("fd00::9:9", "fd00::9:8", 80);
  const { engine, ct, cuts, settle } = setup([v6denied, v6other]);
  engine.upsertPolicy(np("v6", "deny-a", {
    podSelector: { matchLabels: { pod: "a" } },
    policyTypes: ["Ingress"],
  }));
  cuts.changed();
  settle();
  assert.deepEqual(ct.dumps, ["family 6"]);
  assert.ok(isCut(ct.markOf(v6denied)));
  assert.equal(ct.markOf(v6other), 0);
});

Deno.test("strict cuts: the start-up round cuts what the current state denies, with no latency", () => {
  const engine = new PolicyEngine();
  const before = entry("y/b", "x/a", 80);
  const ct = new FakeConntrack([before, entry("y/a", "x/a", 80)]);
  // As in the worker: strict mode exists before the first state event arrives.
  const cuts = new StrictCuts(engine, ct, { nodeName: NODE, cutMark: CUT });
  model(engine).upsertPolicy(ONLY_YA_TO_XA);
  cuts.changed();
  const report = runRounds(cuts)!;
  assert.deepEqual(ct.marked.map((m) => m.key), [key(before)]);
  assert.deepEqual(report.latencies, []);
  assert.equal(report.records[0]?.changedAt, undefined);
});

Deno.test("strict cuts: dumps run while work() returns; judging and marking keep to the budget", () => {
  const many = Array.from({ length: 1000 }, (_, i) => entry("y/b", "x/a", 80, { sport: 1000 + i }));
  const { engine, ct, cuts, clock } = setup(many);
  engine.upsertPolicy(ONLY_YA_TO_XA);
  cuts.changed();
  cuts.work();
  assert.ok(cuts.waiting, "the first dump is under way; work() did not wait for it");
  assert.deepEqual(ct.marked, []);
  // Its answer (nothing has x/a as original source), then the reply-source dump starts.
  cuts.work();
  assert.ok(cuts.waiting);
  assert.deepEqual(ct.dumps, ["orig-src 10.0.1.1", "reply-src 10.0.1.1"]);
  // Each step of up to 256 mark changes takes 2 ms: a 5 ms budget allows three per call.
  const setMarks = ct.setMarks.bind(ct);
  ct.setMarks = (u) => {
    clock.t += 2;
    return setMarks(u);
  };
  cuts.work();
  assert.equal(ct.marked.length, 3 * 256);
  cuts.work();
  assert.equal(ct.marked.length, 1000);
  runRounds(cuts);
  assert.ok(!cuts.busy);
  assert.deepEqual(ct.dumps, ["orig-src 10.0.1.1", "reply-src 10.0.1.1"]);
});

Deno.test("strict cuts: more than a few IPv4 addresses -> one IPv4 dump, filtered here", () => {
  const far = entry("10.0.7.1", "10.0.7.2", 80);
  const denied = entry("y/b", "x/a", 80);
  const { engine, ct, cuts, settle } = setup([far, denied]);
  // A fifth local pod, so the round below has more than four IPv4 addresses.
  engine.upsertPod({
    metadata: { namespace: "x", name: "c", labels: { pod: "c" } },
    spec: { nodeName: NODE },
    status: { phase: "Running", podIP: "10.0.1.3" },
  } as Pod);
  ct.dumps = [];
  engine.upsertPolicy(np("x", "deny", { podSelector: {}, policyTypes: ["Ingress"] }));
  engine.upsertPolicy(np("y", "deny", { podSelector: {}, policyTypes: ["Ingress"] }));
  cuts.changed();
  settle();
  assert.deepEqual(ct.dumps, ["family 4"]);
  assert.ok(isCut(ct.markOf(denied)));
  assert.equal(ct.markOf(far), 0, "an entry of none of the round's addresses is not judged");
});

Deno.test("strict cuts: entries gone meanwhile are not counted; refusals are warned about", () => {
  const gone = entry("y/b", "x/a", 80, { sport: 1 });
  const refused = entry("y/b", "x/a", 80, { sport: 2 });
  const { engine, ct, cuts, settle } = setup([gone, refused]);
  ct.refuse.set(key(gone), 2);
  ct.refuse.set(key(refused), 1);
  engine.upsertPolicy(ONLY_YA_TO_XA);
  cuts.changed();
  const report = settle()!;
  assert.deepEqual(report.cut, { egress: 0, ingress: 0 });
  assert.equal(report.warnings.length, 1);
  assert.match(report.warnings[0]!, /refused a mark change \(errno 1\)/);
});

Deno.test("strict cuts: a failing dump is a warning, the round goes on", () => {
  const { engine, ct, cuts, settle } = setup([entry("y/b", "x/a", 80)]);
  ct.failNext = "the kernel refused the dump: errno 1";
  engine.upsertPolicy(ONLY_YA_TO_XA);
  cuts.changed();
  const report = settle()!;
  assert.match(
    report.warnings[0]!,
    /reading conntrack entries of 10\.0\.1\.1 \(orig-src\) failed: the kernel refused the dump: errno 1/,
  );
  assert.deepEqual(report.cut, { egress: 0, ingress: 1 }, "found by the reply-source dump");
});

Deno.test("strict cuts: cut records are rate-limited, the rest counted", () => {
  const many = Array.from({ length: 100 }, (_, i) => entry("y/b", "x/a", 80, { sport: 1000 + i }));
  const { engine, cuts, settle } = setup(many);
  engine.upsertPolicy(ONLY_YA_TO_XA);
  cuts.changed();
  const report = settle()!;
  assert.equal(report.cut.ingress, 100);
  assert.equal(report.records.length, 40, "burst of twice the default 20 per second");
  assert.equal(report.heldBack, 60);
});

Deno.test("decideEntry: the three outcomes", () => {
  const e = model();
  e.upsertPolicy(ONLY_YA_TO_XA);
  assert.equal(decideEntry(entry("y/a", "x/a", 80), e, NODE, CUT), undefined);
  assert.equal(decideEntry(entry("y/b", "x/a", 80), e, NODE, CUT)?.kind, "cut");
  assert.equal(decideEntry(entry("y/b", "x/a", 80, { mark: CUT }), e, NODE, CUT), undefined);
  assert.equal(decideEntry(entry("y/a", "x/a", 80, { mark: CUT }), e, NODE, CUT)?.kind, "uncut");
  // Judged on the other node only (x/a is not ours there): allowed here, never touched.
  assert.equal(decideEntry(entry("y/b", "x/a", 80), e, OTHER_NODE, CUT), undefined);
});

Deno.test("engine change tracking: off unless asked; which addresses each kind of change names", () => {
  const e = model();
  e.upsertPolicy(ONLY_YA_TO_XA);
  assert.deepEqual(e.takeChangedAddresses(), [], "not tracked by default");
  e.trackChangedAddresses();
  const take = () => [...e.takeChangedAddresses()].sort();
  // A policy: the pods it (re)selects.
  e.upsertPolicy(np("y", "p", { podSelector: { matchLabels: { pod: "b" } } }));
  assert.deepEqual(take(), ["10.0.2.2"]);
  e.deletePolicy("y", "p");
  assert.deepEqual(take(), ["10.0.2.2"]);
  // A pod: only when something verdicts depend on changed.
  e.upsertPod(pod("x/b"));
  assert.deepEqual(take(), []);
  e.upsertPod(pod("x/b", { pod: "b", tier: "web" }));
  assert.deepEqual(take(), ["10.0.1.2"]);
  e.deletePod("x", "b");
  assert.deepEqual(take(), ["10.0.1.2"]);
  // A namespace: every pod in it, when its labels changed.
  e.upsertNamespace({ metadata: { name: "y", labels: { ns: "y" } } });
  assert.deepEqual(take(), []);
  e.upsertNamespace({ metadata: { name: "y", labels: { ns: "y", env: "prod" } } });
  assert.deepEqual(take(), ["10.0.2.1", "10.0.2.2"]);
  // A node: its addresses (for `nodes` peers), when its labels or addresses changed.
  const node = (labels: Record<string, string>) => ({
    metadata: { name: "n9", labels },
    status: { addresses: [{ type: "InternalIP", address: "192.168.9.9" }] },
  });
  e.upsertNode(node({ a: "1" }));
  assert.deepEqual(take(), ["192.168.9.9"]);
  e.upsertNode(node({ a: "1" }));
  assert.deepEqual(take(), []);
  e.deleteNode("n9");
  assert.deepEqual(take(), ["192.168.9.9"]);
  // A cluster policy: its subjects.
  e.upsertClusterPolicy("AdminNetworkPolicy", {
    metadata: { name: "guard" },
    spec: {
      priority: 10,
      subject: { namespaces: { matchLabels: { ns: "x" } } },
      ingress: [{ action: "Deny", from: [{ namespaces: {} }] }],
    },
  });
  assert.deepEqual(take(), ["10.0.1.1"]);
});
