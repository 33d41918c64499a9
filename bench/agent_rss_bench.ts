/**
 * The whole agent's memory at scale (performance issue §3, install.yaml's memory limit): the real
 * `main.ts run --kubeconfig` in a lab node netns, fed by its informers (list + watch) from the
 * fake API server (e2e/fake_apiserver) holding a generated cluster (bench/cluster_gen.ts) whose
 * pods carry the bulk real ones do (managedFields, container specs, statuses), so the slimming
 * path is measured too. RSS is the process's (main thread, verdict Worker with its engine
 * replica, informer caches), read from `ps` once the agent is ready and again after it settled.
 *
 *   deno run --frozen -A bench/agent_rss_bench.ts [--json] [--pods N] [--policies N] [--in-cluster]
 *
 * Needs root (the agent installs its rules and binds its queue inside the lab's netns).
 */
import { cleanupStaleLabs, createLab } from "../e2e/lab/topology.ts";
import { LabAgent } from "../e2e/lab/agent.ts";
import { startFakeApiProcess } from "../e2e/fake_apiserver/process.ts";
import { generateCluster } from "./cluster_gen.ts";
import type { Pod } from "../src/policy/types.ts";

export interface AgentRssResult {
  pods: number;
  /** How the agent was configured: as in a pod, or with a kubeconfig. */
  config: "in-cluster" | "kubeconfig";
  policies: number;
  namespaces: number;
  /** Seconds from start to /readyz answering 200. */
  readySeconds: number;
  /** RSS right after ready, and the largest of the samples in the settle period after it. */
  rssReadyMB: number;
  rssSettledMB: number;
  rssMaxMB: number;
}

/** A pod as the API server sends it: the fields the agent drops are most of its bytes. */
export function fattenPod(pod: Pod, i: number): Record<string, unknown> {
  const name = pod.metadata.name!;
  return {
    ...pod,
    metadata: {
      ...pod.metadata,
      uid: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
      creationTimestamp: "2026-11-01T10:00:00Z",
      generateName: `${name.slice(0, -2)}-`,
      annotations: {
        "kubectl.kubernetes.io/restartedAt": "2026-11-01T10:00:00Z",
        "prometheus.io/scrape": "true",
      },
      ownerReferences: [{
        apiVersion: "apps/v1",
        kind: "ReplicaSet",
        name: `rs-${i % 500}`,
        uid: "11111111-1111-4111-8111-111111111111",
        controller: true,
        blockOwnerDeletion: true,
      }],
      managedFields: [{
        manager: "kube-controller-manager",
        operation: "Update",
        apiVersion: "v1",
        time: "2026-11-01T10:00:00Z",
        fieldsType: "FieldsV1",
        fieldsV1: {
          "f:metadata": { "f:labels": { ".": {}, "f:app": {}, "f:tier": {}, "f:version": {} } },
          "f:spec": { "f:containers": { 'k:{"name":"app"}': { ".": {}, "f:image": {} } } },
        },
      }, {
        manager: "kubelet",
        operation: "Update",
        apiVersion: "v1",
        time: "2026-11-01T10:00:05Z",
        fieldsType: "FieldsV1",
        subresource: "status",
        fieldsV1: { "f:status": { "f:conditions": {}, "f:containerStatuses": {}, "f:podIP": {} } },
      }],
    },
    spec: {
      ...pod.spec,
      containers: (pod.spec?.containers ?? []).map((c) => ({
        ...c,
        name: "app",
        image: "registry.example.com/team/app:1.2.3",
        env: Array.from({ length: 8 }, (_, k) => ({ name: `ENV_${k}`, value: `value-${k}` })),
        resources: { requests: { cpu: "100m", memory: "128Mi" }, limits: { memory: "256Mi" } },
        volumeMounts: [{ name: "kube-api-access", mountPath: "/var/run/secrets", readOnly: true }],
        livenessProbe: { httpGet: { path: "/healthz", port: 8080 }, periodSeconds: 10 },
      })),
      volumes: [{ name: "kube-api-access", projected: { sources: [{ serviceAccountToken: {} }] } }],
      serviceAccountName: "default",
      restartPolicy: "Always",
      dnsPolicy: "ClusterFirst",
      tolerations: [{
        key: "node.kubernetes.io/not-ready",
        operator: "Exists",
        effect: "NoExecute",
      }],
    },
    status: {
      ...pod.status,
      podIPs: [{ ip: pod.status!.podIP! }],
      hostIPs: [{ ip: pod.status!.hostIP! }],
      startTime: "2026-11-01T10:00:01Z",
      qosClass: "Burstable",
      conditions: ["Initialized", "Ready", "ContainersReady", "PodScheduled"].map((type) => ({
        type,
        status: "True",
        lastTransitionTime: "2026-11-01T10:00:04Z",
      })),
      containerStatuses: [{
        name: "app",
        ready: true,
        restartCount: 0,
        image: "registry.example.com/team/app:1.2.3",
        imageID: `registry.example.com/team/app@sha256:${"ab".repeat(32)}`,
        containerID: `containerd://${"cd".repeat(32)}`,
        started: true,
        state: { running: { startedAt: "2026-11-01T10:00:03Z" } },
      }],
    },
  };
}

async function rssMB(pid: number): Promise<number> {
  const out = await new Deno.Command("ps", {
    args: ["-o", "rss=", "-p", String(pid)],
    stdout: "piped",
  })
    .output();
  return Number(new TextDecoder().decode(out.stdout).trim()) / 1024;
}

/**
 * `inCluster`: the agent runs as in a pod (its configuration from the environment and the service
 * account, over HTTPS), as the image does; else with a kubeconfig, which loads client-node's
 * KubeConfig too (about 40 MB, docs/sizing.md).
 */
export async function runAgentRssBench(
  pods = 10_000,
  policies = 5_000,
  settleSeconds = 10,
  inCluster = false,
): Promise<AgentRssResult> {
  const cluster = generateCluster(pods, policies);
  await cleanupStaleLabs("knprss");
  const lab = await createLab({
    prefix: "knprss",
    pods: [{ namespace: "bench", name: "probe", ip: "10.244.1.11" }],
  });
  let agent: LabAgent | undefined;
  const api = await startFakeApiProcess(
    (cmd) => lab.spawn(lab.nodeNetns, cmd, { stdin: "piped", stdout: "piped" }),
    { inCluster },
  );
  try {
    await api.sendAll([
      ...cluster.namespaces.map((object) => ({ op: "apply", kind: "namespaces", object })),
      ...cluster.pods.map((p, i) => ({
        op: "apply",
        kind: "pods",
        object: Deno.env.get("SLIMPODS") ? p : fattenPod(p, i),
      })),
      ...cluster.policies.map((object) => ({ op: "apply", kind: "networkpolicies", object })),
    ]);
    const t0 = performance.now();
    agent = await LabAgent.start(lab, {
      nodeName: "node-0",
      ...api.access,
      verbosity: 0,
    }, 300_000);
    const readySeconds = (performance.now() - t0) / 1000;
    const pid = agent.pid;
    const rssReadyMB = await rssMB(pid);
    let rssMaxMB = rssReadyMB;
    let rssSettledMB = rssReadyMB;
    for (let s = 0; s < settleSeconds; s++) {
      await new Promise((r) => setTimeout(r, 1000));
      rssSettledMB = await rssMB(pid);
      rssMaxMB = Math.max(rssMaxMB, rssSettledMB);
    }
    return {
      pods,
      policies,
      namespaces: cluster.namespaces.length,
      config: inCluster ? "in-cluster" : "kubeconfig",
      readySeconds,
      rssReadyMB,
      rssSettledMB,
      rssMaxMB,
    };
  } finally {
    await agent?.kill("SIGTERM").catch(() => {});
    await api.stop();
    await lab.destroy();
  }
}

export function formatAgentRss(r: AgentRssResult): string {
  return [
    `Whole agent at ${r.pods} pods / ${r.policies} policies / ${r.namespaces} namespaces ` +
    `(informers from the fake API server, node-0 of ${Math.ceil(r.pods / 100)} nodes, ${r.config})`,
    `  ready after ${r.readySeconds.toFixed(1)} s; RSS at ready ${r.rssReadyMB.toFixed(0)} MB, ` +
    `settled ${r.rssSettledMB.toFixed(0)} MB, max ${r.rssMaxMB.toFixed(0)} MB`,
  ].join("\n");
}

function arg(name: string, dflt: number): number {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Number(Deno.args[i + 1]) : dflt;
}

if (import.meta.main) {
  const r = await runAgentRssBench(
    arg("--pods", 10_000),
    arg("--policies", 5_000),
    10,
    Deno.args.includes("--in-cluster"),
  );
  console.log(Deno.args.includes("--json") ? JSON.stringify(r, null, 2) : formatAgentRss(r));
}
