/**
 * Rule backends without root: the exact text fed to iptables-restore / ipset / nft, the member
 * diffs, and the backend probe. Commands go to a scripted CommandRunner that records them.
 */
import assert from "node:assert/strict";
import { nullLogger } from "../src/log.ts";
import { type RuleOptions, validateRuleOptions } from "../src/rules/backend.ts";
import type { CommandResult, CommandRunner } from "../src/rules/command.ts";
import { canonicalIP, parseIP } from "../src/net/ip.ts";
import { parseIpsetSave, renderIpsetCreate } from "../src/rules/ipset.ts";
import {
  filterSection,
  IptablesBackend,
  renderIptablesChainRules,
  renderIptablesInstall,
  renderIptablesUninstall,
} from "../src/rules/iptables.ts";
import { NftablesBackend, parseNftSetMembers, renderNftInstall } from "../src/rules/nftables.ts";
import { chooseBackend, pickIptablesFlavour } from "../src/rules/choose.ts";
import { cleanupAll } from "../src/rules/cleanup.ts";
import { desiredMembers, diffMembers } from "../src/rules/queue_sets.ts";

const OPEN: RuleOptions = { queueId: 100, failOpen: true, denyMark: 0x100000 };
const CLOSED: RuleOptions = { queueId: 7, failOpen: false, denyMark: 0x4 };

interface Call {
  cmd: string;
  args: string[];
  stdin?: string;
}

/** Answers commands from a table (first matching prefix of `cmd args`), recording every call. */
class ScriptedRunner implements CommandRunner {
  calls: Call[] = [];
  constructor(private readonly answers: Array<[string, Partial<CommandResult>]> = []) {}
  run(cmd: string, args: string[], stdin?: string): Promise<CommandResult> {
    this.calls.push({ cmd, args, stdin });
    const line = [cmd, ...args].join(" ");
    const hit = this.answers.find(([prefix]) => line.startsWith(prefix))?.[1] ?? {};
    return Promise.resolve({ code: 0, stdout: "", stderr: "", ...hit });
  }
  lines(): string[] {
    return this.calls.map((c) => [c.cmd, ...c.args].join(" "));
  }
}

Deno.test("iptables chain: marked packets are rejected first; INVALID to/from isolated pods dropped before queueing", () => {
  assert.deepEqual(renderIptablesChainRules(OPEN, 4), [
    "-A KUBE-NETPOL -p tcp -m mark --mark 0x100000/0x100000 -j REJECT --reject-with tcp-reset",
    "-A KUBE-NETPOL -p udp -m mark --mark 0x100000/0x100000 -j REJECT --reject-with icmp-port-unreachable",
    "-A KUBE-NETPOL -m mark --mark 0x100000/0x100000 -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate INVALID -m set --match-set kube-netpol-ingress-v4 dst -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate INVALID -m set --match-set kube-netpol-egress-v4 src -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate NEW -m mark ! --mark 0x100000/0x100000 -m set --match-set kube-netpol-ingress-v4 dst -j NFQUEUE --queue-num 100 --queue-bypass",
    "-A KUBE-NETPOL -m conntrack --ctstate NEW -m mark ! --mark 0x100000/0x100000 -m set --match-set kube-netpol-egress-v4 src -j NFQUEUE --queue-num 100 --queue-bypass",
    // The pod-start race: addresses of this node's pod CIDRs that the agent does not know.
    "-A KUBE-NETPOL -m conntrack --ctstate INVALID -m set --match-set kube-netpol-podcidr-v4 src -m set ! --match-set kube-netpol-known-v4 src -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate INVALID -m set --match-set kube-netpol-podcidr-v4 dst -m set ! --match-set kube-netpol-known-v4 dst -j DROP",
    "-A KUBE-NETPOL -m conntrack --ctstate NEW -m mark ! --mark 0x100000/0x100000 -m set --match-set kube-netpol-podcidr-v4 src -m set ! --match-set kube-netpol-known-v4 src -j NFQUEUE --queue-num 100 --queue-bypass",
    "-A KUBE-NETPOL -m conntrack --ctstate NEW -m mark ! --mark 0x100000/0x100000 -m set --match-set kube-netpol-podcidr-v4 dst -m set ! --match-set kube-netpol-known-v4 dst -j NFQUEUE --queue-num 100 --queue-bypass",
  ]);
});

Deno.test("iptables chain, strict mode: rule 2 refuses every packet of a cut connection", () => {
  const strict = { ...OPEN, cutMark: 0x400000 };
  const rules = renderIptablesChainRules(strict, 4);
  // Right after the deny-mark rules, before INVALID and queueing; no direction match: both ways.
  assert.deepEqual(rules.slice(3, 6), [
    "-A KUBE-NETPOL -p tcp -m connmark --mark 0x400000/0x400000 -j REJECT --reject-with tcp-reset",
    "-A KUBE-NETPOL -p udp -m connmark --mark 0x400000/0x400000 -j REJECT --reject-with icmp-port-unreachable",
    "-A KUBE-NETPOL -m connmark --mark 0x400000/0x400000 -j DROP",
  ]);
  assert.deepEqual([...rules.slice(0, 3), ...rules.slice(6)], renderIptablesChainRules(OPEN, 4));
  assert.match(renderIptablesChainRules(strict, 6)[4]!, /icmp6-port-unreachable$/);
  assert.ok(!renderIptablesChainRules(OPEN, 4).some((r) => r.includes("connmark")));
  assert.throws(() => validateRuleOptions({ ...OPEN, cutMark: 0 }), RangeError);
});

Deno.test("iptables chain: IPv6 uses icmp6 and v6 sets; fail-closed has no bypass", () => {
  const rules = renderIptablesChainRules(CLOSED, 6);
  assert.match(rules[1] ?? "", /--reject-with icmp6-port-unreachable$/);
  assert.match(rules[3] ?? "", /INVALID -m set --match-set kube-netpol-ingress-v6 dst -j DROP$/);
  assert.match(rules[4] ?? "", /INVALID -m set --match-set kube-netpol-egress-v6 src -j DROP$/);
  assert.match(rules[5] ?? "", /--match-set kube-netpol-ingress-v6 dst -j NFQUEUE --queue-num 7$/);
  assert.match(rules[6] ?? "", /--match-set kube-netpol-egress-v6 src -j NFQUEUE --queue-num 7$/);
  for (const r of [...rules.slice(5, 7), ...rules.slice(9)]) {
    assert.match(r, /-m mark ! --mark 0x4\/0x4/);
  }
  assert.match(
    rules[9] ?? "",
    /kube-netpol-podcidr-v6 src -m set ! --match-set kube-netpol-known-v6 src -j NFQUEUE --queue-num 7$/,
  );
  assert.match(
    rules[10] ?? "",
    /kube-netpol-podcidr-v6 dst -m set ! --match-set kube-netpol-known-v6 dst -j NFQUEUE --queue-num 7$/,
  );
});

const SAVE_EMPTY = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m comment --comment "foreign" -j ACCEPT
COMMIT
`;

Deno.test("iptables install on a clean table: declares our chain and inserts both jumps first", () => {
  const text = renderIptablesInstall(OPEN, 4, SAVE_EMPTY);
  const lines = text.trimEnd().split("\n");
  assert.equal(lines[0], "*filter");
  assert.equal(lines[1], ":KUBE-NETPOL - [0:0]");
  assert.deepEqual(lines.slice(-3), [
    "-I INPUT 1 -m comment --comment kube-netpol -j KUBE-NETPOL",
    "-I FORWARD 1 -m comment --comment kube-netpol -j KUBE-NETPOL",
    "COMMIT",
  ]);
  assert.ok(!text.includes("foreign"), "foreign rules are never named");
  assert.ok(!/^-[FXP] (INPUT|FORWARD)/m.test(text), "built-in chains are never flushed");
});

Deno.test("iptables install is idempotent and removes duplicate jumps", () => {
  const installed = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-NETPOL - [0:0]
-A INPUT -m comment --comment kube-netpol -j KUBE-NETPOL
-A FORWARD -m comment --comment kube-netpol -j KUBE-NETPOL
-A FORWARD -j ACCEPT
-A FORWARD -m comment --comment kube-netpol -j KUBE-NETPOL
COMMIT
`;
  const text = renderIptablesInstall(OPEN, 4, installed);
  assert.ok(!text.includes("-I "), "no jump inserted when one exists");
  const deletes = text.split("\n").filter((l) => l.startsWith("-D "));
  assert.deepEqual(deletes, ["-D FORWARD -m comment --comment kube-netpol -j KUBE-NETPOL"]);
});

Deno.test("iptables uninstall names only our jumps and chain; nothing when absent", () => {
  const installed = `*mangle
-A INPUT -j KUBE-NETPOL
COMMIT
*filter
:INPUT ACCEPT [0:0]
:KUBE-NETPOL - [0:0]
:FOREIGN - [0:0]
-A INPUT -j FOREIGN
-A INPUT -m comment --comment kube-netpol -j KUBE-NETPOL
-A KUBE-NETPOL -j DROP
COMMIT
`;
  assert.equal(
    renderIptablesUninstall(filterSection(installed)),
    "*filter\n-D INPUT -m comment --comment kube-netpol -j KUBE-NETPOL\n-F KUBE-NETPOL\n-X KUBE-NETPOL\nCOMMIT\n",
  );
  assert.equal(renderIptablesUninstall(filterSection(SAVE_EMPTY)), undefined);
  assert.equal(renderIptablesUninstall(filterSection("")), undefined);
});

Deno.test("nftables table, strict mode: rule 2 refuses every packet of a cut connection", () => {
  const plain = renderNftInstall(OPEN).split("\n");
  const strict = renderNftInstall({ ...OPEN, cutMark: 0x400000 }).split("\n");
  const at =
    plain.indexOf("add rule inet kube-netpol judge meta mark & 0x100000 == 0x100000 drop") +
    1;
  assert.deepEqual(strict.slice(at, at + 3), [
    "add rule inet kube-netpol judge ct mark & 0x400000 == 0x400000 meta l4proto tcp reject with tcp reset",
    "add rule inet kube-netpol judge ct mark & 0x400000 == 0x400000 meta l4proto udp reject with icmpx type port-unreachable",
    "add rule inet kube-netpol judge ct mark & 0x400000 == 0x400000 drop",
  ]);
  assert.deepEqual([...strict.slice(0, at), ...strict.slice(at + 3)], plain);
});

Deno.test("nftables table: exact ruleset, marked first, INVALID dropped, queue only unmarked new connections", () => {
  assert.equal(
    renderNftInstall(OPEN),
    `add table inet kube-netpol
add set inet kube-netpol ingress-v4 { type ipv4_addr; }
add set inet kube-netpol ingress-v6 { type ipv6_addr; }
add set inet kube-netpol egress-v4 { type ipv4_addr; }
add set inet kube-netpol egress-v6 { type ipv6_addr; }
add set inet kube-netpol podcidr-v4 { type ipv4_addr; flags interval; }
add set inet kube-netpol podcidr-v6 { type ipv6_addr; flags interval; }
add set inet kube-netpol known-v4 { type ipv4_addr; }
add set inet kube-netpol known-v6 { type ipv6_addr; }
add chain inet kube-netpol judge
flush chain inet kube-netpol judge
add rule inet kube-netpol judge meta mark & 0x100000 == 0x100000 meta l4proto tcp reject with tcp reset
add rule inet kube-netpol judge meta mark & 0x100000 == 0x100000 meta l4proto udp reject with icmpx type port-unreachable
add rule inet kube-netpol judge meta mark & 0x100000 == 0x100000 drop
add rule inet kube-netpol judge ct state invalid ip daddr @ingress-v4 drop
add rule inet kube-netpol judge ct state invalid ip6 daddr @ingress-v6 drop
add rule inet kube-netpol judge ct state invalid ip saddr @egress-v4 drop
add rule inet kube-netpol judge ct state invalid ip6 saddr @egress-v6 drop
add rule inet kube-netpol judge ct state new meta mark & 0x100000 != 0x100000 ip daddr @ingress-v4 counter queue num 100 bypass
add rule inet kube-netpol judge ct state new meta mark & 0x100000 != 0x100000 ip6 daddr @ingress-v6 counter queue num 100 bypass
add rule inet kube-netpol judge ct state new meta mark & 0x100000 != 0x100000 ip saddr @egress-v4 counter queue num 100 bypass
add rule inet kube-netpol judge ct state new meta mark & 0x100000 != 0x100000 ip6 saddr @egress-v6 counter queue num 100 bypass
add rule inet kube-netpol judge ct state invalid ip saddr @podcidr-v4 ip saddr != @known-v4 drop
add rule inet kube-netpol judge ct state invalid ip daddr @podcidr-v4 ip daddr != @known-v4 drop
add rule inet kube-netpol judge ct state invalid ip6 saddr @podcidr-v6 ip6 saddr != @known-v6 drop
add rule inet kube-netpol judge ct state invalid ip6 daddr @podcidr-v6 ip6 daddr != @known-v6 drop
add rule inet kube-netpol judge ct state new meta mark & 0x100000 != 0x100000 ip saddr @podcidr-v4 ip saddr != @known-v4 counter queue num 100 bypass
add rule inet kube-netpol judge ct state new meta mark & 0x100000 != 0x100000 ip daddr @podcidr-v4 ip daddr != @known-v4 counter queue num 100 bypass
add rule inet kube-netpol judge ct state new meta mark & 0x100000 != 0x100000 ip6 saddr @podcidr-v6 ip6 saddr != @known-v6 counter queue num 100 bypass
add rule inet kube-netpol judge ct state new meta mark & 0x100000 != 0x100000 ip6 daddr @podcidr-v6 ip6 daddr != @known-v6 counter queue num 100 bypass
add chain inet kube-netpol forward { type filter hook forward priority filter - 10; policy accept; }
flush chain inet kube-netpol forward
add rule inet kube-netpol forward jump judge
add chain inet kube-netpol input { type filter hook input priority filter - 10; policy accept; }
flush chain inet kube-netpol input
add rule inet kube-netpol input jump judge
`,
  );
  assert.ok(
    renderNftInstall(CLOSED).includes("@ingress-v4 counter queue num 7\n"),
    "no bypass fail-closed",
  );
});

Deno.test("IP keys: every spelling of an address is one member; junk is rejected", () => {
  assert.equal(canonicalIP("FD00:0:0::A"), canonicalIP("fd00::a"));
  assert.equal(canonicalIP("::ffff:10.0.0.1"), canonicalIP("::ffff:a00:1"));
  assert.equal(canonicalIP("::ffff:10.0.0.1"), "10.0.0.1");
  assert.equal(parseIP("10.1.2.3")?.family, 4);
  for (
    const bad of ["10.0.0.256", "10.0.0", "1::2::3", "1:2:3:4:5:6:7:8:9", "fd00::/64", "", "x"]
  ) {
    assert.equal(parseIP(bad), null, bad);
  }
});

Deno.test("member diff: adds what is missing, deletes the kernel's spelling, ignores respelling", () => {
  const d = diffMembers(["10.0.0.1", "FD00::1", "10.0.0.3", "10.0.0.3"], [
    "10.0.0.1",
    "fd00::1",
    "10.0.0.2",
  ]);
  assert.deepEqual(d, { add: ["10.0.0.3"], del: ["10.0.0.2"] });
  const { members, invalid } = desiredMembers({
    ingress: ["10.0.0.1", "fd00::1", "bad"],
    egress: [],
  });
  assert.deepEqual(members.get("ingress-v4"), ["10.0.0.1"]);
  assert.deepEqual(members.get("ingress-v6"), ["fd00::1"]);
  assert.deepEqual(invalid, ["bad"]);
});

Deno.test("ipset: creates hash:ip sets per family, parses `ipset save` members", () => {
  assert.equal(
    renderIpsetCreate(),
    "create kube-netpol-ingress-v4 hash:ip family inet\n" +
      "create kube-netpol-ingress-v6 hash:ip family inet6\n" +
      "create kube-netpol-egress-v4 hash:ip family inet\n" +
      "create kube-netpol-egress-v6 hash:ip family inet6\n" +
      // The pod-start race: pod CIDRs (hash:net) and the addresses in them we know (hash:ip).
      "create kube-netpol-podcidr-v4 hash:net family inet\n" +
      "create kube-netpol-podcidr-v6 hash:net family inet6\n" +
      "create kube-netpol-known-v4 hash:ip family inet\n" +
      "create kube-netpol-known-v6 hash:ip family inet6\n",
  );
  const saved = "create kube-netpol-ingress-v4 hash:ip family inet hashsize 1024 maxelem 65536\n" +
    "add kube-netpol-ingress-v4 10.0.0.1\nadd kube-netpol-ingress-v4 10.0.0.2\n";
  assert.deepEqual(parseIpsetSave("kube-netpol-ingress-v4", saved), ["10.0.0.1", "10.0.0.2"]);
});

Deno.test("iptables sync sends only the difference, in one ipset restore batch", async () => {
  const run = new ScriptedRunner([
    ["ipset save kube-netpol-ingress-v4", {
      stdout: "add kube-netpol-ingress-v4 10.0.0.1\nadd kube-netpol-ingress-v4 10.0.0.9\n",
    }],
    ["ipset save kube-netpol-egress-v6", { stdout: "add kube-netpol-egress-v6 fd00::5\n" }],
  ]);
  const backend = new IptablesBackend("nft", OPEN, run, nullLogger);
  const res = await backend.sync({
    ingress: ["10.0.0.1", "10.0.0.2", "fd00::2"],
    egress: ["FD00:0::5"],
  });
  assert.deepEqual(res, { added: 2, removed: 1 });
  const writes = run.calls.filter((c) => c.stdin !== undefined);
  assert.equal(writes.length, 1);
  assert.deepEqual(writes[0]?.args, ["restore", "-exist"]);
  assert.equal(
    writes[0]?.stdin,
    "del kube-netpol-ingress-v4 10.0.0.9\nadd kube-netpol-ingress-v4 10.0.0.2\n" +
      "add kube-netpol-ingress-v6 fd00::2\n",
  );
  // Nothing changed: no write at all.
  const idle = new ScriptedRunner([
    ["ipset save kube-netpol-ingress-v4", { stdout: "add kube-netpol-ingress-v4 10.0.0.1\n" }],
  ]);
  const again = await new IptablesBackend("legacy", OPEN, idle).sync({
    ingress: ["10.0.0.1"],
    egress: [],
  });
  assert.deepEqual(again, { added: 0, removed: 0 });
  assert.equal(idle.calls.filter((c) => c.stdin !== undefined).length, 0);
});

Deno.test("iptables install: sets before rules, one restore per family with the flavour's binary", async () => {
  const run = new ScriptedRunner([["iptables-legacy-save", { stdout: SAVE_EMPTY }]]);
  await new IptablesBackend("legacy", OPEN, run).install();
  assert.deepEqual(run.lines(), [
    "ipset restore -exist",
    "iptables-legacy-save",
    "iptables-legacy-restore --noflush --wait 5",
    "iptables-legacy-save -c -t filter",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore --noflush --wait 5",
    "ip6tables-legacy-save -c -t filter",
    // Cache sets a run with other flags left behind are destroyed once unreferenced.
    "ipset list -n",
  ]);
});

Deno.test("nft sync: reads members from `nft -j`, applies the diff in one transaction", async () => {
  // Captured from `nft -j list table inet kube-netpol` on this machine (nft 1.0.6).
  const listed = JSON.stringify({
    nftables: [
      { metainfo: { version: "1.0.6", json_schema_version: 1 } },
      { table: { family: "inet", name: "kube-netpol", handle: 5 } },
      {
        set: {
          family: "inet",
          name: "ingress-v4",
          table: "kube-netpol",
          type: "ipv4_addr",
          elem: ["10.0.0.1", "10.0.0.2"],
        },
      },
      {
        set: {
          family: "inet",
          name: "ingress-v6",
          table: "kube-netpol",
          type: "ipv6_addr",
          elem: ["fd00::1"],
        },
      },
      { set: { family: "inet", name: "egress-v4", table: "kube-netpol", type: "ipv4_addr" } },
    ],
  });
  assert.deepEqual(parseNftSetMembers(listed).get("egress-v4"), []);
  const run = new ScriptedRunner([["nft -j list table inet kube-netpol", { stdout: listed }]]);
  const res = await new NftablesBackend(OPEN, run).sync({
    ingress: ["10.0.0.1", "fd00::1"],
    egress: ["10.0.0.7"],
  });
  assert.deepEqual(res, { added: 1, removed: 1 });
  assert.equal(
    run.calls.at(-1)?.stdin,
    "delete element inet kube-netpol ingress-v4 { 10.0.0.2 }\n" +
      "add element inet kube-netpol egress-v4 { 10.0.0.7 }\n",
  );
});

Deno.test("probe: nft queue refused -> iptables flavour with kubelet's hint, probe table removed", async () => {
  const run = new ScriptedRunner([
    ["nft -f -", { code: 1, stderr: "Error: Could not process rule: No such file or directory" }],
    ["iptables-legacy-save", { stdout: "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n" }],
    ["iptables-nft-save", {
      stdout: "*filter\n-A FORWARD -j ACCEPT\n-A INPUT -j ACCEPT\nCOMMIT\n",
    }],
    ["nft list table", { code: 1 }],
  ]);
  const backend = await chooseBackend(OPEN, nullLogger, run);
  assert.equal(backend.name, "iptables-legacy");
  const probe = run.calls[0];
  assert.match(probe?.stdin ?? "", /add rule inet kube-netpol-probe probe queue num 100 bypass/);
  assert.equal(
    run.calls[1]?.stdin,
    "add table inet kube-netpol-probe\ndelete table inet kube-netpol-probe\n",
    "throwaway table deleted even though the probe failed",
  );
});

Deno.test("probe: nft queue accepted -> nftables backend", async () => {
  const run = new ScriptedRunner([["iptables-nft-save", { stdout: "" }], ["nft list table", {
    code: 1,
  }]]);
  const backend = await chooseBackend(OPEN, nullLogger, run);
  assert.equal(backend.name, "nftables");
});

Deno.test("iptables flavour: hint chain, then more rules, tie goes to nft", () => {
  const s = (flavour: "nft" | "legacy", rules: number, hint = false, installed = true) => ({
    flavour,
    rules,
    hint,
    installed,
  });
  assert.equal(pickIptablesFlavour([s("nft", 50), s("legacy", 3, true)])?.flavour, "legacy");
  assert.equal(pickIptablesFlavour([s("nft", 2), s("legacy", 3)])?.flavour, "legacy");
  assert.equal(pickIptablesFlavour([s("nft", 0), s("legacy", 0)])?.flavour, "nft");
  assert.equal(pickIptablesFlavour([s("nft", 0, false, false), s("legacy", 0)])?.flavour, "legacy");
  assert.equal(
    pickIptablesFlavour([s("nft", 0, false, false), s("legacy", 0, false, false)]),
    undefined,
  );
});

Deno.test("cleanupAll keeps going after a failed step and then reports failure", async () => {
  const run = new ScriptedRunner([
    ["nft list table", { code: 0 }],
    ["nft -f -", { code: 1, stderr: "boom" }],
    ["iptables-nft-save", { stdout: "*filter\n:KUBE-NETPOL - [0:0]\nCOMMIT\n" }],
    ["ipset list -n", { stdout: "kube-netpol-ingress-v4\nforeign-set\n" }],
  ]);
  await assert.rejects(cleanupAll(nullLogger, run), AggregateError);
  const restores = run.calls.filter((c) => c.cmd === "iptables-nft-restore");
  assert.equal(restores[0]?.stdin, "*filter\n-F KUBE-NETPOL\n-X KUBE-NETPOL\nCOMMIT\n");
  const destroy = run.calls.find((c) => c.cmd === "ipset" && c.args[0] === "restore");
  assert.equal(destroy?.stdin, "destroy kube-netpol-ingress-v4\n", "foreign sets are untouched");
});

Deno.test("rule options outside the kernel's ranges are refused before any command runs", () => {
  assert.throws(() => validateRuleOptions({ ...OPEN, queueId: 70000 }), RangeError);
  assert.throws(() => validateRuleOptions({ ...OPEN, denyMark: 0 }), RangeError);
  assert.throws(() => new IptablesBackend("nft", { ...OPEN, queueId: -1 }), RangeError);
});
