import assert from "node:assert/strict";
import { AgentMetrics } from "../src/metrics.ts";
import { createLogger, nullLogger } from "../src/log.ts";
import { type HealthChecks, parseBindAddress, startServer } from "../src/server.ts";

Deno.test("parseBindAddress: Go-style addresses", () => {
  assert.deepEqual(parseBindAddress(":9080"), { hostname: "", port: 9080 });
  assert.deepEqual(parseBindAddress("127.0.0.1:9080"), { hostname: "127.0.0.1", port: 9080 });
  assert.deepEqual(parseBindAddress("[::1]:9080"), { hostname: "::1", port: 9080 });
  assert.deepEqual(parseBindAddress("[::]:0"), { hostname: "::", port: 0 });
  assert.deepEqual(parseBindAddress("localhost:65535"), { hostname: "localhost", port: 65535 });
});

Deno.test("parseBindAddress: bad addresses name the problem", () => {
  const cases: [string, RegExp][] = [
    ["9080", /missing port/],
    ["127.0.0.1", /missing port/],
    ["::1:9080", /IPv6 addresses must be in brackets/],
    ["[::1]9080", /missing port after/],
    ["[::1:9080", /missing '\]'/],
    ["[10.0.0.1]:80", /brackets are only for IPv6/],
    [":http", /port must be a number/],
    [":65536", /port must be a number/],
    [":-1", /port must be a number/],
    ["127.0.0.1:", /port must be a number/],
  ];
  for (const [addr, re] of cases) {
    assert.throws(() => parseBindAddress(addr), (e: Error) => {
      assert.equal(e.name, "BindAddressError");
      assert.match(e.message, re, addr);
      assert.ok(e.message.includes(JSON.stringify(addr)));
      return true;
    });
  }
});

function withServer(
  health: Partial<HealthChecks>,
  fn: (base: string, metrics: AgentMetrics) => Promise<void>,
): () => Promise<void> {
  return async () => {
    const metrics = new AgentMetrics();
    const checks: HealthChecks = {
      live: () => ({ ok: true, detail: "verdict loop heartbeat 0.1s ago" }),
      ready: () => ({ ok: true, detail: "synced" }),
      debugPolicies: () => ({}),
      ...health,
    };
    const srv = startServer("127.0.0.1:0", metrics, checks, nullLogger);
    try {
      assert.ok(srv.port > 0);
      await fn(`http://127.0.0.1:${srv.port}`, metrics);
    } finally {
      await srv.close();
      await srv.close(); // idempotent
    }
  };
}

Deno.test(
  "server: /metrics serves the agent registry in Prometheus text format",
  withServer({}, async (base, metrics) => {
    metrics.verdicts.inc({ direction: "ingress", verdict: "deny" }, 3);
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type")!, /^text\/plain; version=0\.0\.4/);
    const body = await res.text();
    assert.match(body, /^kube_netpol_verdicts_total\{direction="ingress",verdict="deny"\} 3$/m);
    assert.match(body, /# TYPE packet_process_time histogram/);
  }),
);

Deno.test(
  "server: /healthz and /readyz answer 200 ok or 503 with the detail",
  withServer({
    ready: () => ({ ok: false, detail: "pods informer not synced" }),
  }, async (base) => {
    let res = await fetch(`${base}/healthz`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok\n");
    res = await fetch(`${base}/healthz?verbose`);
    assert.equal(await res.text(), "ok: verdict loop heartbeat 0.1s ago\n");
    res = await fetch(`${base}/readyz`);
    assert.equal(res.status, 503);
    assert.equal(await res.text(), "pods informer not synced\n");
  }),
);

Deno.test(
  "server: a health check that throws is reported as failing, not as a crash",
  withServer({
    live: () => {
      throw new Error("heartbeat table missing");
    },
  }, async (base) => {
    const res = await fetch(`${base}/healthz`);
    assert.equal(res.status, 503);
    assert.match(await res.text(), /liveness check failed: heartbeat table missing/);
  }),
);

Deno.test(
  "server: /debug/policies returns the JSON the agent provides",
  withServer({
    debugPolicies: () => ({ policies: [{ name: "x/deny-all", pods: 2 }] }),
  }, async (base) => {
    const res = await fetch(`${base}/debug/policies`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type")!, /^application\/json/);
    assert.deepEqual(await res.json(), { policies: [{ name: "x/deny-all", pods: 2 }] });
  }),
);

Deno.test(
  "server: unknown paths are 404, other methods 405, HEAD has no body",
  withServer({}, async (base) => {
    let res = await fetch(`${base}/`);
    assert.equal(res.status, 404);
    await res.body?.cancel();
    res = await fetch(`${base}/metricsx`);
    assert.equal(res.status, 404);
    await res.body?.cancel();
    res = await fetch(`${base}/readyz`, { method: "POST" });
    assert.equal(res.status, 405);
    assert.equal(res.headers.get("allow"), "GET, HEAD");
    await res.body?.cancel();
    res = await fetch(`${base}/healthz`, { method: "HEAD" });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "");
  }),
);

Deno.test("server: the bound address is logged; a taken port raises AddrInUse", async () => {
  const lines: string[] = [];
  const log = createLogger({ write: (l) => lines.push(l) });
  const checks: HealthChecks = {
    live: () => ({ ok: true, detail: "" }),
    ready: () => ({ ok: true, detail: "" }),
    debugPolicies: () => null,
  };
  const a = startServer("127.0.0.1:0", new AgentMetrics(), checks, log);
  try {
    assert.match(lines[0]!, new RegExp(`address=127\\.0\\.0\\.1:${a.port}$`));
    assert.throws(
      () => startServer(`127.0.0.1:${a.port}`, new AgentMetrics(), checks, nullLogger),
      Deno.errors.AddrInUse,
    );
  } finally {
    await a.close();
  }
});
