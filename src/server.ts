/**
 * The agent's HTTP endpoints: Prometheus metrics, liveness, readiness and a JSON view of the
 * policies in force. A thin adapter: every answer comes from the AgentMetrics registry or the
 * HealthChecks callbacks main.ts wires in; nothing here knows about packets or policies.
 */
import type { AgentMetrics } from "./metrics.ts";
import type { Logger } from "./log.ts";

export interface HealthCheckResult {
  ok: boolean;
  detail: string;
}

export interface HealthChecks {
  /** Liveness, e.g. the verdict loop's heartbeat is not stale. */
  live(): HealthCheckResult;
  /** Readiness: informers synced and rules installed. */
  ready(): HealthCheckResult;
  /** JSON for GET /debug/policies. */
  debugPolicies(): unknown;
}

export interface RunningServer {
  /** The bound port (useful with port 0). */
  port: number;
  /** Stop listening and finish in-flight requests; idempotent. */
  close(): Promise<void>;
}

export class BindAddressError extends Error {
  override name = "BindAddressError";
}

export interface BindAddress {
  /** Empty means every interface, as in Go's `:9080`. */
  hostname: string;
  port: number;
}

/**
 * Parse a Go-style listen address: `:9080` (all interfaces), `127.0.0.1:9080`, `[::1]:9080`,
 * `localhost:9080`. IPv6 literals need brackets, exactly as Go's net.SplitHostPort demands, so an
 * address like `::1:9080` is refused rather than guessed at.
 */
export function parseBindAddress(addr: string): BindAddress {
  const bad = (why: string) =>
    new BindAddressError(
      `invalid bind address ${JSON.stringify(addr)}: ${why} ` +
        `(expected host:port, e.g. ":9080", "127.0.0.1:9080" or "[::1]:9080")`,
    );
  let host: string;
  let portText: string;
  if (addr.startsWith("[")) {
    const close = addr.indexOf("]");
    if (close < 0) throw bad("missing ']'");
    host = addr.slice(1, close);
    if (addr[close + 1] !== ":") throw bad("missing port after ']'");
    portText = addr.slice(close + 2);
    if (!host.includes(":")) throw bad("brackets are only for IPv6 addresses");
  } else {
    const colon = addr.lastIndexOf(":");
    if (colon < 0) throw bad("missing port");
    host = addr.slice(0, colon);
    portText = addr.slice(colon + 1);
    if (host.includes(":")) throw bad("IPv6 addresses must be in brackets");
  }
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) {
    throw bad(`port must be a number from 0 to 65535, not ${JSON.stringify(portText)}`);
  }
  if (/[\s\/\[\]]/.test(host)) throw bad(`bad host ${JSON.stringify(host)}`);
  return { hostname: host, port: Number(portText) };
}

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

/** /healthz and /readyz: 200 "ok" or 503 with the reason; `?verbose` shows the detail on 200 too. */
function probe(name: string, check: () => HealthCheckResult, url: URL, log: Logger): Response {
  let result: HealthCheckResult;
  try {
    result = check();
  } catch (e) {
    log.error("health check threw", { check: name, err: e });
    result = { ok: false, detail: `${name} check failed: ${(e as Error)?.message ?? e}` };
  }
  if (result.ok) {
    return text(
      200,
      url.searchParams.has("verbose") && result.detail ? `ok: ${result.detail}\n` : "ok\n",
    );
  }
  return text(503, `${result.detail || `${name} failed`}\n`);
}

function makeHandler(metrics: AgentMetrics, health: HealthChecks, log: Logger) {
  return async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    const debug = log.v(4);
    if (debug.enabled) debug.info("http request", { method: req.method, path: url.pathname });
    const known = ["/metrics", "/healthz", "/readyz", "/debug/policies"];
    if (!known.includes(url.pathname)) return text(404, "404 page not found\n");
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text(405, "method not allowed\n", { allow: "GET, HEAD" });
    }
    switch (url.pathname) {
      case "/metrics":
        try {
          const body = await metrics.registry.metrics();
          return new Response(body, {
            headers: { "content-type": metrics.registry.contentType },
          });
        } catch (e) {
          log.error("collecting metrics failed", { err: e });
          return text(500, `collecting metrics failed: ${(e as Error)?.message ?? e}\n`);
        }
      case "/healthz":
        return probe("liveness", () => health.live(), url, log);
      case "/readyz":
        return probe("readiness", () => health.ready(), url, log);
      default: // /debug/policies
        try {
          return new Response(JSON.stringify(health.debugPolicies(), null, 2) + "\n", {
            headers: { "content-type": "application/json; charset=utf-8" },
          });
        } catch (e) {
          log.error("rendering /debug/policies failed", { err: e });
          return text(500, `rendering policies failed: ${(e as Error)?.message ?? e}\n`);
        }
    }
  };
}

function isPermissionOrInUse(e: unknown): boolean {
  return e instanceof Deno.errors.AddrInUse || e instanceof Deno.errors.NotCapable ||
    e instanceof Deno.errors.PermissionDenied;
}

/**
 * Listen on `addr` and serve the endpoints. Throws BindAddressError for a malformed address and
 * Deno's own errors (AddrInUse, ...) when the socket cannot be bound, so main can exit clearly.
 */
export function startServer(
  addr: string,
  metrics: AgentMetrics,
  health: HealthChecks,
  log: Logger,
): RunningServer {
  const { hostname, port } = parseBindAddress(addr);
  const handler = makeHandler(metrics, health, log);
  const serve = (host: string) =>
    Deno.serve({
      hostname: host,
      port,
      onListen: () => {}, // Deno's default prints to stdout; we log instead
      onError: (e) => {
        log.error("http handler failed", { err: e });
        return text(500, "internal error\n");
      },
    }, handler);

  let server: Deno.HttpServer<Deno.NetAddr>;
  if (hostname !== "") {
    server = serve(hostname);
  } else {
    // All interfaces: "::" is dual-stack on Linux (bindv6only=0); on a node with IPv6 disabled
    // fall back to IPv4 only, as Go does.
    try {
      server = serve("::");
    } catch (e) {
      if (isPermissionOrInUse(e)) throw e;
      server = serve("0.0.0.0");
    }
  }
  const bound = server.addr;
  log.info("serving metrics and health endpoints", {
    address: `${
      bound.hostname.includes(":") ? `[${bound.hostname}]` : bound.hostname
    }:${bound.port}`,
  });
  let closing: Promise<void> | undefined;
  return {
    port: bound.port,
    close: () => closing ??= server.shutdown(),
  };
}
