/**
 * The unjudged-packet accounting on a manual clock: queue rule counters against what the agent
 * received, what waits in the queue and what the kernel dropped and counted.
 */
import assert from "node:assert/strict";
import { createLogger } from "../src/log.ts";
import { AgentMetrics } from "../src/metrics.ts";
import { type QueueCounters, UnjudgedMonitor } from "../src/rules/unjudged.ts";
import { ManualClock } from "./support/manual_clock.ts";

function setup(failOpen = true) {
  const clock = new ManualClock();
  const metrics = new AgentMetrics();
  const logs: string[] = [];
  const log = createLogger({ verbosity: 2, format: "json", write: (l) => logs.push(l) });
  let counters: QueueCounters | undefined;
  let checks = 0;
  const monitor = new UnjudgedMonitor({
    read: () => counters && { ...counters },
    requestCheck: () => checks++,
    queueMaxLen: 8,
    failOpen,
    metrics,
    log,
    clock,
    settleMs: 300,
  });
  return {
    clock,
    metrics,
    logs,
    monitor,
    set: (c: QueueCounters | undefined) => counters = c,
    checks: () => checks,
    /** A dataplane check read `hits` from the queue rules; the estimate follows after the settle. */
    check: async (hits: number) => {
      monitor.checked({ damage: [], queueRulePackets: hits });
      await clock.advance(300);
    },
  };
}

async function unjudged(m: AgentMetrics): Promise<number> {
  const found = (await m.registry.getMetricsAsJSON()).find((x) =>
    x.name === "kube_netpol_unjudged_packets_total"
  );
  return found?.values[0]?.value ?? 0;
}

Deno.test("unjudged: every queued packet received or waiting -> nothing counted", async () => {
  const t = setup();
  t.set({ received: 0, queued: 0, dropped: 0 });
  t.monitor.installed();
  t.set({ received: 90, queued: 10, dropped: 0 });
  await t.check(100);
  assert.equal(await unjudged(t.metrics), 0);
  assert.deepEqual(t.logs, []);
  t.monitor.stop();
});

Deno.test("unjudged: rule hits beyond received + queued are counted once and warned", async () => {
  const t = setup();
  t.set({ received: 50, queued: 0, dropped: 0 }); // 50 judged before these rules were installed
  t.monitor.installed();
  t.set({ received: 150, queued: 8, dropped: 0 });
  await t.check(10_108); // a flood: 10,000 packets bypassed the full queue
  assert.equal(await unjudged(t.metrics), 10_000);
  assert.equal(t.logs.length, 1);
  assert.match(t.logs[0]!, /packets let through without a verdict/);
  assert.match(t.logs[0]!, /"packets":10000/);
  assert.match(t.logs[0]!, /--fail-open=false/);
  // The same reading again adds nothing; growth is counted.
  await t.check(10_108);
  assert.equal(await unjudged(t.metrics), 10_000);
  t.set({ received: 160, queued: 0, dropped: 0 });
  await t.check(10_160);
  assert.equal(await unjudged(t.metrics), 10_050);
  t.monitor.stop();
});

Deno.test("unjudged: drops the kernel counted (fail-closed) are not unjudged", async () => {
  const t = setup(false);
  t.set({ received: 0, queued: 0, dropped: 5 });
  t.monitor.installed();
  t.set({ received: 100, queued: 8, dropped: 905 });
  await t.check(1008);
  assert.equal(await unjudged(t.metrics), 0);
  t.monitor.stop();
});

Deno.test("unjudged: a re-install (counters reset) starts over; a pending reading is dropped", async () => {
  const t = setup();
  t.set({ received: 0, queued: 0, dropped: 0 });
  t.monitor.installed();
  t.set({ received: 100, queued: 0, dropped: 0 });
  t.monitor.checked({ damage: [], queueRulePackets: 100 });
  t.monitor.installed(); // repaired before the settle: that reading belongs to the old rules
  t.set({ received: 100, queued: 0, dropped: 0 });
  await t.clock.advance(300);
  assert.equal(await unjudged(t.metrics), 0, "100 hits of the old rules were not compared");
  await t.check(0);
  t.set({ received: 103, queued: 0, dropped: 0 });
  await t.check(3);
  assert.equal(await unjudged(t.metrics), 0);
  await t.check(5); // two more matched the new rules, never received
  assert.equal(await unjudged(t.metrics), 2);
  t.monitor.stop();
});

Deno.test("unjudged: installed before the queue was bound -> the first reading is the baseline", async () => {
  const t = setup();
  t.monitor.installed(); // counters unreadable: the verdict loop does not exist yet
  await t.clock.advance(3_000);
  assert.equal(t.checks(), 0);
  t.set({ received: 0, queued: 3, dropped: 0 });
  await t.clock.advance(1_000);
  assert.equal(t.checks(), 1, "a check as soon as the queue is readable sets the baseline");
  await t.clock.advance(3_000);
  assert.equal(t.checks(), 1, "once");
  await t.check(40); // 37 passed before the queue was bound: not a flood to report
  assert.equal(await unjudged(t.metrics), 0);
  t.set({ received: 3, queued: 0, dropped: 0 });
  await t.check(40);
  assert.equal(await unjudged(t.metrics), 0);
  t.set({ received: 3, queued: 0, dropped: 0 });
  await t.check(45);
  assert.equal(await unjudged(t.metrics), 5);
  t.monitor.stop();
});

Deno.test("unjudged: a half-full queue asks for a check at once (fail-open only)", async () => {
  const t = setup();
  t.set({ received: 0, queued: 3, dropped: 0 });
  t.monitor.installed();
  await t.clock.advance(5_000);
  assert.equal(t.checks(), 0);
  t.set({ received: 0, queued: 4, dropped: 0 });
  await t.clock.advance(1_000);
  assert.equal(t.checks(), 1);
  await t.clock.advance(1_000);
  assert.equal(t.checks(), 1, "not more often than every 2 s");
  await t.clock.advance(1_000);
  assert.equal(t.checks(), 2);
  t.monitor.stop();
  assert.equal(t.clock.timers, 0);
  const closed = setup(false);
  closed.set({ received: 0, queued: 8, dropped: 0 });
  closed.monitor.installed();
  await closed.clock.advance(10_000);
  assert.equal(closed.checks(), 0);
  closed.monitor.stop();
});
