/**
 * uninstall.yaml does what the README's "Uninstall" promises: `kube-netpol cleanup` on every node
 * (tolerates every taint, Linux nodes like the agent), reaching the node's netfilter exactly as the
 * agent does (hostNetwork, NET_ADMIN only, the shared xtables lock), with the agent's image, no API
 * access, and a pod that is Ready only once its node is clean. Its objects never collide with
 * install.yaml's, so deleting one file leaves the other's objects alone.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";

const root = new URL("../", import.meta.url).pathname;
// deno-lint-ignore no-explicit-any
type Obj = any;
const load = async (f: string): Promise<Obj[]> =>
  parseAllDocuments(await Deno.readTextFile(`${root}${f}`)).map((d) => d.toJS()).filter(Boolean);
const uninstall = await load("uninstall.yaml");
const install = await load("install.yaml");
const agentDs = install.find((o) => o.kind === "DaemonSet");
const agent = agentDs.spec.template.spec;
const [cleanupDs, ...others] = uninstall;
const pod = cleanupDs.spec.template.spec;

Deno.test("uninstall.yaml: one DaemonSet in kube-system, its own names and labels", () => {
  assert.deepEqual(others, [], "nothing but the DaemonSet (no RBAC: cleanup needs no API)");
  assert.equal(cleanupDs.kind, "DaemonSet");
  assert.equal(cleanupDs.metadata.namespace, "kube-system");
  const names = new Set(install.map((o) => `${o.kind}/${o.metadata.name}`));
  assert.ok(!names.has(`DaemonSet/${cleanupDs.metadata.name}`));
  const sel = cleanupDs.spec.selector.matchLabels;
  assert.deepEqual(cleanupDs.spec.template.metadata.labels, sel);
  assert.notDeepEqual(sel, agentDs.spec.selector.matchLabels, "selects no agent pod");
  assert.equal(pod.automountServiceAccountToken, false);
});

Deno.test("uninstall.yaml: runs on every node the agent runs on, in the node's network", () => {
  assert.equal(pod.hostNetwork, true);
  assert.deepEqual(pod.tolerations, agent.tolerations);
  assert.deepEqual(pod.tolerations, [{ operator: "Exists" }]);
  assert.equal(pod.priorityClassName, agent.priorityClassName);
  assert.equal(pod.nodeSelector?.["kubernetes.io/os"], "linux");
  for (const [k, v] of Object.entries(agent.nodeSelector ?? {})) {
    assert.equal(pod.nodeSelector[k], v);
  }
});

Deno.test("uninstall.yaml: the init container runs `cleanup` with the agent's access to netfilter", () => {
  const [init, ...moreInit] = pod.initContainers;
  assert.deepEqual(moreInit, []);
  const a = agent.containers[0];
  assert.equal(init.image, a.image, "the image install.yaml runs");
  assert.equal(init.command, undefined, "the image's entrypoint, kube-netpol");
  assert.deepEqual(init.args, ["cleanup"]);
  assert.deepEqual(init.securityContext, a.securityContext, "the agent's access, no more");
  // NET_RAW for iptables-legacy nodes, as the agent (install.yaml says why); nothing else.
  assert.deepEqual(init.securityContext.capabilities, {
    drop: ["ALL"],
    add: ["NET_ADMIN", "NET_RAW"],
  });
  const mounts = (c: Obj) =>
    c.volumeMounts.map((m: Obj) => `${m.mountPath}${m.readOnly ? ":ro" : ""}`).sort();
  assert.deepEqual(mounts(init), mounts(a));
  const volume = (spec: Obj, name: string) => spec.volumes.find((v: Obj) => v.name === name);
  for (const m of init.volumeMounts) {
    assert.deepEqual(volume(pod, m.name), volume(agent, m.name), `volume ${m.name} as the agent's`);
  }
  assert.equal(volume(pod, "xtables-lock").hostPath.path, "/run/xtables.lock");
  assert.ok(init.resources.limits.memory);
});

Deno.test("uninstall.yaml: Ready means cleaned: an idle main container with no privileges", () => {
  const [done, ...more] = pod.containers;
  assert.deepEqual(more, []);
  assert.equal(done.image, agent.containers[0].image);
  assert.deepEqual(done.command, ["sleep", "infinity"]);
  assert.deepEqual(done.securityContext.capabilities, { drop: ["ALL"] });
  assert.equal(done.securityContext.allowPrivilegeEscalation, false);
  assert.equal(done.readinessProbe, undefined, "Ready as soon as it runs, i.e. after cleanup");
  assert.ok(pod.terminationGracePeriodSeconds <= 5, "`sleep` as PID 1 ignores SIGTERM");
});

Deno.test("uninstall.yaml: `sleep` exists in the image's runtime stage (Debian coreutils)", async () => {
  const dockerfile = await Deno.readTextFile(`${root}Dockerfile`);
  const stages = dockerfile.split("\n").filter((l) => /^FROM\s/i.test(l));
  const runtime = stages.at(-1) ?? "";
  assert.match(runtime, /^FROM\s+(--platform=\S+\s+)?debian:/i, runtime);
});

Deno.test("uninstall.yaml: the header documents the command sequence the README gives", async () => {
  const text = await Deno.readTextFile(`${root}uninstall.yaml`);
  const readme = await Deno.readTextFile(`${root}README.md`);
  const steps = text.split("\n").filter((l) => l.startsWith("#   ")).map((l) => l.slice(4));
  assert.equal(steps.length, 5);
  for (const s of steps) assert.ok(readme.includes(s), `README has: ${s}`);
});
