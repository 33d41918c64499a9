/**
 * Packets conntrack marks INVALID never reach an isolated pod, nor leave one (root; real agent,
 * real packets). They are not `ct state new`, so the queue rules never see them: before the fix
 * TCP segments with SYN+FIN, SYN+RST, a lone FIN, no flags (NULL) or FIN+PSH+URG (XMAS), and an
 * ICMP error about a connection that never was, reached a pod a policy isolates, unjudged.
 *
 * x/attacker and x/plain are selected by no policy; x/isolated is isolated for ingress, x/sealed
 * for egress. Each packet is counted where it arrives (an iptables counter in the destination
 * pod's netns): attacker -> isolated and sealed -> plain must count nothing, while the same
 * packets attacker -> plain still arrive (non-selected pods keep the kernel's usual behaviour).
 *
 *   deno test --frozen -A e2e/lab/invalid_packets_test.ts
 */
import assert from "node:assert/strict";
import { ArrivalCounter, craft } from "./attacker.ts";
import { networkPolicy } from "./cluster.ts";
import { type LabAgentSetup, labTest, namespacePlan, withLabAgent } from "./harness.ts";
import type { LabPod } from "./topology.ts";

const PREFIX = "knpinv";
const PLAN = namespacePlan("x", ["attacker", "plain", "isolated", "sealed"]);
const POLICIES = [
  networkPolicy("x", "isolated", { podSelector: { matchLabels: { pod: "isolated" } } }),
  networkPolicy("x", "sealed", {
    podSelector: { matchLabels: { pod: "sealed" } },
    policyTypes: ["Egress"],
  }),
];
const FLAGS = ["synfin", "synrst", "fin", "null", "xmas"];

const ip = (p: LabPod, family: 4 | 6) => family === 4 ? p.ip : p.ip6!;

const SETUP: LabAgentSetup = {
  prefix: PREFIX,
  plan: PLAN,
  ipv6: true,
  servers: false,
  policies: POLICIES,
};

Deno.test(
  "lab: conntrack-INVALID packets are dropped to and from isolated pods only",
  labTest,
  (t) =>
    withLabAgent(SETUP, async ({ lab }) => {
      const attacker = lab.pod("x/attacker"), plain = lab.pod("x/plain");
      const isolated = lab.pod("x/isolated"), sealed = lab.pod("x/sealed");

      for (const family of [4, 6] as const) {
        const attackerToPlain = await ArrivalCounter.install(
          lab,
          plain,
          ip(attacker, family),
          family,
        );
        const sealedToPlain = await ArrivalCounter.install(lab, plain, ip(sealed, family), family);
        const toIsolated = await ArrivalCounter.install(
          lab,
          isolated,
          ip(attacker, family),
          family,
        );
        /**
         * Sends `args` (a craft command taking SRC DST) from `from` to `blocked`, then the same
         * from the attacker to x/plain; once that one arrived (they pass the node in order), the
         * blocked one must not have.
         */
        const check = async (
          from: LabPod,
          blocked: LabPod,
          counter: ArrivalCounter,
          args: string[],
        ) => {
          const before = await counter.count();
          const witness = await attackerToPlain.count();
          const [cmd, ...rest] = args;
          await craft(lab, from, [
            cmd!,
            ...rest.map((a) =>
              a === "SRC" ? ip(from, family) : a === "DST" ? ip(blocked, family) : a
            ),
          ]);
          await craft(lab, attacker, [
            cmd!,
            ...rest.map((a) =>
              a === "SRC" ? ip(attacker, family) : a === "DST" ? ip(plain, family) : a
            ),
          ]);
          assert.ok(await attackerToPlain.waitCount(witness + 1) > witness, "arrived at x/plain");
          return (await counter.count()) - before;
        };

        for (const f of FLAGS) {
          await t.step(
            `IPv${family} TCP ${f}: not into an isolated pod, still into a plain one`,
            async () => {
              const n = await check(attacker, isolated, toIsolated, [
                "flags",
                String(family),
                "SRC",
                "DST",
                "80",
                f,
              ]);
              assert.equal(n, 0, "arrived at x/isolated");
            },
          );
          await t.step(`IPv${family} TCP ${f}: not out of an egress-isolated pod`, async () => {
            const n = await check(sealed, plain, sealedToPlain, [
              "flags",
              String(family),
              "SRC",
              "DST",
              "80",
              f,
            ]);
            assert.equal(n, 0, "arrived at x/plain from x/sealed");
          });
        }
        if (family === 4) {
          await t.step(
            "IPv4 ICMP error about no connection: not into an isolated pod",
            async () => {
              const n = await check(attacker, isolated, toIsolated, ["icmperr4", "SRC", "DST"]);
              assert.equal(n, 0, "arrived at x/isolated");
            },
          );
        }
      }
    }),
);
