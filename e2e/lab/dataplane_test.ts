/**
 * The dataplane behind the agent's back (root): the real agent in a lab node netns, and the ways
 * its rules get lost or bypassed on a real node.
 *   - Repair (iptables-nft and iptables-legacy): `iptables -F KUBE-NETPOL`, a deleted jump,
 *     `ipset flush`, `nft flush ruleset` each open denied pairs; the periodic check restores
 *     enforcement and counts the repair.
 *   - Unjudged packets: a raw SYN flood from pods overflows a small queue under --fail-open;
 *     the kernel lets the overflow through without a trace of its own, the agent counts it
 *     (kube_netpol_unjudged_packets_total) and warns.
 *   - Uninstall leaves no empty iptables-nft filter table it created, also across a restart, and
 *     never removes one that was there before.
 *
 *   deno test --frozen -A e2e/lab/dataplane_test.ts
 */
import assert from "node:assert/strict";
import { LabAgent } from "./agent.ts";
import { defaultPlan, networkPolicy as policy } from "./cluster.ts";
import { eventually, type LabSetup, labTest, withLab, withLabAgent } from "./harness.ts";
import { assertMatrix } from "./matrix.ts";
import { probeMatrix } from "./probe.ts";
import type { Lab } from "./topology.ts";
import { agentDenoFlags } from "../../src/cli/permissions.ts";
import { runPermissionsHere } from "../../src/cli/run_permissions.ts";

const PREFIX = "knpdp";
const MAIN_TS = new URL("../../main.ts", import.meta.url).pathname;
const ROOT = new URL("../../", import.meta.url).pathname;

/** Check period for the repair test: short, so four breakages fit in a test of reasonable length. */
const CHECK_S = 4;

const DENY_X = policy("x", "deny-ingress", { podSelector: {}, policyTypes: ["Ingress"] });
/** Two pairs the policy denies (into x) and one it leaves alone. */
const PAIRS = [
  { from: "y/a", to: "x/a" },
  { from: "z/b", to: "x/b" },
  { from: "x/a", to: "y/b" },
];
const enforced = (_from: string, to: string) => to.startsWith("x/") ? "deny" : "allow";

async function inNode(lab: Lab, ...cmd: string[]): Promise<string> {
  const r = await lab.exec(lab.nodeNetns, cmd, { timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`${cmd.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** Repairs counted so far, every reason. */
function repairs(agent: LabAgent): Promise<number> {
  return agent.metric("kube_netpol_dataplane_repairs_total");
}

/** Until the agent's check finds the dataplane intact again (after a repair, within 5 s). */
function untilIntact(agent: LabAgent): Promise<number> {
  return eventually(
    "dataplane intact",
    () => agent.metric("kube_netpol_dataplane_intact"),
    (v) => v === 1,
    5000,
  );
}

/** The 3x3 lab with servers, DENY_X in force. */
const SETUP = { prefix: PREFIX, policies: [DENY_X] };

for (const flavour of ["nft", "legacy"] as const) {
  const ipt = `iptables-${flavour}`;
  Deno.test(
    `lab (${ipt}): flushed chain, deleted jump, flushed sets${
      flavour === "nft" ? ", nft flush ruleset" : ""
    }: each repaired`,
    labTest,
    async (t) => {
      await withLabAgent(
        {
          ...SETUP,
          agent: { extraArgs: [`--dataplane-check-interval=${CHECK_S}s`] },
          // A rule of the node's own in iptables-legacy makes the agent follow that flavour.
          beforeAgent: flavour === "legacy"
            ? ({ lab }) =>
              inNode(lab, ipt, "-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT").then(() => {})
            : undefined,
        },
        async ({ lab, agent }) => {
          assert.match(agent.logs(), new RegExp(`rule backend chosen backend=${ipt}`));
          assertMatrix("before", await probeMatrix(lab, PAIRS, "TCP", 80), enforced);
          // A first repair aligns us with the agent's check timer: each step then breaks something
          // right after a repair, and the next check is CHECK_S seconds away.
          await inNode(lab, ipt, "-D", "INPUT", "1");
          await eventually(
            "first repair",
            () => repairs(agent),
            (n) => n === 1,
            CHECK_S * 1000 + 5000,
          );
          await untilIntact(agent);
          const breakages: Array<{ name: string; reason: string; cmd: string[] }> = [
            {
              name: "iptables -F KUBE-NETPOL",
              reason: "rules",
              cmd: [ipt, "-F", "KUBE-NETPOL"],
            },
            {
              name: "jump from FORWARD deleted",
              reason: "jump",
              cmd: [
                ipt,
                "-D",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "kube-netpol",
                "-j",
                "KUBE-NETPOL",
              ],
            },
            { name: "ipset flush", reason: "members", cmd: ["ipset", "flush"] },
            ...(flavour === "nft"
              ? [{ name: "nft flush ruleset", reason: "chain", cmd: ["nft", "flush", "ruleset"] }]
              : []),
          ];
          for (const b of breakages) {
            await t.step(b.name, async () => {
              // Right after a check the next is CHECK_S away: time to see the breakage itself.
              const before = await repairs(agent);
              await inNode(lab, ...b.cmd);
              const broken = await probeMatrix(lab, PAIRS.slice(0, 2), "TCP", 80);
              assertMatrix(`${b.name}: enforcement broken`, broken, () => "allow");
              // Restored within the check period plus a margin for the repair itself.
              await eventually(
                "repair counted",
                () => repairs(agent),
                (n) => n > before,
                CHECK_S * 1000 + 5000,
              );
              // Counted when found; intact again once re-installed, re-synced and checked.
              await untilIntact(agent);
              assertMatrix(
                `${b.name}: repaired`,
                await probeMatrix(lab, PAIRS, "TCP", 80),
                enforced,
              );
              const m = await agent.scrape();
              assert.ok(
                m.value("kube_netpol_dataplane_repairs_total", { reason: b.reason }) >= 1,
                b.reason,
              );
              assert.equal(m.value("kube_netpol_dataplane_intact"), 1);
              assert.equal((await agent.get("/readyz")).status, 200);
            });
          }
          assert.match(agent.logs(), /dataplane damaged/);
          assert.match(agent.logs(), /dataplane repaired/);
        },
      );
    },
  );
}

/** A bounded raw SYN flood: distinct source ports (each a new connection), at most `count`. */
const SYN_FLOOD = `
import random, socket, struct, sys, time
src, dst, dport, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
end = time.monotonic() + seconds
sent = 0
while sent < count and time.monotonic() < end:
    sport = 20000 + sent % 40000
    hdr = struct.pack("!HHIIBBHHH", sport, dport, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    hdr = hdr[:16] + struct.pack("!H", csum(pseudo + hdr)) + hdr[18:]
    try:
        s.sendto(hdr, (dst, 0))
        sent += 1
    except BlockingIOError:
        pass
print(sent)
`;

Deno.test(
  "lab: a SYN flood overflowing a small queue (fail-open) is counted and warned about",
  labTest,
  async () => {
    await withLabAgent(
      {
        ...SETUP,
        // Without the verdict cache: it refuses a flood of one source, destination and port in
        // the kernel after the first packet, so the queue would never fill.
        agent: { extraArgs: ["--queue-maxlen=8", "--deny-log-rate=1", "--verdict-cache=false"] },
      },
      async ({ lab, agent }) => {
        const to = lab.pod("x/a");
        assert.equal(await agent.metric("kube_netpol_unjudged_packets_total"), 0);
        const started = Date.now();
        // Two pods flood at once (2 cores here): the agent cannot keep a queue of 8 from filling.
        const floods = await Promise.all(["y/a", "z/a"].map((key) => {
          const from = lab.pod(key);
          const args = [from.ip, to.ip, "80", "20000", "5"];
          return lab.exec(from.netns, ["python3", "-c", SYN_FLOOD, ...args], {
            timeoutMs: 20_000,
          });
        }));
        for (const f of floods) assert.equal(f.code, 0, f.stderr);
        const sent = floods.reduce((n, f) => n + Number(f.stdout.trim()), 0);
        // Counted and warned within 10 s of the flood's start.
        const m = await eventually(
          "unjudged packets counted",
          () => agent.scrape(),
          (m) => m.value("kube_netpol_unjudged_packets_total") > 0,
          Math.max(0, 10_000 - (Date.now() - started)),
        ).catch(async (e) => {
          // Say what really happened: queued by the rules vs judged by the agent.
          const rules = await inNode(lab, "iptables-nft-save", "-c", "-t", "filter");
          const judged = (await agent.scrape()).text.split("\n")
            .filter((l) => l.startsWith("packet_count{")).join("; ");
          throw new Error(`${e.message}\nrules:\n${rules}\njudged: ${judged}`);
        });
        await eventually(
          "warning logged",
          () => Promise.resolve(agent.logs()),
          (l) => /packets let through without a verdict/.test(l),
          Math.max(0, 10_000 - (Date.now() - started)),
        );
        const unjudged = m.value("kube_netpol_unjudged_packets_total");
        const dropped = m.value("nfqueue_queue_dropped", { queue: "100" });
        console.log(
          `  ${sent} SYNs sent; unjudged ${unjudged}, kernel queue_dropped ${dropped}, ` +
            `reported after ${Date.now() - started} ms`,
        );
        assert.ok(unjudged <= sent, "never more than was sent");
        // The policy still holds once the flood is over.
        assertMatrix("after the flood", await probeMatrix(lab, PAIRS, "TCP", 80), enforced);
      },
    );
  },
);

async function nftTables(lab: Lab): Promise<string[]> {
  return (await inNode(lab, "nft", "list", "tables")).split("\n").map((l) => l.trim()).filter((l) =>
    l
  );
}

async function runCleanup(lab: Lab): Promise<void> {
  const r = await lab.exec(lab.nodeNetns, [
    Deno.execPath(),
    "run",
    "--frozen",
    ...agentDenoFlags(runPermissionsHere({ manifests: [], metricsAddress: ":9080" }, ROOT)),
    MAIN_TS,
    "cleanup",
  ], { timeoutMs: 30_000 });
  assert.equal(r.code, 0, r.stderr);
}

Deno.test(
  "lab: uninstall removes the filter tables it created, across a restart, and only those",
  labTest,
  async (t) => {
    const plan = defaultPlan();
    const setup: LabSetup = {
      ...SETUP,
      plan: { ...plan, pods: plan.pods.slice(0, 2) },
      servers: false,
    };
    await withLab(setup, async ({ lab, dir }) => {
      const start = (failOpen: boolean) =>
        LabAgent.start(lab, { nodeName: plan.nodeName, manifestsDir: dir.path, failOpen });
      await t.step("fresh netns: created, kept over a crash, removed at uninstall", async () => {
        assert.deepEqual(await nftTables(lab), [], "a fresh netns has no tables");
        let agent = await start(true);
        assert.deepEqual(await nftTables(lab), ["table ip filter", "table ip6 filter"]);
        await agent.kill("SIGKILL"); // no uninstall: the rules stay
        agent = await start(true); // the table exists now; the marker says it is ours
        await agent.kill("SIGTERM");
        assert.deepEqual(await nftTables(lab), [], "nothing left behind");
      });
      await t.step(
        "fail-closed keeps everything; `kube-netpol cleanup` removes it all",
        async () => {
          const agent = await start(false);
          await agent.kill("SIGTERM");
          assert.deepEqual(await nftTables(lab), ["table ip filter", "table ip6 filter"]);
          await runCleanup(lab);
          assert.deepEqual(await nftTables(lab), []);
          assert.equal((await inNode(lab, "ipset", "list", "-n")).trim(), "");
        },
      );
      await t.step("a table that was there before stays, with its own rule", async () => {
        await inNode(lab, "iptables-nft", "-A", "FORWARD", "-s", "192.0.2.1", "-j", "ACCEPT");
        const agent = await start(true);
        assert.deepEqual(await nftTables(lab), ["table ip filter", "table ip6 filter"]);
        await agent.kill("SIGTERM");
        // ip6 filter was ours (created by the install); ip filter was there before and stays.
        assert.deepEqual(await nftTables(lab), ["table ip filter"]);
        const saved = await inNode(lab, "iptables-nft-save");
        assert.match(saved, /-A FORWARD -s 192\.0\.2\.1\/32 -j ACCEPT/);
        assert.doesNotMatch(saved, /KUBE-NETPOL/);
        await runCleanup(lab);
        assert.deepEqual(await nftTables(lab), ["table ip filter"]);
      });
    });
  },
);
