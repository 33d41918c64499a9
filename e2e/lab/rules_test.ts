/**
 * Rule backends against the real kernel (root). Everything happens inside network namespaces
 * named `knprl-<pid>-*` that this file creates and deletes; the root namespace is never changed.
 *
 *   deno test --frozen --allow-run --allow-read --allow-sys=uid e2e/lab/rules_test.ts
 *
 * The nftables backend's `queue` statement cannot load here (CONFIG_NFT_QUEUE off), so its lab
 * test swaps only that statement for `accept` (after its counter) on the way to nft; everything else it
 * sends (sets, chains, member updates, uninstall) runs for real.
 */
import assert from "node:assert/strict";
import { nullLogger } from "../../src/log.ts";
import type { RuleOptions } from "../../src/rules/backend.ts";
import type { CommandResult, CommandRunner } from "../../src/rules/command.ts";
import { denoCommandRunner } from "../../src/rules/command.ts";
import { IptablesBackend, type IptablesFlavour } from "../../src/rules/iptables.ts";
import { NftablesBackend, renderNftQueue } from "../../src/rules/nftables.ts";
import { chooseBackend } from "../../src/rules/choose.ts";
import { cleanupAll } from "../../src/rules/cleanup.ts";
import { processAlive } from "./topology.ts";

const PREFIX = `knprl-${Deno.pid}-`;
const DENY_MARK = 0x100000;
const OPEN: RuleOptions = { queueId: 100, failOpen: true, denyMark: DENY_MARK };
const CLOSED: RuleOptions = { ...OPEN, failOpen: false };

function isRoot(): boolean {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}
const ignore = !isRoot();

async function sh(cmd: string, ...args: string[]): Promise<CommandResult> {
  return await denoCommandRunner.run(cmd, args);
}

async function must(cmd: string, ...args: string[]): Promise<string> {
  const r = await sh(cmd, ...args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.code} ${r.stderr}`);
  return r.stdout;
}

/** Runs every command inside one netns. */
function netnsRunner(ns: string): CommandRunner {
  return {
    run: (cmd, args, stdin) =>
      denoCommandRunner.run("ip", ["netns", "exec", ns, cmd, ...args], stdin),
  };
}

function inNs(ns: string, cmd: string, ...args: string[]): Promise<string> {
  return must("ip", "netns", "exec", ns, cmd, ...args);
}

/** Delete namespaces of this prefix, and of earlier runs whose process is gone. */
async function removeNamespaces(all: boolean): Promise<void> {
  const listed = await sh("ip", "netns", "list");
  for (const line of listed.stdout.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const m = /^knprl-(\d+)-/.exec(name);
    if (!m) continue;
    const mine = name.startsWith(PREFIX);
    const dead = !mine && !(await processAlive(Number(m[1])));
    if ((mine && all) || dead) await sh("ip", "netns", "del", name);
  }
}

async function withNetns(suffix: string, fn: (ns: string) => Promise<void>): Promise<void> {
  await removeNamespaces(false);
  const ns = PREFIX + suffix;
  await must("ip", "netns", "add", ns);
  try {
    await inNs(ns, "ip", "link", "set", "lo", "up");
    await fn(ns);
  } finally {
    await sh("ip", "netns", "del", ns);
  }
}

function count(text: string, re: RegExp): number {
  return text.split("\n").filter((l) => re.test(l)).length;
}

async function saveAll(ns: string, flavour: IptablesFlavour): Promise<string> {
  return (await inNs(ns, `iptables-${flavour}-save`)) +
    (await inNs(ns, `ip6tables-${flavour}-save`));
}

async function ourSets(ns: string): Promise<string[]> {
  return (await inNs(ns, "ipset", "list", "-n")).split("\n").filter((l) =>
    l.startsWith("kube-netpol-")
  );
}

async function members(ns: string, set: string): Promise<string[]> {
  const out = await inNs(ns, "ipset", "save", set);
  return out.split("\n").filter((l) => l.startsWith("add ")).map((l) => l.split(" ")[2] ?? "")
    .sort();
}

for (const flavour of ["nft", "legacy"] as const) {
  Deno.test({
    name:
      `iptables-${flavour}: install twice, sync diffs, uninstall; foreign rules and sets survive`,
    ignore,
    fn: () =>
      withNetns(`ipt-${flavour}`, async (ns) => {
        const ipt = `iptables-${flavour}`;
        const ip6t = `ip6tables-${flavour}`;
        await inNs(ns, ipt, "-A", "FORWARD", "-s", "192.0.2.1", "-j", "ACCEPT");
        await inNs(ns, ip6t, "-A", "INPUT", "-s", "2001:db8::1", "-j", "ACCEPT");
        await inNs(ns, "ipset", "create", "knprl-foreign", "hash:ip");
        const backend = new IptablesBackend(flavour, OPEN, netnsRunner(ns), nullLogger);

        await backend.install();
        await backend.install();
        const saved = await saveAll(ns, flavour);
        for (const hook of ["INPUT", "FORWARD"]) {
          assert.equal(
            count(saved, new RegExp(`^-A ${hook} .*-j KUBE-NETPOL$`)),
            2,
            `${hook}: one jump per family`,
          );
        }
        assert.equal(count(saved, /^-A KUBE-NETPOL /), 22, "11 rules per family, not doubled");
        assert.equal(count(saved, /--ctstate INVALID .* -j DROP$/), 8, "INVALID drops");
        assert.equal(count(saved, /--queue-num 100 --queue-bypass$/), 8);
        assert.deepEqual((await ourSets(ns)).sort(), [
          "kube-netpol-egress-v4",
          "kube-netpol-egress-v6",
          "kube-netpol-ingress-v4",
          "kube-netpol-ingress-v6",
          "kube-netpol-known-v4",
          "kube-netpol-known-v6",
          "kube-netpol-podcidr-v4",
          "kube-netpol-podcidr-v6",
        ]);

        assert.deepEqual(
          await backend.sync({
            ingress: ["10.0.0.1", "10.0.0.2", "fd00::1"],
            egress: ["10.0.0.2"],
          }),
          { added: 4, removed: 0 },
        );
        assert.deepEqual(await members(ns, "kube-netpol-ingress-v4"), ["10.0.0.1", "10.0.0.2"]);
        assert.deepEqual(await members(ns, "kube-netpol-ingress-v6"), ["fd00::1"]);
        assert.deepEqual(
          await backend.sync({
            ingress: ["10.0.0.1", "10.0.0.2", "FD00:0::1"],
            egress: ["10.0.0.2"],
          }),
          { added: 0, removed: 0 },
          "same set in another spelling: nothing to do",
        );
        assert.deepEqual(
          await backend.sync({ ingress: ["10.0.0.3"], egress: ["fd00::9"] }),
          { added: 2, removed: 4 },
        );
        assert.deepEqual(await members(ns, "kube-netpol-ingress-v4"), ["10.0.0.3"]);
        assert.deepEqual(await members(ns, "kube-netpol-egress-v6"), ["fd00::9"]);
        assert.deepEqual(await members(ns, "kube-netpol-ingress-v6"), []);

        // The pod-start race's sets: pod CIDRs (hash:net; a /32 comes back bare) and known IPs.
        const race = (podCIDRs: string[]) => ({
          ingress: ["10.0.0.3"],
          egress: ["fd00::9"],
          unknownPods: { podCIDRs, known: ["10.244.0.1", "fd00:10:244::1"] },
        });
        const cidrs = ["10.244.0.0/16", "10.9.9.9/32", "fd00:10:244::/64"];
        assert.deepEqual(await backend.sync(race(cidrs)), { added: 5, removed: 0 });
        assert.deepEqual(await members(ns, "kube-netpol-podcidr-v4"), [
          "10.244.0.0/16",
          "10.9.9.9",
        ]);
        assert.deepEqual(await members(ns, "kube-netpol-podcidr-v6"), ["fd00:10:244::/64"]);
        assert.deepEqual(await members(ns, "kube-netpol-known-v6"), ["fd00:10:244::1"]);
        assert.deepEqual(await backend.sync(race(cidrs)), { added: 0, removed: 0 }, "as listed");
        assert.deepEqual(await backend.check(race(cidrs)), { damage: [], queueRulePackets: 0 });
        assert.deepEqual(await backend.sync(race(["10.244.0.0/16"])), { added: 0, removed: 2 });

        await backend.uninstall();
        await backend.uninstall();
        const after = await saveAll(ns, flavour);
        assert.equal(count(after, /KUBE-NETPOL/), 0, after);
        assert.deepEqual(await ourSets(ns), []);
        assert.equal(count(after, /^-A FORWARD -s 192\.0\.2\.1\/32 -j ACCEPT$/), 1);
        assert.equal(count(after, /^-A INPUT -s 2001:db8::1\/128 -j ACCEPT$/), 1);
        assert.ok((await inNs(ns, "ipset", "list", "-n")).includes("knprl-foreign"));
      }),
  });
}

Deno.test({
  name: "100 install/sync/uninstall cycles leave no rule or set behind (iptables-nft)",
  ignore,
  fn: () =>
    withNetns("cycles", async (ns) => {
      await inNs(ns, "iptables-nft", "-A", "FORWARD", "-s", "192.0.2.1", "-j", "ACCEPT");
      const backend = new IptablesBackend("nft", CLOSED, netnsRunner(ns), nullLogger);
      const started = performance.now();
      for (let i = 0; i < 100; i++) {
        await backend.install();
        await backend.sync({ ingress: [`10.1.0.${i + 1}`], egress: ["fd00::1"] });
        await backend.uninstall();
        assert.ok(performance.now() - started < 120_000, `cycle ${i}: over the time bound`);
      }
      const ms = performance.now() - started;
      console.log(`100 cycles: ${Math.round(ms)} ms (${(ms / 100).toFixed(1)} ms/cycle)`);
      const saved = await saveAll(ns, "nft");
      assert.equal(count(saved, /KUBE-NETPOL|kube-netpol/), 0);
      assert.equal(count(saved, /^-A FORWARD -s 192\.0\.2\.1\/32 -j ACCEPT$/), 1);
      assert.deepEqual(await ourSets(ns), []);

      // Sync cost at a full node (110 pods, dual-stack), then for one pod changing.
      await backend.install();
      const pods = Array.from({ length: 110 }, (_, i) => [`10.2.0.${i + 1}`, `fd00::2:${i + 1}`])
        .flat();
      let t = performance.now();
      assert.deepEqual(await backend.sync({ ingress: pods, egress: pods }), {
        added: 440,
        removed: 0,
      });
      const fullMs = performance.now() - t;
      t = performance.now();
      assert.deepEqual(
        await backend.sync({ ingress: [...pods.slice(1), "10.2.1.1"], egress: pods }),
        { added: 1, removed: 1 },
      );
      console.log(
        `sync 440 members: ${fullMs.toFixed(1)} ms; one change: ${
          (performance.now() - t).toFixed(1)
        } ms`,
      );
      await backend.uninstall();
    }),
});

/** Feeds nft everything the backend renders, except the queue statement this kernel lacks. */
function withoutNftQueue(run: CommandRunner, opts: RuleOptions): CommandRunner {
  const queue = renderNftQueue(opts);
  return {
    run: (cmd, args, stdin) =>
      run.run(cmd, args, cmd === "nft" ? stdin?.replaceAll(queue, "accept") : stdin),
  };
}

Deno.test({
  name: "nftables: table, set updates and uninstall for real (queue statement swapped out)",
  ignore,
  fn: () =>
    withNetns("nft", async (ns) => {
      await inNs(
        ns,
        "nft",
        "add table inet knprl-foreign; add chain inet knprl-foreign c; add rule inet knprl-foreign c accept",
      );
      const backend = new NftablesBackend(OPEN, withoutNftQueue(netnsRunner(ns), OPEN), nullLogger);
      await backend.install();
      assert.deepEqual(
        await backend.sync({ ingress: ["10.0.0.1", "fd00::1"], egress: ["10.0.0.2"] }),
        {
          added: 3,
          removed: 0,
        },
      );
      await backend.install(); // must keep the members
      const listed = await inNs(ns, "nft", "list", "table", "inet", "kube-netpol");
      assert.match(listed, /set ingress-v4 \{[^}]*elements = \{ 10\.0\.0\.1 \}/s);
      assert.match(listed, /set ingress-v6 \{[^}]*elements = \{ fd00::1 \}/s);
      assert.equal(count(listed, /jump judge/), 2, "one jump per base chain after two installs");
      assert.equal(count(listed, /^\s+ct state new/), 8, "4 for isolated pods, 4 for unknown ones");
      assert.equal(count(listed, /^\s+ct state invalid .* drop$/), 8);
      assert.deepEqual(await backend.sync({ ingress: ["10.0.0.5"], egress: [] }), {
        added: 1,
        removed: 3,
      });
      assert.match(
        await inNs(ns, "nft", "list", "set", "inet", "kube-netpol", "ingress-v4"),
        /elements = \{ 10\.0\.0\.5 \}/,
      );
      // The pod-start race's interval sets, read back and diffed as blocks.
      const race = (podCIDRs: string[]) => ({
        ingress: ["10.0.0.5"],
        egress: [],
        unknownPods: { podCIDRs, known: ["10.244.0.1"] },
      });
      const cidrs = ["10.244.0.0/16", "10.9.9.9/32", "fd00:10:244::/64"];
      assert.deepEqual(await backend.sync(race(cidrs)), { added: 4, removed: 0 });
      assert.match(
        await inNs(ns, "nft", "list", "set", "inet", "kube-netpol", "podcidr-v4"),
        /elements = \{ 10\.9\.9\.9, 10\.244\.0\.0\/16 \}/,
      );
      assert.deepEqual(await backend.sync(race(cidrs)), { added: 0, removed: 0 }, "as listed");
      assert.deepEqual((await backend.check(race(cidrs))).damage, []);
      assert.deepEqual(await backend.sync(race(["10.244.0.0/16"])), { added: 0, removed: 2 });
      await backend.uninstall();
      await backend.uninstall();
      const ruleset = await inNs(ns, "nft", "list", "ruleset");
      assert.ok(!ruleset.includes("kube-netpol"), ruleset);
      assert.ok(ruleset.includes("table inet knprl-foreign"));
    }),
});

Deno.test({
  name: "probe picks iptables here (no nft queue), follows a legacy node, leaves no probe table",
  ignore,
  fn: () =>
    withNetns("probe", async (ns) => {
      const run = netnsRunner(ns);
      assert.equal((await chooseBackend(OPEN, nullLogger, run)).name, "iptables-nft");
      assert.ok(!(await inNs(ns, "nft", "list", "ruleset")).includes("kube-netpol-probe"));
      await inNs(ns, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT");
      assert.equal((await chooseBackend(OPEN, nullLogger, run)).name, "iptables-legacy");
      // A fail-closed leftover of the other flavour is removed when the backend is chosen.
      await new IptablesBackend("nft", CLOSED, run).install();
      const legacy = await chooseBackend(CLOSED, nullLogger, run);
      assert.equal(count(await saveAll(ns, "nft"), /KUBE-NETPOL/), 0);
      await legacy.install();
      await cleanupAll(nullLogger, run);
      assert.equal(count(await saveAll(ns, "legacy"), /KUBE-NETPOL/), 0);
      assert.deepEqual(await ourSets(ns), []);
    }),
});

// ---- real packets: client pod -> node -> server pod, nothing listening on the queue ----

const NODE = "node";
const SERVER_IP = "10.77.1.2";

async function buildPods(): Promise<{ node: string; client: string; server: string }> {
  const node = PREFIX + NODE;
  const client = PREFIX + "client";
  const server = PREFIX + "server";
  for (const ns of [node, client, server]) {
    await must("ip", "netns", "add", ns);
    await inNs(ns, "ip", "link", "set", "lo", "up");
  }
  const link = async (pod: string, hostIf: string, net: string) => {
    await must(
      "ip",
      "-n",
      node,
      "link",
      "add",
      hostIf,
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      pod,
    );
    await must("ip", "-n", node, "addr", "add", `${net}.1/24`, "dev", hostIf);
    await must("ip", "-n", node, "link", "set", hostIf, "up");
    await must("ip", "-n", pod, "addr", "add", `${net}.2/24`, "dev", "eth0");
    await must("ip", "-n", pod, "link", "set", "eth0", "up");
    await must("ip", "-n", pod, "route", "add", "default", "via", `${net}.1`);
  };
  await link(client, "vclient", "10.77.0");
  await link(server, "vserver", "10.77.1");
  await inNs(node, "sysctl", "-qw", "net.ipv4.ip_forward=1");
  return { node, client, server };
}

/** Connect from the client pod; returns how it ended and how long it took. */
async function connect(
  client: string,
  port: number,
): Promise<{ ok: boolean; ms: number; err: string }> {
  const started = performance.now();
  const r = await sh(
    "ip",
    "netns",
    "exec",
    client,
    "timeout",
    "5",
    "socat",
    "-T",
    "2",
    "-u",
    `TCP:${SERVER_IP}:${port},connect-timeout=1.5`,
    "STDOUT",
  );
  return {
    ok: r.code === 0 && r.stdout.includes("hi"),
    ms: performance.now() - started,
    err: r.stderr.trim(),
  };
}

for (const flavour of ["nft", "legacy"] as const) {
  Deno.test({
    name:
      `iptables-${flavour} packets: bypass when fail-open, dropped when fail-closed, marked -> fast RST`,
    ignore,
    fn: async () => {
      await removeNamespaces(false);
      const servers: Deno.ChildProcess[] = [];
      try {
        const { node, client, server } = await buildPods();
        for (const port of [8080, 8081]) {
          servers.push(
            new Deno.Command("ip", {
              args: [
                "netns",
                "exec",
                server,
                "socat",
                `TCP-LISTEN:${port},bind=${SERVER_IP},fork,reuseaddr`,
                "SYSTEM:echo hi",
              ],
              stdout: "null",
              stderr: "null",
            }).spawn(),
          );
        }
        // Wait (bounded) for the listeners.
        let base = await connect(client, 8080);
        for (let i = 0; i < 20 && !base.ok; i++) {
          await new Promise((r) => setTimeout(r, 100));
          base = await connect(client, 8080);
        }
        assert.ok(base.ok, `no rules: connection works (${base.err})`);
        const run = netnsRunner(node);
        const queued = { ingress: [SERVER_IP], egress: [] };

        const open = new IptablesBackend(flavour, OPEN, run, nullLogger);
        await open.install();
        await open.sync(queued);
        const bypass = await connect(client, 8080);
        assert.ok(bypass.ok, `fail-open, no listener: passes (${bypass.err})`);
        const bypassed = await inNs(
          node,
          `iptables-${flavour}`,
          "-L",
          "KUBE-NETPOL",
          "-v",
          "-x",
          "-n",
        );
        assert.match(
          bypassed,
          /^\s*[1-9]\d*\s+\d+\s+NFQUEUE/m,
          "the SYN really went through the queue rule",
        );

        const closed = new IptablesBackend(flavour, CLOSED, run, nullLogger);
        await closed.install(); // same chain, re-rendered without bypass
        const dropped = await connect(client, 8080);
        assert.ok(!dropped.ok, "fail-closed, no listener: the queued connection fails");
        assert.ok(
          dropped.ms >= 1000,
          `it times out rather than being refused (${Math.round(dropped.ms)} ms)`,
        );

        // A test-only mangle rule marks SYNs to 8081 the way the verdict loop's NF_REPEAT would.
        await inNs(
          node,
          `iptables-${flavour}`,
          "-t",
          "mangle",
          "-A",
          "PREROUTING",
          "-p",
          "tcp",
          "--dport",
          "8081",
          "-j",
          "MARK",
          "--set-xmark",
          "0x100000/0x100000",
        );
        const rejected = await connect(client, 8081);
        assert.ok(!rejected.ok);
        assert.match(rejected.err, /refused/i, "a TCP reset, although a server listens on 8081");
        assert.ok(rejected.ms < 500, `rejected fast: ${Math.round(rejected.ms)} ms`);
        console.log(
          `${flavour}: bypass ${bypass.ms.toFixed(0)} ms, dropped after ${
            dropped.ms.toFixed(0)
          } ms, ` +
            `marked RST after ${rejected.ms.toFixed(1)} ms`,
        );

        await closed.uninstall();
        assert.ok((await connect(client, 8080)).ok, "uninstalled: connections flow again");
      } finally {
        for (const s of servers) {
          try {
            s.kill("SIGKILL");
          } catch { /* already gone */ }
          await s.status;
        }
        await removeNamespaces(true);
      }
    },
  });
}
