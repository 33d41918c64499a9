/**
 * A small fake Kubernetes API server for tests: the real list/watch protocol for pods, namespaces
 * and networkpolicies on 127.0.0.1, with controls for the failures an informer must survive.
 *
 * It speaks HTTP/1.1 by hand over a TCP listener (not Deno.serve) so that tests control the
 * socket: a watch can be cut mid-stream (FIN with no terminating chunk), kept silent, or ended
 * cleanly. Resource versions are one counter across kinds, as etcd's are; history is kept per
 * event so watches resume from any resourceVersion until `compact()` drops it (then 410).
 */

export type FakeKind = "pods" | "namespaces" | "networkpolicies";

interface KubeObject {
  metadata: { name: string; namespace?: string; resourceVersion?: string; [k: string]: unknown };
  [k: string]: unknown;
}

interface HistoryEvent {
  rv: number;
  kind: FakeKind;
  type: "ADDED" | "MODIFIED" | "DELETED";
  object: KubeObject;
}

interface OpenWatch {
  kind: FakeKind;
  conn: Deno.Conn;
  /** A stalled watch gets nothing more written: a dead connection the client cannot see. */
  stalled: boolean;
  bookmarks: boolean;
  closed: boolean;
  finish(mode: "graceful" | "cut"): void;
}

const KIND_INFO: Record<FakeKind, { path: string; listKind: string; apiVersion: string }> = {
  pods: { path: "/api/v1/pods", listKind: "PodList", apiVersion: "v1" },
  namespaces: { path: "/api/v1/namespaces", listKind: "NamespaceList", apiVersion: "v1" },
  networkpolicies: {
    path: "/apis/networking.k8s.io/v1/networkpolicies",
    listKind: "NetworkPolicyList",
    apiVersion: "networking.k8s.io/v1",
  },
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function keyOf(o: KubeObject): string {
  return `${o.metadata.namespace ?? ""}/${o.metadata.name}`;
}

export interface RequestRecord {
  kind: FakeKind | "other";
  watch: boolean;
  query: URLSearchParams;
  /** The Authorization header as received. */
  authorization: string | undefined;
}

export interface FakeApiServerOptions {
  /** Serve HTTPS with this certificate and key (PEM) instead of plain HTTP. */
  tls?: { cert: string; key: string };
}

export interface KubeconfigOptions {
  /** PEM file of the CA the client trusts (HTTPS servers; else insecure-skip-tls-verify). */
  caFile?: string;
  /**
   * Authenticate with this token file the way in-cluster config does (the `tokenFile`
   * auth provider) instead of a fixed token.
   */
  tokenFile?: string;
}

export class FakeApiServer {
  readonly port: number;
  readonly url: string;
  /** When set, requests without `Authorization: Bearer <requiredToken>` get 401. */
  requiredToken?: string;
  /** Every request received, in order (tests assert on query parameters and counts). */
  readonly requests: RequestRecord[] = [];
  /** Delay before answering lists / watches (slow API server). */
  listDelayMs: Partial<Record<FakeKind, number>> = {};
  watchDelayMs = 0;
  /** Answer every request with this HTTP status instead (API outage); 0 = normal. */
  failStatus = 0;
  /** Send a BOOKMARK this often on watches that allow them; 0 = never (a quiet server). */
  bookmarkIntervalMs = 0;

  private rv = 100;
  private compactedRV = 0;
  private readonly store: Record<FakeKind, Map<string, KubeObject>> = {
    pods: new Map(),
    namespaces: new Map(),
    networkpolicies: new Map(),
  };
  private history: HistoryEvent[] = [];
  private readonly watches = new Set<OpenWatch>();
  private readonly conns = new Set<Deno.Conn>();
  private readonly listener: Deno.Listener;
  private readonly acceptLoop: Promise<void>;
  private readonly handlers = new Set<Promise<void>>();
  private readonly continuations = new Map<string, { rv: number; items: KubeObject[] }>();
  private closed = false;

  constructor(opts: FakeApiServerOptions = {}) {
    this.listener = opts.tls
      ? Deno.listenTls({ hostname: "127.0.0.1", port: 0, ...opts.tls })
      : Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.listener.addr as Deno.NetAddr).port;
    this.url = `${opts.tls ? "https" : "http"}://127.0.0.1:${this.port}`;
    this.acceptLoop = this.accept();
  }

  /**
   * A kubeconfig file pointing at this server (plain http needs insecure-skip-tls-verify), in
   * JSON (valid YAML too): the agent then needs no YAML parser, as in a cluster.
   */
  async writeKubeconfig(dir: string, opts: KubeconfigOptions = {}): Promise<string> {
    const path = `${dir}/kubeconfig`;
    const user = opts.tokenFile
      ? { "auth-provider": { name: "tokenFile", config: { tokenFile: opts.tokenFile } } }
      : { token: "fake-token" };
    const cluster = opts.caFile
      ? { server: this.url, "certificate-authority": opts.caFile }
      : { server: this.url, "insecure-skip-tls-verify": true };
    const config = {
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "fake", cluster }],
      users: [{ name: "tester", user }],
      contexts: [{ name: "fake", context: { cluster: "fake", user: "tester" } }],
      "current-context": "fake",
    };
    await Deno.writeTextFile(path, JSON.stringify(config, null, 2) + "\n");
    return path;
  }

  // ------------------------------------------------------------------ object controls

  /** Create or replace an object; open watches see ADDED or MODIFIED. Returns its new RV. */
  apply(kind: FakeKind, object: KubeObject): number {
    const o = structuredClone(object);
    const rv = ++this.rv;
    o.metadata.resourceVersion = String(rv);
    const existed = this.store[kind].has(keyOf(o));
    this.store[kind].set(keyOf(o), o);
    this.emit({ rv, kind, type: existed ? "MODIFIED" : "ADDED", object: o });
    return rv;
  }

  /** Delete an object; open watches see DELETED. */
  delete(kind: FakeKind, namespace: string | undefined, name: string): void {
    const key = `${namespace ?? ""}/${name}`;
    const o = this.store[kind].get(key);
    if (!o) throw new Error(`fake apiserver: no ${kind} ${key}`);
    this.store[kind].delete(key);
    const rv = ++this.rv;
    this.emit({
      rv,
      kind,
      type: "DELETED",
      object: { ...o, metadata: { ...o.metadata, resourceVersion: String(rv) } },
    });
  }

  /**
   * Delete an object whose DELETED event is lost to every watcher (history compacted before
   * anyone saw it): only a relist can reveal it is gone.
   */
  deleteUnseen(kind: FakeKind, namespace: string | undefined, name: string): void {
    this.store[kind].delete(`${namespace ?? ""}/${name}`);
    this.rv++;
  }

  /**
   * Compact history (etcd compaction): watches from an older resourceVersion get 410 Gone. Open
   * watches receive an ERROR 410 event and are ended, as the API server does.
   */
  compact(): void {
    this.compactedRV = this.rv;
    this.history = [];
    for (const w of [...this.watches]) {
      this.writeEvent(w, { type: "ERROR", object: gone(this.rv) });
      w.finish("graceful");
    }
  }

  /** Cut open watches abruptly: the socket closes mid-stream with no terminating chunk. */
  cutWatches(kind?: FakeKind): number {
    return this.finishWatches("cut", kind);
  }

  /** End open watches cleanly (terminating chunk), as the server's timeoutSeconds does. */
  endWatches(kind?: FakeKind): number {
    return this.finishWatches("graceful", kind);
  }

  /**
   * Make open watches dead but connected: nothing more is written to them, no FIN is sent (a
   * half-open connection or a stuck proxy). New watches work normally.
   */
  stallWatches(kind?: FakeKind): number {
    let n = 0;
    for (const w of this.watches) {
      if (!kind || w.kind === kind) {
        w.stalled = true;
        n++;
      }
    }
    return n;
  }

  private finishWatches(mode: "graceful" | "cut", kind?: FakeKind): number {
    let n = 0;
    for (const w of [...this.watches]) {
      if (!kind || w.kind === kind) {
        w.finish(mode);
        n++;
      }
    }
    return n;
  }

  /**
   * Send a BOOKMARK now on open watches that asked for them (per kind when given), as the API
   * server does about every minute; returns how many got one. For tests on a manual clock.
   */
  bookmark(kind?: FakeKind): number {
    let n = 0;
    for (const w of this.watches) {
      if (w.bookmarks && !w.stalled && (!kind || w.kind === kind)) {
        this.writeBookmark(w);
        n++;
      }
    }
    return n;
  }

  private writeBookmark(w: OpenWatch): void {
    const info = KIND_INFO[w.kind];
    this.writeEvent(w, {
      type: "BOOKMARK",
      object: {
        kind: info.listKind.replace(/List$/, ""),
        apiVersion: info.apiVersion,
        metadata: { resourceVersion: String(this.rv) },
      },
    });
  }

  /** Open, non-stalled watches (per kind when given). */
  openWatches(kind?: FakeKind): number {
    return [...this.watches].filter((w) => !w.stalled && (!kind || w.kind === kind)).length;
  }

  watchRequests(kind: FakeKind): RequestRecord[] {
    return this.requests.filter((r) => r.kind === kind && r.watch);
  }

  listRequests(kind: FakeKind): RequestRecord[] {
    return this.requests.filter((r) => r.kind === kind && !r.watch);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.listener.close();
    for (const w of [...this.watches]) w.finish("cut");
    for (const c of this.conns) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
    await this.acceptLoop;
    await Promise.allSettled([...this.handlers]);
  }

  // ------------------------------------------------------------------ protocol

  private emit(ev: HistoryEvent): void {
    this.history.push(ev);
    for (const w of this.watches) {
      if (w.kind === ev.kind) this.writeEvent(w, { type: ev.type, object: ev.object });
    }
  }

  private async accept(): Promise<void> {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.listener.accept();
      } catch {
        return; // listener closed
      }
      this.conns.add(conn);
      const h = this.handle(conn).catch(() => {}).finally(() => {
        this.conns.delete(conn);
        this.handlers.delete(h);
      });
      this.handlers.add(h);
    }
  }

  private async readHead(conn: Deno.Conn): Promise<string | null> {
    const buf = new Uint8Array(8192);
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) return null;
      head += decoder.decode(buf.subarray(0, n));
      if (head.length > 65536) return null;
    }
    return head;
  }

  private async handle(conn: Deno.Conn): Promise<void> {
    // One request per connection (`Connection: close`): the client reconnects for each request,
    // which keeps cut/stall controls per watch unambiguous.
    const head = await this.readHead(conn);
    if (!head) return closeQuietly(conn);
    const [method, target] = head.split("\r\n")[0]!.split(" ");
    const url = new URL(target ?? "/", this.url);
    const kind = (Object.keys(KIND_INFO) as FakeKind[]).find((k) =>
      KIND_INFO[k].path === url.pathname
    );
    const watch = url.searchParams.get("watch") === "true";
    const auth = head.split("\r\n").find((l) => l.toLowerCase().startsWith("authorization:"));
    this.requests.push({
      kind: kind ?? "other",
      watch,
      query: url.searchParams,
      authorization: auth?.slice(auth.indexOf(":") + 1).trim(),
    });

    if (this.failStatus) {
      return await this.respondJSON(conn, this.failStatus, status(this.failStatus, "injected"));
    }
    const presented = this.requests.at(-1)?.authorization;
    if (this.requiredToken !== undefined && presented !== `Bearer ${this.requiredToken}`) {
      return await this.respondJSON(conn, 401, status(401, "Unauthorized"));
    }
    if (method !== "GET" || !kind) {
      return await this.respondJSON(conn, 404, status(404, `no route ${url.pathname}`));
    }
    if (watch) return await this.serveWatch(conn, kind, url.searchParams);
    await sleep(this.listDelayMs[kind] ?? 0);
    await this.serveList(conn, kind, url.searchParams);
  }

  private async serveList(conn: Deno.Conn, kind: FakeKind, q: URLSearchParams): Promise<void> {
    const info = KIND_INFO[kind];
    const limit = Number(q.get("limit") ?? 0);
    let snapshot: { rv: number; items: KubeObject[] };
    const token = q.get("continue");
    if (token) {
      const c = this.continuations.get(token);
      if (!c) return await this.respondJSON(conn, 410, status(410, "continue token expired"));
      this.continuations.delete(token);
      snapshot = c;
    } else {
      const items = [...this.store[kind].values()].sort((a, b) => keyOf(a) < keyOf(b) ? -1 : 1);
      snapshot = { rv: this.rv, items: structuredClone(items) };
    }
    const page = limit > 0 ? snapshot.items.slice(0, limit) : snapshot.items;
    const rest = limit > 0 ? snapshot.items.slice(limit) : [];
    const metadata: Record<string, string> = { resourceVersion: String(snapshot.rv) };
    if (rest.length) {
      const next = crypto.randomUUID();
      this.continuations.set(next, { rv: snapshot.rv, items: rest });
      metadata.continue = next;
    }
    await this.respondJSON(conn, 200, {
      kind: info.listKind,
      apiVersion: info.apiVersion,
      metadata,
      items: page,
    });
  }

  private async serveWatch(conn: Deno.Conn, kind: FakeKind, q: URLSearchParams): Promise<void> {
    await sleep(this.watchDelayMs);
    const from = Number(q.get("resourceVersion") || this.rv);
    await conn.write(encoder.encode(
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n" +
        "Connection: close\r\n\r\n",
    ));
    let finished: () => void = () => {};
    const done = new Promise<void>((r) => finished = r);
    const timers: ReturnType<typeof setTimeout>[] = [];
    const w: OpenWatch = {
      kind,
      conn,
      stalled: false,
      closed: false,
      bookmarks: q.get("allowWatchBookmarks") === "true",
      finish: (mode) => {
        if (w.closed) return;
        w.closed = true;
        this.watches.delete(w);
        timers.forEach((t) => clearInterval(t));
        if (mode === "graceful") writeRaw(conn, "0\r\n\r\n");
        // Closing after the queued writes: a cut leaves the chunked body unterminated.
        setTimeout(() => {
          closeQuietly(conn);
          finished();
        }, 5);
      },
    };
    this.watches.add(w);
    if (from < this.compactedRV) {
      this.writeEvent(w, { type: "ERROR", object: gone(this.compactedRV) });
      w.finish("graceful");
      return await done;
    }
    for (const ev of this.history) {
      if (ev.kind === kind && ev.rv > from) {
        this.writeEvent(w, { type: ev.type, object: ev.object });
      }
    }
    const timeout = Number(q.get("timeoutSeconds") ?? 0);
    if (timeout > 0) timers.push(setTimeout(() => w.finish("graceful"), timeout * 1000));
    if (this.bookmarkIntervalMs > 0 && w.bookmarks) {
      timers.push(setInterval(() => this.writeBookmark(w), this.bookmarkIntervalMs));
    }
    // The client going away ends the watch too.
    void (async () => {
      const buf = new Uint8Array(1024);
      try {
        while ((await conn.read(buf)) !== null) { /* ignore */ }
      } catch { /* closed */ }
      w.finish("cut");
    })();
    await done;
  }

  private writeEvent(w: OpenWatch, ev: { type: string; object: unknown }): void {
    if (w.stalled || w.closed) return;
    const line = JSON.stringify(ev) + "\n";
    const bytes = encoder.encode(line);
    writeRaw(w.conn, `${bytes.length.toString(16)}\r\n${line}\r\n`);
  }

  private async respondJSON(conn: Deno.Conn, code: number, body: unknown): Promise<void> {
    const text = JSON.stringify(body);
    const bytes = encoder.encode(text);
    try {
      await writeAll(
        conn,
        encoder.encode(
          `HTTP/1.1 ${code} X\r\nContent-Type: application/json\r\nContent-Length: ${bytes.length}` +
            `\r\nConnection: close\r\n\r\n${text}`,
        ),
      );
    } catch { /* client gone */ }
    closeQuietly(conn);
  }
}

// Writes to one connection are chained so chunks never interleave.
const writeChains = new WeakMap<Deno.Conn, Promise<void>>();

function writeRaw(conn: Deno.Conn, text: string): void {
  const prev = writeChains.get(conn) ?? Promise.resolve();
  writeChains.set(
    conn,
    prev.then(() => writeAll(conn, encoder.encode(text))).catch(() => {}),
  );
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

function closeQuietly(conn: Deno.Conn): void {
  const chain = writeChains.get(conn) ?? Promise.resolve();
  void chain.then(() => {
    try {
      conn.close();
    } catch { /* already closed */ }
  });
}

function status(code: number, message: string) {
  return { kind: "Status", apiVersion: "v1", status: "Failure", code, message };
}

function gone(rv: number) {
  return status(410, `too old resource version (current ${rv})`);
}

function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
}
