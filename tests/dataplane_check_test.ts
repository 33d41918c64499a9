/**
 * The dataplane check on saved listings (no root): what `iptables-save -c`, `ipset save` and
 * `nft -j list table` say after each way our rules get broken (flushed chain, deleted jump, a rule
 * above our jump, flushed or missing set, `nft flush ruleset`), the queue rules' packet counters,
 * the install that moves a jump back on top, and the filter table uninstall removes only when our
 * install created it.
 */
import assert from "node:assert/strict";
import type { CommandResult, CommandRunner } from "../src/rules/command.ts";
import { iptablesDamage, readIptablesSave } from "../src/rules/iptables_check.ts";
import {
  IptablesBackend,
  nftTableIsEmpty,
  removeIptablesRules,
  renderIptablesInstall,
  TABLE_MARKER_CHAIN,
} from "../src/rules/iptables.ts";
import { parseIpsetSaveAll } from "../src/rules/ipset.ts";
import { nftDamage, readNftTable } from "../src/rules/nftables.ts";
import { setDamage } from "../src/rules/queue_sets.ts";
import type { RuleOptions } from "../src/rules/backend.ts";

const fixture = (name: string) =>
  Deno.readTextFileSync(new URL(`./fixtures/dataplane/${name}`, import.meta.url));
const SAVE = fixture("iptables-nft-save-c.txt");
const IPSET = fixture("ipset-save.txt");
const NFT = fixture("nft-table.json");
const OPEN: RuleOptions = { queueId: 100, failOpen: true, denyMark: 0x100000 };
const SYNCED = { ingress: ["10.244.1.11", "fd00:10:244::1:11"], egress: ["10.244.1.12"] };

const INSTALLED = readIptablesSave(SAVE).chainRules;
const reasons = (d: { reason: string }[]) => d.map((x) => x.reason);
const without = (text: string, re: RegExp) =>
  text.split("\n").filter((l) => !re.test(l)).join("\n");

Deno.test("iptables check: intact rules pass; queue rule counters are summed", () => {
  const view = readIptablesSave(SAVE);
  assert.equal(view.chainRules.length, 5);
  assert.ok(view.chainRules.every((r) => r.startsWith("-A KUBE-NETPOL ")), "counters cut");
  assert.equal(view.queuePackets, 12);
  assert.deepEqual(iptablesDamage(4, view, INSTALLED), []);
});

Deno.test("iptables check: `iptables -F KUBE-NETPOL` is found as missing rules", () => {
  const flushed = without(SAVE, /-A KUBE-NETPOL /);
  const damage = iptablesDamage(4, readIptablesSave(flushed), INSTALLED);
  assert.deepEqual(reasons(damage), ["rules"]);
  assert.match(damage[0]!.detail, /IPv4: chain KUBE-NETPOL holds 0 rules, not the 5 installed/);
  // One queue rule removed is damage too, as is a rule changed in place.
  assert.deepEqual(
    reasons(iptablesDamage(6, readIptablesSave(without(SAVE, /egress-v4 src/)), INSTALLED)),
    ["rules"],
  );
});

Deno.test("iptables check: a deleted jump, and a rule inserted above ours, are found", () => {
  const noJump = without(SAVE, /^\[0:0\] -A FORWARD .*-j KUBE-NETPOL$/);
  const damage = iptablesDamage(4, readIptablesSave(noJump), INSTALLED);
  assert.deepEqual(damage, [{
    reason: "jump",
    detail: "IPv4: jump from FORWARD to KUBE-NETPOL missing",
  }]);
  const above = SAVE.replace(
    "[0:0] -A FORWARD -m comment",
    "[9:9] -A FORWARD -s 10.0.0.0/8 -j ACCEPT\n[0:0] -A FORWARD -m comment",
  );
  assert.deepEqual(iptablesDamage(4, readIptablesSave(above), INSTALLED), [{
    reason: "jump",
    detail: "IPv4: jump from FORWARD is not its first rule",
  }]);
});

Deno.test("iptables check: chain deleted, or the whole table gone (nft flush ruleset)", () => {
  const noChain = without(SAVE, /KUBE-NETPOL( |$)/);
  assert.deepEqual(reasons(iptablesDamage(4, readIptablesSave(noChain), INSTALLED)), [
    "chain",
    "jump",
    "jump",
  ]);
  assert.deepEqual(iptablesDamage(6, readIptablesSave(""), INSTALLED), [
    { reason: "table", detail: "IPv6: filter table missing" },
  ]);
});

Deno.test("set check: members must equal the last sync; other sets are ignored", () => {
  const sets = parseIpsetSaveAll(IPSET);
  assert.deepEqual([...sets.keys()], ["ingress-v4", "ingress-v6", "egress-v4", "egress-v6"]);
  assert.deepEqual(sets.get("egress-v6"), []);
  assert.deepEqual(setDamage(sets, SYNCED), []);
  assert.deepEqual(setDamage(sets, undefined), [], "before the first sync only presence counts");
  // `ipset flush kube-netpol-ingress-v4`
  const flushed = parseIpsetSaveAll(without(IPSET, /^add kube-netpol-ingress-v4 /));
  assert.deepEqual(setDamage(flushed, SYNCED), [{
    reason: "members",
    detail: "set ingress-v4: 1 members missing, 0 unexpected",
  }]);
  const extra = parseIpsetSaveAll(IPSET + "add kube-netpol-egress-v4 10.244.9.9\n");
  assert.match(setDamage(extra, SYNCED)[0]!.detail, /0 members missing, 1 unexpected/);
  const gone = parseIpsetSaveAll(without(IPSET, /kube-netpol-egress-v6/));
  assert.deepEqual(setDamage(gone, undefined), [{
    reason: "set",
    detail: "set egress-v6 missing",
  }]);
});

Deno.test("nft check: intact table passes; queue counters summed; flushed chains found", () => {
  const installed = readNftTable(NFT);
  assert.equal(installed.queuePackets, 7);
  assert.deepEqual(nftDamage(readNftTable(NFT), installed), []);
  assert.deepEqual(setDamage(installed.sets, { ingress: ["10.244.1.11"], egress: [] }), []);
  const doc = JSON.parse(NFT) as { nftables: Array<Record<string, { chain?: string }>> };
  const edited = (keep: (item: Record<string, { chain?: string; name?: string }>) => boolean) =>
    readNftTable(JSON.stringify({ nftables: doc.nftables.filter(keep) }));
  // `nft flush chain inet kube-netpol judge`
  const flushedJudge = edited((i) => i.rule?.chain !== "judge");
  assert.deepEqual(reasons(nftDamage(flushedJudge, installed)), ["rules"]);
  const noJump = edited((i) => i.rule?.chain !== "input");
  assert.deepEqual(nftDamage(noJump, installed), [{
    reason: "jump",
    detail: "nft chain input differs from what was installed",
  }]);
  const noChain = edited((i) => i.chain?.name !== "forward" && i.rule?.chain !== "forward");
  assert.deepEqual(reasons(nftDamage(noChain, installed)), ["chain"]);
  // Counter values differ between listings; that is not damage.
  const counted = readNftTable(NFT.replace('"packets": 3', '"packets": 300'));
  assert.deepEqual(nftDamage(counted, installed), []);
  assert.equal(counted.queuePackets, 304);
});

Deno.test("iptables install: a jump pushed down by another rule is moved back to the top", () => {
  const save = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-NETPOL - [0:0]
-A INPUT -m comment --comment kube-netpol -j KUBE-NETPOL
-A FORWARD -s 10.0.0.0/8 -j ACCEPT
-A FORWARD -m comment --comment kube-netpol -j KUBE-NETPOL
COMMIT
`;
  const lines = renderIptablesInstall(OPEN, 4, save).split("\n");
  assert.deepEqual(lines.filter((l) => /^-[DI] /.test(l)), [
    "-D FORWARD -m comment --comment kube-netpol -j KUBE-NETPOL",
    "-I FORWARD 1 -m comment --comment kube-netpol -j KUBE-NETPOL",
  ]);
  assert.ok(!lines.includes(`:${TABLE_MARKER_CHAIN} - [0:0]`));
  assert.ok(renderIptablesInstall(OPEN, 4, "", true).includes(`:${TABLE_MARKER_CHAIN} - [0:0]`));
});

/** Answers `cmd args` by prefix from a table that tests may change between calls. */
class KernelScript implements CommandRunner {
  calls: string[] = [];
  inputs: string[] = [];
  constructor(public answers: Record<string, Partial<CommandResult>>) {}
  run(cmd: string, args: string[], stdin?: string): Promise<CommandResult> {
    const line = [cmd, ...args].join(" ");
    this.calls.push(line);
    if (stdin !== undefined) this.inputs.push(stdin);
    const key = Object.keys(this.answers).filter((k) => line.startsWith(k))
      .sort((a, b) => b.length - a.length)[0];
    return Promise.resolve({ code: 0, stdout: "", stderr: "", ...(key ? this.answers[key] : {}) });
  }
}

const EMPTY_TABLE = JSON.stringify({
  nftables: [
    { metainfo: { version: "1.0.6" } },
    { table: { family: "ip", name: "filter" } },
    ...["INPUT", "FORWARD", "OUTPUT"].map((name) => ({
      chain: { family: "ip", table: "filter", name, type: "filter", policy: "accept" },
    })),
  ],
});

Deno.test("filter table: empty iptables-nft tables are recognised; a rule or a chain is content", () => {
  assert.equal(nftTableIsEmpty(EMPTY_TABLE), true);
  const doc = JSON.parse(EMPTY_TABLE);
  const withRule = { nftables: [...doc.nftables, { rule: { chain: "FORWARD", expr: [] } }] };
  assert.equal(nftTableIsEmpty(JSON.stringify(withRule)), false);
  const withChain = { nftables: [...doc.nftables, { chain: { name: "DOCKER" } }] };
  assert.equal(nftTableIsEmpty(JSON.stringify(withChain)), false);
  const dropPolicy = EMPTY_TABLE.replace('"FORWARD", "type": "filter", "policy": "accept"', "");
  assert.equal(nftTableIsEmpty(dropPolicy.replace('"accept"', '"drop"')), false);
});

Deno.test("filter table: install marks a table it creates; uninstall deletes only that one", async () => {
  const created = new KernelScript({ "iptables-nft-save -c": { stdout: SAVE } });
  await new IptablesBackend("nft", OPEN, created).install();
  // The table did not exist (empty full listing): our install creates it, with the marker.
  const restore = created.inputs.find((i) => i.startsWith("*filter"));
  assert.ok(restore?.includes(`:${TABLE_MARKER_CHAIN} - [0:0]`));
  const existing = new KernelScript({
    "iptables-nft-save": { stdout: SAVE },
    "ip6tables-nft-save": { stdout: SAVE },
  });
  await new IptablesBackend("nft", OPEN, existing).install();
  assert.ok(!existing.inputs.some((i) => i.includes(TABLE_MARKER_CHAIN)), "no marker otherwise");
  const plain = SAVE.replaceAll(/^\[\d+:\d+\] /gm, "");
  const run = new KernelScript({
    "iptables-nft-save": { stdout: plain },
    "ip6tables-nft-save": { stdout: plain },
    "nft -j list table ip filter": { stdout: EMPTY_TABLE },
    "nft -j list table ip6 filter": { stdout: EMPTY_TABLE },
  });
  assert.equal(await removeIptablesRules("nft", run), true);
  assert.deepEqual(run.calls.filter((c) => c.startsWith("nft delete")), [
    "nft delete table ip filter",
    "nft delete table ip6 filter",
  ]);
  // A table that was there before us has no marker: it stays, emptied of our rules only.
  const foreign = new KernelScript({
    "iptables-nft-save": { stdout: without(SAVE, /OWNS-TABLE/).replaceAll(/^\[\d+:\d+\] /gm, "") },
    "nft -j list table": { stdout: EMPTY_TABLE },
  });
  await removeIptablesRules("nft", foreign);
  assert.deepEqual(foreign.calls.filter((c) => c.startsWith("nft ")), []);
  // Ours, but someone else put a rule in it since: it stays.
  const busy = new KernelScript({
    "iptables-nft-save": { stdout: SAVE.replaceAll(/^\[\d+:\d+\] /gm, "") },
    "nft -j list table": {
      stdout: EMPTY_TABLE.replace("]}", ', {"rule": {"chain": "INPUT", "expr": []}}]}'),
    },
  });
  await removeIptablesRules("nft", busy);
  assert.deepEqual(busy.calls.filter((c) => c.startsWith("nft delete")), []);
});
