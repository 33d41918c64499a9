/**
 * The Kubernetes source against a fake API server: the real client-node informers (ListWatch)
 * through our watch transport, feeding the real PolicyEngine. Every step ends with verdicts a
 * user relies on: a change made in the "cluster" must change what the node allows.
 *
 * Needs: --allow-net=127.0.0.1 --allow-env --allow-read --allow-write=/tmp
 */
import assert from "node:assert/strict";
import { createLogger, type Logger } from "../src/log.ts";
import { AgentMetrics } from "../src/metrics.ts";
import { PolicyEngine } from "../src/policy/engine.ts";
import type { ObjectError } from "../src/policy/types.ts";
import { applyEvent } from "../src/state/apply.ts";
import type { StateEvent } from "../src/state/events.ts";
import { createKubernetesSource, type KubernetesSourceOptions } from "../src/k8s/source.ts";
import { API_KINDS } from "../src/k8s/kinds.ts";
import {
  FakeApiServer,
  type FakeApiServerOptions,
  type FakeKind,
  type KubeconfigOptions,
} from "../e2e/fake_apiserver/server.ts";
import { ManualClock } from "./support/manual_clock.ts";

// ------------------------------------------------------------------ cluster fixtures

function ns(name: string, labels: Record<string, string> = {}) {
  return { apiVersion: "v1", kind: "Namespace", metadata: { name, labels } };
}

function pod(namespace: string, name: string, ip: string, labels: Record<string, string>) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { namespace, name, labels, uid: `uid-${name}` },
    spec: {
      nodeName: "node-1",
      containers: [{ name: "c", image: "nginx", ports: [{ name: "http", containerPort: 8080 }] }],
    },
    status: { phase: "Running", podIP: ip, podIPs: [{ ip }], hostIP: "192.168.0.1" },
  };
}

function policy(namespace: string, name: string, spec: Record<string, unknown>) {
  return {
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    metadata: { namespace, name },
    spec,
  };
}

/**
 * Watches the agent keeps open on a cluster without the network-policy-api CRDs: namespaces, pods,
 * networkpolicies and nodes (the CRD kinds are answered 404 and looked for again later).
 */
const WATCHED = 4;

const WEB_IP = "10.0.0.2";
const CLIENT_IP = "10.0.1.2";
const OTHER_IP = "10.0.2.2";

/** prod/web; team-b/client; team-c/other. prod denies ingress except from team=b namespaces. */
function seed(server: FakeApiServer): void {
  server.apply("namespaces", ns("prod"));
  server.apply("namespaces", ns("team-b", { team: "b" }));
  server.apply("namespaces", ns("team-c", { team: "c" }));
  server.apply("pods", pod("prod", "web", WEB_IP, { app: "web" }));
  server.apply("pods", pod("team-b", "client", CLIENT_IP, { app: "client" }));
  server.apply("pods", pod("team-c", "other", OTHER_IP, { app: "other" }));
  server.apply(
    "networkpolicies",
    policy("prod", "allow-team-b", {
      podSelector: { matchLabels: { app: "web" } },
      policyTypes: ["Ingress"],
      ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: "b" } } }] }],
    }),
  );
}

// ------------------------------------------------------------------ harness

interface Harness {
  server: FakeApiServer;
  engine: PolicyEngine;
  metrics: AgentMetrics;
  events: StateEvent[];
  errors: ObjectError[];
  logs: string[];
  source: ReturnType<typeof createKubernetesSource>;
  /** Records the event and applies it to the engine, as the agent does. */
  sink(ev: StateEvent): void;
  verdict(src: string, dst: string, port?: number): string;
}

async function withCluster(
  opts: Partial<KubernetesSourceOptions> & {
    seed?: boolean;
    startSource?: boolean;
    server?: FakeApiServerOptions;
    /** Kubeconfig settings; `tokenFile` names a file inside the test's temp dir. */
    access?: KubeconfigOptions;
    /** Runs before the source starts (e.g. write the token file). */
    prepare?: (dir: string, server: FakeApiServer) => Promise<void>;
    /** The service account is mounted in the test's temp dir (in-cluster config). */
    serviceAccountDirInTemp?: boolean;
  },
  body: (h: Harness) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "knp-k8s-test-" });
  const server = new FakeApiServer(opts.server);
  const engine = new PolicyEngine();
  const metrics = new AgentMetrics();
  const events: StateEvent[] = [];
  const errors: ObjectError[] = [];
  const logs: string[] = [];
  const log: Logger = createLogger({ verbosity: 2, format: "json", write: (l) => logs.push(l) });
  if (opts.seed !== false) seed(server);
  await opts.prepare?.(dir, server);
  const kubeconfigOpts = opts.access?.tokenFile
    ? { ...opts.access, tokenFile: `${dir}/${opts.access.tokenFile}` }
    : opts.access;
  const source = createKubernetesSource({
    kubeconfig: await server.writeKubeconfig(dir, kubeconfigOpts),
    log,
    metrics,
    restartBackoff: { initialMs: 100, maxMs: 1000 },
    ...(opts.serviceAccountDirInTemp ? { serviceAccountDir: dir } : {}),
    ...opts,
  });
  const h: Harness = {
    server,
    engine,
    metrics,
    events,
    errors,
    logs,
    source,
    sink(ev) {
      events.push(ev);
      errors.push(...applyEvent(engine, ev));
    },
    verdict: (src, dst, port = 8080) =>
      engine.evaluate({ src, dst, protocol: "TCP", port }).verdict,
  };
  try {
    if (opts.startSource !== false) {
      await source.start(h.sink);
    }
    await body(h);
  } finally {
    await source.stop();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Polls `cond` every 10 ms; fails after `timeoutMs` with `what`. Returns the time it took. */
async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<number> {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return performance.now() - t0;
}

async function metricValue(
  m: AgentMetrics,
  name: string,
  labels: Record<string, string>,
): Promise<number> {
  const metric = (await m.registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = metric?.values.find((val) =>
    Object.entries(labels).every(([k, want]) => val.labels[k] === want)
  );
  return v?.value ?? 0;
}

// ------------------------------------------------------------------ tests

Deno.test("initial list: synced only after every kind, verdicts follow the cluster", async () => {
  await withCluster({}, async (h) => {
    assert.equal(h.source.synced(), true);
    assert.deepEqual(h.errors, []);
    assert.equal(h.verdict(CLIENT_IP, WEB_IP), "allow");
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
    assert.equal(h.verdict(WEB_IP, OTHER_IP), "allow"); // egress not isolated
    await waitFor("healthy", () => h.source.health().ok);
  });
});

Deno.test("not synced until the last kind's list is delivered; watches ask for bookmarks", async () => {
  await withCluster({ startSource: false }, async (h) => {
    h.server.listDelayMs = { networkpolicies: 400 };
    let resolved = false;
    const started = h.source.start(h.sink).then(() => resolved = true);
    await waitFor("pods listed", () => h.engine.stats().pods === 3);
    // Pods and namespaces are in, policies are not: judging now would allow what prod denies.
    assert.equal(h.source.synced(), false);
    assert.equal(resolved, false);
    assert.equal(h.source.health().ok, false);
    await started;
    assert.equal(h.source.synced(), true);
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
    await waitFor("every served kind watched", () => h.server.openWatches() === WATCHED);
    for (const kind of ["pods", "namespaces", "networkpolicies"] as const) {
      const q = h.server.watchRequests(kind)[0]!.query;
      assert.equal(q.get("allowWatchBookmarks"), "true");
      assert.ok(Number(q.get("timeoutSeconds")) >= 300, "server-side watch timeout requested");
      assert.ok(Number(q.get("resourceVersion")) > 0, "watch resumes from the list's version");
    }
  });
});

Deno.test("add, update and delete arrive in order and change verdicts", async () => {
  await withCluster({}, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    // Relabel team-c as team b: its pod becomes an allowed client.
    h.server.apply("namespaces", ns("team-c", { team: "b" }));
    const ms = await waitFor("namespace relabel", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
    // New deny-all egress policy in team-b.
    h.server.apply(
      "networkpolicies",
      policy("team-b", "deny-egress", { podSelector: {}, policyTypes: ["Egress"] }),
    );
    await waitFor("egress deny", () => h.verdict(CLIENT_IP, WEB_IP) === "deny");
    // Pod moves to a new IP: the old IP is no longer the pod.
    h.server.apply("pods", pod("team-b", "client", "10.0.1.3", { app: "client" }));
    await waitFor("pod IP change", () => h.verdict("10.0.1.3", WEB_IP) === "deny");
    h.server.delete("networkpolicies", "team-b", "deny-egress");
    await waitFor("policy delete", () => h.verdict("10.0.1.3", WEB_IP) === "allow");
    h.server.delete("pods", "team-b", "client");
    await waitFor("pod delete", () => h.engine.stats().pods === 2);
    h.server.delete("namespaces", undefined, "team-c");
    await waitFor("namespace delete", () => h.engine.stats().namespaces === 2);
    const tail = h.events.slice(-6).map((e) =>
      e.op === "delete" ? `delete ${e.kind} ${e.namespace ?? ""}/${e.name}` : `upsert ${e.kind}`
    );
    assert.deepEqual(tail, [
      "upsert Namespace",
      "upsert NetworkPolicy",
      "upsert Pod",
      "delete NetworkPolicy team-b/deny-egress",
      "delete Pod team-b/client",
      "delete Namespace /team-c",
    ]);
    console.log(`  event delivery latency: ${ms.toFixed(1)} ms`);
  });
});

Deno.test("410 Gone: relist delivers deletes for objects that vanished unseen", async () => {
  await withCluster({}, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    h.server.deleteUnseen("pods", "team-b", "client");
    h.server.deleteUnseen("networkpolicies", "prod", "allow-team-b");
    h.server.compact();
    await waitFor("relist", () => h.engine.stats().policies === 0 && h.engine.stats().pods === 2);
    assert.ok(
      h.events.some((e) => e.op === "delete" && e.kind === "Pod" && e.name === "client"),
      "delete synthesized by the relist",
    );
    assert.equal(h.server.listRequests("pods").length, 2);
    // prod/web is no longer isolated: everyone may connect.
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "allow");
    // A 410 is not an outage: no restart counted, watching again.
    await waitFor("watches reopened", () => h.server.openWatches() === WATCHED);
    assert.equal(h.source.health().ok, true);
    h.server.apply(
      "networkpolicies",
      policy("prod", "deny-all", { podSelector: {}, policyTypes: ["Ingress"] }),
    );
    await waitFor("change after relist", () => h.verdict(CLIENT_IP, WEB_IP) === "deny");
  });
});

Deno.test("abruptly cut watches: informer restarts, counts it, and later changes arrive", async () => {
  await withCluster({}, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    const t0 = performance.now();
    assert.equal(h.server.cutWatches(), WATCHED);
    await waitFor("restart counted", () => h.logs.some((l) => l.includes("informer stopped")));
    await waitFor("watches reopened", () => h.server.openWatches() === WATCHED);
    await waitFor("healthy again", () => h.source.health().ok);
    const recoveredMs = performance.now() - t0;
    assert.ok(
      await metricValue(h.metrics, "kube_netpol_informer_restarts_total", {
        kind: "pods",
        cause: "error",
      }) >= 1,
    );
    assert.equal(await metricValue(h.metrics, "kube_netpol_informer_up", { kind: "pods" }), 1);
    // Restart resumes from the last resourceVersion: no relist.
    assert.equal(h.server.listRequests("pods").length, 1);
    h.server.apply("namespaces", ns("team-c", { team: "b" }));
    await waitFor("change after cut", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
    console.log(`  recovered from an abrupt cut in ${recoveredMs.toFixed(0)} ms`);
  });
});

Deno.test("cleanly ended watches resume from the last version without a restart", async () => {
  await withCluster({}, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    h.server.endWatches();
    h.server.apply("namespaces", ns("team-c", { team: "b" }));
    await waitFor("change after clean end", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
    await waitFor("watches reopened", () => h.server.openWatches() === WATCHED);
    assert.equal(h.server.listRequests("namespaces").length, 1);
    assert.equal(
      await metricValue(h.metrics, "kube_netpol_informer_restarts_total", {
        kind: "namespaces",
        cause: "error",
      }),
      0,
    );
  });
});

Deno.test("API outage keeps the last state, reports unhealthy, and recovers", async () => {
  await withCluster({}, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    const eventsBefore = h.events.length;
    h.server.failStatus = 503;
    h.server.cutWatches();
    await waitFor("unhealthy", () => !h.source.health().ok);
    await waitFor("several retries", () => h.server.watchRequests("pods").length >= 3);
    assert.match(h.source.health().detail, /pods informer restarting/);
    assert.equal(await metricValue(h.metrics, "kube_netpol_informer_up", { kind: "pods" }), 0);
    // Nothing deleted, verdicts unchanged, still synced.
    assert.equal(h.events.length, eventsBefore);
    assert.equal(h.source.synced(), true);
    assert.equal(h.verdict(CLIENT_IP, WEB_IP), "allow");
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
    h.server.failStatus = 0;
    h.server.apply("namespaces", ns("team-c", { team: "b" }));
    await waitFor("change after outage", () => h.verdict(OTHER_IP, WEB_IP) === "allow", 5000);
    await waitFor("healthy again", () => h.source.health().ok, 5000);
  });
});

Deno.test("an invalid NetworkPolicy is rejected alone; the others stay enforced", async () => {
  await withCluster({}, async (h) => {
    h.server.apply(
      "networkpolicies",
      policy("team-b", "bad-cidr", {
        podSelector: {},
        policyTypes: ["Egress"],
        egress: [{ to: [{ ipBlock: { cidr: "10.0.0.0/33" } }] }],
      }),
    );
    await waitFor("error reported", () => h.errors.length > 0);
    assert.match(h.errors[0]!.object, /NetworkPolicy team-b\/bad-cidr/);
    assert.match(h.errors[0]!.field, /cidr/);
    assert.equal(h.errors[0]!.source, "apiserver");
    // The invalid policy did not isolate team-b; prod's policy still works.
    assert.equal(h.verdict(CLIENT_IP, WEB_IP), "allow");
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
    h.server.apply("namespaces", ns("team-c", { team: "b" }));
    await waitFor("later change", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
  });
});

/** Seconds since each kind last heard from the server, as /metrics shows them. */
async function ages(h: Harness): Promise<Record<string, number>> {
  const m = (await h.metrics.registry.getMetricsAsJSON()).find((x) =>
    x.name === "kube_netpol_watch_last_event_age_seconds"
  );
  return Object.fromEntries((m?.values ?? []).map((v) => [String(v.labels.kind), v.value]));
}

/**
 * Bookmark the given kinds' watches and wait until the source has read them (their age drops to
 * 0; the clock moves 1 ms first so that an age of 0 cannot be an older reading).
 */
async function bookmark(
  h: Harness,
  clock: ManualClock,
  ...kinds: Array<"pods" | "namespaces" | "networkpolicies" | "nodes">
) {
  await clock.advance(1);
  for (const k of kinds) assert.equal(h.server.bookmark(k), 1, `one ${k} watch bookmarked`);
  for (const k of kinds) {
    const deadline = performance.now() + 5000;
    while ((await ages(h))[k] !== 0) {
      if (performance.now() > deadline) throw new Error(`bookmark on ${k} not read`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

const ALL_KINDS = ["pods", "namespaces", "networkpolicies", "nodes"] as const;

Deno.test("bookmarks keep a quiet watch alive: no stall while they come (manual clock)", async () => {
  const clock = new ManualClock();
  await withCluster({ clock }, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    for (let i = 0; i < 4; i++) {
      // 60 s between bookmarks, as the API server sends them: below the 75 s stall timeout.
      await clock.advance(60_000 - 1);
      assert.ok((await ages(h)).pods! >= 59.9, "age grows while nothing arrives");
      await bookmark(h, clock, ...ALL_KINDS);
    }
    for (const kind of ALL_KINDS) {
      assert.equal(
        await metricValue(h.metrics, "kube_netpol_informer_restarts_total", {
          kind,
          cause: "stall",
        }),
        0,
      );
      assert.equal(h.server.watchRequests(kind).length, 1, "the first watch is still open");
    }
    assert.equal(h.source.health().ok, true);
    h.server.apply("namespaces", ns("team-c", { team: "b" }));
    await waitFor("change after bookmarks", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
    // A bookmark's resourceVersion is a valid resume point: no relist happened.
    assert.equal(h.server.listRequests("namespaces").length, 1);
  });
});

Deno.test("a hung watch (no event, no bookmark) fails /readyz by name and is re-opened", async () => {
  const clock = new ManualClock();
  await withCluster({ clock }, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    await bookmark(h, clock, ...ALL_KINDS); // this server sends bookmarks
    h.server.stallWatches("namespaces"); // connected, but nothing more will come
    await clock.advance(40_000);
    await bookmark(h, clock, "pods", "networkpolicies", "nodes");
    await clock.advance(34_000 - 1); // 74 s of silence: still within the bookmark interval + slack
    assert.equal(h.source.health().ok, true);
    assert.equal(
      await metricValue(h.metrics, "kube_netpol_informer_up", { kind: "namespaces" }),
      1,
    );
    await clock.advance(2_000); // past the 75 s stall timeout (the watchdog looks every second)
    const health = h.source.health();
    assert.equal(health.ok, false);
    assert.match(health.detail, /^namespaces watch hung: no event or bookmark for 7[56]s/);
    assert.equal(
      await metricValue(h.metrics, "kube_netpol_informer_up", { kind: "namespaces" }),
      0,
    );
    assert.equal(await metricValue(h.metrics, "kube_netpol_informer_up", { kind: "pods" }), 1);
    assert.equal(
      await metricValue(h.metrics, "kube_netpol_informer_restarts_total", {
        kind: "namespaces",
        cause: "stall",
      }),
      1,
    );
    assert.ok((await ages(h)).namespaces! >= 75);
    assert.ok(h.logs.some((l) => l.includes("watch hung") && l.includes("namespaces")));
    // Re-watched at once from the last resourceVersion (no relist) ...
    await waitFor("namespaces re-watched", () => h.server.openWatches("namespaces") === 1);
    assert.equal(h.server.listRequests("namespaces").length, 1, "re-watch, not relist");
    // ... but an answered request proves nothing about a server that hangs watches: not ready
    // until the new watch delivers. (The wait lets the client read the 200 it was sent.)
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(h.source.health().ok, false);
    await bookmark(h, clock, "namespaces");
    assert.equal(h.source.health().ok, true);
    assert.equal(
      await metricValue(h.metrics, "kube_netpol_informer_up", { kind: "namespaces" }),
      1,
    );

    // A change made while the watch hangs arrives with the re-watch.
    h.server.stallWatches("namespaces");
    h.server.apply("namespaces", ns("team-c", { team: "b" }));
    await clock.advance(40_000);
    await bookmark(h, clock, "pods", "networkpolicies", "nodes");
    await clock.advance(34_000 - 1);
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny", "lost on the hung stream so far");
    await clock.advance(2_000);
    await waitFor("change after the re-watch", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
    await waitFor("ready again", () => h.source.health().ok);
  });
});

Deno.test("a server that sends no bookmarks: quiet watches are re-opened, /readyz stays ok", async () => {
  const clock = new ManualClock();
  await withCluster({ clock, stallTimeoutMs: 75_000 }, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    h.server.stallWatches("namespaces");
    h.server.apply("namespaces", ns("team-c", { team: "b" })); // lost on the dead stream
    await clock.advance(74_000);
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
    await clock.advance(2_000);
    await waitFor("change after the re-watch", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
    assert.equal(
      await metricValue(h.metrics, "kube_netpol_informer_restarts_total", {
        kind: "namespaces",
        cause: "stall",
      }),
      1,
    );
    assert.equal(h.server.listRequests("namespaces").length, 1, "re-watch, not relist");
    // Silence is no evidence here (no bookmark was ever seen): readiness is not failed.
    assert.equal(h.source.health().ok, true);
  });
});

const TLS_DIR = new URL("./fixtures/tls/", import.meta.url).pathname;
const TLS = {
  cert: Deno.readTextFileSync(`${TLS_DIR}server.crt`),
  key: Deno.readTextFileSync(`${TLS_DIR}server.key`),
};

Deno.test("TLS: a certificate the configured CA did not sign is reported with its cause", async () => {
  await withCluster({
    startSource: false,
    server: { tls: TLS },
    access: { caFile: `${TLS_DIR}other-ca.crt` },
  }, async (h) => {
    const started = h.source.start(h.sink);
    await waitFor("failure reported", () => /certificate/.test(h.source.health().detail));
    const detail = h.source.health().detail;
    assert.match(detail, /invalid peer certificate: UnknownIssuer/, detail);
    assert.ok(h.logs.some((l) => l.includes("invalid peer certificate")), "logged with its cause");
    assert.equal(h.source.synced(), false);
    await h.source.stop();
    await started;
  });
});

Deno.test("TLS: the right CA connects and the informers sync over HTTPS", async () => {
  await withCluster({
    server: { tls: TLS },
    access: { caFile: `${TLS_DIR}ca.crt` },
  }, async (h) => {
    assert.equal(h.source.synced(), true);
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
    await waitFor("healthy", () => h.source.health().ok);
  });
});

Deno.test("in a pod: the service account's token and CA, over HTTPS, without a kubeconfig", async () => {
  const saved = ["KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"].map((
    k,
  ) => [k, Deno.env.get(k)] as const);
  try {
    await withCluster({
      server: { tls: TLS },
      kubeconfig: undefined,
      prepare: async (dir, server) => {
        await Deno.copyFile(`${TLS_DIR}ca.crt`, `${dir}/ca.crt`);
        await Deno.writeTextFile(`${dir}/token`, "sa-token\n");
        server.requiredToken = "sa-token";
        Deno.env.delete("KUBECONFIG");
        Deno.env.set("KUBERNETES_SERVICE_HOST", "127.0.0.1");
        Deno.env.set("KUBERNETES_SERVICE_PORT", String(server.port));
      },
      serviceAccountDirInTemp: true,
    }, async (h) => {
      assert.equal(h.source.synced(), true);
      assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
      await waitFor("healthy", () => h.source.health().ok);
      assert.ok(h.server.requests.length > 0);
      assert.ok(h.server.requests.every((r) => r.authorization === "Bearer sa-token"));
      assert.ok(
        h.logs.some((l) => l.includes('"config":"in-cluster"')),
        `the start names the in-cluster config:\n${h.logs.join("\n")}`,
      );
    });
  } finally {
    for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  }
});

Deno.test("401: a rotated service-account token is re-read at once, not after a minute", async () => {
  let tokenPath = "";
  await withCluster({
    access: { tokenFile: "token" },
    prepare: async (dir, server) => {
      tokenPath = `${dir}/token`;
      await Deno.writeTextFile(tokenPath, "token-1\n");
      server.requiredToken = "token-1";
    },
  }, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    assert.ok(h.server.requests.every((r) => r.authorization === "Bearer token-1"));
    // kubelet rotates the bound token; the API server stops accepting the old one.
    await Deno.writeTextFile(tokenPath, "token-2\n");
    h.server.requiredToken = "token-2";
    const before = h.server.requests.length;
    h.server.cutWatches();
    h.server.apply("namespaces", ns("team-c", { team: "b" }));
    await waitFor("change with the new token", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
    const after = h.server.requests.slice(before).map((r) => r.authorization);
    assert.ok(after.includes("Bearer token-1"), "the old token was refused first");
    assert.equal(after.at(-1), "Bearer token-2");
    for (const kind of ALL_KINDS) {
      // One restart for the cut itself; none for the refusal.
      assert.equal(
        await metricValue(h.metrics, "kube_netpol_informer_restarts_total", {
          kind,
          cause: "error",
        }),
        1,
      );
    }
  });
});

Deno.test("stop() during a slow list returns promptly and delivers nothing afterwards", async () => {
  await withCluster({ startSource: false }, async (h) => {
    h.server.listDelayMs = { pods: 500, namespaces: 500, networkpolicies: 500, nodes: 500 };
    const started = h.source.start(h.sink);
    await waitFor(
      "lists requested",
      () =>
        (["pods", "namespaces", "networkpolicies", "nodes"] as const).every((k) =>
          h.server.listRequests(k).length === 1
        ),
    );
    const t0 = performance.now();
    await h.source.stop();
    await started; // start() resolves on stop even though nothing synced
    assert.ok(performance.now() - t0 < 200, "stop did not wait for the lists");
    await new Promise((r) => setTimeout(r, 700)); // the lists would have been answered by now
    assert.deepEqual(h.events, []);
    assert.equal(h.source.synced(), false);
    assert.equal(h.server.watchRequests("pods").length, 0, "no watch opened after stop");
  });
});

Deno.test("every request carries the kubeconfig's credentials", async () => {
  await withCluster({}, async (h) => {
    await waitFor("watches open", () => h.server.openWatches() === WATCHED);
    assert.ok(h.server.requests.length >= 6);
    for (const r of h.server.requests) assert.equal(r.authorization, "Bearer fake-token");
  });
});

Deno.test("failing lists are retried with doubling delays (manual clock), counted as list errors", async () => {
  const clock = new ManualClock();
  await withCluster({ startSource: false, clock }, async (h) => {
    h.server.failStatus = 500;
    const started = h.source.start(h.sink);
    // Every kind fails alike (a 500 is an outage, also for the CRD kinds: not an absent CRD), and
    // each step waits for all of them, so no kind's restart is scheduled after time moved on.
    const kinds = API_KINDS.map((k) => k.label as FakeKind);
    const listErrors = (kind: string) =>
      metricValue(h.metrics, "kube_netpol_informer_restarts_total", { kind, cause: "list-error" });
    const lists = () => kinds.map((k) => h.server.listRequests(k).length);
    for (const [attempt, delay] of [[1, 100], [2, 200], [3, 400]] as const) {
      // The failure is seen and its restart scheduled before time moves on.
      const deadline = performance.now() + 5000;
      while ((await Promise.all(kinds.map(listErrors))).some((n) => n < attempt)) {
        if (performance.now() > deadline) throw new Error(`list error ${attempt} not counted`);
        await new Promise((r) => setTimeout(r, 5));
      }
      const before = lists();
      await clock.advance(delay - 1);
      assert.equal(clock.nextIn(), 1, `restart ${attempt} is due after exactly ${delay} ms`);
      assert.deepEqual(lists(), before, "no retry before the delay");
      await clock.advance(1);
      await waitFor(`retry ${attempt}`, () => lists().every((n, i) => n === before[i]! + 1));
    }
    assert.equal(h.source.synced(), false);
    assert.match(h.source.health().detail, /HTTP 500/);
    const fourth = performance.now() + 5000;
    while ((await Promise.all(kinds.map(listErrors))).some((n) => n < 4)) {
      if (performance.now() > fourth) throw new Error("list error 4 not counted");
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(
      (h.source.health().detail.match(/attempt 4\b/g) ?? []).length,
      API_KINDS.length,
      "every kind restarting",
    );
    h.server.failStatus = 0;
    await clock.advance(800); // the fourth delay; now the lists succeed
    await started;
    assert.equal(h.source.synced(), true);
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
  });
});

Deno.test("lists are paged; every page is delivered before synced", async () => {
  await withCluster({ listPageSize: 2 }, async (h) => {
    assert.equal(h.engine.stats().pods, 3);
    assert.equal(h.engine.stats().namespaces, 3);
    assert.equal(h.server.listRequests("pods").length, 2);
    assert.ok(h.server.listRequests("pods")[1]!.query.get("continue"));
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
    // The watch starts from the paged list's version: a change after it arrives.
    h.server.apply("namespaces", ns("team-c", { team: "b" }));
    await waitFor("change after paged list", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
  });
});

Deno.test({
  name: "a watch kept quiet for over 60 s (real time) still delivers the next change",
  ignore: Deno.env.get("KNP_SKIP_SLOW") === "1",
  async fn() {
    // No bookmarks from this server: nothing flows for 65 s. client-node's own Watch would have
    // aborted it at 30 s and, under Deno, never called back.
    await withCluster({}, async (h) => {
      await waitFor("watches open", () => h.server.openWatches() === WATCHED);
      await new Promise((r) => setTimeout(r, 65_000));
      h.server.apply("namespaces", ns("team-c", { team: "b" }));
      const ms = await waitFor("change after 65 s", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
      assert.ok(ms < 1000, `delivered on the open watch in ${ms.toFixed(0)} ms`);
      assert.equal(h.source.health().ok, true);
      console.log(`  change after 65 s of silence arrived in ${ms.toFixed(1)} ms`);
    });
  },
});
