/**
 * The verdict cache's invalidation against the real kernel (root): in a network namespace this
 * file creates, the Worker's netlink flush (src/netlink/set_flush.ts, run by cache_flush_probe.ts
 * with the Worker's permissions) empties ipsets of the iptables backends and the dynamic sets of
 * the nftables backend (created by its own install rendering), leaves other sets alone, and takes
 * a set or table that does not exist as empty. The root namespace is never changed.
 *
 *   deno task test:lab e2e/lab/cache_flush_test.ts (or its flags on this one file)
 */
import assert from "node:assert/strict";
import { denoCommandRunner } from "../../src/rules/command.ts";
import { renderNftInstall } from "../../src/rules/nftables.ts";
import { netnsRunner, VERDICT_LOOP_PERMISSIONS } from "./vl_driver.ts";
import { labTest } from "./harness.ts";

const NS = `knpcf-${Deno.pid}`;
const PROBE = new URL("./cache_flush_probe.ts", import.meta.url).pathname;

const inNs = netnsRunner(NS);

async function must(cmd: string, args: string[], stdin?: string): Promise<string> {
  const r = await inNs.run(cmd, args, stdin);
  assert.equal(r.code, 0, `${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

async function flush(target: unknown): Promise<{ ok: boolean; error?: string }> {
  const out = await must(Deno.execPath(), [
    "run",
    "--frozen",
    ...VERDICT_LOOP_PERMISSIONS,
    PROBE,
    JSON.stringify(target),
  ]);
  return JSON.parse(out.trim().split("\n").at(-1)!);
}

const entries = async (set: string) =>
  Number(/Number of entries: (\d+)/.exec(await must("ipset", ["list", set]))?.[1]);

Deno.test({
  name: "verdict cache flush: ipsets and nft dynamic sets emptied over netlink, others kept",
  ignore: labTest.ignore,
  async fn() {
    await denoCommandRunner.run("ip", ["netns", "del", NS]);
    const add = await denoCommandRunner.run("ip", ["netns", "add", NS]);
    assert.equal(add.code, 0, add.stderr);
    try {
      await must(
        "ipset",
        ["restore"],
        "create kube-netpol-cache-allow-v4 hash:ip,port,ip family inet timeout 60\n" +
          "add kube-netpol-cache-allow-v4 10.0.0.1,tcp:80,10.0.0.2\n" +
          "add kube-netpol-cache-allow-v4 10.0.0.3,udp:53,10.0.0.2\n" +
          "create other hash:ip\nadd other 10.9.9.9\n",
      );
      const ok = await flush({
        kind: "ipset",
        sets: ["kube-netpol-cache-allow-v4", "kube-netpol-cache-deny-v4"], // the second is absent
      });
      assert.deepEqual(ok, { ok: true });
      assert.equal(await entries("kube-netpol-cache-allow-v4"), 0);
      assert.equal(await entries("other"), 1, "a set not named is left alone");

      // The nftables backend's own table (queue statements swapped: this kernel has none).
      const cache = { mark: 0x200000, timeoutSeconds: 60, maxEntries: 1000, denies: true };
      const table = renderNftInstall({
        queueId: 1,
        failOpen: true,
        denyMark: 0x100000,
        verdictCache: cache,
      })
        .replace(/queue num 1 bypass/g, "accept");
      await must("nft", ["-f", "-"], table);
      await must("nft", [
        "add",
        "element",
        "inet",
        "kube-netpol",
        "cache-allow-v4",
        "{ 10.0.0.1 . tcp . 80 . 10.0.0.2 }",
      ]);
      await must("nft", ["add", "element", "inet", "kube-netpol", "ingress-v4", "{ 10.0.0.2 }"]);
      const nftOk = await flush({
        kind: "nftables",
        table: "kube-netpol",
        sets: ["cache-allow-v4", "cache-allow-v6", "cache-deny-v4", "cache-deny-v6"],
      });
      assert.deepEqual(nftOk, { ok: true });
      const listed = await must("nft", ["list", "table", "inet", "kube-netpol"]);
      assert.ok(!listed.includes("10.0.0.1 . tcp . 80"), listed);
      assert.match(listed, /elements = \{ 10\.0\.0\.2 \}/, "the queue set keeps its members");
      // No such table (e.g. flushed away by `nft flush ruleset` before the repair): nothing to
      // serve, so nothing failed.
      assert.deepEqual(await flush({ kind: "nftables", table: "nope", sets: ["x"] }), { ok: true });
    } finally {
      await denoCommandRunner.run("ip", ["netns", "del", NS]);
    }
  },
});
