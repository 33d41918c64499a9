/**
 * The agent's HTTP endpoints: Prometheus metrics, liveness, readiness and a JSON view of the
 * policies in force. A thin adapter: every answer comes from the AgentMetrics registry or the
 * HealthChecks callbacks the agent (src/cli/run.ts) wires in; nothing here knows about packets or
 * policies, and nothing here knows about sockets either (connection handling, caps and timeouts
 * live in http_server.ts).
 *
 * Exposure: the agent runs with hostNetwork, so whatever listens on the bind address is reachable
 * from every pod. `/metrics`, `/healthz` and `/readyz` are served to anyone who reaches the port;
 * `/debug/*` (policy names, invalid-object errors) only to loopback peers unless
 * `--debug-endpoints=anywhere`.
 */
import type { AgentMetrics } from "./metrics.ts";
import type { Logger } from "./log.ts";
import {
  type HttpHandler,
  type HttpLimits,
  type HttpRequest,
  type HttpResponse,
  HttpServer,
  isLoopback,
} from "./http_server.ts";

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

/** Who may read `/debug/*`: loopback peers only (default), or anyone who reaches the port. */
export type DebugEndpoints = "loopback" | "anywhere";
export const DEBUG_ENDPOINTS: readonly DebugEndpoints[] = ["loopback", "anywhere"];

export interface ServerOptions {
  /** Concurrent connections from other hosts; more are closed at once (default 64). */
  maxConnections?: number;
  /** Default "loopback". */
  debugEndpoints?: DebugEndpoints;
  /** Everything else http_server.ts bounds (timeouts, sizes); for tests. */
  limits?: Partial<HttpLimits>;
  /** Overrides which peers count as the node itself (tests). */
  isNodeLocal?: (peer: string, local: string) => boolean;
}

function text(status: number, body: string, headers: Record<string, string> = {}): HttpResponse {
  return {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
    body,
  };
}

/** /healthz and /readyz: 200 "ok" or 503 with the reason; `?verbose` shows the detail on 200 too. */
function probe(
  name: string,
  check: () => HealthCheckResult,
  req: HttpRequest,
  log: Logger,
): HttpResponse {
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
      req.query.has("verbose") && result.detail ? `ok: ${result.detail}\n` : "ok\n",
    );
  }
  return text(503, `${result.detail || `${name} failed`}\n`);
}

const KNOWN_PATHS = ["/metrics", "/healthz", "/readyz", "/debug/policies"];

/** The endpoints as a request -> response function (no sockets: see http_server.ts). */
export function makeHandler(
  metrics: AgentMetrics,
  health: HealthChecks,
  log: Logger,
  debugEndpoints: DebugEndpoints = "loopback",
): HttpHandler {
  return async (req) => {
    const debug = log.v(4);
    if (debug.enabled) {
      debug.info("http request", { method: req.method, path: req.path, peer: req.peer });
    }
    if (!KNOWN_PATHS.includes(req.path)) return text(404, "404 page not found\n");
    if (
      req.path.startsWith("/debug/") && debugEndpoints === "loopback" && !isLoopback(req.peer)
    ) {
      return text(
        403,
        "/debug endpoints are served to loopback clients only (see --debug-endpoints)\n",
      );
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text(405, "method not allowed\n", { allow: "GET, HEAD" });
    }
    switch (req.path) {
      case "/metrics":
        try {
          const body = await metrics.registry.metrics();
          return { status: 200, headers: { "content-type": metrics.registry.contentType }, body };
        } catch (e) {
          log.error("collecting metrics failed", { err: e });
          return text(500, `collecting metrics failed: ${(e as Error)?.message ?? e}\n`);
        }
      case "/healthz":
        return probe("liveness", () => health.live(), req, log);
      case "/readyz":
        return probe("readiness", () => health.ready(), req, log);
      default: // /debug/policies
        try {
          return {
            status: 200,
            headers: { "content-type": "application/json; charset=utf-8" },
            body: JSON.stringify(health.debugPolicies(), null, 2) + "\n",
          };
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
 * Listen on the address (a string, or `address` among the options) and serve the endpoints.
 * Throws BindAddressError for a malformed address and Deno's own errors (AddrInUse, ...) when the
 * socket cannot be bound, so main can exit clearly.
 */
export function startServer(
  addrOrOptions: string | ServerOptions & { address: string },
  metrics: AgentMetrics,
  health: HealthChecks,
  log: Logger,
): RunningServer {
  const opts: ServerOptions = typeof addrOrOptions === "string" ? {} : addrOrOptions;
  const { hostname, port } = parseBindAddress(
    typeof addrOrOptions === "string" ? addrOrOptions : addrOrOptions.address,
  );
  const listen = (host: string) => Deno.listen({ hostname: host, port, transport: "tcp" });
  let listener: Deno.TcpListener;
  if (hostname !== "") {
    listener = listen(hostname);
  } else {
    // All interfaces: "::" is dual-stack on Linux (bindv6only=0); on a node with IPv6 disabled
    // fall back to IPv4 only, as Go does.
    try {
      listener = listen("::");
    } catch (e) {
      if (isPermissionOrInUse(e)) throw e;
      listener = listen("0.0.0.0");
    }
  }
  // Series that exist from the start, so rate() and alerts see a 0 rather than nothing.
  for (const reason of ["limit", "peer_limit"]) metrics.httpConnectionsRejected.inc({ reason }, 0);
  const server = new HttpServer(
    [listener],
    makeHandler(metrics, health, log, opts.debugEndpoints),
    {
      log,
      limits: {
        ...opts.limits,
        ...(opts.maxConnections !== undefined ? { maxConnections: opts.maxConnections } : {}),
      },
      ...(opts.isNodeLocal ? { isNodeLocal: opts.isNodeLocal } : {}),
      events: {
        connectionRejected: (reason) => metrics.httpConnectionsRejected.inc({ reason }),
        headerTimeout: () => metrics.httpHeaderTimeouts.inc(),
        acceptError: (code) => metrics.httpAcceptErrors.inc({ code }),
        openConnections: (n) => metrics.httpOpenConnections.set(n),
      },
    },
  );
  const bound = listener.addr;
  const { limits } = server;
  log.info("serving metrics and health endpoints", {
    maxConnections: limits.maxConnections,
    debugEndpoints: opts.debugEndpoints ?? "loopback",
    address: `${
      bound.hostname.includes(":") ? `[${bound.hostname}]` : bound.hostname
    }:${bound.port}`,
  });
  return {
    port: bound.port,
    close: () => server.close(),
  };
}
