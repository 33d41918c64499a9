/**
 * The informers for the cluster-scoped tiers against the fake API server: ClusterNetworkPolicy
 * (v1alpha2), AdminNetworkPolicy and BaselineAdminNetworkPolicy (v1alpha1) and Nodes, each
 * optional. A cluster without the network-policy-api CRDs must look exactly like before to
 * NetworkPolicy users (synced, ready, enforced), a CRD installed later is picked up within the
 * recheck interval (a manual clock), a CRD removed takes its policies with it, and a role without
 * the kinds keeps the rest enforced while readiness says what is missing.
 *
 * Needs: --allow-net=127.0.0.1 --allow-env --allow-read --allow-write=/tmp
 */
import assert from "node:assert/strict";
import { createLogger } from "../src/log.ts";
import { AgentMetrics } from "../src/metrics.ts";
import { PolicyEngine } from "../src/policy/engine.ts";
import type { ObjectError } from "../src/policy/types.ts";
import { applyEvent } from "../src/state/apply.ts";
import type { StateEvent } from "../src/state/events.ts";
import { createKubernetesSource, type KubernetesSourceOptions } from "../src/k8s/source.ts";
import { slimClusterPolicy, slimNode, slimObject } from "../src/k8s/slim.ts";
import { API_KINDS } from "../src/k8s/kinds.ts";
import { explainDecision } from "../src/policy/explain.ts";
import {
  CRD_KINDS,
  FakeApiServer,
  type FakeApiServerOptions,
} from "../e2e/fake_apiserver/server.ts";
import { ManualClock } from "./support/manual_clock.ts";

// ------------------------------------------------------------------ cluster fixtures

const WEB_IP = "10.0.0.2"; // prod/web
const CLIENT_IP = "10.0.1.2"; // team-b/client
const OTHER_IP = "10.0.2.2"; // team-c/other
const NODE_IP = "192.168.0.1";

function ns(name: string, labels: Record<string, string> = {}) {
  return { apiVersion: "v1", kind: "Namespace", metadata: { name, labels } };
}

function pod(namespace: string, name: string, ip: string) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { namespace, name, labels: { app: name } },
    spec: { nodeName: "node-1", containers: [{ name: "c", ports: [{ containerPort: 8080 }] }] },
    status: { phase: "Running", podIP: ip, podIPs: [{ ip }], hostIP: NODE_IP },
  };
}

/** A Node as the API server returns it: much more than the engine reads. */
function apiNode(name: string, ip: string, labels: Record<string, string>) {
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      labels,
      uid: `uid-${name}`,
      annotations: { "node.alpha.kubernetes.io/ttl": "0" },
      managedFields: [{ manager: "kubelet", operation: "Update", fieldsV1: { "f:status": {} } }],
    },
    spec: { podCIDR: "10.0.0.0/16", podCIDRs: ["10.0.0.0/16", "fd00:10::/64"], providerID: "x" },
    status: {
      addresses: [{ type: "InternalIP", address: ip }, { type: "Hostname", address: name }],
      images: [{ names: ["registry.k8s.io/pause:3.10"], sizeBytes: 320368 }],
      conditions: [{ type: "Ready", status: "True" }],
      capacity: { cpu: "2", memory: "4Gi" },
      nodeInfo: { kubeletVersion: "v1.33.1" },
    },
  };
}

/** Admin tier: nobody but team b may reach prod. */
function adminDenyIntoProd(name = "prod-guard") {
  return {
    apiVersion: "policy.networking.k8s.io/v1alpha2",
    kind: "ClusterNetworkPolicy",
    metadata: { name },
    spec: {
      tier: "Admin",
      priority: 10,
      subject: { namespaces: { matchLabels: { "kubernetes.io/metadata.name": "prod" } } },
      ingress: [
        {
          name: "team-b",
          action: "Accept",
          from: [{ namespaces: { matchLabels: { team: "b" } } }],
        },
        { name: "nobody-else", action: "Deny", from: [{ namespaces: {} }] },
      ],
    },
  };
}

function seed(server: FakeApiServer): void {
  server.apply("namespaces", ns("prod", { "kubernetes.io/metadata.name": "prod" }));
  server.apply("namespaces", ns("team-b", { team: "b" }));
  server.apply("namespaces", ns("team-c", { team: "c" }));
  server.apply("pods", pod("prod", "web", WEB_IP));
  server.apply("pods", pod("team-b", "client", CLIENT_IP));
  server.apply("pods", pod("team-c", "other", OTHER_IP));
  server.apply("nodes", apiNode("node-1", NODE_IP, { "kubernetes.io/os": "linux" }));
}

// ------------------------------------------------------------------ harness

interface Harness {
  server: FakeApiServer;
  engine: PolicyEngine;
  metrics: AgentMetrics;
  events: StateEvent[];
  errors: ObjectError[];
  logs: string[];
  clock: ManualClock;
  source: ReturnType<typeof createKubernetesSource>;
  verdict(src: string, dst: string, port?: number): string;
  why(src: string, dst: string, port?: number): string;
}

async function withCluster(
  opts: Partial<KubernetesSourceOptions> & {
    server?: FakeApiServerOptions;
    /** Before the source starts: e.g. install CRDs, apply objects, forbid kinds. */
    prepare?: (server: FakeApiServer) => void;
    startSource?: boolean;
  },
  body: (h: Harness) => Promise<void> | void,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "knp-k8s-tiers-" });
  const server = new FakeApiServer(opts.server);
  const engine = new PolicyEngine();
  const metrics = new AgentMetrics();
  const clock = new ManualClock();
  const events: StateEvent[] = [];
  const errors: ObjectError[] = [];
  const logs: string[] = [];
  seed(server);
  opts.prepare?.(server);
  const source = createKubernetesSource({
    kubeconfig: await server.writeKubeconfig(dir),
    log: createLogger({ verbosity: 2, format: "json", write: (l) => logs.push(l) }),
    metrics,
    restartBackoff: { initialMs: 100, maxMs: 1000 },
    clock,
    ...opts,
  });
  const conn = (src: string, dst: string, port: number) => ({
    src,
    dst,
    protocol: "TCP" as const,
    port,
  });
  const h: Harness = {
    server,
    engine,
    metrics,
    events,
    errors,
    logs,
    clock,
    source,
    verdict: (src, dst, port = 8080) => engine.evaluate(conn(src, dst, port)).verdict,
    why: (src, dst, port = 8080) => explainDecision(engine.evaluate(conn(src, dst, port))),
  };
  try {
    if (opts.startSource !== false) {
      await source.start((ev) => {
        events.push(ev);
        errors.push(...applyEvent(engine, ev));
      });
    }
    await body(h);
  } finally {
    await source.stop();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Every series of a metric as "label=value,...": value. */
async function series(m: AgentMetrics, name: string): Promise<Record<string, number>> {
  const metric = (await m.registry.getMetricsAsJSON()).find((x) => x.name === name);
  return Object.fromEntries(
    (metric?.values ?? []).map((v) => [
      Object.entries(v.labels).map(([k, x]) => `${k}=${x}`).join(","),
      v.value,
    ]),
  );
}

/** Log lines (JSON) whose message contains `text`, by their `kind` field. */
function logged(h: Harness, text: string): string[] {
  return h.logs.map((l) => JSON.parse(l) as { msg?: string; kind?: string })
    .filter((l) => l.msg?.includes(text)).map((l) => String(l.kind));
}

const CRD_LABELS = [...CRD_KINDS].sort();

// ------------------------------------------------------------------ tests

Deno.test("no network-policy-api CRDs: synced, ready and enforcing NetworkPolicy as before", async () => {
  await withCluster({
    prepare: (s) =>
      s.apply("networkpolicies", {
        apiVersion: "networking.k8s.io/v1",
        kind: "NetworkPolicy",
        metadata: { namespace: "prod", name: "deny-in" },
        spec: { podSelector: {}, policyTypes: ["Ingress"] },
      }),
  }, async (h) => {
    // start() returned: every kind counts as synced, none waited for.
    assert.equal(h.source.synced(), true);
    assert.equal(h.verdict(CLIENT_IP, WEB_IP), "deny");
    await waitFor("ready", () => h.source.health().ok);
    for (const k of CRD_KINDS) {
      assert.match(h.source.health().detail, new RegExp(`${k} not served`));
    }
    // Said once per kind, however often it is looked for again.
    for (let i = 1; i <= 3; i++) {
      // Each recheck is answered (and the next one scheduled) before time moves on.
      await waitFor("first lists answered", () => logged(h, "does not serve").length === 3);
      await h.clock.advance(30_000);
      await waitFor(
        `recheck ${i}`,
        () =>
          CRD_KINDS.every((k) =>
            h.server.listRequests(k).length === i + 1 &&
            h.clock.pending().filter((d) => d === 30_000).length === CRD_KINDS.length
          ),
      );
    }
    assert.deepEqual(logged(h, "does not serve this kind").sort(), CRD_LABELS);
    assert.equal(h.source.health().ok, true);
    // No informer_up series for what is not there (an alert on 0 would fire in every cluster
    // without the CRDs); kube_netpol_api_kind_served says it instead.
    const up = await series(h.metrics, "kube_netpol_informer_up");
    assert.deepEqual(Object.keys(up).sort(), [
      "kind=namespaces",
      "kind=networkpolicies",
      "kind=nodes",
      "kind=pods",
    ]);
    assert.deepEqual(await series(h.metrics, "kube_netpol_api_kind_served"), {
      "kind=adminnetworkpolicies": 0,
      "kind=baselineadminnetworkpolicies": 0,
      "kind=clusternetworkpolicies": 0,
      "kind=nodes": 1,
    });
    assert.deepEqual(h.errors, []);
  });
});

Deno.test("a CRD installed later is picked up at the next recheck, and its policies enforced", async () => {
  await withCluster({}, async (h) => {
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "allow");
    const lists = h.server.listRequests("clusternetworkpolicies").length;
    h.server.installKind("clusternetworkpolicies");
    h.server.apply("clusternetworkpolicies", adminDenyIntoProd());
    await h.clock.advance(30_000 - 1);
    assert.equal(h.server.listRequests("clusternetworkpolicies").length, lists, "not before due");
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "allow");
    await h.clock.advance(1);
    await waitFor("admin policy enforced", () => h.verdict(OTHER_IP, WEB_IP) === "deny");
    assert.equal(h.verdict(CLIENT_IP, WEB_IP), "allow");
    assert.match(
      h.why(OTHER_IP, WEB_IP),
      /ingress: prod\/web denied by Admin ClusterNetworkPolicy\/prod-guard rule 'nobody-else'/,
    );
    assert.deepEqual(logged(h, "serves this kind now"), ["clusternetworkpolicies"]);
    // Watched from then on: a change arrives without waiting for another recheck.
    await waitFor("watch open", () => h.server.openWatches("clusternetworkpolicies") === 1);
    const guard = adminDenyIntoProd();
    guard.spec.ingress[1]!.action = "Pass";
    h.server.apply("clusternetworkpolicies", guard);
    await waitFor("modified policy", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
    assert.equal(
      (await series(h.metrics, "kube_netpol_api_kind_served"))[
        "kind=clusternetworkpolicies"
      ],
      1,
    );
    assert.equal(
      (await series(h.metrics, "kube_netpol_informer_up"))[
        "kind=clusternetworkpolicies"
      ],
      1,
    );
    assert.equal(h.source.health().ok, true);
    assert.match(h.source.health().detail, /clusternetworkpolicies watching/);
  });
});

Deno.test("AdminNetworkPolicy, BaselineAdminNetworkPolicy and Nodes arrive through their informers", async () => {
  await withCluster({
    server: { crdsInstalled: true },
    prepare: (s) => {
      s.apply("adminnetworkpolicies", {
        apiVersion: "policy.networking.k8s.io/v1alpha1",
        kind: "AdminNetworkPolicy",
        metadata: { name: "no-node-ssh" },
        spec: {
          priority: 5,
          subject: { namespaces: {} },
          egress: [{
            name: "ssh",
            action: "Deny",
            to: [{ nodes: { matchLabels: { "kubernetes.io/os": "linux" } } }],
            ports: [{ portNumber: { protocol: "TCP", port: 22 } }],
          }],
        },
      });
      s.apply("baselineadminnetworkpolicies", {
        apiVersion: "policy.networking.k8s.io/v1alpha1",
        kind: "BaselineAdminNetworkPolicy",
        metadata: { name: "default" },
        spec: {
          subject: { namespaces: { matchLabels: { team: "c" } } },
          ingress: [{ name: "closed", action: "Deny", from: [{ namespaces: {} }] }],
        },
      });
    },
  }, async (h) => {
    assert.deepEqual(h.errors, []);
    assert.equal(h.verdict(WEB_IP, NODE_IP, 22), "deny", "nodes peer matched the Node's address");
    assert.equal(h.verdict(WEB_IP, NODE_IP, 80), "allow");
    assert.equal(h.verdict(WEB_IP, OTHER_IP), "deny", "baseline closes team-c");
    assert.deepEqual(h.engine.clusterPolicyKeys(), [
      "AdminNetworkPolicy/no-node-ssh",
      "BaselineAdminNetworkPolicy/default",
    ]);
    assert.deepEqual(h.engine.nodePodCIDRs("node-1"), ["10.0.0.0/16", "fd00:10::/64"]);
    // A relabelled node is no longer a peer of the Deny.
    h.server.apply("nodes", apiNode("node-1", NODE_IP, { "kubernetes.io/os": "windows" }));
    await waitFor("node relabel", () => h.verdict(WEB_IP, NODE_IP, 22) === "allow");
    h.server.delete("baselineadminnetworkpolicies", undefined, "default");
    await waitFor("baseline deleted", () => h.verdict(WEB_IP, OTHER_IP) === "allow");
    const deletes = h.events.filter((e) => e.op === "delete").map((e) => `${e.kind}/${e.name}`);
    assert.deepEqual(deletes, ["BaselineAdminNetworkPolicy/default"]);
  });
});

for (const unseen of [false, true]) {
  Deno.test(`a CRD removed takes its policies with it (${unseen ? "deletes lost: on the 404" : "DELETED events"})`, async () => {
    await withCluster({
      server: { crdsInstalled: true },
      prepare: (s) => s.apply("clusternetworkpolicies", adminDenyIntoProd()),
    }, async (h) => {
      assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
      await waitFor("watch open", () => h.server.openWatches("clusternetworkpolicies") === 1);
      h.server.uninstallKind("clusternetworkpolicies", { unseen });
      // The ended watch is resumed, answered 404: nothing of the kind exists any more.
      await waitFor("policy gone", () => h.verdict(OTHER_IP, WEB_IP) === "allow");
      assert.deepEqual(h.engine.clusterPolicyKeys(), []);
      await waitFor(
        "absent",
        () => /clusternetworkpolicies not served/.test(h.source.health().detail),
      );
      assert.equal(h.source.health().ok, true);
      // And it comes back like any CRD installed later.
      h.server.installKind("clusternetworkpolicies");
      h.server.apply("clusternetworkpolicies", adminDenyIntoProd("again"));
      await h.clock.advance(30_000);
      await waitFor("reinstalled", () => h.verdict(OTHER_IP, WEB_IP) === "deny");
      assert.deepEqual(h.engine.clusterPolicyKeys(), ["ClusterNetworkPolicy/again"]);
    });
  });
}

Deno.test("a role without the policy kinds: the rest is enforced, readiness says what is missing", async () => {
  await withCluster({
    server: { crdsInstalled: true },
    prepare: (s) => {
      for (const k of CRD_KINDS) s.forbidden.add(k);
      s.forbidden.add("nodes");
      s.apply("clusternetworkpolicies", adminDenyIntoProd());
      s.apply("networkpolicies", {
        apiVersion: "networking.k8s.io/v1",
        kind: "NetworkPolicy",
        metadata: { namespace: "team-b", name: "deny-out" },
        spec: { podSelector: {}, policyTypes: ["Egress"] },
      });
    },
  }, async (h) => {
    assert.equal(h.source.synced(), true, "synced without the forbidden kinds");
    assert.equal(h.verdict(CLIENT_IP, WEB_IP), "deny", "NetworkPolicy enforced");
    const health = h.source.health();
    assert.equal(health.ok, false);
    assert.match(health.detail, /clusternetworkpolicies informer restarting .*HTTP 403/);
    assert.match(health.detail, /nodes informer restarting/);
    assert.deepEqual(
      logged(h, "not allowed to list this kind").sort(),
      [...CRD_LABELS, "nodes"].sort(),
    );
    // Granted: picked up by the next restart (the capped backoff, here 100 ms doubling).
    h.server.forbidden.clear();
    await h.clock.advance(1000);
    await waitFor("admin policy enforced", () => h.verdict(OTHER_IP, WEB_IP) === "deny");
    await waitFor("healthy", () => h.source.health().ok);
  });
});

Deno.test("cluster policies from the API: invalid ones reported alone, warnings apart", async () => {
  await withCluster({
    server: { crdsInstalled: true },
    prepare: (s) => {
      s.apply("clusternetworkpolicies", adminDenyIntoProd());
      const bad = adminDenyIntoProd("bad-priority");
      bad.spec.priority = 5000;
      s.apply("clusternetworkpolicies", bad);
      const odd = adminDenyIntoProd("odd-action");
      odd.spec.ingress[0]!.action = "Maybe";
      s.apply("clusternetworkpolicies", odd);
    },
  }, (h) => {
    const bad = h.errors.filter((e) => e.object.includes("bad-priority"));
    assert.equal(bad.length, 1);
    assert.equal(bad[0]!.source, "apiserver");
    assert.match(bad[0]!.field, /spec\.priority/);
    assert.equal(bad[0]!.severity, undefined, "not applied");
    const odd = h.errors.filter((e) => e.object.includes("odd-action"));
    assert.ok(odd.length >= 1 && odd.every((e) => e.severity === "warning"), JSON.stringify(odd));
    assert.deepEqual(h.engine.clusterPolicyKeys(), [
      "ClusterNetworkPolicy/odd-action",
      "ClusterNetworkPolicy/prod-guard",
    ]);
    assert.equal(h.verdict(OTHER_IP, WEB_IP), "deny");
  });
});

Deno.test("slim: a Node keeps labels, addresses and pod CIDRs; a policy its spec, not its status", () => {
  const node = slimNode(apiNode("n1", "172.18.0.3", { "kubernetes.io/os": "linux" }));
  assert.deepEqual(node, {
    metadata: { name: "n1", labels: { "kubernetes.io/os": "linux" }, uid: "uid-n1" },
    spec: { podCIDR: "10.0.0.0/16", podCIDRs: ["10.0.0.0/16", "fd00:10::/64"] },
    status: {
      addresses: [
        { type: "InternalIP", address: "172.18.0.3" },
        { type: "Hostname", address: "n1" },
      ],
    },
  });
  const raw = {
    ...adminDenyIntoProd(),
    status: { conditions: [{ type: "Ready", status: "True", message: "x".repeat(500) }] },
  };
  (raw.metadata as Record<string, unknown>).managedFields = [{ manager: "kubectl" }];
  const slim = slimClusterPolicy(raw);
  assert.deepEqual(slim, { metadata: { name: "prod-guard" }, spec: adminDenyIntoProd().spec });
  assert.equal(JSON.stringify(slim).includes("status"), false);
  // Every kind the informers watch has a slimmer.
  for (const k of API_KINDS) assert.ok(slimObject(k.kind, { metadata: { name: "n" } }).metadata);
});

Deno.test("the informers watch every kind the manifests read, at the API paths of their versions", () => {
  const paths = Object.fromEntries(API_KINDS.map((k) => [k.kind, k.path]));
  assert.deepEqual(paths, {
    Namespace: "/api/v1/namespaces",
    Node: "/api/v1/nodes",
    Pod: "/api/v1/pods",
    NetworkPolicy: "/apis/networking.k8s.io/v1/networkpolicies",
    ClusterNetworkPolicy: "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
    AdminNetworkPolicy: "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies",
    BaselineAdminNetworkPolicy:
      "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies",
  });
  assert.deepEqual(
    API_KINDS.filter((k) => k.optional).map((k) => k.label).sort(),
    [
      ...CRD_LABELS,
      "nodes",
    ].sort(),
  );
});

Deno.test("engine Node index: pod CIDRs from spec.podCIDRs, else spec.podCIDR; bad ones reported", () => {
  const e = new PolicyEngine();
  const node = (name: string, spec: Record<string, unknown>) => ({
    metadata: { name },
    spec,
    status: { addresses: [{ type: "InternalIP", address: "10.1.0.1" }] },
  });
  assert.deepEqual(e.upsertNode(node("a", { podCIDRs: ["10.2.0.5/24", "fd00:2::/64"] })), []);
  assert.deepEqual(e.nodePodCIDRs("a"), ["10.2.0.0/24", "fd00:2::/64"], "canonical, in order");
  assert.deepEqual(e.upsertNode(node("b", { podCIDR: "10.3.0.0/16" })), []);
  assert.deepEqual(e.nodePodCIDRs("b"), ["10.3.0.0/16"], "the older single field");
  assert.deepEqual(e.upsertNode(node("c", {})), []);
  assert.deepEqual(e.nodePodCIDRs("c"), []);
  assert.equal(e.nodePodCIDRs("nowhere"), undefined);
  const errors = e.upsertNode(node("d", { podCIDRs: ["10.4.0.0/16", "10.5.0.0/33"] }));
  assert.deepEqual(errors.map((x) => [x.object, x.field]), [["Node d", "spec.podCIDRs[1]"]]);
  assert.deepEqual(e.nodePodCIDRs("d"), ["10.4.0.0/16"], "the good one kept");
  e.deleteNode("a");
  assert.equal(e.nodePodCIDRs("a"), undefined);
});
