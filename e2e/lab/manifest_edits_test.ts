/**
 * Hostile and clumsy live edits of the agent's manifest directory, with real packets (root only).
 * A default-deny policy is in force; each edit breaks or half-writes its file, and new connections
 * probed all through the edit window must stay denied. Broken states must show in
 * `kube_netpol_invalid_objects`; only a real removal of the policy opens traffic.
 *
 *   deno test --frozen -A e2e/lab/manifest_edits_test.ts
 */
import assert from "node:assert/strict";
import { stringify } from "yaml";
import type { NetworkPolicy } from "../../src/policy/types.ts";
import type { LabAgent } from "./agent.ts";
import { networkPolicy } from "./cluster.ts";
import {
  applyPolicies,
  type LabAgentContext,
  labTest,
  pollUntil,
  withLabAgent,
} from "./harness.ts";
import { compareMatrix } from "./matrix.ts";
import { probeMatrix, type ProbePair } from "./probe.ts";
import type { Lab } from "./topology.ts";

const PREFIX = "knpedit";

const DENY_X = networkPolicy("x", "deny-ingress", { podSelector: {}, policyTypes: ["Ingress"] });
/** What a real removal leaves: the file still parses, with another (unrelated) policy. */
const OTHER = networkPolicy("z", "select-nothing", {
  podSelector: { matchLabels: { pod: "nobody" } },
  policyTypes: ["Ingress"],
});
/** One client process per probe round: three denied pairs and an allowed control pair. */
const DENIED: ProbePair[] = ["x/a", "x/b", "x/c"].map((to) => ({ from: "y/a", to }));
const CONTROL: ProbePair = { from: "y/a", to: "y/b" };
/** Probing around a short edit: the client starts 1 s before it, probes every 20 ms for 3 s. */
const AROUND: LoopOptions = { leadMs: 1000, forMs: 3000, everyMs: 20 };
const expect = (_from: string, to: string) => to.startsWith("x/") ? "deny" : "allow";

/** Probes during one edit, and what they saw. */
class ProbeLog {
  denied = 0;
  readonly bad: string[] = [];

  /** Wrong outcomes since `mark` (a previous length of `bad`). */
  since(mark: number): string[] {
    return this.bad.slice(mark);
  }

  async round(lab: Lab, when: string): Promise<void> {
    const m = await probeMatrix(lab, [...DENIED, CONTROL], "TCP", 80);
    this.denied += DENIED.length;
    for (const d of compareMatrix(m, expect)) {
      this.bad.push(`${when}: ${d.from} -> ${d.to} expected ${d.expected} (${d.detail})`);
    }
  }

  /**
   * New connections every `everyMs` from one client process that runs through the whole edit:
   * `edit` starts `leadMs` after the client, so every short window it opens is probed densely.
   */
  async during(lab: Lab, when: string, edit: () => Promise<void>, o: LoopOptions): Promise<void> {
    const client = lab.pod(CONTROL.from);
    const targets = [...DENIED, CONTROL].map((p) => ({ to: p.to, ip: lab.pod(p.to).ip, port: 80 }));
    const run = lab.exec(client.netns, [
      Deno.execPath(),
      "eval",
      LOOP_CLIENT,
      JSON.stringify({ targets: targets.map(({ ip, port }) => ({ ip, port })), ...o }),
    ], { timeoutMs: o.forMs + 20_000 });
    await sleep(o.leadMs);
    await edit();
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    const attempts = JSON.parse(r.stdout) as { i: number; at: number; outcome: string }[];
    let control = 0;
    for (const a of attempts) {
      const to = targets[a.i]!.to;
      if (to === CONTROL.to) {
        if (a.outcome === "connected") control++;
        continue;
      }
      this.denied++;
      if (a.outcome === "connected") {
        this.bad.push(`${when}: y/a -> ${to} connected (t=${a.at} ms)`);
      }
    }
    // The client really connects when allowed: a deny above is the agent's, not a dead probe.
    assert.ok(control > 0, `${when}: the allowed control pair never connected`);
  }
}

interface LoopOptions {
  /** Client start to edit start. */
  leadMs: number;
  /** How long the client probes. */
  forMs: number;
  everyMs: number;
}

/**
 * Runs in the client pod: connects to every target every `everyMs` for `forMs` (each attempt a
 * new connection, bounded by a 1 s timeout) and prints every outcome with its time.
 */
const LOOP_CLIENT = `
const { targets, forMs, everyMs } = JSON.parse(Deno.args[0]);
const out = [];
const start = Date.now();
const attempt = async (t, i, at) => {
  let timer;
  const late = new Promise((r) => timer = setTimeout(() => r("timeout"), 1000));
  try {
    const c = await Promise.race([Deno.connect({ hostname: t.ip, port: t.port }), late]);
    if (c === "timeout") return out.push({ i, at, outcome: "timeout" });
    c.close();
    out.push({ i, at, outcome: "connected" });
  } catch (e) {
    out.push({ i, at, outcome: e.name });
  } finally {
    clearTimeout(timer);
  }
};
while (Date.now() - start < forMs) {
  const at = Date.now() - start;
  await Promise.all(targets.map((t, i) => attempt(t, i, at)));
  await new Promise((r) => setTimeout(r, everyMs));
}
console.log(JSON.stringify(out));
`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function invalidObjects(agent: LabAgent): Promise<number> {
  return agent.metric("kube_netpol_invalid_objects");
}

/** Replace `file` with a symlink to itself, atomically (made aside, renamed over). */
async function symlinkLoop(dir: string, file: string): Promise<void> {
  const aside = await Deno.makeTempDir({ prefix: "knpedit-link-" });
  try {
    await Deno.symlink(file, `${aside}/${file}`); // relative: resolves to itself once in `dir`
    await Deno.rename(`${aside}/${file}`, `${dir}/${file}`);
  } finally {
    await Deno.remove(aside, { recursive: true });
  }
}

/** A NetworkPolicy object with some top-level field broken, written as the policy file. */
function broken(patch: Record<string, unknown>): NetworkPolicy {
  return { ...DENY_X, ...patch } as unknown as NetworkPolicy;
}

interface Ctx extends LabAgentContext {
  probes: ProbeLog;
}

/**
 * A broken state that lasts: probe until the metric shows it (the gauge refreshes every 5 s) and
 * at least 2 s have passed (longer than any settle period), at most 15 s; then restore.
 */
async function brokenState(ctx: Ctx, name: string, breakIt: () => Promise<void>): Promise<void> {
  const { lab, agent, probes } = ctx;
  await breakIt();
  try {
    const start = Date.now();
    let invalid = 0;
    while (Date.now() - start < 15_000) {
      await probes.round(lab, `${name} +${Date.now() - start} ms`);
      invalid = await invalidObjects(agent);
      if (invalid > 0 && Date.now() - start >= 2000) break;
    }
    assert.ok(invalid > 0, `${name}: kube_netpol_invalid_objects is ${invalid}`);
    assert.deepEqual((await agent.debugPolicies()).policies, ["x/deny-ingress"], name);
  } finally {
    await restore(ctx);
  }
}

/**
 * Put the good file back and wait until the agent reports no invalid object, in /debug and in the
 * gauge (so the next broken state's count is its own).
 */
async function restore({ agent, dir }: Ctx): Promise<void> {
  await dir.writePolicies([DENY_X]);
  const reported = async () =>
    !!(await agent.debugPolicies()).invalid?.length || await invalidObjects(agent) > 0;
  const still = await pollUntil(reported, (yes) => !yes, 15_000);
  assert.ok(!still, "invalid objects still reported after the file was restored");
}

Deno.test(
  "lab: invalid or half-written manifest edits never open traffic; a real removal does",
  labTest,
  async (t) => {
    await withLabAgent({ prefix: PREFIX, policies: [DENY_X] }, async (running) => {
      const ctx: Ctx = { ...running, probes: new ProbeLog() };
      const { lab, dir } = ctx;
      const policyFile = `${dir.path}/policies.yaml`;

      await t.step("in force before any edit", async () => {
        await ctx.probes.round(lab, "before");
        assert.deepEqual(ctx.probes.bad, []);
      });

      const persistent: [string, () => Promise<void>][] = [
        [
          "apiVersion typo",
          () => dir.writePolicies([broken({ apiVersion: "networking.k8s.oi/v1" })]),
        ],
        ["kind typo", () => dir.writePolicies([broken({ kind: "NetworkPolicies" })])],
        ["apiVersion v1", () => dir.writePolicies([broken({ apiVersion: "v1" })])],
        ["symlink loop", async () => {
          await symlinkLoop(dir.path, "policies.yaml");
          // Deno.watchFs reports no event for a broken symlink appearing (the agent's periodic
          // rescan finds it within 30 s); a change beside it makes the agent look now.
          await Deno.writeTextFile(`${dir.path}/nudge.yaml`, `# ${Date.now()}\n`);
        }],
      ];
      for (const [name, breakIt] of persistent) {
        await t.step(`${name}: stays denied, counted as invalid`, async () => {
          const mark = ctx.probes.bad.length;
          await brokenState(ctx, name, breakIt);
          assert.deepEqual(ctx.probes.since(mark), []);
        });
      }

      await t.step("truncated, 200 ms pause, written again: stays denied", async () => {
        const mark = ctx.probes.bad.length;
        const text = stringify(DENY_X);
        await ctx.probes.during(lab, "truncate", async () => {
          await Deno.truncate(policyFile, 0);
          await sleep(200);
          await Deno.writeTextFile(policyFile, text);
        }, AROUND);
        assert.deepEqual(ctx.probes.since(mark), []);
      });

      await t.step("an empty file for 200 ms, then its content: stays denied", async () => {
        const mark = ctx.probes.bad.length;
        await ctx.probes.during(lab, "empty", async () => {
          await dir.writePolicies([]);
          await sleep(200);
          await dir.writePolicies([DENY_X]);
        }, AROUND);
        assert.deepEqual(ctx.probes.since(mark), []);
      });

      await t.step("the policy document really removed: traffic opens", async () => {
        await applyPolicies(ctx, [OTHER]);
        const m = await probeMatrix(lab, DENIED, "TCP", 80);
        assert.deepEqual(compareMatrix(m, () => "allow"), []);
      });

      console.log(
        `${ctx.probes.denied} denied probes during hostile edits, ${ctx.probes.bad.length} wrong`,
      );
    });
  },
);
