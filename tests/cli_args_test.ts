/** The `run` flags as users of the Go original write them, and the errors for mistakes. */
import assert from "node:assert/strict";
import { parseRunFlags } from "../src/cli/run.ts";
import { UsageError } from "../src/cli/args.ts";

function opts(...args: string[]) {
  const o = parseRunFlags(["--hostname-override", "n1", ...args]);
  assert.notEqual(o, "help");
  return o as Exclude<typeof o, "help">;
}

Deno.test("run flags: defaults users of the original project expect", () => {
  const o = opts("--hostname-override", "n1");
  assert.equal(o.failOpen, true);
  assert.equal(o.queueId, 100);
  assert.equal(o.metricsAddress, ":9080");
  assert.equal(o.verbosity, 2);
  assert.equal(o.nodeName, "n1");
});

Deno.test("run flags: Go-style single dash, -v=N, and --fail-open=false all work", () => {
  const o = opts(
    "-v=4",
    "-metrics-bind-address",
    "127.0.0.1:9999",
    "--fail-open=false",
    "-nfqueue-id=7",
  );
  assert.equal(o.verbosity, 4);
  assert.equal(o.metricsAddress, "127.0.0.1:9999");
  assert.equal(o.failOpen, false);
  assert.equal(o.queueId, 7);
  assert.equal(opts("-v", "5").verbosity, 5);
  assert.equal(opts("--fail-open").failOpen, true);
  assert.deepEqual(opts("--manifests", "a", "--manifests", "b").manifests, ["a", "b"]);
});

Deno.test("run flags: mistakes are usage errors that say what is wrong", () => {
  assert.throws(
    () => parseRunFlags(["--nfqueue", "5"]),
    (e: Error) =>
      e instanceof UsageError &&
      /unknown flag --nfqueue.*did you mean --nfqueue-id/.test(e.message),
  );
  assert.throws(
    () => parseRunFlags(["--nfqueue-id", "70000"]),
    /--nfqueue-id must be an integer from 0 to 65535/,
  );
  assert.throws(() => parseRunFlags(["--fail-open=maybe"]), /--fail-open takes true or false/);
  assert.throws(() => parseRunFlags(["--log-format", "xml"]), /--log-format must be text or json/);
  assert.throws(() => parseRunFlags(["extra"]), /unexpected argument "extra"/);
});

Deno.test("run flags: --logging-format is the Kubernetes spelling of --log-format", () => {
  assert.equal(opts("--logging-format=json").logFormat, "json");
  assert.equal(opts("--logging-format", "text").logFormat, "text");
  assert.equal(opts("-logging-format=json").logFormat, "json");
  assert.equal(opts("--log-format", "json").logFormat, "json");
  assert.equal(opts("--log-format=json", "--logging-format=json").logFormat, "json");
  assert.throws(() => opts("--logging-format", "xml"), /--logging-format must be text or json/);
  assert.throws(
    () => opts("--log-format=json", "--logging-format=text"),
    /--log-format json and --logging-format text disagree/,
  );
});

Deno.test("run flags: dataplane check period and watch stall timeout take Go durations", () => {
  assert.equal(opts().dataplaneCheckIntervalMs, 10_000);
  assert.equal(opts().watchStallTimeoutMs, 75_000);
  assert.equal(opts("--dataplane-check-interval=2s").dataplaneCheckIntervalMs, 2000);
  assert.equal(opts("--dataplane-check-interval", "500ms").dataplaneCheckIntervalMs, 500);
  assert.equal(opts("--watch-stall-timeout=1m30s").watchStallTimeoutMs, 90_000);
  assert.equal(opts("--watch-stall-timeout=120").watchStallTimeoutMs, 120_000, "bare seconds");
  assert.throws(
    () => opts("--dataplane-check-interval=soon"),
    /--dataplane-check-interval must be a duration like 10s/,
  );
  assert.throws(() => opts("--watch-stall-timeout=10ms"), /between 1s and 3600s/);
});

Deno.test("run flags: strict mode is on by default, with its own ct mark bit", () => {
  assert.equal(opts().strictMode, true);
  assert.equal(opts().cutMark, 0x400000);
  assert.equal(opts("--strict-mode=false").strictMode, false);
  assert.equal(opts("-strict-mode=false").strictMode, false);
  assert.equal(opts("--cut-mark", "0x800000").cutMark, 0x800000);
  assert.throws(() => opts("--cut-mark", "0"), /--cut-mark must be an integer from 1/);
  assert.throws(() => opts("--strict-mode=sometimes"), /--strict-mode takes true or false/);
});

Deno.test("run flags: a missing policy CRD is looked for again every --crd-recheck-interval", () => {
  assert.equal(opts().crdRecheckIntervalMs, 30_000);
  assert.equal(opts("--crd-recheck-interval=1m").crdRecheckIntervalMs, 60_000);
  assert.throws(() => opts("--crd-recheck-interval=100ms"), /between 1s and 3600s/);
});
