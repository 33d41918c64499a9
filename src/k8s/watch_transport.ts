/**
 * The watch half of an informer (list_watch.ts), on Deno's fetch. client-node's own `Watch`, used
 * before, lost abruptly cut connections and its own 30 s inactivity aborts under Deno without
 * ever calling back (the informer then stopped for good, silently).
 *
 * What it adds:
 *   - `allowWatchBookmarks` + server-side `timeoutSeconds`: the API server ends every watch itself
 *     after a few minutes and sends a bookmark about every minute, so a healthy watch is never
 *     silent for long;
 *   - a stall watchdog: no byte for `stallTimeoutMs` (default a bookmark interval plus slack, see
 *     source.ts) means the connection is dead (half-open TCP, a proxy that swallowed the FIN, a
 *     hung API server): the request is aborted and ListWatch re-watches at once from its last
 *     resourceVersion;
 *   - objects are slimmed (see slim.ts) before ListWatch hands them on.
 */
import type { WatchSource } from "./list_watch.ts";
import { type Clock, realClock, type TimerHandle } from "../clock.ts";
import type { ObjectKind } from "../policy/types.ts";
import type { ApiClient } from "./api_client.ts";
import { slimObject } from "./slim.ts";

/**
 * The API server's watch cache sends every watcher that asked for bookmarks one about every
 * minute (and one shortly before the watch's timeoutSeconds ends it), so a healthy watch is never
 * silent much longer than that. The default allows one bookmark interval plus 15 s of slack for a
 * busy server; silence beyond it is a hung watch. The API documents no interval, so the stall
 * only counts against readiness once this server was seen to send bookmarks at all (a server
 * without them gets its quiet watches re-opened at this period, without failing /readyz).
 */
export const DEFAULT_STALL_TIMEOUT_MS = 75_000;

export interface WatchTransportOptions {
  /** No byte on an open watch for this long: the watch is presumed dead. */
  stallTimeoutMs: number;
  /** Server-side watch duration; called per watch so it can be jittered. */
  watchTimeoutSeconds: () => number;
  /** Time for the watchdog (tests pass a manual clock). */
  clock?: Clock;
}

export interface WatchHooks {
  /** A watch request is about to be sent; the first call means the initial list was delivered. */
  watchStarting(): void;
  /** The server answered 200: events can flow. */
  connected(): void;
  /** An event line arrived; `bookmark` when it was a BOOKMARK. */
  activity(bookmark: boolean): void;
  /** The watchdog abandoned a silent watch after `silentMs`. */
  stalled(silentMs: number): void;
  /** The server sent an ERROR event (410 is handled by ListWatch with a relist). */
  errorEvent(status: unknown): void;
}

/** An error ListWatch understands: `statusCode` 410 makes it relist; anything else stops it. */
export class WatchHttpError extends Error {
  constructor(readonly statusCode: number, message: string) {
    super(message);
    this.name = "WatchHttpError";
  }
}

/** Streams that lived this long before ending cleanly were ended by the server's timeout. */
const LONG_LIVED_MS = 5_000;

type WatchCallback = (phase: string, apiObj: unknown, watchObj?: unknown) => void;
type DoneCallback = (err: unknown) => void;

export class DenoWatchTransport implements WatchSource {
  private closed = false;
  private readonly clock: Clock;

  constructor(
    private readonly client: ApiClient,
    private readonly kind: ObjectKind,
    private readonly opts: WatchTransportOptions,
    private readonly hooks: WatchHooks,
  ) {
    this.clock = opts.clock ?? realClock;
  }

  /**
   * No more watches: ListWatch may still call watch() after stop() (a list or a reconnect delay
   * that was in flight); those get an already-aborted controller and never call back.
   */
  close(): void {
    this.closed = true;
  }

  /**
   * The WatchSource contract: `done` is called exactly once when the stream ends
   * or fails, but never after the returned controller was aborted by ListWatch (stop/restart).
   */
  watch(
    path: string,
    queryParams: Record<string, string | undefined>,
    callback: WatchCallback,
    done: DoneCallback,
  ): Promise<AbortController> {
    const external = new AbortController();
    if (this.closed) {
      external.abort();
      return Promise.resolve(external);
    }
    this.hooks.watchStarting();
    // Run detached: ListWatch stores the controller before any callback can fire.
    void this.run(path, queryParams, callback, done, external);
    return Promise.resolve(external);
  }

  private async run(
    path: string,
    queryParams: Record<string, string | undefined>,
    callback: WatchCallback,
    done: DoneCallback,
    external: AbortController,
  ): Promise<void> {
    const internal = new AbortController();
    const signal = AbortSignal.any([external.signal, internal.signal]);
    const clock = this.clock;
    let stalled = false;
    let lastByte = clock.now();
    const startedAt = clock.now();
    const tickMs = Math.max(50, Math.min(1000, this.opts.stallTimeoutMs / 4));
    let watchdog: TimerHandle | undefined;
    const tick = () => {
      const silent = clock.now() - lastByte;
      if (silent >= this.opts.stallTimeoutMs) {
        stalled = true;
        this.hooks.stalled(silent);
        internal.abort();
        return;
      }
      watchdog = clock.setTimeout(tick, tickMs);
    };
    watchdog = clock.setTimeout(tick, tickMs);

    const query: Record<string, string> = {
      watch: "true",
      allowWatchBookmarks: "true",
      timeoutSeconds: String(this.opts.watchTimeoutSeconds()),
    };
    for (const [k, v] of Object.entries(queryParams)) if (v !== undefined) query[k] = v;

    let err: unknown = null;
    try {
      const res = await this.client.get(path, query, signal);
      if (res.status !== 200) {
        const text = await res.text().catch(() => "");
        throw new WatchHttpError(
          res.status,
          `watch ${path}: HTTP ${res.status} ${text.slice(0, 200)}`,
        );
      }
      lastByte = clock.now();
      this.hooks.connected();
      const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
      let pending = "";
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended) break;
        lastByte = clock.now();
        pending += value;
        let nl: number;
        while ((nl = pending.indexOf("\n")) >= 0) {
          const line = pending.slice(0, nl).trim();
          pending = pending.slice(nl + 1);
          if (line) this.deliver(line, callback);
        }
      }
      if (pending.trim()) this.deliver(pending.trim(), callback);
    } catch (e) {
      err = e;
    } finally {
      clock.clearTimeout(watchdog);
    }
    if (external.signal.aborted) return; // ListWatch stopped or replaced this watch itself
    if (stalled) {
      // ListWatch treats TimeoutError as "re-watch now from the last resourceVersion".
      done(new DOMException(`${this.kind} watch silent too long`, "TimeoutError"));
    } else if (err) {
      done(err);
    } else if (clock.now() - startedAt >= LONG_LIVED_MS) {
      // The server's timeoutSeconds ran out: reconnect at once rather than after ListWatch's
      // backoff for quiet streams (up to 30 s during which changes would wait).
      done(new DOMException(`${this.kind} watch ended by server`, "TimeoutError"));
    } else {
      done(null); // short-lived clean end: let ListWatch's backoff prevent a tight loop
    }
  }

  private deliver(line: string, callback: WatchCallback): void {
    let ev: { type?: unknown; object?: unknown };
    try {
      ev = JSON.parse(line);
    } catch {
      this.hooks.errorEvent({ message: "unparsable watch line", line: line.slice(0, 200) });
      return;
    }
    const type = typeof ev.type === "string" ? ev.type : "";
    this.hooks.activity(type === "BOOKMARK");
    switch (type) {
      case "ADDED":
      case "MODIFIED":
      case "DELETED":
        callback(type, slimObject(this.kind, ev.object), ev);
        return;
      case "ERROR":
        this.hooks.errorEvent(ev.object);
        callback(type, ev.object ?? {}, ev);
        return;
      default: // BOOKMARK: only its resourceVersion matters to ListWatch
        callback(type, ev.object ?? {}, ev);
    }
  }
}
