import assert from "node:assert/strict";
import { createLogger, nullLogger, RateLimiter } from "../src/log.ts";

function capture(opts: { verbosity?: number; format?: "text" | "json" } = {}) {
  const lines: string[] = [];
  const log = createLogger({ ...opts, write: (l) => lines.push(l) });
  return { log, lines };
}

Deno.test("log: -v gates verbose lines; info, warn and error always show", () => {
  const { log, lines } = capture({ verbosity: 2 });
  log.info("started");
  log.warn("careful");
  log.error("broken");
  log.v(2).info("shown at 2");
  log.v(4).info("debug only");
  assert.equal(lines.length, 4);
  assert.match(lines[0]!, /^I\d{4} \d\d:\d\d:\d\d\.\d{6}\] started$/);
  assert.match(lines[1]!, /^W.*\] careful$/);
  assert.match(lines[2]!, /^E.*\] broken$/);
  assert.match(lines[3]!, /\] shown at 2$/);
  assert.equal(log.v(2).enabled, true);
  assert.equal(log.v(4).enabled, false);
  assert.equal(capture({ verbosity: 0 }).log.v(1).enabled, false);
});

Deno.test("log: text format quotes values a reader could mis-split", () => {
  const { log, lines } = capture();
  log.info("verdict", {
    pod: "ns/web-1",
    verdict: "deny",
    reason: "isolated by ns/deny-all; no rule matched",
    port: 80,
    ok: true,
    empty: "",
    err: new Error("boom"),
    list: ["a", "b"],
  });
  assert.match(
    lines[0]!,
    /\] verdict pod=ns\/web-1 verdict=deny reason="isolated by ns\/deny-all; no rule matched" port=80 ok=true empty="" err=boom list=\["a","b"\]$/,
  );
});

Deno.test("log: text format keeps one record per line", () => {
  const { log, lines } = capture();
  log.warn("line one\nline two", { detail: "a\nb" });
  assert.equal(lines.length, 1);
  assert.ok(!lines[0]!.includes("\n"));
  assert.match(lines[0]!, /line one\\nline two detail="a\\nb"$/);
});

Deno.test("log: json format is one parseable object per line with top-level fields", () => {
  const { log, lines } = capture({ format: "json", verbosity: 4 });
  log.with({ node: "n1" }).v(4).info("packet", { src: "10.0.0.1", msg: "clash", n: 3n });
  log.error("failed", { err: new Error("EPERM") });
  const a = JSON.parse(lines[0]!);
  assert.equal(a.level, "info");
  assert.equal(a.v, 4);
  assert.equal(a.msg, "packet");
  assert.equal(a.node, "n1");
  assert.equal(a.src, "10.0.0.1");
  assert.equal(a["field.msg"], "clash"); // a clashing field never overwrites the message
  assert.equal(a.n, "3");
  assert.ok(!Number.isNaN(Date.parse(a.ts)));
  const b = JSON.parse(lines[1]!);
  assert.deepEqual([b.level, b.msg, b.err, b.v], ["error", "failed", "EPERM", undefined]);
});

Deno.test("log: with() adds fixed fields, call fields win, parent unchanged", () => {
  const { log, lines } = capture({ format: "json" });
  const child = log.with({ component: "rules", backend: "nft" });
  child.info("a", { backend: "iptables" });
  log.info("b");
  assert.equal(JSON.parse(lines[0]!).component, "rules");
  assert.equal(JSON.parse(lines[0]!).backend, "iptables");
  assert.equal(JSON.parse(lines[1]!).component, undefined);
});

Deno.test("log: a throwing writer or unrenderable field never throws to the caller", () => {
  const log = createLogger({
    write: () => {
      throw new Error("EPIPE");
    },
  });
  log.error("x");
  const { log: ok, lines } = capture({ format: "json" });
  const circular: Record<string, unknown> = {};
  circular.self = circular;
  ok.info("circular", { c: circular });
  const rec = JSON.parse(lines[0]!);
  assert.equal(rec.msg, "circular");
  assert.match(rec.c, /^<unserializable: /);
});

Deno.test("log: bad options are refused with a clear message", () => {
  assert.throws(() => createLogger({ verbosity: -1 }), /non-negative integer/);
  assert.throws(() => createLogger({ verbosity: 1.5 }), /non-negative integer/);
  assert.throws(() => createLogger({ format: "xml" as "text" }), /text, json/);
});

Deno.test("log: nullLogger writes nothing and reports verbose levels disabled", () => {
  assert.equal(nullLogger.v(0).enabled, false);
  nullLogger.with({ a: 1 }).error("ignored");
});

Deno.test("RateLimiter: burst, then refill at the configured rate, counting refusals", () => {
  let t = 0;
  const rl = new RateLimiter(10, 3, () => t);
  assert.deepEqual([rl.take(), rl.take(), rl.take(), rl.take(), rl.take()], [
    true,
    true,
    true,
    false,
    false,
  ]);
  assert.equal(rl.drainSuppressed(), 2);
  assert.equal(rl.drainSuppressed(), 0);
  t = 100; // 10/s -> one token per 100 ms
  assert.equal(rl.take(), true);
  assert.equal(rl.take(), false);
  t = 10_000; // a long pause refills only up to the burst
  let granted = 0;
  for (let i = 0; i < 10; i++) if (rl.take()) granted++;
  assert.equal(granted, 3);
  assert.equal(rl.drainSuppressed(), 8);
});

Deno.test("RateLimiter: a clock step backwards does not mint tokens", () => {
  let t = 1000;
  const rl = new RateLimiter(1, 1, () => t);
  assert.equal(rl.take(), true);
  t = 0;
  assert.equal(rl.take(), false);
  t = 500;
  assert.equal(rl.take(), false);
});

Deno.test("RateLimiter: invalid rates are refused", () => {
  assert.throws(() => new RateLimiter(-1, 1), /rate/);
  assert.throws(() => new RateLimiter(1, 0), /burst/);
  assert.throws(() => new RateLimiter(NaN, 1), /rate/);
});
