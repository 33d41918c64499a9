/**
 * The pod-start race's agent wiring without root: `--pod-cidr` and `--unknown-pod-timeout`, and
 * the watch on this node's interface addresses (read at once, again every few seconds, told only
 * about changes; a refused permission is said once and the agent goes on).
 */
import assert from "node:assert/strict";
import { parseRunFlags } from "../src/cli/run.ts";
import { InterfaceAddressWatch } from "../src/cli/interface_addresses.ts";
import { nullLogger } from "../src/log.ts";
import { ManualClock } from "./support/manual_clock.ts";

function opts(...args: string[]) {
  const o = parseRunFlags(["--hostname-override", "n1", ...args]);
  assert.notEqual(o, "help");
  return o as Exclude<typeof o, "help">;
}

Deno.test("run flags: --pod-cidr (repeatable, checked) and --unknown-pod-timeout (0 = off)", () => {
  assert.deepEqual(opts().podCIDRs, []);
  assert.equal(opts().unknownPodTimeoutMs, 2000);
  assert.deepEqual(
    opts("--pod-cidr", "10.244.1.5/24", "--pod-cidr=fd00:10::/64").podCIDRs,
    ["10.244.1.0/24", "fd00:10::/64"],
  );
  assert.equal(opts("--unknown-pod-timeout=500ms").unknownPodTimeoutMs, 500);
  assert.equal(opts("--unknown-pod-timeout", "0").unknownPodTimeoutMs, 0);
  assert.throws(() => opts("--pod-cidr", "10.244.1.0"), /--pod-cidr: .*missing "\/prefix"/);
  assert.throws(() => opts("--unknown-pod-timeout=2m"), /between 0s and 60s/);
});

Deno.test("interface addresses: read at once, then polled; only changes are passed on", async () => {
  const clock = new ManualClock();
  let now = ["10.244.0.1", "127.0.0.1"];
  const seen: string[][] = [];
  const watch = new InterfaceAddressWatch(
    (ips) => seen.push(ips),
    nullLogger,
    () => now,
    clock,
    5000,
  );
  watch.start();
  assert.deepEqual(seen, [["10.244.0.1", "127.0.0.1"]], "before anything else runs");
  await clock.advance(5000);
  assert.equal(seen.length, 1, "unchanged: not passed on");
  now = ["10.244.0.1", "10.244.0.254", "127.0.0.1"]; // a bridge came up with the first pod
  await clock.advance(5000);
  assert.deepEqual(seen.at(-1), ["10.244.0.1", "10.244.0.254", "127.0.0.1"]);
  watch.stop();
  assert.equal(clock.timers, 0);

  const refused = new InterfaceAddressWatch(() => assert.fail("no addresses"), nullLogger, () => {
    throw new Deno.errors.NotCapable('Requires sys access to "networkInterfaces"');
  }, clock);
  refused.start();
  assert.equal(clock.timers, 0, "not retried: the permission does not come back");
});
