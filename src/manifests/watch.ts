/**
 * File events for the live source: what to watch, the watch loops, and the debounce that turns a
 * burst of events (an editor's save is several) into one rescan.
 */
import type { Clock, TimerHandle } from "../clock.ts";
import type { Logger } from "../log.ts";

/** What the source needs of a file watcher; Deno.watchFs by default, a fake in tests. */
export interface FsWatch extends AsyncIterable<{ kind: string }> {
  close(): void;
}
export type WatchFs = (path: string, recursive: boolean) => FsWatch;

export const denoWatchFs: WatchFs = (path, recursive) => Deno.watchFs(path, { recursive });

export interface WatchTarget {
  path: string;
  recursive: boolean;
}

/** Directories are watched recursively; a file through its directory. Missing paths are skipped. */
export async function watchTargets(paths: string[]): Promise<WatchTarget[]> {
  const targets: WatchTarget[] = [];
  for (const p of paths) {
    try {
      const info = await Deno.stat(p);
      // Editors and ConfigMap updates replace files by renaming, which a watch on the file
      // itself would not survive.
      if (info.isDirectory) targets.push({ path: p, recursive: true });
      else targets.push({ path: parentDir(p), recursive: false });
    } catch {
      // Missing now: the periodic rescan notices when it appears.
    }
  }
  return targets;
}

export function parentDir(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  const i = trimmed.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : trimmed.slice(0, i);
}

/** Watch loops calling `onEvent` for every event but plain reads. */
export class FileWatchers {
  readonly #watchers: FsWatch[] = [];
  readonly #loops: Promise<void>[] = [];
  #closed = false;

  constructor(private readonly watchFs: WatchFs, private readonly log: Logger) {}

  start(targets: WatchTarget[], onEvent: () => void): void {
    for (const t of targets) {
      let watcher: FsWatch;
      try {
        watcher = this.watchFs(t.path, t.recursive);
      } catch (e) {
        this.log.warn("cannot watch path; relying on periodic rescans", { path: t.path, err: e });
        continue;
      }
      this.#watchers.push(watcher);
      this.#loops.push(this.#loop(t.path, watcher, onEvent));
    }
  }

  async #loop(path: string, watcher: FsWatch, onEvent: () => void): Promise<void> {
    try {
      for await (const ev of watcher) {
        if (ev.kind !== "access") onEvent();
      }
    } catch (e) {
      if (!this.#closed) this.log.warn("file watch ended", { path, err: e });
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const w of this.#watchers) {
      try {
        w.close();
      } catch { /* already closed */ }
    }
    await Promise.all(this.#loops);
  }
}

/**
 * Calls `fire` once events have been quiet for `quietMs`, but never later than `maxDelayMs` after
 * the first event of a burst, so a directory that keeps changing is still read.
 */
export class Debouncer {
  #timer?: TimerHandle;
  #firstAt?: number;

  constructor(
    private readonly clock: Clock,
    private readonly quietMs: number,
    private readonly maxDelayMs: number,
    private readonly fire: () => Promise<void>,
  ) {}

  poke(): void {
    const now = this.clock.now();
    this.#firstAt ??= now;
    if (this.#timer !== undefined) this.clock.clearTimeout(this.#timer);
    const wait = Math.max(0, Math.min(this.quietMs, this.#firstAt + this.maxDelayMs - now));
    this.#timer = this.clock.setTimeout(() => {
      this.#timer = undefined;
      this.#firstAt = undefined;
      return this.fire();
    }, wait);
  }

  cancel(): void {
    if (this.#timer !== undefined) this.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
