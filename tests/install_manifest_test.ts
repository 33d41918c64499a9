/**
 * install.yaml keeps the promises the README makes to operators (least privilege, placement,
 * probes), and the Dockerfile bakes exactly the agent's permission list into the binary.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { AGENT_PERMISSION_FLAGS } from "../src/cli/permissions.ts";

const root = new URL("../", import.meta.url).pathname;
// deno-lint-ignore no-explicit-any
type Obj = any;
const docs: Obj[] = parseAllDocuments(await Deno.readTextFile(`${root}install.yaml`)).map((d) =>
  d.toJS()
);
const byKind = (kind: string) => docs.filter((d) => d?.kind === kind);

Deno.test("install.yaml: RBAC is list/watch on pods, namespaces and networkpolicies only", () => {
  const [role] = byKind("ClusterRole");
  const granted = role.rules.flatMap((r: Obj) =>
    r.resources.flatMap((res: string) =>
      r.apiGroups.map((g: string) => `${g}/${res}:${[...r.verbs].sort().join(",")}`)
    )
  ).sort();
  assert.deepEqual(granted, [
    "/namespaces:list,watch",
    "/pods:list,watch",
    "networking.k8s.io/networkpolicies:list,watch",
  ]);
  assert.equal(byKind("Role").length, 0);
  const [binding] = byKind("ClusterRoleBinding");
  assert.equal(binding.roleRef.name, role.metadata.name);
  assert.deepEqual(binding.subjects, [{
    kind: "ServiceAccount",
    name: "kube-netpol",
    namespace: "kube-system",
  }]);
});

Deno.test("install.yaml: the DaemonSet is a node agent with NET_ADMIN only", () => {
  const [ds] = byKind("DaemonSet");
  assert.equal(ds.metadata.namespace, "kube-system");
  const pod = ds.spec.template.spec;
  assert.equal(pod.hostNetwork, true);
  assert.equal(pod.serviceAccountName, "kube-netpol");
  assert.equal(pod.priorityClassName, "system-node-critical");
  assert.deepEqual(pod.tolerations, [{ operator: "Exists" }], "tolerates every taint");
  assert.equal(ds.spec.updateStrategy.type, "RollingUpdate");
  const [c] = pod.containers;
  assert.equal(c.securityContext.privileged, false);
  assert.equal(c.securityContext.allowPrivilegeEscalation, false);
  assert.deepEqual(c.securityContext.capabilities, { drop: ["ALL"], add: ["NET_ADMIN"] });
  const nodeName = c.env.find((e: Obj) => e.name === "NODE_NAME");
  assert.equal(nodeName.valueFrom.fieldRef.fieldPath, "spec.nodeName");
  assert.equal(c.livenessProbe.httpGet.path, "/healthz");
  assert.equal(c.readinessProbe.httpGet.path, "/readyz");
  const metricsPort = c.ports.find((p: Obj) => p.name === "metrics");
  assert.equal(metricsPort.containerPort, 9080);
  assert.ok(c.args.includes("--metrics-bind-address=:9080"));
  assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory);
  const mounts = c.volumeMounts.map((m: Obj) => m.mountPath);
  assert.ok(mounts.includes("/run/xtables.lock"), "shares the iptables lock with kube-proxy");
});

Deno.test("Dockerfile: deno compile bakes exactly the agent's permission list", async () => {
  const text = (await Deno.readTextFile(`${root}Dockerfile`)).replace(/\\\n\s*/g, " ");
  const compile = text.split("\n").find((l) => l.startsWith("RUN deno compile"));
  assert.ok(compile, "a deno compile step");
  const flags = compile.split(/\s+/).filter((w) => w.startsWith("--allow-"));
  assert.deepEqual(flags, AGENT_PERMISSION_FLAGS);
  assert.match(compile, /--include src\/verdict\/verdict_worker\.ts/);
  assert.match(text, /FROM denoland\/deno:[a-z-]*2\.9\.6 AS build/, "pinned to the project's Deno");
  assert.match(text, /libnetfilter-queue1/);
});

Deno.test("deno.json: the agent and compile tasks use the same permission list", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(`${root}deno.json`)).tasks;
  for (const name of ["agent", "compile"]) {
    const flags = tasks[name].split(/\s+/).filter((w: string) => w.startsWith("--allow-"));
    assert.deepEqual(flags, AGENT_PERMISSION_FLAGS, name);
  }
});
