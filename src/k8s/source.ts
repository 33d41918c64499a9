/**
 * ClusterSource backed by the Kubernetes API: one client-node informer (ListWatch) per kind, each
 * supervised so that it never stays dead.
 *
 * client-node's ListWatch relists after 410 (and sends deletes for what vanished) and resumes
 * cleanly ended watches, but it stops for good on any other error. The supervisor here restarts it
 * with capped exponential backoff (start() resumes from the last resourceVersion, so a restart
 * costs a watch, not a relist), keeps `kube_netpol_informer_up` / `_restarts_total` current, and
 * reports not-ok health while any kind is down. During an outage the last state stays: nothing is
 * deleted that the API server did not delete.
 *
 * This is client-node's makeInformer minus its `Watch`: ListWatch gets our DenoWatchTransport
 * (see watch_transport.ts for why) and a list function that pages and slims objects.
 */
import { type KubernetesObject, ListWatch } from "@kubernetes/client-node";
import type { Logger } from "../log.ts";
import type { AgentMetrics } from "../metrics.ts";
import type { Namespace, NetworkPolicy, ObjectKind, Pod } from "../policy/types.ts";
import type { StateEvent } from "../state/events.ts";
import type { ClusterSource, SourceHealth } from "../state/source.ts";
import { type ApiClient, createApiClient, loadKubeConfig } from "./api_client.ts";
import { slimObject } from "./slim.ts";
import { DenoWatchTransport } from "./watch_transport.ts";

export interface KubernetesSourceOptions {
  /** kubeconfig path (`--kubeconfig`); else KUBECONFIG, else in-cluster. */
  kubeconfig?: string;
  log: Logger;
  metrics?: AgentMetrics;
  /** Informer restart backoff after errors (default 500 ms doubling to 30 s). */
  restartBackoff?: { initialMs: number; maxMs: number };
  /** A watch silent this long is presumed dead and re-opened (default 90 s; bookmarks come ~60 s). */
  stallTimeoutMs?: number;
  /** Server-side watch timeout in seconds (default: random in 300..600, as client-go does). */
  watchTimeoutSeconds?: () => number;
  /** Timeout of one list request (default 60 s). */
  listTimeoutMs?: number;
  /** Page size for lists (default 500); big clusters are listed in pages like client-go does. */
  listPageSize?: number;
}

interface KindSpec {
  kind: ObjectKind;
  path: string;
  /** Metric label and log name. */
  label: string;
}

/** Namespaces first so pods and policies mostly land in a namespace the engine already knows. */
const KINDS: KindSpec[] = [
  { kind: "Namespace", path: "/api/v1/namespaces", label: "namespaces" },
  { kind: "Pod", path: "/api/v1/pods", label: "pods" },
  {
    kind: "NetworkPolicy",
    path: "/apis/networking.k8s.io/v1/networkpolicies",
    label: "networkpolicies",
  },
];

const SOURCE = "apiserver";

type Slim = (Pod | Namespace | NetworkPolicy) & KubernetesObject;

/** Why an informer was (re)started: the `cause` label of the restarts counter. */
export type RestartCause = "error" | "list-error" | "stall";

class KindInformer {
  /** The first list of this kind has been delivered. */
  synced = false;
  /** Watching: the last watch request was answered 200 and has not failed since. */
  up = false;
  private attempt = 0;
  private restartTimer: ReturnType<typeof setTimeout> | undefined;
  private stopped = false;
  private lastProblem = "";
  /** When the current watch was answered; a long healthy stretch resets the restart backoff. */
  private connectedAt = 0;
  /** Aborts in-flight lists and ListWatch's reconnect delays on stop(). */
  private readonly stopping = new AbortController();
  private readonly transport: DenoWatchTransport;
  readonly informer: ListWatch<Slim>;

  constructor(
    readonly spec: KindSpec,
    private readonly client: ApiClient,
    private readonly opts: Required<Omit<KubernetesSourceOptions, "kubeconfig" | "metrics">> & {
      metrics?: AgentMetrics;
    },
    private readonly sink: (ev: StateEvent) => void,
    private readonly onSynced: () => void,
  ) {
    const log = opts.log;
    const transport = this.transport = new DenoWatchTransport(client, spec.kind, {
      stallTimeoutMs: opts.stallTimeoutMs,
      watchTimeoutSeconds: opts.watchTimeoutSeconds,
    }, {
      watchStarting: () => {
        if (!this.synced) {
          // ListWatch delivers the whole list synchronously before it opens the first watch.
          this.synced = true;
          log.info("informer synced", { kind: spec.label, objects: this.informer.list().length });
          this.onSynced();
        }
      },
      connected: () => {
        this.connectedAt = Date.now();
        this.setUp(true);
      },
      activity: () => {
        this.attempt = 0;
      },
      stalled: (silentMs) => {
        this.setUp(false);
        this.count("stall");
        log.warn("watch silent too long, re-watching", { kind: spec.label, silentMs });
      },
      errorEvent: (status) => log.v(2).info("watch error event", { kind: spec.label, status }),
    });
    this.informer = new ListWatch<Slim>(
      spec.path,
      transport.asWatch(),
      () => this.list(),
      false,
      undefined,
      undefined,
      { delayFn: (ms) => this.delay(ms) },
    );
    this.informer.on("add", (o) => this.upsert(o));
    this.informer.on("update", (o) => this.upsert(o));
    this.informer.on("delete", (o) => this.remove(o));
    this.informer.on("error", (err) => this.failed(err));
  }

  start(): void {
    this.stopped = false;
    this.informer.start().catch((err) => this.failed(err));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    this.transport.close();
    this.stopping.abort();
    this.setUp(false);
    await this.informer.stop();
  }

  /** ListWatch's wait before re-watching a quiet stream; cut short by stop(). */
  private delay(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopping.signal.aborted) return resolve();
      const timer = setTimeout(resolve, ms);
      this.stopping.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  health(): { ok: boolean; detail: string } {
    if (this.up) return { ok: true, detail: `${this.spec.label} watching` };
    const why = this.lastProblem ? `: ${this.lastProblem}` : "";
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
      return await this.listPages();
    } catch (err) {
      // Tagged so the restart is counted as cause="list-error" (ListWatch reports both alike).
      const message = err instanceof Error ? err.message : String(err);
      throw Object.assign(new Error(`list ${this.spec.path}: ${message}`, { cause: err }), {
        listFailed: true,
      });
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
        throw new Error(`HTTP ${res.status} ${text.slice(0, 200)}`);
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
    // A watch that ran fine for a while before failing is a fresh problem, not a repeat.
    if (this.up && Date.now() - this.connectedAt > this.opts.restartBackoff.maxMs) this.attempt = 0;
    this.setUp(false);
    const cause: RestartCause = (err as { listFailed?: boolean })?.listFailed
      ? "list-error"
      : "error";
    this.lastProblem = err instanceof Error ? err.message : String(err);
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
    clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (!this.stopped) this.start();
    }, delay);
  }

  private count(cause: RestartCause): void {
    this.opts.metrics?.informerRestarts.inc({ kind: this.spec.label, cause });
  }

  private setUp(up: boolean): void {
    if (up) this.lastProblem = "";
    this.up = up;
    this.opts.metrics?.informerUp.set({ kind: this.spec.label }, up && this.synced ? 1 : 0);
  }
}

export function createKubernetesSource(opts: KubernetesSourceOptions): ClusterSource {
  const log = opts.log.with({ component: "k8s" });
  const settings = {
    log,
    metrics: opts.metrics,
    restartBackoff: opts.restartBackoff ?? { initialMs: 500, maxMs: 30_000 },
    stallTimeoutMs: opts.stallTimeoutMs ?? 90_000,
    watchTimeoutSeconds: opts.watchTimeoutSeconds ??
      (() => 300 + Math.floor(Math.random() * 300)),
    listTimeoutMs: opts.listTimeoutMs ?? 60_000,
    listPageSize: opts.listPageSize ?? 500,
  };
  let client: ApiClient | undefined;
  let informers: KindInformer[] = [];
  let started = false;
  let stopped = false;
  let resolveSynced: (() => void) | undefined;
  const allSynced = () => informers.length > 0 && informers.every((i) => i.synced);

  return {
    /** Resolves once the first full list of every kind was delivered (or on stop()). */
    async start(sink) {
      if (started) throw new Error("kubernetes source already started");
      started = true;
      const { kc, origin } = loadKubeConfig({ kubeconfig: opts.kubeconfig });
      client = await createApiClient(kc);
      log.info("watching the API server", { server: client.server, config: origin });
      const syncedPromise = new Promise<void>((resolve) => resolveSynced = resolve);
      const onSynced = () => {
        if (allSynced()) resolveSynced?.();
      };
      informers = KINDS.map((spec) => new KindInformer(spec, client!, settings, sink, onSynced));
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
