/**
 * The uninstall, as far as it can run without a cluster (root): in a network namespace this file
 * creates, the fail-closed leftovers of every backend (both iptables flavours and families, the
 * ipsets, an nftables table) are seen by the kind driver's node scan (e2e/kind/leftovers.ts);
 * then `kube-netpol cleanup`, the command uninstall.yaml runs on each node, with exactly the
 * agent's permissions, leaves nothing that scan can find. The root namespace is never changed.
 *
 *   deno test --frozen -A e2e/lab/leftover_scan_test.ts
 */
import assert from "node:assert/strict";
import type { RuleOptions } from "../../src/rules/backend.ts";
import { denoCommandRunner } from "../../src/rules/command.ts";
import { netnsRunner } from "./vl_driver.ts";
import { IptablesBackend } from "../../src/rules/iptables.ts";
import { agentDenoFlags } from "../../src/cli/permissions.ts";
import { runPermissionsHere } from "../../src/cli/run_permissions.ts";
import { parseScan, SCAN_SCRIPT } from "../kind/leftovers.ts";

const NS = `knpls-${Deno.pid}`;
const CLOSED: RuleOptions = { queueId: 100, failOpen: false, denyMark: 0x100000 };
const ROOT = new URL("../../", import.meta.url).pathname;

function isRoot(): boolean {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}

const inNs = netnsRunner(NS);

async function must(cmd: string, args: string[], stdin?: string): Promise<string> {
  const r = await inNs.run(cmd, args, stdin);
  assert.equal(r.code, 0, `${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

async function scan() {
  return parseScan(await must("sh", ["-c", SCAN_SCRIPT]));
}

Deno.test({
  name: "uninstall: the node scan sees every backend's leftovers, and none after cleanup",
  ignore: !isRoot(),
  async fn() {
    await denoCommandRunner.run("ip", ["netns", "del", NS]);
    const add = await denoCommandRunner.run("ip", ["netns", "add", NS]);
    assert.equal(add.code, 0, add.stderr);
    try {
      assert.deepEqual(await scan(), { leftovers: [], unknown: [] }, "a fresh namespace is clean");

      // What a fail-closed exit leaves: both iptables flavours (each with its ipsets) and an
      // nftables table (this kernel cannot load the nft backend's queue rule; the table is
      // what the scan and cleanup look for).
      await new IptablesBackend("nft", CLOSED, inNs).install();
      await new IptablesBackend("legacy", CLOSED, inNs).install();
      await must("nft", ["add", "table", "inet", "kube-netpol"]);
      const before = await scan();
      assert.deepEqual(before.unknown, []);
      assert.deepEqual([...new Set(before.leftovers.map((l) => l.listing))], [
        "iptables-nft-save",
        "ip6tables-nft-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "ipset list -n",
        "nft list tables",
      ]);

      const cleanup = await inNs.run(Deno.execPath(), [
        "run",
        "--frozen",
        `--config=${ROOT}deno.json`,
        // The agent's own permission list (cleanup needs only the rule tools of it).
        ...agentDenoFlags(runPermissionsHere({ manifests: [], metricsAddress: ":9080" }, ROOT)),
        `${ROOT}main.ts`,
        "cleanup",
      ]);
      assert.equal(cleanup.code, 0, cleanup.stderr);
      assert.deepEqual(await scan(), { leftovers: [], unknown: [] });
    } finally {
      await denoCommandRunner.run("ip", ["netns", "del", NS]);
    }
  },
});

Deno.test("uninstall: a listing that fails is unknown, never clean", () => {
  const out = [
    "### iptables-nft-save",
    "### ip6tables-nft-save",
    "### iptables-legacy-save",
    "### ip6tables-legacy-save",
    "### ipset list -n",
    "ipset v7.17: Kernel error received: Operation not permitted",
    "### failed: ipset list -n (exit 1)",
    "### nft list tables",
    "table inet kube-netpol",
  ].join("\n");
  assert.deepEqual(parseScan(out), {
    leftovers: [{ listing: "nft list tables", line: "table inet kube-netpol" }],
    unknown: ["ipset list -n"],
  });
  assert.equal(parseScan("").unknown.length, 6, "no output proves nothing");
});
