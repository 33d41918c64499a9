/**
 * The kernel verdict cache's rules and sets, by rendering (no root): chain position in both
 * backends, the mark contract (a re-injected packet is never queued again), bounded fresh sets,
 * and reading the hit counters back.
 */
import assert from "node:assert/strict";
import type { RuleOptions } from "../src/rules/backend.ts";
import { validateRuleOptions } from "../src/rules/backend.ts";
import type { CommandResult, CommandRunner } from "../src/rules/command.ts";
import { IptablesBackend, renderIptablesChainRules } from "../src/rules/iptables.ts";
import { readIptablesSave } from "../src/rules/iptables_check.ts";
import { readNftTable, renderNftInstall } from "../src/rules/nftables.ts";
import {
  cacheTargetFor,
  renderIpsetCacheCreate,
  type VerdictCacheRuleOptions,
} from "../src/rules/verdict_cache_rules.ts";
import { allObservers, CacheHitCounter } from "../src/rules/cache_hits.ts";
import { AgentMetrics } from "../src/metrics.ts";
import { createLogger } from "../src/log.ts";

const CACHE: VerdictCacheRuleOptions = {
  mark: 0x200000,
  timeoutSeconds: 10,
  maxEntries: 65536,
  denies: true,
};
const WITH_CACHE: RuleOptions = {
  queueId: 100,
  failOpen: true,
  denyMark: 0x100000,
  verdictCache: CACHE,
};

/** The index of the first rule containing `text` (fails when there is none). */
function at(rules: string[], text: string): number {
  const i = rules.findIndex((r) => r.includes(text));
  assert.ok(i >= 0, `no rule with ${text} in\n${rules.join("\n")}`);
  return i;
}

Deno.test("iptables chain with the cache: deny fill, rejects, cut, INVALID, hits, queue, unknown pods, allow fill", () => {
  const r = renderIptablesChainRules({ ...WITH_CACHE, cutMark: 0x400000 }, 4);
  assert.deepEqual(r, [
    "-A KUBE-NETPOL -m mark --mark 0x300000/0x300000 -j SET --add-set kube-netpol-cache-deny-v4 src,dst,dst --exist --timeout 10",
    "-A KUBE-NETPOL -p tcp -m mark --mark 0x100000/0x100000 -j REJECT --reject-with tcp-reset",
    "-A KUBE-NETPOL -p udp -m mark --mark 0x100000/0x100000 -j REJECT --reject-with icmp-port-unreachable",
    "-A KUBE-NETPOL -m mark --mark 0x100000/0x100000 -j DROP",
    // Strict mode's cut: a ct mark bit, apart from both packet mark bits.
    "-A KUBE-NETPOL -p tcp -m connmark --mark 0x400000/0x400000 -j REJECT --reject-with tcp-reset",
    "-A KUBE-NETPOL -p udp -m connmark --mark 0x400000/0x400000 -j REJECT --reject-with icmp-port-unreachable",
    "-A KUBE-NETPOL -m connmark --mark 0x400000/0x400000 -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate INVALID -m set --match-set kube-netpol-ingress-v4 dst -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate INVALID -m set --match-set kube-netpol-egress-v4 src -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate NEW -m set --match-set kube-netpol-cache-allow-v4 src,dst,dst -j ACCEPT",
    "-A KUBE-NETPOL -p tcp -m conntrack --ctstate NEW -m set --match-set kube-netpol-cache-deny-v4 src,dst,dst -j REJECT --reject-with tcp-reset",
    "-A KUBE-NETPOL -p udp -m conntrack --ctstate NEW -m set --match-set kube-netpol-cache-deny-v4 src,dst,dst -j REJECT --reject-with icmp-port-unreachable",
    // Neither bit set: a packet handed back with either is never queued again.
    "-A KUBE-NETPOL -m conntrack --ctstate NEW -m mark --mark 0x0/0x300000 -m set --match-set kube-netpol-ingress-v4 dst -j NFQUEUE --queue-num 100 --queue-bypass",
    "-A KUBE-NETPOL -m conntrack --ctstate NEW -m mark --mark 0x0/0x300000 -m set --match-set kube-netpol-egress-v4 src -j NFQUEUE --queue-num 100 --queue-bypass",
    // The pod-start race's rules: neither bit either, or an allowed packet handed back while the
    // kernel's known-pods set lags the engine would be queued again and again.
    "-A KUBE-NETPOL -m conntrack --ctstate INVALID -m set --match-set kube-netpol-podcidr-v4 src -m set ! --match-set kube-netpol-known-v4 src -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate INVALID -m set --match-set kube-netpol-podcidr-v4 dst -m set ! --match-set kube-netpol-known-v4 dst -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate NEW -m mark --mark 0x0/0x300000 -m set --match-set kube-netpol-podcidr-v4 src -m set ! --match-set kube-netpol-known-v4 src -j NFQUEUE --queue-num 100 --queue-bypass",
    "-A KUBE-NETPOL -m conntrack --ctstate NEW -m mark --mark 0x0/0x300000 -m set --match-set kube-netpol-podcidr-v4 dst -m set ! --match-set kube-netpol-known-v4 dst -j NFQUEUE --queue-num 100 --queue-bypass",
    "-A KUBE-NETPOL -m mark --mark 0x200000/0x300000 -j SET --add-set kube-netpol-cache-allow-v4 src,dst,dst --exist --timeout 10",
    "-A KUBE-NETPOL -m mark --mark 0x200000/0x300000 -j ACCEPT",
  ]);
});

Deno.test("iptables chain: IPv6 cache sets and icmp6; no deny sets when denies are not cached", () => {
  const v6 = renderIptablesChainRules(WITH_CACHE, 6);
  assert.ok(v6.every((l) => !l.includes("-v4")));
  assert.ok(at(v6, "icmp6-port-unreachable") >= 0);
  const allowOnly = renderIptablesChainRules(
    { ...WITH_CACHE, verdictCache: { ...CACHE, denies: false } },
    4,
  );
  assert.ok(allowOnly.every((l) => !l.includes("cache-deny")), allowOnly.join("\n"));
  assert.ok(at(allowOnly, "--match-set kube-netpol-cache-allow-v4 src,dst,dst -j ACCEPT") >= 0);
});

Deno.test("iptables chain without the cache is the historical one", () => {
  const off = renderIptablesChainRules({ queueId: 100, failOpen: true, denyMark: 0x100000 }, 4);
  assert.ok(off.every((l) => !l.includes("cache") && !l.includes("-j SET")));
  assert.ok(at(off, "-m mark ! --mark 0x100000/0x100000 -m set --match-set") >= 0);
});

Deno.test("nft table with the cache: same order, keyed saddr . l4proto . dport . daddr", () => {
  const text = renderNftInstall(WITH_CACHE);
  const rules = text.split("\n").filter((l) => l.startsWith("add rule inet kube-netpol judge"));
  const denyFill = at(
    rules,
    "add @cache-deny-v4 { ip saddr . meta l4proto . th dport . ip daddr }",
  );
  const reject = at(rules, "meta mark & 0x100000 == 0x100000 meta l4proto tcp reject");
  const invalid = at(rules, "ct state invalid");
  const hit = at(
    rules,
    "ct state new ip saddr . meta l4proto . th dport . ip daddr @cache-allow-v4 counter accept",
  );
  const queue = at(rules, "queue num 100");
  const allowFill = at(rules, "add @cache-allow-v4 {");
  assert.ok(
    denyFill < reject && reject < invalid && invalid < hit && hit < queue && queue < allowFill,
  );
  assert.ok(at(rules, "ct state new meta mark & 0x300000 == 0x0 ip daddr @ingress-v4") >= 0);
  // Every rule that queues skips both bits, the pod-start race's too, and comes before the fill.
  const queueing = rules.filter((l) => l.includes(" queue num "));
  assert.equal(queueing.length, 8);
  assert.ok(queueing.every((l) => l.includes("ct state new meta mark & 0x300000 == 0x0 ")));
  const unknownPods = at(rules, "ip saddr @podcidr-v4 ip saddr != @known-v4 counter queue");
  assert.ok(queue < unknownPods && unknownPods < allowFill);
  assert.match(
    text,
    /add set inet kube-netpol cache-allow-v6 \{ type ipv6_addr \. inet_proto \. inet_service \. ipv6_addr; flags dynamic,timeout; timeout 10s; size 65536; \}/,
  );
  assert.equal(
    rules.at(-1),
    "add rule inet kube-netpol judge meta mark & 0x300000 == 0x200000 accept",
  );
});

Deno.test("nft install replaces existing cache sets after flushing the chain that uses them", () => {
  const text = renderNftInstall(WITH_CACHE, ["ingress-v4", "cache-allow-v4", "cache-deny-v6"]);
  const lines = text.split("\n");
  const flush = lines.indexOf("flush chain inet kube-netpol judge");
  const del = lines.indexOf("delete set inet kube-netpol cache-allow-v4");
  const add = lines.findIndex((l) => l.startsWith("add set inet kube-netpol cache-allow-v4 "));
  assert.ok(flush >= 0 && flush < del && del < add, text);
  assert.ok(lines.includes("delete set inet kube-netpol cache-deny-v6"));
  assert.ok(!lines.includes("delete set inet kube-netpol ingress-v4"), "queue sets keep members");
});

Deno.test("ipset cache sets: created bounded with a timeout; existing ones swapped for fresh", () => {
  assert.equal(
    renderIpsetCacheCreate({ ...CACHE, denies: false }, new Set()),
    "create kube-netpol-cache-allow-v4 hash:ip,port,ip family inet timeout 10 maxelem 65536\n" +
      "create kube-netpol-cache-allow-v6 hash:ip,port,ip family inet6 timeout 10 maxelem 65536\n",
  );
  const existing = new Set(["kube-netpol-cache-allow-v4", "kube-netpol-cache-allow-v4-tmp"]);
  const text = renderIpsetCacheCreate({ ...CACHE, denies: false }, existing);
  assert.equal(
    text.split("\n").slice(0, 4).join("\n"),
    "destroy kube-netpol-cache-allow-v4-tmp\n" +
      "create kube-netpol-cache-allow-v4-tmp hash:ip,port,ip family inet timeout 10 maxelem 65536\n" +
      "swap kube-netpol-cache-allow-v4-tmp kube-netpol-cache-allow-v4\n" +
      "destroy kube-netpol-cache-allow-v4-tmp",
  );
  assert.equal(renderIpsetCacheCreate(undefined, new Set()), "");
});

/** Answers commands from a table (first matching prefix), recording every call. */
class ScriptedRunner implements CommandRunner {
  calls: { line: string; stdin?: string }[] = [];
  constructor(private readonly answers: Array<[string, Partial<CommandResult>]> = []) {}
  run(cmd: string, args: string[], stdin?: string): Promise<CommandResult> {
    const line = [cmd, ...args].join(" ");
    this.calls.push({ line, stdin });
    const hit = this.answers.find(([prefix]) => line.startsWith(prefix))?.[1] ?? {};
    return Promise.resolve({ code: 0, stdout: "", stderr: "", ...hit });
  }
}

Deno.test("iptables install creates the cache sets before the rules and drops unused ones", async () => {
  const run = new ScriptedRunner([["ipset list -n", {
    stdout: "kube-netpol-ingress-v4\nkube-netpol-cache-deny-v4\nsomeone-else\n",
  }]]);
  await new IptablesBackend(
    "nft",
    { ...WITH_CACHE, verdictCache: { ...CACHE, denies: false } },
    run,
  )
    .install();
  const lines = run.calls.map((c) => c.line);
  const cacheCreate = run.calls.findIndex((c) => c.stdin?.includes("cache-allow-v4"));
  const firstRestore = lines.findIndex((l) => l.startsWith("iptables-nft-restore"));
  assert.ok(cacheCreate >= 0 && cacheCreate < firstRestore, lines.join("\n"));
  // Denies are not cached now: the deny set of an earlier run goes, after the rules stop naming it.
  const last = run.calls.at(-1)!;
  assert.equal(last.line, "ipset restore");
  assert.equal(last.stdin, "destroy kube-netpol-cache-deny-v4\n");
});

Deno.test("cache options are checked: the mark must not overlap the deny mark, bounds", () => {
  assert.throws(
    () => validateRuleOptions({ ...WITH_CACHE, verdictCache: { ...CACHE, mark: 0x100000 } }),
    /overlaps the deny mark/,
  );
  assert.throws(
    () => validateRuleOptions({ ...WITH_CACHE, verdictCache: { ...CACHE, timeoutSeconds: 0 } }),
    /timeout/,
  );
  assert.throws(
    () => validateRuleOptions({ ...WITH_CACHE, verdictCache: { ...CACHE, maxEntries: 0 } }),
    /size/,
  );
  validateRuleOptions(WITH_CACHE);
});

// Listed by iptables-nft-save -c on this machine (kernel 6.18, iptables 1.8.9), counters edited.
const SAVED = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-NETPOL - [0:0]
[0:0] -A INPUT -m comment --comment kube-netpol -j KUBE-NETPOL
[0:0] -A FORWARD -m comment --comment kube-netpol -j KUBE-NETPOL
[3:180] -A KUBE-NETPOL -m mark --mark 0x300000/0x300000 -j SET --add-set kube-netpol-cache-deny-v4 src,dst,dst --exist --timeout 10
[3:180] -A KUBE-NETPOL -p tcp -m mark --mark 0x100000/0x100000 -j REJECT --reject-with tcp-reset
[0:0] -A KUBE-NETPOL -m conntrack --ctstate NEW -m set --match-set kube-netpol-cache-allow-v4 src,dst,dst -j ACCEPT
[41:2460] -A KUBE-NETPOL -m conntrack --ctstate NEW -m set --match-set kube-netpol-cache-allow-v4 src,dst,dst -j ACCEPT
[7:420] -A KUBE-NETPOL -p tcp -m conntrack --ctstate NEW -m set --match-set kube-netpol-cache-deny-v4 src,dst,dst -j REJECT --reject-with tcp-reset
[2:120] -A KUBE-NETPOL -p udp -m conntrack --ctstate NEW -m set --match-set kube-netpol-cache-deny-v4 src,dst,dst -j REJECT --reject-with icmp-port-unreachable
[5:300] -A KUBE-NETPOL -m conntrack --ctstate NEW -m mark --mark 0x0/0x300000 -m set --match-set kube-netpol-ingress-v4 dst -j NFQUEUE --queue-num 100 --queue-bypass
[4:240] -A KUBE-NETPOL -m mark --mark 0x200000/0x300000 -j SET --add-set kube-netpol-cache-allow-v4 src,dst,dst --exist --timeout 10
[4:240] -A KUBE-NETPOL -m mark --mark 0x200000/0x300000 -j ACCEPT
COMMIT
`;

Deno.test("iptables check reads the cache hit rules' counters (fill rules are not hits)", () => {
  const view = readIptablesSave(SAVED);
  assert.deepEqual(view.cacheHits, { allow: 41, deny: 9 });
  assert.equal(view.queuePackets, 5);
});

Deno.test("nft check reads the cache hit rules' counters", () => {
  const match = (set: string) => ({
    match: {
      op: "==",
      left: { concat: [{ payload: { protocol: "ip", field: "saddr" } }] },
      right: `@${set}`,
    },
  });
  const listed = JSON.stringify({
    nftables: [
      { table: { family: "inet", name: "kube-netpol" } },
      { chain: { family: "inet", table: "kube-netpol", name: "judge" } },
      {
        rule: {
          chain: "judge",
          expr: [match("cache-allow-v4"), { counter: { packets: 12, bytes: 720 } }, {
            accept: null,
          }],
        },
      },
      {
        rule: {
          chain: "judge",
          expr: [match("cache-deny-v6"), { counter: { packets: 3, bytes: 180 } }, {
            reject: { type: "tcp reset" },
          }],
        },
      },
      {
        rule: {
          chain: "judge",
          expr: [{ set: { op: "add", elem: {}, set: "@cache-allow-v4" } }],
        },
      },
    ],
  });
  assert.deepEqual(readNftTable(listed).cacheHits, { allow: 12, deny: 3 });
});

Deno.test("the worker's flush target names the backend's sets", () => {
  assert.deepEqual(cacheTargetFor("iptables-legacy", CACHE), {
    kind: "ipset",
    sets: [
      "kube-netpol-cache-allow-v4",
      "kube-netpol-cache-allow-v6",
      "kube-netpol-cache-deny-v4",
      "kube-netpol-cache-deny-v6",
    ],
  });
  assert.deepEqual(cacheTargetFor("nftables", { ...CACHE, denies: false }), {
    kind: "nftables",
    table: "kube-netpol",
    sets: ["cache-allow-v4", "cache-allow-v6"],
  });
});

Deno.test("cache hits become counters; install resets the baseline; cached denies are logged in sum", async () => {
  const metrics = new AgentMetrics();
  const lines: string[] = [];
  const log = createLogger({ verbosity: 2, write: (l: string) => lines.push(l) });
  const counter = new CacheHitCounter(metrics, log, 10);
  const seen: string[] = [];
  const both = allObservers(counter, {
    installed: () => seen.push("installed"),
    checked: () => seen.push("checked"),
  });
  both.installed();
  both.checked({ damage: [], cacheHits: { allow: 5, deny: 0 } });
  both.checked({ damage: [], cacheHits: { allow: 8, deny: 2 } });
  both.installed(); // counters start again from zero
  both.checked({ damage: [], cacheHits: { allow: 1, deny: 0 } });
  assert.deepEqual(seen, ["installed", "checked", "checked", "installed", "checked"]);
  const text = await metrics.registry.getSingleMetricAsString(
    "kube_netpol_verdict_cache_hits_total",
  );
  const value = (verdict: string) =>
    Number(new RegExp(`verdict="${verdict}"\\} (\\d+)`).exec(text)?.[1]);
  assert.equal(value("allow"), 9);
  assert.equal(value("deny"), 2);
  assert.equal(lines.filter((l) => l.includes("refused in the kernel")).length, 1);
  assert.match(lines.find((l) => l.includes("refused in the kernel"))!, /count=2/);
});
