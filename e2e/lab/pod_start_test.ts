/**
 * The pod-start race with real packets (root only): a pod starts sending before the agent knows
 * it (kubernetes/kubernetes#85966). One node with pod CIDR 10.244.0.0/16 (its Node object says
 * so), a known server pod, and late pods added to the running lab (`lab.addPod`) that start
 * connecting at once; the test publishes each late pod in the manifest directory 500 ms after its
 * first connection attempt (or never).
 *
 *   deno test --frozen <the lab permissions of deno.json> e2e/lab/pod_start_test.ts
 *
 * What it shows, under a fail-open agent and then a fail-closed one:
 * - default-deny in the late pod's namespace: no connection gets through, in either direction,
 *   before the pod is known or after (the held ones are refused once it appears);
 * - an allowing policy: the held connection succeeds once the pod appears; it was held, not
 *   dropped and not let through by the timeout (the agent's held and timeout counters say so);
 * - a pod never published: after `--unknown-pod-timeout` the --fail-open rule applies, accept
 *   when failing open, drop when failing closed.
 */
import assert from "node:assert/strict";
import type { Pod } from "../../src/policy/types.ts";
import { type LabAgent, ManifestDir } from "./agent.ts";
import { networkPolicy, nodeObjects } from "./cluster.ts";
import type { LoopAttempt, LoopSpec } from "./connect_loop.ts";
import { labTest, pollUntil, withAgent } from "./harness.ts";
import { startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab, type Lab, type LabPod, listNetns } from "./topology.ts";

const PREFIX = "knprace";

const NODE = { name: "lab-node", ip: "10.244.0.1", podCIDRs: ["10.244.0.0/16"] };
/**
 * `--unknown-pod-timeout` for these agents: well above the ~0.6 s a publish takes to reach the
 * agent (500 ms + the manifest source's settle delay), so a slow machine never turns a held
 * packet into a timeout; the timeout path is shown by pods that are never published.
 */
const HOLD_TIMEOUT_MS = 4000;
const PUBLISH_AFTER_MS = 500;
/** A client attempt waits longer than any hold. */
const ATTEMPT_TIMEOUT_MS = HOLD_TIMEOUT_MS + 3000;
const CONNECT_LOOP = new URL("./connect_loop.ts", import.meta.url).pathname;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function podObject(p: LabPod): Pod {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { namespace: p.namespace, name: p.name, labels: { pod: p.name } },
    spec: { nodeName: p.node, containers: [{ name: "server" }] },
    status: {
      phase: "Running",
      podIP: p.ip,
      podIPs: [{ ip: p.ip }],
      hostIP: NODE.ip,
      hostIPs: [{ ip: NODE.ip }],
    },
  };
}

const namespace = (name: string) => ({
  apiVersion: "v1",
  kind: "Namespace",
  metadata: { name, labels: { "kubernetes.io/metadata.name": name } },
});

/** Both directions closed in the late pods' namespace `deny`, and in `timeout`. */
const POLICIES = [
  networkPolicy("deny", "default-deny", { podSelector: {}, policyTypes: ["Ingress", "Egress"] }),
  networkPolicy("timeout", "default-deny", { podSelector: {}, policyTypes: ["Ingress", "Egress"] }),
  // `allow`: only to and from namespace srv (so the pod is isolated, and allowed there).
  networkPolicy("allow", "srv-only", {
    podSelector: {},
    policyTypes: ["Ingress", "Egress"],
    ingress: [{
      from: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "srv" } } }],
    }],
    egress: [{
      to: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "srv" } } }],
    }],
  }),
];
const POLICY_KEYS = ["allow/srv-only", "deny/default-deny", "timeout/default-deny"];

/** One connect loop running in a pod: started (its first round is out), then its attempts. */
interface RunningLoop {
  name: string;
  done: Promise<LoopAttempt[]>;
}

/** Start connect_loop.ts in `netns`; resolves once its first round of attempts is under way. */
async function startLoop(
  lab: Lab,
  netns: string,
  name: string,
  spec: LoopSpec,
): Promise<RunningLoop> {
  const child = lab.spawn(netns, [
    Deno.execPath(),
    "run",
    "--no-config",
    "--allow-net",
    CONNECT_LOOP,
    JSON.stringify(spec),
  ], { stdout: "piped", stderr: "inherit" });
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const nextLine = async (): Promise<string> => {
    while (!buf.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`${name}: the connect loop ended early`);
      buf += value;
    }
    const cut = buf.indexOf("\n");
    const line = buf.slice(0, cut);
    buf = buf.slice(cut + 1);
    return line;
  };
  assert.deepEqual(JSON.parse(await nextLine()), { started: true });
  const done = (async () => {
    const attempts = JSON.parse(await nextLine()) as LoopAttempt[];
    await child.status;
    return attempts;
  })();
  return { name, done };
}

/** Counters of the agent's /metrics the race adds (and the hold-time histogram). */
interface HeldCounts {
  held: number;
  timeouts: number;
  waits: number;
  waitSeconds: number;
}

async function heldCounts(agent: LabAgent): Promise<HeldCounts> {
  const m = await agent.scrape();
  return {
    held: m.value("kube_netpol_held_packets_total"),
    timeouts: m.value("kube_netpol_held_packet_timeouts_total", { reason: "timeout" }),
    waits: m.value("kube_netpol_held_packet_wait_seconds_count"),
    waitSeconds: m.value("kube_netpol_held_packet_wait_seconds_sum"),
  };
}

/**
 * The counters once they show what `enough` wants; the worker reports every 250 ms, so this waits
 * (bounded) rather than reading once. Returns the last reading either way; the caller asserts.
 */
function settledCounts(
  agent: LabAgent,
  enough: (c: HeldCounts) => boolean,
): Promise<HeldCounts> {
  return pollUntil(() => heldCounts(agent), enough, 5_000);
}

const diff = (a: HeldCounts, b: HeldCounts): HeldCounts => ({
  held: b.held - a.held,
  timeouts: b.timeouts - a.timeouts,
  waits: b.waits - a.waits,
  waitSeconds: b.waitSeconds - a.waitSeconds,
});

const describe = (attempts: LoopAttempt[]) =>
  attempts.map((a) => `t=${a.at}ms ${a.outcome} after ${a.ms}ms`).join(", ");

interface World {
  lab: Lab;
  dir: ManifestDir;
  server: LabPod;
  client: LabPod;
  /** Late pods get 10.244.2.<next>. */
  next: number;
}

let world: World | undefined;

/** `fn` with an agent on the world's lab, enforcing POLICIES; stopped afterwards. */
function withRaceAgent(
  w: World,
  failOpen: boolean,
  fn: (agent: LabAgent) => Promise<void>,
): Promise<void> {
  const options = {
    nodeName: NODE.name,
    manifestsDir: w.dir.path,
    failOpen,
    extraArgs: [`--unknown-pod-timeout=${HOLD_TIMEOUT_MS}ms`],
  };
  return withAgent(w.lab, options, POLICY_KEYS, fn);
}

/**
 * A pod that starts late in namespace `ns`: it is added to the lab (its netns exists and routes,
 * the agent knows nothing of it), runs a server when `serve`, and then the loops start at once:
 * from it to the server pod (egress) and, when `serve`, from the client pod to it (ingress).
 * `publishAfterMs` after the first attempts, its Pod object is written to the manifest directory
 * (undefined: never). Returns each loop's attempts and when the publish happened.
 */
async function lateStart(
  w: World,
  ns: string,
  o: { serve: boolean; publishAfterMs?: number; everyMs: number; forMs: number },
): Promise<{ egress: LoopAttempt[]; ingress: LoopAttempt[]; late: LabPod }> {
  const late = await w.lab.addPod({ namespace: ns, name: `p${w.next}`, ip: `10.244.2.${w.next}` });
  w.next++;
  if (o.serve) await startServers(w.lab, { pods: [late], ports: [80] });
  const spec = (ip: string): LoopSpec => ({
    targets: [{ ip, port: 80 }],
    everyMs: o.everyMs,
    forMs: o.forMs,
    timeoutMs: ATTEMPT_TIMEOUT_MS,
  });
  const loops = await Promise.all([
    startLoop(w.lab, late.netns, `${ns} egress`, spec(w.server.ip)),
    ...(o.serve ? [startLoop(w.lab, w.client.netns, `${ns} ingress`, spec(late.ip))] : []),
  ]);
  if (o.publishAfterMs !== undefined) {
    await sleep(o.publishAfterMs);
    await w.dir.writeObjects(`pod-${late.name}.yaml`, [namespace(ns), podObject(late)]);
  }
  const [egress, ingress] = await Promise.all(loops.map((l) => l.done));
  return { egress: egress!, ingress: ingress ?? [], late };
}

Deno.test("pod start: lab with a node pod CIDR, a known server, policies", labTest, async () => {
  await cleanupStaleLabs(PREFIX);
  const lab = await createLab({
    prefix: PREFIX,
    nodes: [NODE],
    pods: [
      { namespace: "srv", name: "server", ip: "10.244.1.11" },
      { namespace: "srv", name: "client", ip: "10.244.1.12" },
    ],
  });
  const dir = await ManifestDir.create();
  world = { lab, dir, server: lab.pod("srv/server"), client: lab.pod("srv/client"), next: 20 };
  await startServers(lab, { pods: [world.server], ports: [80] });
  await dir.writeNodes(nodeObjects(lab));
  await dir.writeModel([
    ...["srv", "deny", "allow", "timeout"].map(namespace),
    podObject(world.server),
    podObject(world.client),
  ]);
  await dir.writePolicies(POLICIES);
});

Deno.test(
  "pod start, fail-open: deny holds, allow succeeds once known, timeout accepts",
  labTest,
  async (t) => {
    const w = world!;
    await withRaceAgent(w, true, async (agent) => {
      await t.step("the race's sets hold the node's pod CIDR and the known addresses", async () => {
        const save = await w.lab.exec(w.lab.nodeNetns, ["ipset", "save"]);
        assert.match(save.stdout, /^add kube-netpol-podcidr-v4 10\.244\.0\.0\/16$/m);
        for (const ip of ["10.244.0.1", "10.244.1.11", "10.244.1.12"]) {
          assert.match(
            save.stdout,
            new RegExp(`^add kube-netpol-known-v4 ${ip.replaceAll(".", "\\.")}$`, "m"),
          );
        }
        const rules = await w.lab.exec(w.lab.nodeNetns, ["iptables-save", "-t", "filter"]);
        console.log(rules.stdout.split("\n").filter((l) => l.includes("podcidr")).join("\n"));
      });

      await t.step(
        "default-deny: nothing gets through, before the pod is known or after",
        async () => {
          const before = await heldCounts(agent);
          const { egress, ingress } = await lateStart(w, "deny", {
            serve: true,
            publishAfterMs: PUBLISH_AFTER_MS,
            everyMs: 100,
            forMs: 2000,
          });
          console.log(`egress:  ${describe(egress)}\ningress: ${describe(ingress)}`);
          const through = [...egress, ...ingress].filter((a) => a.outcome === "connected");
          assert.deepEqual(through, [], "connections of the late pod that got through");
          // Refused (a reset), not dropped: the held ones were judged once the pod appeared.
          assert.deepEqual(
            [...egress, ...ingress].filter((a) => a.outcome !== "refused"),
            [],
            "every attempt is refused",
          );
          const held = egress.filter((a) => a.at < PUBLISH_AFTER_MS);
          assert.ok(held.length >= 2, "several attempts were made before the pod was published");
          const c = diff(before, await settledCounts(agent, (c) => c.held - before.held >= 2));
          console.log(`held ${c.held} packets, ${c.timeouts} timeouts`);
          assert.ok(c.held >= 2, `held packets counted (${c.held})`);
          assert.equal(c.timeouts, 0, "none released by the timeout");
        },
      );

      await t.step("allowed: the held connections succeed once the pod appears", async () => {
        const before = await heldCounts(agent);
        const allowed = () => agent.metric("packet_count", { verdict: "allow" });
        const allowedBefore = await allowed();
        const { egress, ingress } = await lateStart(w, "allow", {
          serve: true,
          publishAfterMs: PUBLISH_AFTER_MS,
          everyMs: 1000,
          forMs: 0,
        });
        console.log(`egress:  ${describe(egress)}\ningress: ${describe(ingress)}`);
        assert.deepEqual([...egress, ...ingress].map((a) => a.outcome), ["connected", "connected"]);
        const c = diff(before, await settledCounts(agent, (c) => c.waits - before.waits >= 2));
        console.log(
          `held ${c.held} packets; judged after a mean wait of ${
            Math.round(c.waitSeconds / Math.max(1, c.waits) * 1000)
          } ms; ${c.timeouts} timeouts`,
        );
        assert.ok(c.held >= 2 && c.waits >= 2, "both first packets were held, then judged");
        assert.equal(c.timeouts, 0, "let through by a verdict, not by the timeout");
        // Judged once each: an allowed packet handed back to be remembered by the verdict cache
        // must not be queued again by the race's rules while the kernel's known set still lags.
        const judged = await pollUntil(allowed, (n) => n - allowedBefore >= 2, 5_000);
        assert.equal(judged - allowedBefore, 2, "allow verdicts for the two connections");
      });

      await t.step("never published: after the timeout fail-open accepts", async () => {
        const before = await heldCounts(agent);
        const mark = agent.logMark();
        const { egress } = await lateStart(w, "timeout", { serve: false, everyMs: 1000, forMs: 0 });
        console.log(`egress: ${describe(egress)}`);
        assert.deepEqual(egress.map((a) => a.outcome), ["connected"]);
        const c = diff(before, await settledCounts(agent, (c) => c.timeouts > before.timeouts));
        assert.ok(c.timeouts >= 1, "released by the timeout");
        assert.ok(
          agent.logsSince(mark).some((l) =>
            /held packet released unjudged.*accepted \(fail-open\)/.test(l)
          ),
          "the release is logged",
        );
      });
    });
  },
);

Deno.test(
  "pod start, fail-closed: allow succeeds once known, timeout drops",
  labTest,
  async (t) => {
    const w = world!;
    await withRaceAgent(w, false, async (agent) => {
      await t.step("allowed: the held connection succeeds once the pod appears", async () => {
        const before = await heldCounts(agent);
        const { egress } = await lateStart(w, "allow", {
          serve: false,
          publishAfterMs: PUBLISH_AFTER_MS,
          everyMs: 1000,
          forMs: 0,
        });
        console.log(`egress: ${describe(egress)}`);
        // Failing closed, a timeout would have dropped it: connecting proves it was judged.
        assert.deepEqual(egress.map((a) => a.outcome), ["connected"]);
        const c = diff(before, await settledCounts(agent, (c) => c.waits > before.waits));
        assert.ok(c.waits >= 1);
        assert.equal(c.timeouts, 0);
      });

      await t.step("never published: after the timeout fail-closed drops", async () => {
        const before = await heldCounts(agent);
        const mark = agent.logMark();
        const { egress } = await lateStart(w, "timeout", { serve: false, everyMs: 1000, forMs: 0 });
        console.log(`egress: ${describe(egress)}`);
        assert.deepEqual(egress.map((a) => a.outcome), ["timeout"], "dropped: the client gave up");
        const c = diff(before, await settledCounts(agent, (c) => c.timeouts > before.timeouts));
        assert.ok(c.timeouts >= 1, "released by the timeout");
        assert.ok(
          agent.logsSince(mark).some((l) =>
            /held packet released unjudged.*dropped \(fail-closed\)/.test(l)
          ),
          "the release is logged",
        );
      });
    });
  },
);

Deno.test("pod start: lab removed", labTest, async () => {
  const lab = world?.lab;
  await lab?.destroy();
  await world?.dir.remove();
  world = undefined;
  if (lab) assert.deepEqual(await listNetns(lab.prefix), [], "lab namespaces left behind");
});
