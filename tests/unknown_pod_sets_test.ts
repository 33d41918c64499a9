/**
 * The pod-start race, kernel side without root: the sets of this node's pod CIDRs and of the
 * addresses in them the agent knows, their members as the tools print them back, the diffs both
 * backends apply, the dataplane check, and RuleSync handing the members over.
 */
import assert from "node:assert/strict";
import { nullLogger } from "../src/log.ts";
import { AgentMetrics } from "../src/metrics.ts";
import type { DataplaneStatus, QueuedIPs, RuleBackend, RuleOptions } from "../src/rules/backend.ts";
import type { CommandResult, CommandRunner } from "../src/rules/command.ts";
import { IptablesBackend } from "../src/rules/iptables.ts";
import { NftablesBackend, parseNftSetMembers } from "../src/rules/nftables.ts";
import { parseIpsetSaveAll } from "../src/rules/ipset.ts";
import {
  canonicalCIDR,
  unknownPodMembers,
  unknownPodSetDamage,
} from "../src/rules/unknown_pod_sets.ts";
import { COALESCE_MS, RuleSync } from "../src/rules/rule_sync.ts";
import { ManualClock } from "./support/manual_clock.ts";

const OPEN: RuleOptions = { queueId: 100, failOpen: true, denyMark: 0x100000 };

const IPS: QueuedIPs = {
  ingress: [],
  egress: [],
  unknownPods: {
    podCIDRs: ["10.244.0.0/16", "fd00:10:244::/64"],
    known: ["10.244.0.1", "10.244.1.11", "fd00:10:244::1"],
  },
};

class ScriptedRunner implements CommandRunner {
  calls: { cmd: string; args: string[]; stdin?: string }[] = [];
  constructor(private readonly answers: Array<[string, Partial<CommandResult>]> = []) {}
  run(cmd: string, args: string[], stdin?: string): Promise<CommandResult> {
    this.calls.push({ cmd, args, stdin });
    const line = [cmd, ...args].join(" ");
    const hit = this.answers.find(([prefix]) => line.startsWith(prefix))?.[1] ?? {};
    return Promise.resolve({ code: 0, stdout: "", stderr: "", ...hit });
  }
  writes(): string[] {
    return this.calls.filter((c) => c.stdin !== undefined).map((c) => c.stdin!);
  }
}

Deno.test("pod CIDR members: one spelling per block; bare addresses are /32 or /128", () => {
  assert.equal(canonicalCIDR("10.244.3.7/16"), "10.244.0.0/16");
  assert.equal(canonicalCIDR("10.9.9.9"), "10.9.9.9/32", "ipset and nft print a /32 bare");
  assert.equal(canonicalCIDR("FD00:10:244:0::/64"), "fd00:10:244::/64");
  assert.equal(canonicalCIDR("fd00::1"), "fd00::1/128");
  assert.equal(canonicalCIDR("junk"), null);
  const m = unknownPodMembers(IPS);
  assert.deepEqual(Object.fromEntries(m), {
    "podcidr-v4": ["10.244.0.0/16"],
    "podcidr-v6": ["fd00:10:244::/64"],
    "known-v4": ["10.244.0.1", "10.244.1.11"],
    "known-v6": ["fd00:10:244::1"],
  });
  assert.deepEqual(
    [...unknownPodMembers({ ingress: [], egress: [] }).values()],
    [[], [], [], []],
    "no members handed over: the sets are kept empty",
  );
});

Deno.test("iptables sync: the race's ipsets get only their difference, in the same batch", async () => {
  const run = new ScriptedRunner([
    ["ipset save kube-netpol-podcidr-v4", {
      stdout: "add kube-netpol-podcidr-v4 10.244.0.0/16\nadd kube-netpol-podcidr-v4 10.9.9.9\n",
    }],
    ["ipset save kube-netpol-known-v4", { stdout: "add kube-netpol-known-v4 10.244.0.1\n" }],
  ]);
  const res = await new IptablesBackend("nft", OPEN, run, nullLogger).sync(IPS);
  assert.deepEqual(res, { added: 3, removed: 1 });
  assert.deepEqual(run.writes(), [
    "del kube-netpol-podcidr-v4 10.9.9.9\n" +
    "add kube-netpol-podcidr-v6 fd00:10:244::/64\n" +
    "add kube-netpol-known-v4 10.244.1.11\n" +
    "add kube-netpol-known-v6 fd00:10:244::1\n",
  ]);
});

Deno.test("nft: interval set members are read back as prefixes; diff in one transaction", async () => {
  // Shape captured from `nft -j list table` (nft 1.0.6) with an interval set on this machine.
  const listed = JSON.stringify({
    nftables: [
      { table: { family: "inet", name: "kube-netpol", handle: 1 } },
      {
        set: {
          family: "inet",
          name: "podcidr-v4",
          table: "kube-netpol",
          type: "ipv4_addr",
          flags: ["interval"],
          elem: ["10.9.9.9", { prefix: { addr: "10.244.0.0", len: 16 } }],
        },
      },
      {
        set: {
          family: "inet",
          name: "known-v4",
          table: "kube-netpol",
          type: "ipv4_addr",
          elem: ["10.244.0.1"],
        },
      },
    ],
  });
  assert.deepEqual(parseNftSetMembers(listed).get("podcidr-v4"), ["10.9.9.9", "10.244.0.0/16"]);
  const run = new ScriptedRunner([["nft -j list table", { stdout: listed }]]);
  const res = await new NftablesBackend(OPEN, run, nullLogger).sync(IPS);
  assert.deepEqual(res, { added: 3, removed: 1 });
  assert.deepEqual(run.writes(), [
    "delete element inet kube-netpol podcidr-v4 { 10.9.9.9 }\n" +
    "add element inet kube-netpol podcidr-v6 { fd00:10:244::/64 }\n" +
    "add element inet kube-netpol known-v4 { 10.244.1.11 }\n" +
    "add element inet kube-netpol known-v6 { fd00:10:244::1 }\n",
  ]);
});

Deno.test("dataplane check: the race's sets must exist and hold the synced members", () => {
  const saved = [
    "create kube-netpol-podcidr-v4 hash:net family inet hashsize 1024 maxelem 65536",
    "add kube-netpol-podcidr-v4 10.244.0.0/16",
    "create kube-netpol-podcidr-v6 hash:net family inet6 hashsize 1024 maxelem 65536",
    "add kube-netpol-podcidr-v6 fd00:10:244::/64",
    "create kube-netpol-known-v4 hash:ip family inet hashsize 1024 maxelem 65536",
    "add kube-netpol-known-v4 10.244.0.1",
    "add kube-netpol-known-v4 10.244.1.11",
    "create kube-netpol-known-v6 hash:ip family inet6 hashsize 1024 maxelem 65536",
    "add kube-netpol-known-v6 fd00:10:244::1",
  ].join("\n");
  const present = parseIpsetSaveAll(saved);
  assert.deepEqual(unknownPodSetDamage(present, IPS), []);
  present.delete("known-v6");
  present.set("podcidr-v4", []);
  assert.deepEqual(unknownPodSetDamage(present, IPS).map((d) => d.detail), [
    "set podcidr-v4: 1 members missing, 0 unexpected",
    "set known-v6 missing",
  ]);
});

Deno.test("rule sync hands the race's members to the backend with every sync", async () => {
  const synced: QueuedIPs[] = [];
  const backend: RuleBackend = {
    name: "iptables-nft",
    install: () => Promise.resolve(),
    uninstall: () => Promise.resolve(),
    check: (): Promise<DataplaneStatus> => Promise.resolve({ damage: [] }),
    sync: (ips) => {
      synced.push(ips);
      return Promise.resolve({ added: 0, removed: 0 });
    },
  };
  const clock = new ManualClock();
  let known = ["10.244.0.1"];
  const sync = new RuleSync({
    backend,
    failOpen: true,
    engine: { generation: 1, queuedIPs: () => ({ ingress: [], egress: [] }) },
    node: "node-1",
    metrics: new AgentMetrics(),
    log: nullLogger,
    clock,
    checkIntervalMs: 0,
    unknownPods: { members: () => ({ podCIDRs: ["10.244.0.0/16"], known }) },
  });
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  known = ["10.244.0.1", "10.244.2.2"];
  sync.schedule();
  await clock.advance(COALESCE_MS);
  await sync.idle();
  assert.deepEqual(synced.map((s) => s.unknownPods?.known), [
    ["10.244.0.1"],
    ["10.244.0.1", "10.244.2.2"],
  ]);
  await sync.stop();
});
