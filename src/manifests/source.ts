/**
 * A ClusterSource fed by manifest files instead of the API server: the agent without a cluster
 * (labs, CI, `simulate --watch`). The first load delivers everything valid; afterwards file
 * changes are re-read and only the difference goes out as StateEvents, so the engine and the
 * rules see exactly what an informer would have sent.
 */
import type { Logger } from "../log.ts";
import { formatObjectError, type ObjectError, type StateObjectKind } from "../policy/types.ts";
import type { StateEvent } from "../state/events.ts";
import type { ClusterSource, SourceHealth } from "../state/source.ts";
import { type LoadedObject, loadManifests, type LoadResult, objectKey } from "./load.ts";

export interface ManifestSourceOptions {
  /** Full rescan period, a safety net for missed file events (default 30 s; 0 disables). */
  pollMs?: number;
  /** Quiet time after a file event before re-reading (default 50 ms): an editor's save is several events. */
  debounceMs?: number;
}

export interface ManifestSource extends ClusterSource {
  /** Current load errors (file, object, field), for `simulate` and the invalid-objects metric. */
  errors(): ObjectError[];
}

interface Known {
  loaded: LoadedObject;
  /** Canonical JSON of the object: an edit that changes nothing sends nothing. */
  content: string;
}

/** Namespaces first so pods and policies land in a known namespace; deletes go the other way. */
const KIND_ORDER: StateObjectKind[] = [
  "Namespace",
  "Node",
  "Pod",
  "NetworkPolicy",
  "ClusterNetworkPolicy",
  "AdminNetworkPolicy",
  "BaselineAdminNetworkPolicy",
];

/** JSON with object keys sorted, so reordering keys in a file is not a change. */
export function canonicalJSON(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return v;
    const sorted: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) sorted[k] = (v as Record<string, unknown>)[k];
    return sorted;
  });
}

function upsert(o: LoadedObject): StateEvent {
  return { op: "upsert", kind: o.kind, object: o.object, source: o.source } as StateEvent;
}

function deletion(o: LoadedObject): StateEvent {
  const m = o.object.metadata;
  return o.kind === "Namespace"
    ? { op: "delete", kind: o.kind, name: m.name! }
    : { op: "delete", kind: o.kind, namespace: m.namespace, name: m.name! };
}

function byKind(objects: LoadedObject[], order: StateObjectKind[]): LoadedObject[] {
  return order.flatMap((k) => objects.filter((o) => o.kind === k));
}

export function createManifestSource(
  paths: string[],
  log: Logger,
  opts: ManifestSourceOptions = {},
): ManifestSource {
  const pollMs = opts.pollMs ?? 30_000;
  const debounceMs = opts.debounceMs ?? 50;
  const slog = log.with({ component: "manifests" });

  let sink: ((ev: StateEvent) => void) | undefined;
  let known = new Map<string, Known>();
  let currentErrors: ObjectError[] = [];
  let reportedErrors = new Set<string>();
  let reportedNotices = new Set<string>();
  let fileCount = 0;
  let isSynced = false;
  let stopped = false;

  const watchers: Deno.FsWatcher[] = [];
  const watchLoops: Promise<void>[] = [];
  let debounceTimer: ReturnType<typeof setTimeout> | undefined;
  let firstPendingAt: number | undefined;
  let pollTimer: ReturnType<typeof setInterval> | undefined;
  let scanning: Promise<void> | undefined;
  let scanAgain = false;

  function deliver(ev: StateEvent): void {
    try {
      sink!(ev);
    } catch (e) {
      // One consumer failure must not stop the stream for every later change.
      slog.error("state event consumer failed", { op: ev.op, kind: ev.kind, err: e });
    }
  }

  function report(errors: ObjectError[], notices: string[]): void {
    const now = new Set<string>();
    for (const e of errors) {
      const line = formatObjectError(e);
      now.add(line);
      if (!reportedErrors.has(line)) {
        slog.warn("invalid manifest", {
          source: e.source,
          object: e.object,
          field: e.field,
          error: e.message,
        });
      }
    }
    for (const line of reportedErrors) {
      if (!now.has(line)) slog.v(2).info("manifest error resolved", { was: line });
    }
    reportedErrors = now;
    const noticesNow = new Set(notices);
    for (const n of noticesNow) if (!reportedNotices.has(n)) slog.info(n);
    reportedNotices = noticesNow;
  }

  /** Re-read everything and send the difference from what consumers already have. */
  async function scan(): Promise<void> {
    let result = await loadManifests(paths);
    if (stopped) return;
    if (vanishedFromExistingFile(result)) {
      // An object missing from a file that still exists may be a file caught mid-write
      // (truncated, not yet rewritten). Deleting a policy opens traffic, so read once more
      // before believing it.
      await new Promise((r) => setTimeout(r, debounceMs));
      if (stopped) return;
      result = await loadManifests(paths);
      if (stopped) return;
    }
    report(result.errors, result.notices);
    currentErrors = result.errors;
    fileCount = result.files.length;
    const incomplete = new Set(result.incompleteFiles);

    const next = new Map<string, Known>();
    const changed: LoadedObject[] = [];
    for (const loaded of result.objects) {
      const key = objectKey(loaded);
      const content = canonicalJSON(loaded.object);
      next.set(key, { loaded, content });
      if (known.get(key)?.content !== content) changed.push(loaded);
    }
    const gone: LoadedObject[] = [];
    for (const [key, old] of known) {
      if (next.has(key)) continue;
      if (incomplete.has(old.loaded.file)) {
        // Its file has an error that may be what hides it: keep the last good version.
        next.set(key, old);
        slog.v(2).info("keeping last good version; its file has errors", {
          object: key,
          source: old.loaded.source,
        });
        continue;
      }
      gone.push(old.loaded);
    }
    known = next;
    // Upserts before deletes: a policy renamed or moved between files never leaves a window
    // where its pods are unprotected.
    for (const o of byKind(changed, KIND_ORDER)) deliver(upsert(o));
    for (const o of byKind(gone, [...KIND_ORDER].reverse())) deliver(deletion(o));
    if (isSynced && (changed.length || gone.length)) {
      slog.v(2).info("manifests reloaded", { upserts: changed.length, deletes: gone.length });
    }
  }

  function vanishedFromExistingFile(result: LoadResult): boolean {
    const files = new Set(result.files);
    const keys = new Set(result.objects.map(objectKey));
    for (const [key, old] of known) {
      if (!keys.has(key) && files.has(old.loaded.file)) return true;
    }
    return false;
  }

  /** Serialize scans: a change arriving mid-scan triggers exactly one more scan afterwards. */
  function requestScan(): Promise<void> {
    if (stopped) return Promise.resolve();
    if (scanning) {
      scanAgain = true;
      return scanning;
    }
    scanning = (async () => {
      try {
        do {
          scanAgain = false;
          await scan();
        } while (scanAgain && !stopped);
      } catch (e) {
        slog.error("manifest rescan failed", { err: e });
      } finally {
        scanning = undefined;
      }
    })();
    return scanning;
  }

  /** Debounced trigger, but never held off longer than 1 s by a directory that keeps changing. */
  function onFileEvent(): void {
    if (stopped) return;
    const t = performance.now();
    firstPendingAt ??= t;
    if (debounceTimer !== undefined) clearTimeout(debounceTimer);
    const wait = t - firstPendingAt > 1000 ? 0 : debounceMs;
    debounceTimer = setTimeout(() => {
      debounceTimer = undefined;
      firstPendingAt = undefined;
      void requestScan();
    }, wait);
  }

  async function watchTargets(): Promise<{ path: string; recursive: boolean }[]> {
    const targets: { path: string; recursive: boolean }[] = [];
    for (const p of paths) {
      try {
        const info = await Deno.stat(p);
        // A file is watched through its directory: editors and ConfigMap updates replace files
        // by renaming, which a watch on the file itself would not survive.
        if (info.isDirectory) targets.push({ path: p, recursive: true });
        else targets.push({ path: parentDir(p), recursive: false });
      } catch {
        // Missing now: the periodic rescan notices when it appears.
      }
    }
    return targets;
  }

  function startWatching(targets: { path: string; recursive: boolean }[]): void {
    for (const t of targets) {
      let watcher: Deno.FsWatcher;
      try {
        watcher = Deno.watchFs(t.path, { recursive: t.recursive });
      } catch (e) {
        slog.warn("cannot watch path; relying on periodic rescans", { path: t.path, err: e });
        continue;
      }
      watchers.push(watcher);
      watchLoops.push((async () => {
        try {
          for await (const ev of watcher) {
            if (ev.kind !== "access") onFileEvent();
          }
        } catch (e) {
          if (!stopped) slog.warn("file watch ended", { path: t.path, err: e });
        }
      })());
    }
  }

  return {
    async start(s: (ev: StateEvent) => void): Promise<void> {
      if (sink) throw new Error("manifest source already started");
      sink = s;
      const targets = await watchTargets();
      // Watch before the first read, so a change during it is not missed.
      startWatching(targets);
      await requestScan();
      if (stopped) return;
      isSynced = true;
      slog.info("manifests loaded", {
        objects: known.size,
        files: fileCount,
        errors: currentErrors.length,
      });
      if (pollMs > 0) pollTimer = setInterval(() => void requestScan(), pollMs);
    },

    synced: () => isSynced,

    health(): SourceHealth {
      if (stopped) return { ok: false, detail: "manifest source stopped" };
      if (!isSynced) return { ok: false, detail: "manifests not loaded yet" };
      const errs = currentErrors.length;
      return {
        ok: true,
        detail: `${known.size} objects from ${fileCount} manifest files` +
          (errs ? `; ${errs} invalid (see logs)` : ""),
      };
    },

    errors: () => [...currentErrors],

    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      if (debounceTimer !== undefined) clearTimeout(debounceTimer);
      if (pollTimer !== undefined) clearInterval(pollTimer);
      for (const w of watchers) {
        try {
          w.close();
        } catch { /* already closed */ }
      }
      await Promise.all(watchLoops);
      await scanning;
    },
  };
}

function parentDir(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  const i = trimmed.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : trimmed.slice(0, i);
}
