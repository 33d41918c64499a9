/**
 * A small HTTP/1.1 server for the agent's GET-only endpoints, on `Deno.listen`.
 *
 * Why not `Deno.serve`: the agent runs with hostNetwork, so every pod can reach its port, and
 * `Deno.serve` has no connection cap, no header timeout and dies on the first failed accept
 * (`Too many open files`): about a thousand idle half-sent requests from one pod stopped the
 * agent. This server reads a request line and headers only (no bodies; the endpoints take none),
 * answers one request at a time per connection, and keeps every connection within fixed bounds:
 *
 * - Admission ({@link ConnectionBudget}): at most `maxConnections` connections from other hosts,
 *   at most `maxConnectionsPerPeer` from any one address, and a separate reserve of
 *   `nodeConnections` for the node itself (loopback, or a peer using the very address it
 *   connected to), so a flood from pods cannot starve kubelet probes or a node-local scraper.
 *   A connection over budget is closed at once.
 * - Time: the request head must be complete `headerTimeoutMs` after the connection opens (or after
 *   the first byte of a keep-alive request); a keep-alive connection may sit idle `idleTimeoutMs`;
 *   a response must be written within `writeTimeoutMs`. Deadlines are totals, not per read, so
 *   trickling one byte at a time buys nothing.
 * - Memory: one buffer of `maxHeaderBytes` per connection; a longer head is answered with 431, a
 *   longer request line with 414.
 * - A failed accept (EMFILE, ENFILE, ECONNABORTED, ...) is counted and retried after a short,
 *   growing pause; it never ends the server.
 *
 * The request handler is separate from all of this: it maps an {@link HttpRequest} to an
 * {@link HttpResponse} and knows nothing about sockets.
 */
import { type Logger, RateLimiter } from "./log.ts";

export interface HttpRequest {
  /** "GET", "HEAD", or any other token the client sent. */
  method: string;
  /** The request target as sent, e.g. "/healthz?verbose". */
  target: string;
  /** The target up to "?". */
  path: string;
  query: URLSearchParams;
  /** The peer's IP address; IPv4-mapped IPv6 addresses are given as plain IPv4. */
  peer: string;
}

export interface HttpResponse {
  status: number;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
}

/** Maps a request to a response; a throw becomes a 500. HEAD bodies are dropped by the server. */
export type HttpHandler = (req: HttpRequest) => HttpResponse | Promise<HttpResponse>;

export interface HttpLimits {
  /** Concurrent connections from other hosts (pods, scrapers). */
  maxConnections: number;
  /** Concurrent connections from any one address other than the node's own. */
  maxConnectionsPerPeer: number;
  /** Concurrent connections from the node itself, counted apart from the others. */
  nodeConnections: number;
  /** The whole request head must arrive within this, counted from the connection's start or
   * from the first byte of a later request on a kept-alive connection. */
  headerTimeoutMs: number;
  /** A kept-alive connection with no request in progress is closed after this. */
  idleTimeoutMs: number;
  /** A response must be handed to the kernel within this (a peer that never reads). */
  writeTimeoutMs: number;
  /** Request line plus headers, including the blank line that ends them. */
  maxHeaderBytes: number;
  maxRequestLineBytes: number;
}

export const DEFAULT_HTTP_LIMITS: Readonly<HttpLimits> = {
  maxConnections: 64,
  maxConnectionsPerPeer: 8,
  nodeConnections: 16,
  headerTimeoutMs: 5_000,
  idleTimeoutMs: 10_000,
  writeTimeoutMs: 10_000,
  maxHeaderBytes: 8 * 1024,
  maxRequestLineBytes: 4 * 1024,
};

export type RejectReason = "limit" | "peer_limit";

/** Accept error codes reported as themselves; anything else is "other" (fixed cardinality). */
export const ACCEPT_ERROR_CODES = ["EMFILE", "ENFILE", "ECONNABORTED", "ENOBUFS", "ENOMEM"];

/** What the server reports as it goes; the caller turns these into metrics. */
export interface HttpServerEvents {
  connectionRejected?(reason: RejectReason): void;
  headerTimeout?(): void;
  acceptError?(code: string): void;
  /** The number of connections open, after each change. */
  openConnections?(n: number): void;
}

export interface HttpServerOptions {
  limits?: Partial<HttpLimits>;
  events?: HttpServerEvents;
  log: Logger;
  /** Overrides which connections come from the node itself (tests). */
  isNodeLocal?: (peer: string, local: string) => boolean;
}

// --- addresses ---

/** "::ffff:10.0.0.1" -> "10.0.0.1"; other addresses unchanged. */
export function unmapIPv4(addr: string): string {
  const m = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(addr);
  return m ? m[1]! : addr;
}

/** 127.0.0.0/8 or ::1 (also in IPv4-mapped form). */
export function isLoopback(addr: string): boolean {
  const a = unmapIPv4(addr);
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a) || a === "::1";
}

/**
 * A connection from the node itself: loopback, or a peer whose address is the one it connected
 * to (the kernel picks a local destination as the source; a pod cannot complete a handshake with
 * a spoofed node address, the replies go to the node's own stack).
 */
export function isNodeLocalPeer(peer: string, local: string): boolean {
  return isLoopback(peer) || unmapIPv4(peer) === unmapIPv4(local);
}

// --- admission ---

/** Who may open one more connection; pure bookkeeping, no sockets. */
export class ConnectionBudget {
  private remote = 0;
  private node = 0;
  private readonly perPeer = new Map<string, number>();

  constructor(
    private readonly limits: Pick<
      HttpLimits,
      "maxConnections" | "maxConnectionsPerPeer" | "nodeConnections"
    >,
  ) {}

  get open(): number {
    return this.remote + this.node;
  }

  /** Takes a slot and returns "ok", or returns why not (nothing taken). */
  admit(peer: string, nodeLocal: boolean): "ok" | RejectReason {
    if (nodeLocal) {
      if (this.node >= this.limits.nodeConnections) return "limit";
      this.node++;
      return "ok";
    }
    if (this.remote >= this.limits.maxConnections) return "limit";
    const mine = this.perPeer.get(peer) ?? 0;
    if (mine >= this.limits.maxConnectionsPerPeer) return "peer_limit";
    this.remote++;
    this.perPeer.set(peer, mine + 1);
    return "ok";
  }

  /** Gives back a slot taken by admit(peer, nodeLocal) === "ok". */
  release(peer: string, nodeLocal: boolean): void {
    if (nodeLocal) {
      this.node = Math.max(0, this.node - 1);
      return;
    }
    this.remote = Math.max(0, this.remote - 1);
    const mine = (this.perPeer.get(peer) ?? 1) - 1;
    if (mine > 0) this.perPeer.set(peer, mine);
    else this.perPeer.delete(peer); // the map never holds more entries than open connections
  }
}

// --- parsing ---

export interface ParsedHead {
  method: string;
  target: string;
  /** The connection must end after this response (HTTP/1.0, Connection: close, or a body we do
   * not read). */
  close: boolean;
}

export type ParseResult =
  | { ok: true; head: ParsedHead }
  | { ok: false; status: number; reason: string };

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^([^ ]+) ([^ ]+) HTTP\/(\d)\.(\d)$/;
/** Control characters other than horizontal tab are not allowed in a field value. */
function hasControlChar(value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c === 0x7f) return true;
  }
  return false;
}

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 4096) {
    s += String.fromCharCode(...bytes.subarray(i, i + 4096));
  }
  return s;
}

/**
 * Parse a request head: the bytes up to and including the blank line. Lines end in CRLF or a
 * bare LF; anything doubtful (bare CR, folded or nameless headers, control characters,
 * conflicting lengths) is refused rather than interpreted, as the request is never forwarded.
 */
export function parseRequestHead(
  head: Uint8Array,
  maxRequestLineBytes = DEFAULT_HTTP_LIMITS.maxRequestLineBytes,
): ParseResult {
  const bad = (reason: string): ParseResult => ({ ok: false, status: 400, reason });
  const lines = latin1(head).split("\n").map((l) => l.endsWith("\r") ? l.slice(0, -1) : l);
  // The head ends with an empty line: drop it and the empty string after the last LF.
  while (lines.length && lines[lines.length - 1] === "") lines.pop();
  const requestLine = lines[0] ?? "";
  if (requestLine.length > maxRequestLineBytes) {
    return { ok: false, status: 414, reason: "request line too long" };
  }
  const m = REQUEST_LINE.exec(requestLine);
  if (!m) return bad("malformed request line");
  const [, method, target, major, minor] = m as unknown as [string, string, string, string, string];
  if (!TOKEN.test(method)) return bad("malformed method");
  if (major !== "1") return { ok: false, status: 505, reason: `HTTP/${major}.${minor}` };
  if (!target.startsWith("/") || /[^\x21-\x7e]/.test(target)) return bad("malformed target");
  let close = minor === "0";
  let contentLength: string | undefined;
  let chunked = false;
  for (const line of lines.slice(1)) {
    if (line.includes("\r")) return bad("bare CR in a header");
    if (line.startsWith(" ") || line.startsWith("\t")) return bad("folded header");
    const colon = line.indexOf(":");
    if (colon <= 0) return bad("header without a name");
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return bad("malformed header name");
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (hasControlChar(value)) return bad("control character in a header");
    switch (name.toLowerCase()) {
      case "connection":
        if (value.toLowerCase().split(",").some((t) => t.trim() === "close")) close = true;
        break;
      case "content-length":
        if (!/^\d{1,15}$/.test(value)) return bad("malformed Content-Length");
        if (contentLength !== undefined && Number(contentLength) !== Number(value)) {
          return bad("conflicting Content-Length");
        }
        contentLength = value;
        break;
      case "transfer-encoding":
        chunked = true;
        break;
    }
  }
  if (chunked && contentLength !== undefined) {
    return bad("both Transfer-Encoding and Content-Length");
  }
  // A body would be read as the next request: answer this one and end the connection instead.
  if (chunked || Number(contentLength ?? 0) > 0) close = true;
  return { ok: true, head: { method, target, close } };
}

/** Index just past the first empty line (LF LF or LF CR LF) at or after `from`, or -1. */
function findHeadEnd(buf: Uint8Array, from: number, to: number): number {
  for (let i = from; i < to; i++) {
    if (buf[i] !== 10) continue;
    if (i + 1 < to && buf[i + 1] === 10) return i + 2;
    if (i + 2 < to && buf[i + 1] === 13 && buf[i + 2] === 10) return i + 3;
  }
  return -1;
}

type HeadRead =
  | { kind: "head"; bytes: Uint8Array }
  | { kind: "eof" } // closed cleanly between requests
  | { kind: "truncated" } // closed mid-head
  | { kind: "too-large"; status: number; reason: string };

/** Reads request heads from a connection into one fixed buffer (pipelined bytes are kept). */
class HeadReader {
  private readonly buf: Uint8Array;
  private len = 0;

  constructor(private readonly conn: Deno.Conn, private readonly limits: HttpLimits) {
    this.buf = new Uint8Array(limits.maxHeaderBytes);
  }

  /** The whole buffer, for discarding input once the connection is ending. */
  scratch(): Uint8Array {
    this.len = 0;
    return this.buf;
  }

  get buffered(): number {
    return this.len;
  }

  /** Read once; false at end of stream. */
  async fill(): Promise<boolean> {
    const n = await this.conn.read(this.buf.subarray(this.len));
    if (n === null) return false;
    this.len += n;
    return true;
  }

  private consume(n: number): void {
    this.buf.copyWithin(0, n, this.len);
    this.len -= n;
  }

  async readHead(): Promise<HeadRead> {
    let scanFrom = 0;
    for (;;) {
      // Empty lines before a request line are allowed (RFC 9112, 2.2).
      let skip = 0;
      while (skip < this.len && (this.buf[skip] === 13 || this.buf[skip] === 10)) skip++;
      if (skip) {
        this.consume(skip);
        scanFrom = 0;
      }
      const end = findHeadEnd(this.buf, scanFrom, this.len);
      if (end >= 0) {
        const bytes = this.buf.slice(0, end);
        this.consume(end);
        return { kind: "head", bytes };
      }
      const lineLimit = this.limits.maxRequestLineBytes;
      if (this.len > lineLimit && this.buf.subarray(0, lineLimit + 1).indexOf(10) < 0) {
        return { kind: "too-large", status: 414, reason: "request line too long" };
      }
      if (this.len === this.buf.length) {
        return { kind: "too-large", status: 431, reason: "request head too large" };
      }
      scanFrom = Math.max(0, this.len - 2);
      if (!await this.fill()) return this.len === 0 ? { kind: "eof" } : { kind: "truncated" };
    }
  }
}

// --- responses ---

const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  414: "URI Too Long",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

const encoder = new TextEncoder();

/** The response as bytes; HEAD gets the GET headers (Content-Length included) and no body. */
export function serializeResponse(res: HttpResponse, head: boolean, close: boolean): Uint8Array {
  const body = typeof res.body === "string"
    ? encoder.encode(res.body)
    : res.body ?? new Uint8Array();
  let text = `HTTP/1.1 ${res.status} ${REASONS[res.status] ?? "Status"}\r\n`;
  for (const [k, v] of Object.entries(res.headers ?? {})) {
    const name = k.toLowerCase();
    if (name === "content-length" || name === "connection") continue;
    text += `${k}: ${v}\r\n`;
  }
  text += `content-length: ${body.length}\r\n`;
  if (close) text += "connection: close\r\n";
  text += "\r\n";
  const top = encoder.encode(text);
  if (head || body.length === 0) return top;
  const out = new Uint8Array(top.length + body.length);
  out.set(top);
  out.set(body, top.length);
  return out;
}

function plain(status: number, body: string): HttpResponse {
  return { status, headers: { "content-type": "text/plain; charset=utf-8" }, body };
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

function errorCode(e: unknown): string {
  const code = (e as { code?: unknown })?.code;
  return typeof code === "string" && ACCEPT_ERROR_CODES.includes(code) ? code : "other";
}

/** Errors that only mean the peer went away or we closed the connection ourselves. */
function isConnectionGone(e: unknown): boolean {
  return e instanceof Deno.errors.Interrupted || e instanceof Deno.errors.BadResource ||
    e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
    e instanceof Deno.errors.ConnectionAborted || e instanceof Deno.errors.NotConnected;
}

/** At most this much input is read and dropped after an error answer, within the write timeout. */
const DRAIN_BYTES = 64 * 1024;
const MIN_ACCEPT_BACKOFF_MS = 5;
const MAX_ACCEPT_BACKOFF_MS = 1_000;

/**
 * Serves `handler` on already bound listeners until close(). Never throws from its loops: every
 * error ends at most one connection, and accept errors only pause accepting.
 */
export class HttpServer {
  readonly limits: HttpLimits;
  private readonly budget: ConnectionBudget;
  private readonly events: HttpServerEvents;
  private readonly log: Logger;
  private readonly isNodeLocal: (peer: string, local: string) => boolean;
  private readonly conns = new Set<Deno.Conn>();
  private readonly tasks = new Set<Promise<void>>();
  private readonly loops: Promise<void>[];
  private readonly wakeups = new Set<() => void>();
  private readonly rejectLog = new RateLimiter(0.2, 3);
  private readonly acceptLog = new RateLimiter(0.2, 3);
  private closed = false;
  private closing?: Promise<void>;

  constructor(
    private readonly listeners: Deno.Listener[],
    private readonly handler: HttpHandler,
    opts: HttpServerOptions,
  ) {
    this.limits = { ...DEFAULT_HTTP_LIMITS, ...opts.limits };
    this.budget = new ConnectionBudget(this.limits);
    this.events = opts.events ?? {};
    this.log = opts.log;
    this.isNodeLocal = opts.isNodeLocal ?? isNodeLocalPeer;
    this.loops = listeners.map((l) =>
      this.acceptLoop(l).catch((e) => this.log.error("http accept loop failed", { err: e }))
    );
  }

  /** Stop accepting, end every open connection, wait for all of it; idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      for (const l of this.listeners) closeQuietly(l);
      for (const wake of this.wakeups) wake();
      for (const c of this.conns) closeQuietly(c);
      await Promise.all(this.loops);
      await Promise.all([...this.tasks]);
    })();
    return this.closing;
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakeups.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeups.add(done);
    });
  }

  private async acceptLoop(listener: Deno.Listener): Promise<void> {
    let backoff = 0;
    while (!this.closed) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
        backoff = 0;
      } catch (e) {
        if (this.closed) return;
        if (e instanceof Deno.errors.BadResource) {
          this.log.error("http listener closed unexpectedly; no longer serving", { err: e });
          return;
        }
        // Out of descriptors or a connection that died in the backlog: keep the server, wait a
        // little (open connections time out meanwhile) and accept again.
        const code = errorCode(e);
        this.events.acceptError?.(code);
        backoff = Math.min(Math.max(backoff * 2, MIN_ACCEPT_BACKOFF_MS), MAX_ACCEPT_BACKOFF_MS);
        if (this.acceptLog.take()) {
          this.log.warn("http accept failed; retrying", {
            code,
            err: e,
            retryInMs: backoff,
            suppressedBefore: this.acceptLog.drainSuppressed(),
          });
        }
        await this.pause(backoff);
        continue;
      }
      this.admit(conn);
    }
  }

  private admit(conn: Deno.Conn): void {
    const remote = conn.remoteAddr as Deno.NetAddr;
    const peer = unmapIPv4(remote.hostname);
    const nodeLocal = this.isNodeLocal(peer, (conn.localAddr as Deno.NetAddr).hostname);
    const verdict = this.closed ? "limit" : this.budget.admit(peer, nodeLocal);
    if (verdict !== "ok") {
      closeQuietly(conn);
      this.events.connectionRejected?.(verdict);
      if (this.rejectLog.take()) {
        this.log.warn("http connection refused: too many open connections", {
          reason: verdict,
          peer,
          suppressedBefore: this.rejectLog.drainSuppressed(),
        });
      }
      return;
    }
    this.conns.add(conn);
    this.events.openConnections?.(this.budget.open);
    const task = this.serveConnection(conn, peer).finally(() => {
      closeQuietly(conn);
      this.conns.delete(conn);
      this.budget.release(peer, nodeLocal);
      this.events.openConnections?.(this.budget.open);
      this.tasks.delete(task);
    });
    this.tasks.add(task);
  }

  private async serveConnection(conn: Deno.Conn, peer: string): Promise<void> {
    const { limits } = this;
    const reader = new HeadReader(conn, limits);
    let timer: ReturnType<typeof setTimeout> | undefined;
    let expired: "header" | "idle" | "write" | undefined;
    const arm = (ms: number, why: "header" | "idle" | "write") => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        expired = why;
        closeQuietly(conn); // a pending read or write then fails with Interrupted
      }, ms);
    };
    try {
      for (let first = true;; first = false) {
        if (!first && reader.buffered === 0) {
          arm(limits.idleTimeoutMs, "idle");
          if (!await reader.fill()) return;
        }
        arm(limits.headerTimeoutMs, "header");
        const got = await reader.readHead();
        clearTimeout(timer);
        if (got.kind === "eof" || got.kind === "truncated") return;
        let res: HttpResponse;
        let method = "";
        let close = true;
        if (got.kind === "too-large") {
          res = plain(got.status, `${got.reason}\n`);
        } else {
          const parsed = parseRequestHead(got.bytes, limits.maxRequestLineBytes);
          if (!parsed.ok) {
            res = plain(parsed.status, `${parsed.reason}\n`);
          } else {
            ({ method, close } = parsed.head);
            res = await this.handle(parsed.head, peer);
          }
        }
        arm(limits.writeTimeoutMs, "write");
        await writeAll(conn, serializeResponse(res, method === "HEAD", close));
        if (res.status >= 400 && close) {
          // Unread input would make our close a reset that can destroy the answer before the
          // client reads it: stop sending, then discard a bounded amount of what still comes.
          await conn.closeWrite();
          for (let left = DRAIN_BYTES; left > 0;) {
            const n = await conn.read(reader.scratch());
            if (n === null) break;
            left -= n;
          }
        }
        clearTimeout(timer);
        if (close) return;
      }
    } catch (e) {
      if (expired === "header") {
        this.events.headerTimeout?.();
        const v = this.log.v(4);
        if (v.enabled) v.info("http request head timed out", { peer });
      } else if (!expired && !this.closed && !isConnectionGone(e)) {
        this.log.warn("http connection failed", { peer, err: e });
      }
    } finally {
      clearTimeout(timer);
    }
  }

  private async handle(head: ParsedHead, peer: string): Promise<HttpResponse> {
    const q = head.target.indexOf("?");
    const req: HttpRequest = {
      method: head.method,
      target: head.target,
      path: q < 0 ? head.target : head.target.slice(0, q),
      query: new URLSearchParams(q < 0 ? "" : head.target.slice(q + 1)),
      peer,
    };
    try {
      return await this.handler(req);
    } catch (e) {
      this.log.error("http handler failed", { path: req.path, err: e });
      return plain(500, "internal error\n");
    }
  }
}
