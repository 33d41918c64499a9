/**
 * ClusterSource backed by the Kubernetes API: one client-node informer (ListWatch) per kind, each
 * supervised so that it never stays dead.
 *
 * client-node's ListWatch relists after 410 (and sends deletes for what vanished) and resumes
 * cleanly ended watches, but it stops for good on any other error. The supervisor here restarts it
 * with capped exponential backoff (start() resumes from the last resourceVersion, so a restart
 * costs a watch, not a relist), keeps `kube_netpol_informer_up` / `_restarts_total` current, and
 * reports not-ok health while any kind is down. During an outage the last state stays: nothing is
 * deleted that the API server did not delete. A watch that stays open but delivers nothing, not
 * even the bookmarks the server sends about every minute, is hung: it is re-opened, and the kind
 * counts as down until the new watch delivers (see DEFAULT_STALL_TIMEOUT_MS). All timing runs on
 * an injectable Clock.
 *
 * This is client-node's makeInformer minus its `Watch`: ListWatch gets our DenoWatchTransport
 * (see watch_transport.ts for why) and a list function that pages and slims objects.
 *
 * Optional kinds (kinds.ts: the network-policy-api CRDs, and Node): a cluster without them must
 * look exactly like before to NetworkPolicy users. A 404 on an optional kind's list or watch means
 * the API server does not serve it (its CRD is not installed, or was removed): no such object
 * exists, so whatever was cached of the kind is deleted, the kind counts as synced (readiness never
 * waits for it) and healthy, it is logged once, and the list is tried again every
 * `absentRecheckMs` until the CRD appears. A 403 (the ClusterRole lacks the kind) before the kind's
 * first list also lets the rest be enforced, but fails readiness with the reason until granted.
 */
import type { KubernetesObject } from "@kubernetes/client-node";
// The informer alone, not the package's index: that loads KubeConfig too (see api_client.ts).
import { ListWatch } from "@kubernetes/client-node/dist/cache.js";
import type { Logger } from "../log.ts";
import type { AgentMetrics } from "../metrics.ts";
import type { StateEvent } from "../state/events.ts";
import type { ClusterSource, SourceHealth } from "../state/source.ts";
import { type ApiClient, createApiClient, loadClusterConfig } from "./api_client.ts";
import { type SlimObject, slimObject } from "./slim.ts";
import { API_KINDS, type ApiKind, DEFAULT_ABSENT_RECHECK_MS } from "./kinds.ts";
import {
  DEFAULT_STALL_TIMEOUT_MS,
  DenoWatchTransport,
  type WatchHooks,
} from "./watch_transport.ts";
import { describeError } from "./errors.ts";
import { type Clock, realClock, sleepOn, type TimerHandle } from "../clock.ts";

export interface KubernetesSourceOptions {
  /** kubeconfig path (`--kubeconfig`); else KUBECONFIG, else in-cluster. */
  kubeconfig?: string;
  /** Where the service account is mounted (tests); default the path Kubernetes uses. */
  serviceAccountDir?: string;
  log: Logger;
  metrics?: AgentMetrics;
  /** Informer restart backoff after errors (default 500 ms doubling to 30 s). */
  restartBackoff?: { initialMs: number; maxMs: number };
  /** A watch silent this long is presumed hung (`--watch-stall-timeout`, see below). */
  stallTimeoutMs?: number;
  /** Server-side watch timeout in seconds (default: random in 300..600, as client-go does). */
  watchTimeoutSeconds?: () => number;
  /** Timeout of one list request (default 60 s). */
  listTimeoutMs?: number;
  /** Page size for lists (default 500); big clusters are listed in pages like client-go does. */
  listPageSize?: number;
  /** Time for backoffs and the stall watchdog (tests pass a manual clock). */
  clock?: Clock;
  /** An optional kind the server does not serve is looked for again this often (default 30 s). */
  absentRecheckMs?: number;
}

export { DEFAULT_ABSENT_RECHECK_MS, DEFAULT_STALL_TIMEOUT_MS };

const SOURCE = "apiserver";

type Slim = SlimObject & KubernetesObject;

/** An HTTP status an optional kind's list or watch may answer instead of its objects. */
function unavailableStatus(err: unknown): number | undefined {
  const e = err as { unavailable?: number; statusCode?: number } | undefined;
  return e?.unavailable ?? (e?.statusCode === 404 ? 404 : undefined);
}

/** Why an informer was (re)started: the `cause` label of the restarts counter. */
export type RestartCause = "error" | "list-error" | "stall";

type InformerSettings =
  & Required<Omit<KubernetesSourceOptions, "kubeconfig" | "serviceAccountDir" | "metrics">>
  & { metrics?: AgentMetrics };

/** What the informers learn about the server they share. */
interface ServerTraits {
  /** Some watch received a BOOKMARK: silence beyond the stall timeout is then a hung watch. */
  sendsBookmarks: boolean;
}

class KindInformer {
  /** The first list of this kind has been delivered (or the server does not serve the kind). */
  synced = false;
  /** An optional kind the server answered 404 for: none exist; looked for again periodically. */
  absent = false;
  /** Watching: the last watch request was answered 200 and has not failed since. */
  up = false;
  /**
   * The watchdog found this kind's watch hung (on a server that sends bookmarks): not up until
   * the re-opened watch delivers a line, whatever its HTTP status said.
   */
  private hung = false;
  /** clock.now() of the last list delivered or watch line received: how current we are. */
  lastHeard = 0;
  private attempt = 0;
  private restartTimer: TimerHandle | undefined;
  private stopped = false;
  private lastProblem = "";
  /** When the current watch was answered; a long healthy stretch resets the restart backoff. */
  private connectedAt = 0;
  /** Aborts in-flight lists and ListWatch's reconnect delays on stop(). */
  private readonly stopping = new AbortController();
  private readonly clock: Clock;
  private readonly transport: DenoWatchTransport;
  /** Replaced when the kind turns out absent: a new ListWatch starts with an empty cache. */
  informer: ListWatch<Slim>;

  constructor(
    readonly spec: ApiKind,
    private readonly client: ApiClient,
    private readonly opts: InformerSettings,
    private readonly traits: ServerTraits,
    private readonly sink: (ev: StateEvent) => void,
    private readonly onSynced: () => void,
  ) {
    this.clock = opts.clock;
    this.transport = new DenoWatchTransport(client, spec.kind, {
      stallTimeoutMs: opts.stallTimeoutMs,
      watchTimeoutSeconds: opts.watchTimeoutSeconds,
      clock: opts.clock,
    }, this.watchHooks());
    this.informer = this.createListWatch();
  }

  /** ListWatch with our transport, our paged list, and its delays on our clock. */
  private createListWatch(): ListWatch<Slim> {
    const informer = new ListWatch<Slim>(
      this.spec.path,
      this.transport.asWatch(),
      () => this.list(),
      false,
      undefined,
      undefined,
      { delayFn: (ms) => sleepOn(this.clock, ms, this.stopping.signal) },
    );
    informer.on("add", (o) => this.upsert(o));
    informer.on("update", (o) => this.upsert(o));
    informer.on("delete", (o) => this.remove(o));
    informer.on("error", (err) => this.failed(err));
    return informer;
  }

  private watchHooks(): WatchHooks {
    const { log } = this.opts;
    const kind = this.spec.label;
    return {
      watchStarting: () => {
        if (this.synced) return;
        // ListWatch delivers the whole list synchronously before it opens the first watch.
        this.synced = true;
        log.info("informer synced", { kind, objects: this.informer.list().length });
        this.onSynced();
      },
      connected: () => {
        this.connectedAt = this.clock.now();
        if (!this.hung) this.setUp(true);
      },
      activity: (bookmark) => {
        this.attempt = 0;
        this.lastHeard = this.clock.now();
        if (bookmark) this.traits.sendsBookmarks = true;
        if (this.hung) {
          this.hung = false;
          log.info("watch delivers again after a stall", { kind });
          this.setUp(true);
        }
      },
      stalled: (silentMs) => this.stalled(silentMs),
      errorEvent: (status) => log.v(2).info("watch error event", { kind, status }),
    };
  }

  /** The watchdog abandoned a silent watch; ListWatch re-opens it at once. */
  private stalled(silentMs: number): void {
    this.count("stall");
    const seconds = Math.round(silentMs / 1000);
    if (!this.traits.sendsBookmarks) {
      // No evidence this server sends bookmarks: silence may just be a quiet kind.
      this.opts.log.v(2).info("quiet watch re-opened (no bookmark seen from this server)", {
        kind: this.spec.label,
        silentS: seconds,
      });
      return;
    }
    this.hung = true;
    this.setUp(false);
    this.lastProblem = `watch hung: no event or bookmark for ${seconds}s ` +
      `(bookmarks come about every minute); re-watching`;
    this.opts.log.warn(
      "watch hung (no event or bookmark), re-watching; not ready until it " +
        "delivers again",
      { kind: this.spec.label, silentS: seconds },
    );
  }

  start(): void {
    this.stopped = false;
    this.informer.start().catch((err) => this.failed(err));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.clock.clearTimeout(this.restartTimer);
    this.transport.close();
    this.stopping.abort();
    this.setUp(false);
    await this.informer.stop();
  }

  health(): { ok: boolean; detail: string } {
    if (this.up) return { ok: true, detail: `${this.spec.label} watching` };
    if (this.absent) {
      return {
        ok: true,
        detail: `${this.spec.label} not served (CRD not installed; looked for every ${
          Math.round(this.opts.absentRecheckMs / 1000)
        }s)`,
      };
    }
    const why = this.lastProblem ? `: ${this.lastProblem}` : "";
    if (this.hung && !this.attempt) {
      return { ok: false, detail: `${this.spec.label} ${this.lastProblem}` };
    }
    return {
      ok: false,
      detail: this.attempt
        ? `${this.spec.label} informer restarting (attempt ${this.attempt})${why}`
        : `${this.spec.label} informer connecting${why}`,
    };
  }

  /** Lists page by page; ListWatch diffs the result against its cache (deletes what vanished). */
  private async list(): Promise<{ metadata: { resourceVersion?: string }; items: Slim[] }> {
    try {
      const listed = await this.listPages();
      this.lastHeard = this.clock.now();
      if (this.absent) {
        this.absent = false;
        this.opts.log.info("the API server serves this kind now (CRD installed): watching", {
          kind: this.spec.label,
          objects: listed.items.length,
        });
      }
      if (this.spec.optional) this.opts.metrics?.apiKindServed.set({ kind: this.spec.label }, 1);
      return listed;
    } catch (err) {
      // Tagged so the restart is counted as cause="list-error" (ListWatch reports both alike).
      throw Object.assign(
        new Error(`list ${this.spec.path}: ${describeError(err)}`, { cause: err }),
        { listFailed: true, unavailable: (err as { unavailable?: number }).unavailable },
      );
    }
  }

  private async listPages(): Promise<{ metadata: { resourceVersion?: string }; items: Slim[] }> {
    const items: Slim[] = [];
    let resourceVersion: string | undefined;
    let cont: string | undefined;
    do {
      const query: Record<string, string> = { limit: String(this.opts.listPageSize) };
      if (cont) query.continue = cont;
      const res = await this.client.get(
        this.spec.path,
        query,
        AbortSignal.any([AbortSignal.timeout(this.opts.listTimeoutMs), this.stopping.signal]),
      );
      if (res.status !== 200) {
        const text = await res.text().catch(() => "");
        const error = new Error(`HTTP ${res.status} ${text.slice(0, 200)}`);
        // The first page only: a 404 on a continuation is an expired token, not an absent kind.
        const unavailable = this.spec.optional && !cont &&
          (res.status === 404 || res.status === 403);
        throw unavailable ? Object.assign(error, { unavailable: res.status }) : error;
      }
      const body = await res.json() as {
        metadata?: { resourceVersion?: string; continue?: string };
        items?: unknown[];
      };
      for (const raw of body.items ?? []) items.push(slimObject(this.spec.kind, raw) as Slim);
      resourceVersion = body.metadata?.resourceVersion;
      cont = body.metadata?.continue || undefined;
    } while (cont);
    return { metadata: { resourceVersion }, items };
  }

  private upsert(o: Slim): void {
    if (this.stopped) return; // a list that completed during stop()
    this.sink({ op: "upsert", kind: this.spec.kind, object: o, source: SOURCE } as StateEvent);
  }

  private remove(o: Slim): void {
    if (this.stopped) return;
    const name = o.metadata?.name ?? "";
    this.sink(
      this.spec.kind === "Namespace"
        ? { op: "delete", kind: "Namespace", name }
        : { op: "delete", kind: this.spec.kind, namespace: o.metadata?.namespace, name },
    );
  }

  /** ListWatch has stopped itself: schedule a restart. */
  private failed(err: unknown): void {
    if (this.stopped) return;
    const status = this.spec.optional ? unavailableStatus(err) : undefined;
    if (status === 404) return this.notServed();
    if (status === 403 && !this.synced) {
      // Enforce everything else meanwhile; readiness names the missing permission (health()).
      this.opts.log.warn(
        "not allowed to list this kind: what needs it (cluster policies, nodes peers) is not " +
          "enforced until the ClusterRole grants list and watch (see install.yaml)",
        { kind: this.spec.label, error: describeError(err) },
      );
      this.markSynced();
    }
    const now = this.clock.now();
    // A watch that ran fine for a while before failing is a fresh problem, not a repeat.
    if (this.up && now - this.connectedAt > this.opts.restartBackoff.maxMs) this.attempt = 0;
    this.setUp(false);
    const cause: RestartCause = (err as { listFailed?: boolean })?.listFailed
      ? "list-error"
      : "error";
    this.lastProblem = describeError(err);
    const delay = Math.min(
      this.opts.restartBackoff.initialMs * 2 ** this.attempt,
      this.opts.restartBackoff.maxMs,
    );
    this.attempt++;
    this.count(cause);
    this.opts.log.warn("informer stopped, restarting", {
      kind: this.spec.label,
      cause,
      error: this.lastProblem,
      attempt: this.attempt,
      delayMs: delay,
    });
    this.clock.clearTimeout(this.restartTimer);
    this.restartTimer = this.clock.setTimeout(() => {
      this.restartTimer = undefined;
      if (!this.stopped) this.start();
    }, delay);
  }

  /**
   * The server does not serve this kind (404): no object of it exists. What was cached is deleted
   * (the CRD was removed, and its objects with it), and the list is tried again later.
   */
  private notServed(): void {
    this.lastHeard = this.clock.now();
    this.setUp(false);
    if (!this.absent) {
      this.absent = true;
      this.lastProblem = "";
      this.opts.metrics?.informerUp.remove({ kind: this.spec.label });
      this.opts.metrics?.apiKindServed.set({ kind: this.spec.label }, 0);
      const cached = this.informer.list();
      this.opts.log.info(
        "the API server does not serve this kind (CRD not installed): none exist; " +
          "looking again periodically",
        {
          kind: this.spec.label,
          path: this.spec.path,
          recheckS: Math.round(this.opts.absentRecheckMs / 1000),
          ...(cached.length ? { deleted: cached.length } : {}),
        },
      );
      for (const o of cached) this.remove(o);
      // A fresh ListWatch: empty cache, and a full list (not a resumed watch) when it is back.
      void this.informer.stop();
      this.informer = this.createListWatch();
    }
    this.attempt = 0;
    this.markSynced();
    this.clock.clearTimeout(this.restartTimer);
    this.restartTimer = this.clock.setTimeout(() => {
      this.restartTimer = undefined;
      if (!this.stopped) this.start();
    }, this.opts.absentRecheckMs);
  }

  private markSynced(): void {
    if (this.synced) return;
    this.synced = true;
    this.onSynced();
  }

  private count(cause: RestartCause): void {
    this.opts.metrics?.informerRestarts.inc({ kind: this.spec.label, cause });
  }

  private setUp(up: boolean): void {
    if (up) this.lastProblem = "";
    this.up = up;
    if (this.absent) return; // no informer_up series for a kind the server does not serve
    this.opts.metrics?.informerUp.set({ kind: this.spec.label }, up && this.synced ? 1 : 0);
  }
}

export function createKubernetesSource(opts: KubernetesSourceOptions): ClusterSource {
  const log = opts.log.with({ component: "k8s" });
  const settings = {
    log,
    metrics: opts.metrics,
    restartBackoff: opts.restartBackoff ?? { initialMs: 500, maxMs: 30_000 },
    stallTimeoutMs: opts.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS,
    watchTimeoutSeconds: opts.watchTimeoutSeconds ??
      (() => 300 + Math.floor(Math.random() * 300)),
    listTimeoutMs: opts.listTimeoutMs ?? 60_000,
    listPageSize: opts.listPageSize ?? 500,
    absentRecheckMs: opts.absentRecheckMs ?? DEFAULT_ABSENT_RECHECK_MS,
    clock: opts.clock ?? realClock,
  };
  const traits: ServerTraits = { sendsBookmarks: false };
  let client: ApiClient | undefined;
  let informers: KindInformer[] = [];
  let started = false;
  let stopped = false;
  let resolveSynced: (() => void) | undefined;
  const allSynced = () => informers.length > 0 && informers.every((i) => i.synced);
  /** Seconds since each kind last heard from the server (list or watch line). */
  const watchAges = () =>
    Object.fromEntries(
      informers.filter((i) => i.lastHeard > 0).map((i) => [
        i.spec.label,
        (settings.clock.now() - i.lastHeard) / 1000,
      ]),
    );

  return {
    /** Resolves once the first full list of every kind was delivered (or on stop()). */
    async start(sink) {
      if (started) throw new Error("kubernetes source already started");
      started = true;
      const config = await loadClusterConfig({
        kubeconfig: opts.kubeconfig,
        serviceAccountDir: opts.serviceAccountDir,
      });
      client = await createApiClient(config, settings.clock);
      log.info("watching the API server", { server: client.server, config: config.origin });
      const syncedPromise = new Promise<void>((resolve) => resolveSynced = resolve);
      const onSynced = () => {
        if (allSynced()) resolveSynced?.();
      };
      informers = API_KINDS.map((spec) =>
        new KindInformer(spec, client!, settings, traits, sink, onSynced)
      );
      if (opts.metrics) opts.metrics.watchAges = () => watchAges();
      for (const inf of informers) inf.start();
      await syncedPromise;
      if (!stopped) log.info("all informers synced");
    },
    synced: allSynced,
    health(): SourceHealth {
      if (stopped) return { ok: false, detail: "kubernetes source stopped" };
      if (!informers.length) return { ok: false, detail: "kubernetes source not started" };
      const parts = informers.map((i) => i.health());
      const bad = parts.filter((p) => !p.ok);
      return bad.length
        ? { ok: false, detail: bad.map((p) => p.detail).join("; ") }
        : { ok: true, detail: parts.map((p) => p.detail).join(", ") };
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await Promise.all(informers.map((i) => i.stop()));
      client?.close();
      resolveSynced?.();
    },
  };
}
