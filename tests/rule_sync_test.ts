/**
 * RuleSync with a fake backend and a manual clock: coalescing, retry backoff, the dataplane check
 * and repair, and what stop() leaves behind per --fail-open. No root, no wall-time margins.
 */
import assert from "node:assert/strict";
import { nullLogger } from "../src/log.ts";
import { AgentMetrics } from "../src/metrics.ts";
import type { Damage, DataplaneStatus, QueuedIPs, RuleBackend } from "../src/rules/backend.ts";
import {
  COALESCE_MS,
  type DataplaneObserver,
  retryDelayMs,
  RuleSync,
} from "../src/rules/rule_sync.ts";
import { ManualClock } from "./support/manual_clock.ts";

/** Records every call; sync/check answers are scripted per call. */
class FakeBackend implements RuleBackend {
  readonly name = "iptables-nft";
  calls: string[] = [];
  /** Members the fake kernel holds. */
  members: QueuedIPs = { ingress: [], egress: [] };
  failSyncs = 0;
  /** Damage the next checks report (consumed one per check; empty list = intact). */
  damage: Damage[][] = [];
  failChecks = 0;
  queuePackets = 0;
  /** When set, sync waits for it (a slow sync). */
  gate?: Promise<void>;

  install(): Promise<void> {
    this.calls.push("install");
    return Promise.resolve();
  }
  async sync(ips: QueuedIPs): Promise<{ added: number; removed: number }> {
    this.calls.push(`sync ${ips.ingress.join(",")}`);
    if (this.gate) await this.gate;
    if (this.failSyncs > 0) {
      this.failSyncs--;
      throw new Error("ipset: set does not exist");
    }
    this.members = ips;
    return { added: ips.ingress.length, removed: 0 };
  }
  uninstall(): Promise<void> {
    this.calls.push("uninstall");
    return Promise.resolve();
  }
  check(synced: QueuedIPs | undefined): Promise<DataplaneStatus> {
    this.calls.push(`check ${synced ? synced.ingress.join(",") : "-"}`);
    if (this.failChecks > 0) {
      this.failChecks--;
      return Promise.reject(new Error("iptables-save: exited 4"));
    }
    return Promise.resolve({
      damage: this.damage.shift() ?? [],
      queueRulePackets: this.queuePackets,
    });
  }
}

class FakeEngine {
  generation = 1;
  ingress: string[] = ["10.0.0.1"];
  queuedIPs(): QueuedIPs {
    return { ingress: [...this.ingress], egress: [] };
  }
  change(ip: string): void {
    this.ingress.push(ip);
    this.generation++;
  }
}

interface Setup {
  clock: ManualClock;
  backend: FakeBackend;
  engine: FakeEngine;
  metrics: AgentMetrics;
  sync: RuleSync;
  events: string[];
}

function setup(opts: { failOpen?: boolean; checkIntervalMs?: number } = {}): Setup {
  const clock = new ManualClock();
  const backend = new FakeBackend();
  const engine = new FakeEngine();
  const metrics = new AgentMetrics();
  const events: string[] = [];
  const observer: DataplaneObserver = {
    installed: () => events.push("installed"),
    checked: (s) => events.push(`checked ${s.queueRulePackets}`),
  };
  const sync = new RuleSync({
    backend,
    failOpen: opts.failOpen ?? true,
    engine,
    node: "node-1",
    metrics,
    log: nullLogger,
    clock,
    checkIntervalMs: opts.checkIntervalMs ?? 10_000,
    observer,
  });
  return { clock, backend, engine, metrics, sync, events };
}

async function metric(m: AgentMetrics, name: string, labels: Record<string, string> = {}) {
  const found = (await m.registry.getMetricsAsJSON()).find((x) => x.name === name);
  return found?.values.find((v) =>
    Object.entries(labels).every(([k, want]) => v.labels[k] === want)
  )?.value ?? 0;
}

const damaged = (reason: Damage["reason"], detail: string): Damage[] => [{ reason, detail }];

Deno.test("rule sync: a burst of changes within the window makes one sync", async () => {
  const { clock, backend, engine, sync } = setup();
  for (let i = 0; i < 5; i++) {
    engine.change(`10.0.1.${i}`);
    sync.schedule();
  }
  await clock.advance(COALESCE_MS - 1);
  assert.deepEqual(backend.calls, [], "nothing before the window ends");
  await clock.advance(1);
  await sync.idle();
  assert.equal(backend.calls.length, 1);
  assert.match(backend.calls[0]!, /10\.0\.1\.4/);
  assert.equal(sync.syncedGeneration, engine.generation);
  assert.equal(sync.health().ok, true);
});

Deno.test("rule sync: a change during a running sync gets exactly one more sync", async () => {
  const { clock, backend, engine, sync } = setup();
  let release!: () => void;
  backend.gate = new Promise((r) => release = r);
  sync.schedule();
  await clock.advance(COALESCE_MS);
  assert.equal(backend.calls.length, 1, "first sync running");
  engine.change("10.0.2.1");
  sync.schedule();
  engine.change("10.0.2.2");
  sync.schedule();
  backend.gate = undefined;
  release();
  await sync.idle();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  assert.equal(backend.calls.length, 2);
  assert.match(backend.calls[1]!, /10\.0\.2\.2/);
  assert.equal(sync.syncedGeneration, engine.generation);
});

Deno.test("rule sync: failures are retried with doubling delays, each retry checks first", async () => {
  const { clock, backend, metrics, sync } = setup({ checkIntervalMs: 0 });
  backend.failSyncs = 3;
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  assert.deepEqual(backend.calls, ["sync 10.0.0.1"]);
  assert.equal(sync.ready, false);
  for (let failure = 1; failure <= 3; failure++) {
    const delay = retryDelayMs(failure);
    backend.calls = [];
    await clock.advance(delay - 1);
    assert.deepEqual(backend.calls, [], `retry ${failure} not before ${delay} ms`);
    await clock.advance(1);
    await sync.idle();
    // Nothing synced yet, so the check has no members to compare.
    assert.deepEqual(backend.calls, ["check -", "sync 10.0.0.1"], `retry ${failure}`);
  }
  assert.deepEqual([retryDelayMs(1), retryDelayMs(2), retryDelayMs(3)], [200, 400, 800]);
  assert.equal(retryDelayMs(30), 10_000, "capped");
  assert.equal(sync.ready, true);
  assert.equal(await metric(metrics, "kube_netpol_rule_sync_errors_total"), 3);
  // Success resets the backoff: the next failure waits the first delay again.
  backend.failSyncs = 1;
  backend.calls = [];
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  await clock.advance(retryDelayMs(1));
  await sync.idle();
  assert.deepEqual(backend.calls, ["sync 10.0.0.1", "check 10.0.0.1", "sync 10.0.0.1"]);
});

Deno.test("rule sync: changes during the backoff wait for it (no retry storm)", async () => {
  const { clock, backend, engine, sync } = setup({ checkIntervalMs: 0 });
  backend.failSyncs = 1;
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  engine.change("10.0.3.1");
  sync.schedule();
  await clock.advance(COALESCE_MS);
  assert.equal(backend.calls.length, 1, "change waits for the retry");
  await clock.advance(retryDelayMs(1));
  await sync.idle();
  assert.equal(backend.calls.at(-1), "sync 10.0.0.1,10.0.3.1");
});

Deno.test("dataplane check: runs every interval and finds nothing to do when intact", async () => {
  const { clock, backend, sync, events, metrics } = setup({ checkIntervalMs: 10_000 });
  backend.queuePackets = 42;
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  backend.calls = [];
  await clock.advance(10_000 - COALESCE_MS - 1);
  assert.deepEqual(backend.calls, []);
  await clock.advance(1);
  await sync.idle();
  assert.deepEqual(backend.calls, ["check 10.0.0.1"], "compares with the synced members");
  await clock.advance(10_000);
  await sync.idle();
  assert.deepEqual(backend.calls, ["check 10.0.0.1", "check 10.0.0.1"]);
  assert.deepEqual(events, ["checked 42", "checked 42"]);
  assert.equal(sync.repairs, 0);
  assert.equal(await metric(metrics, "kube_netpol_dataplane_intact"), 1);
});

Deno.test("dataplane check: damage triggers re-install, re-sync and a verifying check", async () => {
  const { clock, backend, sync, events, metrics } = setup({ checkIntervalMs: 10_000 });
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  backend.calls = [];
  backend.damage = [[
    { reason: "chain", detail: "IPv4: chain KUBE-NETPOL missing" },
    { reason: "jump", detail: "IPv4: jump from INPUT to KUBE-NETPOL missing" },
    { reason: "jump", detail: "IPv4: jump from FORWARD to KUBE-NETPOL missing" },
  ]];
  await clock.advance(10_000);
  await sync.idle();
  assert.deepEqual(backend.calls, [
    "check 10.0.0.1",
    "install",
    "sync 10.0.0.1",
    "check 10.0.0.1",
  ]);
  assert.deepEqual(events, ["installed", "checked 0"]);
  assert.equal(sync.repairs, 1);
  assert.equal(
    await metric(metrics, "kube_netpol_dataplane_repairs_total", { reason: "chain" }),
    1,
  );
  assert.equal(
    await metric(metrics, "kube_netpol_dataplane_repairs_total", { reason: "jump" }),
    1,
    "one increment per kind of damage and repair",
  );
  assert.equal(sync.health().ok, true);
});

Deno.test("dataplane check: a repair that does not hold keeps /readyz failing and retries", async () => {
  const { clock, backend, sync, metrics } = setup({ checkIntervalMs: 10_000 });
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  const flushed = damaged("members", "set ingress-v4: 1 members missing, 0 unexpected");
  // Found, repaired, and still wrong right after (someone keeps flushing).
  backend.damage = [flushed, flushed];
  await clock.advance(10_000);
  await sync.idle();
  const h = sync.health();
  assert.equal(h.ok, false);
  assert.match(h.detail, /still damaged after repair: set ingress-v4/);
  assert.equal(await metric(metrics, "kube_netpol_dataplane_intact"), 0);
  backend.calls = [];
  await clock.advance(retryDelayMs(1));
  await sync.idle();
  assert.equal(backend.calls[0], "check 10.0.0.1", "retried after the backoff");
  assert.equal(sync.health().ok, true);
  assert.equal(await metric(metrics, "kube_netpol_dataplane_intact"), 1);
});

Deno.test("dataplane check: a failing check is reported and retried", async () => {
  const { clock, backend, sync } = setup({ checkIntervalMs: 10_000 });
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  backend.failChecks = 1;
  await clock.advance(10_000);
  await sync.idle();
  assert.match(sync.health().detail, /dataplane check failed: iptables-save: exited 4/);
  await clock.advance(retryDelayMs(1));
  await sync.idle();
  assert.equal(sync.health().ok, true);
});

Deno.test("dataplane check: a failed sync triggers a check that repairs vanished sets", async () => {
  const { clock, backend, engine, sync } = setup({ checkIntervalMs: 0 });
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  backend.calls = [];
  backend.failSyncs = 1; // e.g. `ipset destroy` after the rules were flushed
  backend.damage = [damaged("set", "set ingress-v4 missing")];
  engine.change("10.0.4.1");
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  await clock.advance(retryDelayMs(1));
  await sync.idle();
  assert.deepEqual(backend.calls, [
    "sync 10.0.0.1,10.0.4.1",
    "check 10.0.0.1",
    "install",
    "sync 10.0.0.1,10.0.4.1",
    "check 10.0.0.1,10.0.4.1",
  ]);
  assert.equal(sync.repairs, 1);
  assert.equal(sync.syncedGeneration, engine.generation);
});

for (const failOpen of [true, false]) {
  Deno.test(
    `rule sync stop (fail-open=${failOpen}): waits for a running sync, then ${
      failOpen ? "removes" : "keeps"
    } the rules`,
    async () => {
      const { clock, backend, sync } = setup({ failOpen });
      let release!: () => void;
      backend.gate = new Promise((r) => release = r);
      sync.schedule();
      await clock.advance(COALESCE_MS);
      let stopped = false;
      const stopping = sync.stop().then(() => stopped = true);
      await clock.advance(0);
      assert.equal(stopped, false, "stop waits for the sync in flight");
      release();
      await stopping;
      assert.deepEqual(backend.calls, ["sync 10.0.0.1", ...(failOpen ? ["uninstall"] : [])]);
      sync.schedule();
      sync.checkNow();
      await clock.advance(60_000);
      assert.equal(clock.timers, 0, "no timer left after stop");
      assert.equal(backend.calls.length, failOpen ? 2 : 1, "nothing runs after stop");
    },
  );
}

Deno.test("dataplane check before the first sync repairs rules but leaves members alone", async () => {
  // At start-up the engine may hold half the cluster: syncing members then could drop pods that
  // the sets kept from the previous run still protect.
  const { clock, backend, sync } = setup({ checkIntervalMs: 10_000 });
  backend.damage = [damaged("jump", "IPv4: jump from FORWARD to KUBE-NETPOL missing")];
  sync.checkNow();
  await clock.advance(0);
  await sync.idle();
  assert.deepEqual(backend.calls, ["check -", "install", "check -"]);
  assert.equal(sync.repairs, 1);
  assert.equal(sync.ready, false);
});
