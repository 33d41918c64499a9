/**
 * The agent's HTTP endpoints and the server under them, as a pod on the node network sees them:
 * what each endpoint answers, who may read /debug, and that idle, slow, malformed or too many
 * connections, and failing accepts, never stop the server.
 */
import assert from "node:assert/strict";
import { AgentMetrics } from "../src/metrics.ts";
import { createLogger, nullLogger } from "../src/log.ts";
import {
  type HealthChecks,
  makeHandler,
  parseBindAddress,
  type ServerOptions,
  startServer,
} from "../src/server.ts";
import {
  ConnectionBudget,
  type HttpRequest,
  HttpServer,
  isLoopback,
  isNodeLocalPeer,
  parseRequestHead,
} from "../src/http_server.ts";
import { Agent, parseRunFlags } from "../src/cli/run.ts";
import { VERSION } from "../main.ts";

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

const okChecks: HealthChecks = {
  live: () => ({ ok: true, detail: "verdict loop heartbeat 0.1s ago" }),
  ready: () => ({ ok: true, detail: "synced" }),
  debugPolicies: () => ({}),
};

function withServer(
  health: Partial<HealthChecks>,
  fn: (base: string, metrics: AgentMetrics, port: number) => Promise<void>,
  opts: ServerOptions = {},
): () => Promise<void> {
  return async () => {
    const metrics = new AgentMetrics();
    const checks: HealthChecks = { ...okChecks, ...health };
    const srv = startServer({ address: "127.0.0.1:0", ...opts }, metrics, checks, nullLogger);
    try {
      assert.ok(srv.port > 0);
      await fn(`http://127.0.0.1:${srv.port}`, metrics, srv.port);
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
    assert.match(lines[0]!, / maxConnections=64 debugEndpoints=loopback /);
    assert.throws(
      () => startServer(`127.0.0.1:${a.port}`, new AgentMetrics(), checks, nullLogger),
      Deno.errors.AddrInUse,
    );
  } finally {
    await a.close();
  }
});

// --- the connection handling: what a hostile or careless client can and cannot do ---

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function latin1(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return s;
}

interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: string;
}

/** A bare TCP client that writes exactly the bytes it is given, as an attacker would. */
class RawClient {
  private buf = new Uint8Array(0);
  private closed = false;
  private constructor(readonly conn: Deno.Conn) {}

  static async open(port: number): Promise<RawClient> {
    return new RawClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  /** False when the server has already closed or reset the connection. */
  async send(data: string | Uint8Array): Promise<boolean> {
    const bytes = typeof data === "string" ? Uint8Array.from(data, (c) => c.charCodeAt(0)) : data;
    try {
      for (let off = 0; off < bytes.length;) off += await this.conn.write(bytes.subarray(off));
      return true;
    } catch {
      return false;
    }
  }

  /** Reads more; false at end of stream, on a reset, or when nothing came within `guardMs`. */
  private async more(guardMs: number): Promise<boolean> {
    const chunk = new Uint8Array(64 * 1024);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), guardMs));
    const read = this.conn.read(chunk).catch(() => null);
    try {
      const n = await Promise.race([read, late]);
      if (n === "late") {
        this.close(); // the pending read then ends too
        await read;
        return false;
      }
      if (n === null) return false;
      const next = new Uint8Array(this.buf.length + n);
      next.set(this.buf);
      next.set(chunk.subarray(0, n), this.buf.length);
      this.buf = next;
      return true;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The next response, or undefined when the connection ended (or stalled) before it came. */
  async response(
    opts: { head?: boolean; guardMs?: number } = {},
  ): Promise<RawResponse | undefined> {
    for (;;) {
      const text = latin1(this.buf);
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) {
        const [statusLine, ...lines] = text.slice(0, end).split("\r\n");
        const headers = new Map(lines.map((l) => {
          const i = l.indexOf(":");
          return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()] as [string, string];
        }));
        const len = opts.head ? 0 : Number(headers.get("content-length") ?? 0);
        if (this.buf.length >= end + 4 + len) {
          const body = new TextDecoder().decode(this.buf.subarray(end + 4, end + 4 + len));
          this.buf = this.buf.slice(end + 4 + len);
          return { status: Number(statusLine!.split(" ")[1]), headers, body };
        }
      }
      if (this.closed || !await this.more(opts.guardMs ?? 10_000)) return undefined;
    }
  }

  /** True once the server ends the connection; false if it is still open after `guardMs`. */
  async ended(guardMs = 10_000): Promise<boolean> {
    const deadline = Date.now() + guardMs;
    while (!this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      if (!await this.more(left)) return !this.closed || Date.now() < deadline;
    }
    return false;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch { /* gone */ }
  }
}

const GET = (path: string, extra = "") => `GET ${path} HTTP/1.1\r\nHost: agent\r\n${extra}\r\n`;

async function counter(
  metric: { get(): Promise<{ values: { value: number; labels: object }[] }> },
  labels: Record<string, string> = {},
): Promise<number> {
  const { values } = await metric.get();
  const want = JSON.stringify(labels);
  return values.find((v) => JSON.stringify(v.labels) === want)?.value ?? 0;
}

Deno.test(
  "http: a request head that never completes is cut at the header timeout and counted",
  withServer({}, async (_base, metrics, port) => {
    const c = await RawClient.open(port);
    try {
      assert.ok(await c.send("GET /metrics HTTP/1.1\r\nHost: agent\r\n")); // no blank line
      assert.equal(await c.response(), undefined, "server answered a half-sent request");
      assert.equal(await counter(metrics.httpHeaderTimeouts), 1);
    } finally {
      c.close();
    }
  }, { limits: { headerTimeoutMs: 100 } }),
);

Deno.test(
  "http: trickling the head one byte at a time does not extend the deadline",
  withServer({}, async (_base, metrics, port) => {
    const c = await RawClient.open(port);
    try {
      let done = false;
      const end = c.ended().then((e) => (done = true, e));
      const trickle = "GET /metrics HTTP/1.1\r\nX-Slow: " + "a".repeat(400);
      let sent = 0;
      for (; sent < trickle.length && !done; sent++) {
        if (!await c.send(trickle[sent]!)) break;
        await sleep(20);
      }
      assert.equal(await end, true, "connection still open");
      assert.ok(sent < trickle.length, "the whole trickle got through");
      assert.equal(await counter(metrics.httpHeaderTimeouts), 1);
    } finally {
      c.close();
    }
  }, { limits: { headerTimeoutMs: 300 } }),
);

Deno.test(
  "http: an idle kept-alive connection is closed (not counted as a header timeout)",
  withServer({}, async (_base, metrics, port) => {
    const c = await RawClient.open(port);
    try {
      assert.ok(await c.send(GET("/healthz")));
      const r = await c.response();
      assert.equal(r?.status, 200);
      assert.equal(r?.headers.get("connection"), undefined); // kept alive
      assert.equal(await c.ended(), true);
      assert.equal(await counter(metrics.httpHeaderTimeouts), 0);
    } finally {
      c.close();
    }
  }, { limits: { idleTimeoutMs: 100 } }),
);

/** Open a connection and prove it was admitted: a kept-alive request answered 200. */
async function admitted(port: number): Promise<RawClient> {
  const c = await RawClient.open(port);
  assert.ok(await c.send(GET("/healthz")));
  assert.equal((await c.response())?.status, 200);
  return c;
}

/** Connect until one is answered (a slot freed asynchronously); bounded. */
async function eventuallyServed(port: number): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    const c = await RawClient.open(port);
    try {
      if (await c.send(GET("/healthz")) && (await c.response())?.status === 200) return true;
    } finally {
      c.close();
    }
    await sleep(50);
  }
  return false;
}

Deno.test(
  "http: connections over the cap are closed at once and counted; a freed slot is reused",
  withServer({}, async (_base, metrics, port) => {
    const a = await admitted(port);
    const b = await admitted(port);
    const c = await RawClient.open(port);
    try {
      await c.send(GET("/healthz"));
      assert.equal(await c.response(), undefined, "third connection was served");
      assert.equal(
        await counter(metrics.httpConnectionsRejected, { reason: "limit" }),
        1,
      );
      assert.equal(await counter(metrics.httpOpenConnections), 2);
      // a and b are untouched by the rejection
      assert.ok(await b.send(GET("/readyz")));
      assert.equal((await b.response())?.status, 200);
      a.close();
      assert.ok(await eventuallyServed(port), "the slot a freed never came back");
    } finally {
      for (const x of [a, b, c]) x.close();
    }
  }, {
    maxConnections: 2,
    limits: { maxConnectionsPerPeer: 10 },
    isNodeLocal: () => false, // the test's loopback client plays a pod
  }),
);

Deno.test(
  "http: one address cannot take more than its share of the connections",
  withServer({}, async (_base, metrics, port) => {
    const a = await admitted(port);
    const b = await admitted(port);
    const c = await RawClient.open(port);
    try {
      await c.send(GET("/healthz"));
      assert.equal(await c.response(), undefined);
      assert.equal(await counter(metrics.httpConnectionsRejected, { reason: "peer_limit" }), 1);
      assert.equal(await counter(metrics.httpConnectionsRejected, { reason: "limit" }), 0);
    } finally {
      for (const x of [a, b, c]) x.close();
    }
  }, { maxConnections: 10, limits: { maxConnectionsPerPeer: 2 }, isNodeLocal: () => false }),
);

Deno.test(
  "http: the node's own connections have their own slots beside the cap for pods",
  withServer({}, async (_base, metrics, port) => {
    // maxConnections 1 is for other hosts; loopback clients use the node's 3 slots.
    const held = [await admitted(port), await admitted(port), await admitted(port)];
    const extra = await RawClient.open(port);
    try {
      await extra.send(GET("/healthz"));
      assert.equal(await extra.response(), undefined);
      assert.equal(await counter(metrics.httpConnectionsRejected, { reason: "limit" }), 1);
    } finally {
      for (const x of [...held, extra]) x.close();
    }
  }, { maxConnections: 1, limits: { nodeConnections: 3 } }),
);

Deno.test("http: the connection budget keeps pods, one address and the node apart", () => {
  const b = new ConnectionBudget({
    maxConnections: 3,
    maxConnectionsPerPeer: 2,
    nodeConnections: 1,
  });
  assert.equal(b.admit("10.0.0.1", false), "ok");
  assert.equal(b.admit("10.0.0.1", false), "ok");
  assert.equal(b.admit("10.0.0.1", false), "peer_limit");
  assert.equal(b.admit("10.0.0.2", false), "ok");
  assert.equal(b.admit("10.0.0.3", false), "limit"); // 3 from other hosts
  assert.equal(b.admit("127.0.0.1", true), "ok"); // the node still gets in
  assert.equal(b.admit("127.0.0.1", true), "limit");
  assert.equal(b.open, 4);
  b.release("10.0.0.1", false);
  assert.equal(b.admit("10.0.0.3", false), "ok");
  assert.equal(b.admit("10.0.0.1", false), "limit");
  b.release("127.0.0.1", true);
  assert.equal(b.admit("127.0.0.1", true), "ok");
});

Deno.test("http: loopback and node-local peers", () => {
  for (const a of ["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"]) {
    assert.ok(isLoopback(a), a);
  }
  for (const a of ["10.244.0.1", "::ffff:10.0.0.1", "fd00::1", "128.0.0.1", "::", "0.0.0.0"]) {
    assert.ok(!isLoopback(a), a);
  }
  assert.ok(isNodeLocalPeer("::ffff:10.244.0.1", "10.244.0.1")); // the node to its own address
  assert.ok(isNodeLocalPeer("127.0.0.1", "::ffff:127.0.0.1"));
  assert.ok(!isNodeLocalPeer("10.244.1.11", "10.244.0.1")); // a pod
});

Deno.test(
  "http: malformed or oversized requests get an error answer and the connection ends",
  withServer({}, async (_base, _metrics, port) => {
    const cases: [string, string | Uint8Array, number][] = [
      ["garbage", "GARBAGE\r\n\r\n", 400],
      ["binary", new Uint8Array([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0xff, 0x0a, 0x0a]), 400],
      ["HTTP/2", "GET /metrics HTTP/2.0\r\n\r\n", 505],
      ["absolute-form target", "GET http://agent/metrics HTTP/1.1\r\n\r\n", 400],
      ["space in target", "GET /a b HTTP/1.1\r\n\r\n", 400],
      ["folded header", "GET /metrics HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400],
      ["bare CR", "GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n", 400],
      ["header without colon", "GET /metrics HTTP/1.1\r\nnocolon\r\n\r\n", 400],
      ["NUL in a value", "GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400],
      ["bad header name", "GET /metrics HTTP/1.1\r\nX Y: a\r\n\r\n", 400],
      [
        "two lengths",
        "GET /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
      ],
      [
        "length and chunked",
        "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        400,
      ],
      ["long request line", `GET /${"a".repeat(5000)} HTTP/1.1\r\n\r\n`, 414],
      ["endless request line", `GET /${"a".repeat(9000)}`, 414],
      ["endless headers", `GET /metrics HTTP/1.1\r\nX-Pad: ${"a".repeat(9000)}`, 431],
      ["many headers", `GET /metrics HTTP/1.1\r\n${"X: y\r\n".repeat(2000)}\r\n`, 431],
    ];
    for (const [name, bytes, status] of cases) {
      const c = await RawClient.open(port);
      try {
        await c.send(bytes);
        const r = await c.response();
        assert.equal(r?.status, status, name);
        assert.equal(r?.headers.get("connection"), "close", name);
        assert.equal(await c.ended(), true, `${name}: connection left open`);
      } finally {
        c.close();
      }
    }
    // ...and the server is as good as new.
    const ok = await admitted(port);
    ok.close();
  }),
);

Deno.test(
  "http: keep-alive, pipelining, bare LF, HTTP/1.0 and bodies",
  withServer({}, async (_base, _metrics, port) => {
    const c = await RawClient.open(port);
    try {
      // Empty lines before a request are skipped; two requests in one write get two answers.
      assert.ok(await c.send("\r\n" + GET("/healthz") + GET("/readyz?verbose")));
      assert.equal((await c.response())?.body, "ok\n");
      assert.equal((await c.response())?.body, "ok: synced\n");
      assert.ok(await c.send("GET /healthz HTTP/1.1\nHost: agent\n\n"));
      assert.equal((await c.response())?.status, 200);
      assert.ok(await c.send(GET("/healthz", "Connection: keep-alive, close\r\n")));
      const last = await c.response();
      assert.equal(last?.status, 200);
      assert.equal(last?.headers.get("connection"), "close");
      assert.equal(await c.ended(), true);
    } finally {
      c.close();
    }
    for (
      const req of [
        "GET /healthz HTTP/1.0\r\n\r\n",
        GET("/healthz", "Content-Length: 5\r\n") + "hello", // a body is never read as a request
        GET("/healthz", "Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n",
      ]
    ) {
      const d = await RawClient.open(port);
      try {
        assert.ok(await d.send(req));
        const r = await d.response();
        assert.equal(r?.status, 200, req);
        assert.equal(r?.headers.get("connection"), "close", req);
        assert.equal(await d.ended(), true, req);
      } finally {
        d.close();
      }
    }
  }),
);

Deno.test(
  "http: HEAD gives GET's headers and no body",
  withServer({}, async (_base, _metrics, port) => {
    const c = await RawClient.open(port);
    try {
      assert.ok(await c.send(GET("/healthz?verbose")));
      const get = await c.response();
      assert.ok(await c.send(`HEAD /healthz?verbose HTTP/1.1\r\n\r\n`));
      const head = await c.response({ head: true });
      assert.equal(head?.status, 200);
      assert.equal(head?.headers.get("content-length"), get?.headers.get("content-length"));
      // No stray body bytes: the next answer on the same connection parses cleanly.
      assert.ok(await c.send(GET("/readyz")));
      assert.equal((await c.response())?.body, "ok\n");
    } finally {
      c.close();
    }
  }),
);

Deno.test(
  "http: a client that never reads its answer is cut at the write timeout, freeing its slot",
  withServer({
    debugPolicies: () => ({ pad: "x".repeat(32 << 20) }), // far more than socket buffers hold
  }, async (_base, _metrics, port) => {
    const reader = await RawClient.open(port);
    try {
      assert.ok(await reader.send(GET("/debug/policies")));
      // Never read. The only slot is taken until the server gives up on the write.
      assert.ok(await eventuallyServed(port), "the stalled writer kept its slot");
    } finally {
      reader.close();
    }
  }, { maxConnections: 1, isNodeLocal: () => false, limits: { writeTimeoutMs: 300 } }),
);

Deno.test("http: failed accepts are counted and retried; the server keeps serving", async () => {
  const inner = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const failures = ["EMFILE", "ENFILE", "ECONNABORTED", "EWHATEVER"];
  const flaky = {
    addr: inner.addr,
    accept(): Promise<Deno.Conn> {
      const code = failures.shift();
      if (code) return Promise.reject(Object.assign(new Error(`${code}: injected`), { code }));
      return inner.accept();
    },
    close: () => inner.close(),
  } as unknown as Deno.Listener;
  const codes: string[] = [];
  const srv = new HttpServer([flaky], () => ({ status: 200, body: "fine\n" }), {
    log: nullLogger,
    events: { acceptError: (c) => codes.push(c) },
  });
  try {
    const c = await RawClient.open(inner.addr.port);
    await c.send(GET("/"));
    assert.equal((await c.response())?.body, "fine\n");
    c.close();
    assert.deepEqual(codes, ["EMFILE", "ENFILE", "ECONNABORTED", "other"]);
  } finally {
    await srv.close();
  }
});

Deno.test(
  "http: out of file descriptors (a real EMFILE), the server pauses and recovers",
  { sanitizeResources: false, sanitizeOps: false },
  async () => {
    const fixture = new URL("./http_fd_limit_server.ts", import.meta.url).pathname;
    const child = new Deno.Command("prlimit", {
      args: [
        "--nofile=64:64",
        "--",
        Deno.execPath(),
        "run",
        "--frozen",
        "--allow-net=127.0.0.1",
        fixture,
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const held: RawClient[] = [];
    try {
      const port = Number((await stdout.read()).value?.trim());
      assert.ok(port > 0, "fixture did not print its port");
      // Open kept-alive connections until one is not answered: the process is out of fds.
      let answered = 0;
      for (let i = 0; i < 200; i++) {
        const c = await RawClient.open(port);
        held.push(c);
        await c.send(GET("/healthz"));
        if ((await c.response({ guardMs: 1_000 }))?.status !== 200) break;
        answered++;
      }
      assert.ok(answered < 200, "never ran out of descriptors");
      for (const c of held.splice(0)) c.close();
      const after = await RawClient.open(port);
      held.push(after);
      await after.send(GET("/metrics"));
      const m = await after.response();
      assert.equal(m?.status, 200, "no answer after the descriptors came back");
      const emfile = /^kube_netpol_http_accept_errors_total\{code="EMFILE"\} (\d+)$/m.exec(m!.body);
      assert.ok(emfile && Number(emfile[1]) > 0, "EMFILE accepts were not counted");
    } finally {
      for (const c of held) c.close();
      await child.stdin.close().catch(() => {});
      const [status, stderr] = await Promise.all([
        child.status,
        new Response(child.stderr).text(),
      ]);
      await stdout.cancel().catch(() => {});
      assert.equal(status.code, 0, `the server process did not end cleanly:\n${stderr}`);
    }
  },
);

// --- who may read what ---

function request(path: string, peer: string, method = "GET"): HttpRequest {
  const q = path.indexOf("?");
  return {
    method,
    target: path,
    path: q < 0 ? path : path.slice(0, q),
    query: new URLSearchParams(q < 0 ? "" : path.slice(q + 1)),
    peer,
  };
}

Deno.test("endpoints: /debug is for loopback peers unless --debug-endpoints=anywhere", async () => {
  const metrics = new AgentMetrics();
  const checks = { ...okChecks, debugPolicies: () => ({ policies: ["x/deny-all"] }) };
  const loopbackOnly = makeHandler(metrics, checks, nullLogger);
  const anywhere = makeHandler(metrics, checks, nullLogger, "anywhere");
  for (const peer of ["127.0.0.1", "::1", "::ffff:127.0.0.1"]) {
    assert.equal((await loopbackOnly(request("/debug/policies", peer))).status, 200, peer);
  }
  for (const peer of ["10.244.1.11", "fd00:10:244::1:11", "10.244.0.1"]) {
    const r = await loopbackOnly(request("/debug/policies", peer));
    assert.equal(r.status, 403, peer);
    assert.match(String(r.body), /loopback clients only.*--debug-endpoints/);
    assert.equal((await loopbackOnly(request("/debug/policies", peer, "POST"))).status, 403);
    assert.equal((await anywhere(request("/debug/policies", peer))).status, 200, peer);
    // Everything else stays open to every peer.
    assert.equal((await loopbackOnly(request("/metrics", peer))).status, 200);
    assert.equal((await loopbackOnly(request("/healthz", peer))).status, 200);
    assert.equal((await loopbackOnly(request("/readyz", peer))).status, 200);
    assert.equal((await loopbackOnly(request("/debug/other", peer))).status, 404);
  }
});

Deno.test("parseRequestHead: what closes the connection after the answer", () => {
  const head = (s: string) => parseRequestHead(new TextEncoder().encode(s));
  const close = (s: string) => {
    const r = head(s);
    assert.ok(r.ok, s);
    return r.head.close;
  };
  assert.equal(close("GET / HTTP/1.1\r\n\r\n"), false);
  assert.equal(close("GET / HTTP/1.0\r\n\r\n"), true);
  assert.equal(close("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"), true);
  assert.equal(close("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), false);
  assert.equal(close("GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"), true);
  assert.deepEqual(head("GET /a?b=c HTTP/1.1\r\nHost:  x \r\n\r\n"), {
    ok: true,
    head: { method: "GET", target: "/a?b=c", close: false },
  });
});

// --- flags and build info ---

Deno.test("run flags: HTTP hardening defaults and mistakes", () => {
  const o = parseRunFlags(["--hostname-override", "n1"]);
  assert.ok(o !== "help");
  assert.equal(o.metricsMaxConnections, 64);
  assert.equal(o.debugEndpoints, "loopback");
  const p = parseRunFlags([
    "--hostname-override",
    "n1",
    "--metrics-max-connections=8",
    "--debug-endpoints",
    "anywhere",
  ]);
  assert.ok(p !== "help");
  assert.equal(p.metricsMaxConnections, 8);
  assert.equal(p.debugEndpoints, "anywhere");
  assert.throws(
    () => parseRunFlags(["--debug-endpoints", "everywhere"]),
    /--debug-endpoints must be loopback or anywhere, not "everywhere"/,
  );
  assert.throws(
    () => parseRunFlags(["--metrics-max-connections", "0"]),
    /--metrics-max-connections must be an integer from 1 to 10000/,
  );
});

Deno.test("metrics: kube_netpol_build_info carries main.ts's version", async () => {
  const o = parseRunFlags(["--hostname-override", "n1"]);
  assert.ok(o !== "help");
  const agent = new Agent({ ...o, version: VERSION }, nullLogger);
  const text = await agent.metrics.registry.metrics();
  assert.match(text, new RegExp(`^kube_netpol_build_info\\{version="${VERSION}"\\} 1$`, "m"));
});
