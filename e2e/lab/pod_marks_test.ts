/**
 * A pod cannot steer our rules with packet or connection marks (root; real agent, real packets).
 * Our rules act on three mark bits: the deny mark (refuse), the verdict cache mark (remember and
 * accept without queueing) and strict mode's cut mark (a connection mark). A pod with NET_ADMIN in
 * its own netns can set any mark on what it sends. Those marks must not reach the node: the kernel
 * clears a packet's mark when it crosses into another netns (veth), and conntrack, with its
 * marks, is per netns. So a pod that sets all three bits on every packet and connection is judged
 * like any other: refused where denied, every time (the cache must not learn a key from it).
 *
 * The last step shows what the test guards: a mark set on the node itself (a component sharing
 * our bits) does skip the queue, and a denied connection goes through. That is why the bits must
 * be ours alone (`--deny-mark`, `--verdict-cache-mark`, `--cut-mark`; docs/rules.md).
 *
 *   deno task test:lab e2e/lab/pod_marks_test.ts (or its flags on this one file)
 */
import assert from "node:assert/strict";
import { networkPolicy } from "./cluster.ts";
import { type LabAgentSetup, labTest, namespacePlan, withLabAgent } from "./harness.ts";
import { probeFrom } from "./probe.ts";
import type { Lab, LabPod } from "./topology.ts";

const PREFIX = "knpmark";
const PLAN = namespacePlan("x", ["attacker", "open", "closed"]);
const POLICIES = [
  networkPolicy("x", "open-from-attacker", {
    podSelector: { matchLabels: { pod: "open" } },
    ingress: [{
      from: [{ podSelector: { matchLabels: { pod: "attacker" } } }],
      ports: [{ protocol: "TCP", port: 80 }, { protocol: "UDP", port: 80 }],
    }],
  }),
  networkPolicy("x", "closed", { podSelector: { matchLabels: { pod: "closed" } } }),
];
const SETUP: LabAgentSetup = {
  prefix: PREFIX,
  plan: PLAN,
  servers: [80, 81, 82],
  policies: POLICIES,
};

async function mustExec(lab: Lab, netns: string, cmd: string[]): Promise<void> {
  const r = await lab.exec(netns, cmd);
  assert.equal(r.code, 0, `${cmd.join(" ")} in ${netns}: ${r.stderr}`);
}

/** `rounds` probes per protocol from `from` to `to` on `port`: the outcomes, TCP then UDP. */
async function outcomes(
  lab: Lab,
  from: LabPod,
  to: LabPod,
  rounds: number,
  port = 80,
): Promise<string[]> {
  const seen: string[] = [];
  for (let i = 0; i < rounds; i++) {
    const rs = await probeFrom(lab, from.netns, [
      { ip: to.ip, protocol: "TCP", port },
      { ip: to.ip, protocol: "UDP", port },
    ]);
    seen.push(...rs.map((r) => `${r.protocol} ${r.outcome}`));
  }
  return seen;
}

Deno.test(
  "lab: marks a pod sets on its packets and connections never reach our rules",
  labTest,
  (t) =>
    withLabAgent(SETUP, async ({ lab }) => {
      const attacker = lab.pod("x/attacker");
      const open = lab.pod("x/open"), closed = lab.pod("x/closed");
      const allowed = ["TCP connected", "UDP connected"];
      const isDenied = (o: string) => !o.endsWith("connected");

      await t.step("before: closed is denied, open allowed", async () => {
        assert.ok((await outcomes(lab, attacker, closed, 1)).every(isDenied));
        assert.deepEqual(await outcomes(lab, attacker, open, 1), allowed);
      });

      // The cache bit first, on a key never judged (port 81): had it crossed, the first denied
      // connection would have been accepted and remembered.
      const bits = [["cache bit", "0x200000"], ["deny bit", "0x100000"], ["cut bit", "0x400000"], [
        "three bits",
        "0x700000",
      ]];
      for (const [name, bit] of bits) {
        await t.step(`every packet and connection of the pod carries the ${name}`, async () => {
          await mustExec(lab, attacker.netns, ["iptables", "-t", "mangle", "-F", "OUTPUT"]);
          for (const target of ["MARK", "CONNMARK"]) {
            await mustExec(lab, attacker.netns, [
              "iptables",
              "-t",
              "mangle",
              "-A",
              "OUTPUT",
              "-j",
              target,
              "--set-xmark",
              `${bit}/${bit}`,
            ]);
          }
          const denied = await outcomes(lab, attacker, closed, 3, 81);
          assert.ok(denied.every(isDenied), `to x/closed: ${denied.join(", ")}`);
          // The deny bit, had it crossed, would refuse this allowed connection.
          assert.deepEqual(await outcomes(lab, attacker, open, 2), [...allowed, ...allowed]);
        });
      }

      await t.step("what it guards: the cache bit set on the node skips the queue", async () => {
        // In the node's own netns, before our rules (mangle PREROUTING): what another component
        // using our bit would do. The denied connection then goes through unjudged. (Port 82: the
        // denies above are in the cache's deny set, which is consulted first.)
        await mustExec(lab, lab.nodeNetns, [
          "iptables",
          "-t",
          "mangle",
          "-I",
          "PREROUTING",
          "-s",
          attacker.ip,
          "-j",
          "MARK",
          "--set-xmark",
          "0x200000/0x200000",
        ]);
        const through = await outcomes(lab, attacker, closed, 1, 82);
        assert.ok(through.includes("TCP connected"), `marked on the node: ${through.join(", ")}`);
      });
    }),
);
