/**
 * A ClusterSource fed by manifest files instead of the API server: the agent without a cluster
 * (labs, CI). The first load delivers everything valid; afterwards file events (debounced) and a
 * periodic rescan re-read the files, each file's new version is taken once it has settled and
 * only the difference goes out as StateEvents, so the engine and the rules see exactly what an
 * informer would have sent. What may change when is settle.ts's; this file wires the parts.
 */
import { type Clock, realClock, type TimerHandle } from "../clock.ts";
import type { Logger } from "../log.ts";
import type { ObjectError } from "../policy/types.ts";
import type { StateEvent } from "../state/events.ts";
import type { ClusterSource, SourceHealth } from "../state/source.ts";
import { diffObjects, type Known } from "./diff.ts";
import { type Listing, listManifestFiles, mergeObjects } from "./load.ts";
import { observeListed, observeUnlisted } from "./observe.ts";
import { ManifestReporter } from "./report.ts";
import { type HeldObject, type SettlePeriods, TrackedFile } from "./settle.ts";
import { Debouncer, denoWatchFs, FileWatchers, type WatchFs, watchTargets } from "./watch.ts";

export interface ManifestSourceOptions {
  /** Full rescan period, a safety net for missed file events (default 30 s; 0 disables). */
  pollMs?: number;
  /** Quiet time after a file event before re-reading (default 50 ms): a save is several events. */
  debounceMs?: number;
  /** A changed file must look the same this long before it is taken (default 100 ms). */
  settleMs?: number;
  /** ... this long when taking it removes objects: emptied, shortened, deleted (default 1 s). */
  removalSettleMs?: number;
  /** Timers and "now" (default: real time); tests pass a fake one. */
  clock?: Clock;
  /** File watcher (default Deno.watchFs); null watches nothing (periodic rescans only). */
  watchFs?: WatchFs | null;
}

export interface ManifestSource extends ClusterSource {
  /**
   * Current problems (file, object, field): unreadable paths, documents that cannot be
   * identified, invalid kinds and apiVersions, duplicates, objects kept through a skipped
   * document. For `/debug` and the invalid-objects metric.
   */
  errors(): ObjectError[];
}

/** A burst of file events delays a rescan at most this long. */
const MAX_DEBOUNCE_MS = 1000;

export function createManifestSource(
  paths: string[],
  log: Logger,
  opts: ManifestSourceOptions = {},
): ManifestSource {
  return new LiveManifests(paths, log.with({ component: "manifests" }), opts);
}

/** Runs scans one at a time, and owns the timers that request them (poll, settle re-checks). */
class ScanScheduler {
  #running?: Promise<void>;
  #again = false;
  #stopped = false;
  #pollTimer?: TimerHandle;
  #recheck?: { at: number; timer: TimerHandle };

  constructor(
    private readonly clock: Clock,
    private readonly scan: () => Promise<void>,
    private readonly log: Logger,
  ) {}

  /** A scan now, or (one) more after the running one: a change mid-scan is never missed. */
  request(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = this.#runUntilCalm();
    return this.#running;
  }

  async #runUntilCalm(): Promise<void> {
    try {
      do {
        this.#again = false;
        await this.scan();
      } while (this.#again && !this.#stopped);
    } catch (e) {
      this.log.error("manifest rescan failed", { err: e });
    } finally {
      this.#running = undefined;
    }
  }

  /** A scan at `at` (clock time), unless one is already due earlier. */
  recheckAt(at: number): void {
    if (this.#stopped || (this.#recheck && this.#recheck.at <= at)) return;
    if (this.#recheck) this.clock.clearTimeout(this.#recheck.timer);
    const timer = this.clock.setTimeout(() => {
      this.#recheck = undefined;
      return this.request();
    }, at - this.clock.now());
    this.#recheck = { at, timer };
  }

  poll(everyMs: number): void {
    if (this.#stopped || everyMs <= 0) return;
    this.#pollTimer = this.clock.setTimeout(async () => {
      await this.request();
      this.poll(everyMs);
    }, everyMs);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#pollTimer !== undefined) this.clock.clearTimeout(this.#pollTimer);
    if (this.#recheck) this.clock.clearTimeout(this.#recheck.timer);
    await this.#running;
  }
}

class LiveManifests implements ManifestSource {
  readonly #clock: Clock;
  readonly #periods: SettlePeriods;
  readonly #scheduler: ScanScheduler;
  readonly #debouncer: Debouncer;
  readonly #watchers?: FileWatchers;
  readonly #reporter: ManifestReporter;
  /** Files with objects in force or a version waiting to settle, by path. */
  readonly #tracked = new Map<string, TrackedFile>();
  /** What consumers have, by objectKey. */
  #known = new Map<string, Known>();
  #errors: ObjectError[] = [];
  #held: HeldObject[] = [];
  #fileCount = 0;
  #sink?: (ev: StateEvent) => void;
  #synced = false;
  #stopped = false;

  constructor(
    private readonly paths: string[],
    private readonly log: Logger,
    private readonly opts: ManifestSourceOptions,
  ) {
    this.#clock = opts.clock ?? realClock;
    this.#periods = {
      settleMs: opts.settleMs ?? 100,
      removalSettleMs: opts.removalSettleMs ?? 1000,
    };
    this.#scheduler = new ScanScheduler(this.#clock, () => this.#scan(), log);
    this.#debouncer = new Debouncer(
      this.#clock,
      opts.debounceMs ?? 50,
      MAX_DEBOUNCE_MS,
      () => this.#scheduler.request(),
    );
    const watchFs = opts.watchFs === undefined ? denoWatchFs : opts.watchFs;
    if (watchFs) this.#watchers = new FileWatchers(watchFs, log);
    this.#reporter = new ManifestReporter(log);
  }

  async start(sink: (ev: StateEvent) => void): Promise<void> {
    if (this.#sink) throw new Error("manifest source already started");
    this.#sink = sink;
    // Watch before the first read, so a change during it is not missed.
    this.#watchers?.start(await watchTargets(this.paths), () => this.#onFileEvent());
    await this.#scheduler.request();
    if (this.#stopped) return;
    this.#synced = true;
    this.log.info("manifests loaded", {
      objects: this.#known.size,
      files: this.#fileCount,
      errors: this.#errors.length,
    });
    this.#scheduler.poll(this.opts.pollMs ?? 30_000);
  }

  synced(): boolean {
    return this.#synced;
  }

  health(): SourceHealth {
    if (this.#stopped) return { ok: false, detail: "manifest source stopped" };
    if (!this.#synced) return { ok: false, detail: "manifests not loaded yet" };
    const errs = this.#errors.length;
    const held = this.#held.length;
    return {
      ok: true,
      detail: `${this.#known.size} objects from ${this.#fileCount} manifest files` +
        (errs ? `; ${errs} invalid (see logs)` : "") +
        (held ? `; ${held} kept at their last good version` : ""),
    };
  }

  errors(): ObjectError[] {
    return [...this.#errors];
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#debouncer.cancel();
    await this.#watchers?.close();
    await this.#scheduler.stop();
  }

  #onFileEvent(): void {
    if (!this.#stopped) this.#debouncer.poke();
  }

  /** Look at every file, take the versions that have settled, send the difference. */
  async #scan(): Promise<void> {
    const initial = !this.#synced;
    const listing = await listManifestFiles(this.paths);
    if (this.#stopped) return;
    const listed = new Set(listing.files);
    for (const file of this.#filesToLook(listing)) {
      await this.#look(file, listed.has(file), listing, initial);
      if (this.#stopped) return;
    }
    this.#publish(listing);
  }

  /** Listed files, then files that had objects and are not listed now (gone or unreadable). */
  #filesToLook(listing: Listing): string[] {
    const listed = new Set(listing.files);
    const unlisted = [...this.#tracked.keys()].filter((f) => !listed.has(f)).sort();
    return [...listing.files, ...unlisted];
  }

  async #look(file: string, listed: boolean, listing: Listing, initial: boolean): Promise<void> {
    const obs = listed
      ? await observeListed(file)
      : await observeUnlisted(file, listing.unreadable);
    const tracked = this.#tracked.get(file) ?? new TrackedFile(file);
    const decision = tracked.offer(obs, this.#clock.now(), this.#periods, initial);
    if (!decision.accepted) {
      this.log.v(4).info("waiting for file to settle", { file });
      this.#scheduler.recheckAt(decision.recheckAt);
    }
    if (tracked.forgettable) this.#tracked.delete(file);
    else this.#tracked.set(file, tracked);
  }

  /** Objects in force from every file, diffed against what consumers have. */
  #publish(listing: Listing): void {
    const files = this.#filesToLook(listing).flatMap((f) => this.#tracked.get(f) ?? []);
    const merged = mergeObjects(files.flatMap((t) => t.inForce));
    this.#errors = [...listing.errors, ...files.flatMap((t) => t.errors), ...merged.errors];
    this.#held = files.flatMap((t) => t.held);
    this.#fileCount = listing.files.length;
    this.#reporter.report(this.#errors, files.flatMap((t) => t.notices), this.#held);
    const diff = diffObjects(this.#known, merged.objects);
    this.#known = diff.next;
    for (const ev of diff.events) this.#deliver(ev);
    if (this.#synced && diff.events.length) {
      this.log.v(2).info("manifests reloaded", { upserts: diff.upserts, deletes: diff.deletes });
    }
  }

  #deliver(ev: StateEvent): void {
    try {
      this.#sink!(ev);
    } catch (e) {
      // One consumer failure must not stop the stream for every later change.
      this.log.error("state event consumer failed", { op: ev.op, kind: ev.kind, err: e });
    }
  }
}
