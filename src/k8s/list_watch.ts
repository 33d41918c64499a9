/**
 * One kind's informer loop: list, then watch from the list's resourceVersion, and list again when
 * the server says the version is gone (410). It replaces client-node's ListWatch, whose package
 * costs the agent some 80 MB of memory just to import (the generated API models come with it),
 * and whose cache keeps every object although the engine already holds what verdicts need.
 *
 * What it remembers is only each object's key and resourceVersion: enough to tell an add from an
 * update, to skip an object listed again unchanged, and to send deletes for objects that vanished
 * while no watch was open (a relist after 410). Objects go to the callbacks and are not kept.
 *
 * The contract the KindInformer supervisor (source.ts) relies on, as client-node's had it:
 *   - "connect" before each list or watch attempt; "add" / "update" / "delete" per change;
 *   - a watch that ends with a 410 (an ERROR event with code 410, or a WatchHttpError 410) drops
 *     the resourceVersion, so the next round lists again;
 *   - a watch that ends with a TimeoutError (ours: the server's timeout or the stall watchdog)
 *     re-watches at once from the last resourceVersion; one that ends cleanly re-watches after a
 *     backoff (1 s doubling to 30 s, reset by any event), so an empty stream cannot spin;
 *   - any other error, or a failed list, goes to the "error" callbacks and the loop stops:
 *     the supervisor restarts it (start() keeps the resourceVersion: a watch, not a relist).
 */

/** The watch half (DenoWatchTransport): `done` once per watch, never after an abort. */
export interface WatchSource {
  watch(
    path: string,
    query: Record<string, string | undefined>,
    onEvent: (phase: string, object: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController>;
}

export interface ListedObject {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string };
}

/**
 * Lists every object, handing them over page by page as they arrive (so a big list is never held
 * whole); resolves with the list's resourceVersion.
 */
export type ListFn<T> = (onPage: (items: T[]) => void) => Promise<{ resourceVersion?: string }>;

type Verb = "add" | "update" | "delete" | "error" | "connect";

const BASE_DELAY_MS = 1000;
const MAX_DELAY_MS = 30_000;

function keyOf(o: ListedObject): string {
  return `${o.metadata?.namespace ?? ""}/${o.metadata?.name ?? ""}`;
}

export class ListWatch<T extends ListedObject> {
  /** key ("namespace/name") -> resourceVersion of every object known. */
  private readonly versions = new Map<string, string>();
  private readonly callbacks: Record<Verb, ((arg: unknown) => void)[]> = {
    add: [],
    update: [],
    delete: [],
    error: [],
    connect: [],
  };
  private resourceVersion = "";
  private stopped = false;
  private delayMs = 0;
  private watched = false;
  private request?: AbortController;

  constructor(
    private readonly path: string,
    private readonly source: WatchSource,
    private readonly listFn: ListFn<T>,
    private readonly delayFn: (ms: number) => Promise<unknown>,
  ) {}

  on(verb: "add" | "update" | "delete", cb: (o: T) => void): void;
  on(verb: "error", cb: (err: unknown) => void): void;
  on(verb: "connect", cb: () => void): void;
  on(verb: Verb, cb: (arg: never) => void): void {
    this.callbacks[verb].push(cb as (arg: unknown) => void);
  }

  /** Objects known now. */
  get size(): number {
    return this.versions.size;
  }

  latestResourceVersion(): string {
    return this.resourceVersion;
  }

  async start(): Promise<void> {
    this.stopped = false;
    this.delayMs = 0;
    this.watched = false;
    await this.next(null);
  }

  stop(): Promise<void> {
    this.stopped = true;
    this.abort();
    return Promise.resolve();
  }

  private abort(): void {
    this.request?.abort();
    this.request = undefined;
  }

  private emit(verb: Verb, arg?: unknown): void {
    for (const cb of [...this.callbacks[verb]]) cb(arg);
  }

  /** After a watch ended (or at start): list if needed, then watch again. */
  private async next(err: unknown): Promise<void> {
    this.abort();
    const e = err as { statusCode?: number; code?: number; name?: string } | null;
    if (e && (e.statusCode === 410 || e.code === 410)) this.resourceVersion = "";
    else if (e?.name === "TimeoutError") this.delayMs = 0;
    else if (e) return this.emit("error", e);
    if (this.stopped) return;
    this.emit("connect");
    if (!this.resourceVersion) {
      // Adds and updates as the pages come, then deletes for what the list no longer holds. A
      // list failing half-way leaves what it delivered applied: those objects do exist.
      const listed = new Set<string>();
      let rv: string | undefined;
      try {
        ({ resourceVersion: rv } = await this.listFn((items) => {
          for (const o of items) {
            listed.add(keyOf(o));
            this.upsert(o);
          }
        }));
      } catch (listErr) {
        return this.emit("error", listErr);
      }
      this.deleteUnlisted(listed);
      this.resourceVersion = rv ?? "";
    }
    if (this.delayMs > 0 && this.watched) await this.delayFn(this.delayMs);
    if (this.watched) {
      this.delayMs = Math.min(this.delayMs > 0 ? this.delayMs * 2 : BASE_DELAY_MS, MAX_DELAY_MS);
    }
    this.watched = true;
    if (this.stopped) return;
    this.request = await this.source.watch(
      this.path,
      { resourceVersion: this.resourceVersion },
      (phase, object) => this.onEvent(phase, object),
      (doneErr) => void this.next(doneErr),
    );
  }

  /** After a full list: deletes for what it did not hold (vanished while nobody watched). */
  private deleteUnlisted(listed: Set<string>): void {
    for (const key of [...this.versions.keys()]) {
      if (listed.has(key)) continue;
      this.versions.delete(key);
      const slash = key.indexOf("/");
      const namespace = key.slice(0, slash);
      this.emit("delete", {
        metadata: { name: key.slice(slash + 1), ...(namespace ? { namespace } : {}) },
      });
    }
  }

  private upsert(o: T): void {
    const key = keyOf(o);
    const rv = o.metadata?.resourceVersion;
    const known = this.versions.get(key);
    this.versions.set(key, rv ?? "");
    if (known === undefined) this.emit("add", o);
    else if (rv === undefined || rv !== known) this.emit("update", o);
  }

  private onEvent(phase: string, object: unknown): void {
    const o = (object ?? {}) as T & { code?: number };
    switch (phase) {
      case "ERROR":
        // The stream ends after it; the next round lists when the version expired.
        if (o.code === 410) this.resourceVersion = "";
        return;
      case "ADDED":
      case "MODIFIED":
        this.upsert(o);
        break;
      case "DELETED":
        if (this.versions.delete(keyOf(o))) this.emit("delete", o);
        break;
    }
    this.delayMs = 0;
    this.resourceVersion = o.metadata?.resourceVersion ?? "";
  }
}
