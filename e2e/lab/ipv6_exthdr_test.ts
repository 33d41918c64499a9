/**
 * IPv6 extension headers must not get past a policy (root; real agent, real packets). A pod
 * connects over IPv6 with extension headers in front of TCP: before the fix, the agent copied
 * only 128 bytes of each queued packet, a first packet whose ports lay further in failed to parse,
 * and `--fail-open` (the default) accepted it, so the connect to a denied pod succeeded.
 *
 * x/attacker may reach x/open on TCP 80; x/closed is isolated with no rule. Ordinary sockets
 * (what any pod with NET_RAW can do): a 256-byte Destination Options header (IPV6_DSTOPTS), an
 * 88-byte Hop-by-Hop header (IPV6_HOPOPTS): refused by x/closed, connected to x/open. Raw packets
 * (what no socket option sends): a SYN behind a 264-byte type 0 routing header with segments left
 * 0, and behind a chain of 17 destination options headers: never arrive in x/closed, arrive in
 * x/open.
 *
 *   deno test --frozen -A e2e/lab/ipv6_exthdr_test.ts
 */
import assert from "node:assert/strict";
import { ArrivalCounter, craft } from "./attacker.ts";
import { networkPolicy } from "./cluster.ts";
import { type LabAgentSetup, labTest, namespacePlan, withLabAgent } from "./harness.ts";

const PREFIX = "knpext";
const PLAN = namespacePlan("x", ["attacker", "open", "closed"]);
const POLICIES = [
  networkPolicy("x", "open-from-attacker", {
    podSelector: { matchLabels: { pod: "open" } },
    ingress: [{
      from: [{ podSelector: { matchLabels: { pod: "attacker" } } }],
      ports: [{ protocol: "TCP", port: 80 }],
    }],
  }),
  networkPolicy("x", "closed", { podSelector: { matchLabels: { pod: "closed" } } }),
];

const SETUP: LabAgentSetup = {
  prefix: PREFIX,
  plan: PLAN,
  ipv6: true,
  servers: [80],
  policies: POLICIES,
};

Deno.test(
  "lab: IPv6 extension headers are judged on the real transport, never let through",
  labTest,
  (t) =>
    withLabAgent(SETUP, async ({ lab, agent }) => {
      const attacker = lab.pod("x/attacker");
      const open = lab.pod("x/open"), closed = lab.pod("x/closed");

      for (const kind of ["dstopts256", "hbh88"]) {
        await t.step(
          `${kind} on an ordinary socket: refused when denied, connects when allowed`,
          async () => {
            const denied = await craft(lab, attacker, ["connect6", closed.ip6!, "80", kind]);
            assert.equal(denied.outcome, "refused", `to x/closed: ${JSON.stringify(denied)}`);
            const allowed = await craft(lab, attacker, ["connect6", open.ip6!, "80", kind]);
            assert.equal(allowed.outcome, "connected", `to x/open: ${JSON.stringify(allowed)}`);
          },
        );
      }

      const atOpen = await ArrivalCounter.install(lab, open, attacker.ip6!, 6);
      const atClosed = await ArrivalCounter.install(lab, closed, attacker.ip6!, 6);
      for (const kind of ["rh0", "chain17"]) {
        await t.step(
          `${kind} SYN on a raw socket: never arrives when denied, arrives when allowed`,
          async () => {
            const closedBefore = await atClosed.count();
            const openBefore = await atOpen.count();
            await craft(lab, attacker, ["raw6", attacker.ip6!, closed.ip6!, "80", kind]);
            await craft(lab, attacker, ["raw6", attacker.ip6!, open.ip6!, "80", kind]);
            // Both pass the node's queue in order: once the allowed one has arrived, the denied one
            // has had its verdict too.
            assert.ok(
              await atOpen.waitCount(openBefore + 1) > openBefore,
              "the allowed SYN arrived",
            );
            assert.equal(await atClosed.count() - closedBefore, 0, "the denied SYN never arrived");
          },
        );
      }

      await t.step(
        "the agent judged them all: no parse failures, denies logged with addresses",
        async () => {
          const metrics = (await agent.scrape()).text;
          assert.doesNotMatch(metrics, /kube_netpol_packet_parse_failures_total\{[^}]*\} [1-9]/);
          assert.match(
            agent.logs(),
            new RegExp(`connection denied .*dst=\\[${closed.ip6!.replaceAll(".", "\\.")}\\]:80`),
          );
        },
      );
    }),
);
