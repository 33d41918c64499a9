/** What the informer cache keeps of each API object: exactly what the engine reads. */
import assert from "node:assert/strict";
import { slimNamespace, slimNetworkPolicy, slimPod } from "../src/k8s/slim.ts";
import { PolicyEngine } from "../src/policy/engine.ts";

/** A Pod as the API server returns it (trimmed from a real kind cluster's nginx pod). */
function apiPod() {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name: "web-7d4b9c",
      generateName: "web-",
      namespace: "prod",
      uid: "0b6f1f8e-2a4c-4c8e-9a57-3f1e2d1c0a11",
      resourceVersion: "48213",
      creationTimestamp: "2026-01-01T00:00:00Z",
      labels: { app: "web", "pod-template-hash": "7d4b9c" },
      annotations: { "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z" },
      ownerReferences: [{ apiVersion: "apps/v1", kind: "ReplicaSet", name: "web-7d4b9c" }],
      managedFields: Array.from({ length: 3 }, (_, i) => ({
        manager: `kube-controller-${i}`,
        operation: "Update",
        fieldsV1: { "f:metadata": { "f:labels": { "f:app": {} } }, "f:spec": { "f:x": {} } },
      })),
    },
    spec: {
      nodeName: "node-1",
      serviceAccountName: "default",
      volumes: [{ name: "kube-api-access", projected: { sources: [{ serviceAccountToken: {} }] } }],
      initContainers: [
        { name: "migrate", image: "busybox", ports: [{ containerPort: 1 }] },
        {
          name: "proxy",
          image: "envoy",
          restartPolicy: "Always",
          ports: [{ name: "admin", containerPort: 9901, protocol: "TCP" }],
        },
      ],
      containers: [
        {
          name: "nginx",
          image: "nginx:1.27",
          env: [{ name: "A", value: "x".repeat(200) }],
          ports: [{ name: "http", containerPort: 8080, protocol: "TCP" }],
          readinessProbe: { httpGet: { path: "/", port: 8080 } },
        },
        { name: "logger", image: "fluent-bit" },
      ],
    },
    status: {
      phase: "Running",
      podIP: "10.244.1.5",
      podIPs: [{ ip: "10.244.1.5" }, { ip: "fd00::5" }],
      hostIP: "172.18.0.3",
      hostIPs: [{ ip: "172.18.0.3" }],
      conditions: [{ type: "Ready", status: "True" }],
      containerStatuses: [{ name: "nginx", ready: true, restartCount: 0, imageID: "sha256:..." }],
    },
  };
}

Deno.test("slimPod keeps identity, labels, node, IPs, phase and every named port", () => {
  const slim = slimPod(apiPod());
  assert.deepEqual(slim, {
    metadata: {
      name: "web-7d4b9c",
      namespace: "prod",
      labels: { app: "web", "pod-template-hash": "7d4b9c" },
      resourceVersion: "48213",
      uid: "0b6f1f8e-2a4c-4c8e-9a57-3f1e2d1c0a11",
    },
    spec: {
      nodeName: "node-1",
      containers: [{
        name: "nginx",
        ports: [{ containerPort: 8080, name: "http", protocol: "TCP" }],
      }],
      initContainers: [
        { name: "migrate", ports: [{ containerPort: 1 }] },
        {
          name: "proxy",
          ports: [{ containerPort: 9901, name: "admin", protocol: "TCP" }],
          restartPolicy: "Always",
        },
      ],
    },
    status: {
      phase: "Running",
      podIP: "10.244.1.5",
      podIPs: [{ ip: "10.244.1.5" }, { ip: "fd00::5" }],
      hostIP: "172.18.0.3",
      hostIPs: [{ ip: "172.18.0.3" }],
    },
  });
  const full = JSON.stringify(apiPod()).length;
  const kept = JSON.stringify(slim).length;
  assert.ok(kept * 2 < full, `slim pod ${kept} B vs ${full} B`);
});

Deno.test("a slimmed pod is judged exactly like the full one (named ports, sidecars)", () => {
  const policy = {
    metadata: { namespace: "prod", name: "named-ports" },
    spec: {
      podSelector: { matchLabels: { app: "web" } },
      policyTypes: ["Ingress" as const],
      ingress: [{ ports: [{ port: "http" }, { port: "admin" }] }],
    },
  };
  const verdicts = (pod: ReturnType<typeof slimPod>) => {
    const e = new PolicyEngine();
    e.upsertNamespace({ metadata: { name: "prod" } });
    e.upsertPod(pod);
    assert.deepEqual(e.upsertPolicy(policy), []);
    return [8080, 9901, 80].map((port) =>
      e.evaluate({ src: "10.0.0.9", dst: "10.244.1.5", protocol: "TCP", port }).verdict
    );
  };
  const fromFull = verdicts(apiPod() as unknown as ReturnType<typeof slimPod>);
  assert.deepEqual(fromFull, ["allow", "allow", "deny"]);
  assert.deepEqual(verdicts(slimPod(apiPod())), fromFull);
});

Deno.test("slimNamespace keeps labels; slimNetworkPolicy keeps the whole spec", () => {
  assert.deepEqual(
    slimNamespace({
      metadata: { name: "prod", labels: { team: "a" }, managedFields: [{}] },
      spec: { finalizers: ["kubernetes"] },
      status: { phase: "Active" },
    }),
    { metadata: { name: "prod", labels: { team: "a" } } },
  );
  const spec = {
    podSelector: {},
    ingress: [{ from: [{ ipBlock: { cidr: "10.0.0.0/8", except: ["10.1.0.0/16"] } }] }],
  };
  assert.deepEqual(
    slimNetworkPolicy({
      metadata: { name: "p", namespace: "prod", generation: 3, annotations: { a: "b" } },
      spec,
    }),
    { metadata: { name: "p", namespace: "prod" }, spec },
  );
});

Deno.test("slimPod tolerates missing or odd fields without throwing", () => {
  assert.deepEqual(slimPod({ metadata: { name: "p" } }), { metadata: { name: "p" } });
  assert.deepEqual(slimPod(null), { metadata: {} });
  assert.deepEqual(
    slimPod({ metadata: { name: "p" }, spec: { containers: [{ name: "c" }] } }),
    { metadata: { name: "p" }, spec: { containers: [] } },
  );
});
