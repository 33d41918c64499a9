/**
 * install.yaml keeps the promises the README makes to operators (least privilege, placement,
 * probes), and the Dockerfile builds every architecture with exactly the agent's permission list.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { ARCHES, candidatePaths, ffiPaths, NFQ_SONAME } from "../ffi/library.ts";
import { agentDenoFlags, imagePermissions, SERVICE_ACCOUNT_DIR } from "../src/cli/permissions.ts";
import { compileArgs, DENO_TARGETS, targetArch } from "../scripts/compile.ts";
import { API_KINDS } from "../src/k8s/kinds.ts";

const root = new URL("../", import.meta.url).pathname;
// deno-lint-ignore no-explicit-any
type Obj = any;
const docs: Obj[] = parseAllDocuments(await Deno.readTextFile(`${root}install.yaml`)).map((d) =>
  d.toJS()
);
const byKind = (kind: string) => docs.filter((d) => d?.kind === kind);

Deno.test("install.yaml: RBAC is list/watch on the kinds the informers watch, nothing more", () => {
  const [role] = byKind("ClusterRole");
  const granted = role.rules.flatMap((r: Obj) =>
    r.resources.flatMap((res: string) =>
      r.apiGroups.map((g: string) => `${g}/${res}:${[...r.verbs].sort().join(",")}`)
    )
  ).sort();
  assert.deepEqual(granted, [
    "/namespaces:list,watch",
    "/nodes:list,watch",
    "/pods:list,watch",
    "networking.k8s.io/networkpolicies:list,watch",
    "policy.networking.k8s.io/adminnetworkpolicies:list,watch",
    "policy.networking.k8s.io/baselineadminnetworkpolicies:list,watch",
    "policy.networking.k8s.io/clusternetworkpolicies:list,watch",
  ]);
  // Exactly what the informers ask for (src/k8s/kinds.ts): a kind added there needs its grant.
  const watched = API_KINDS.map((k) => {
    const group = k.path.startsWith("/api/") ? "" : k.path.split("/")[2];
    return `${group}/${k.label}:list,watch`;
  }).sort();
  assert.deepEqual(granted, watched);
  assert.equal(byKind("Role").length, 0);
  const [binding] = byKind("ClusterRoleBinding");
  assert.equal(binding.roleRef.name, role.metadata.name);
  assert.deepEqual(binding.subjects, [{
    kind: "ServiceAccount",
    name: "kube-netpol",
    namespace: "kube-system",
  }]);
});

/** Quantities like "160Mi" in MiB. */
function mebibytes(q: string): number {
  const m = /^(\d+)(Mi|Gi)$/.exec(q);
  if (!m) throw new Error(`unexpected memory quantity ${q}`);
  return Number(m[1]) * (m[2] === "Gi" ? 1024 : 1);
}

Deno.test("install.yaml: memory covers what docs/sizing.md measured at 10k pods, with headroom", () => {
  const [c] = byKind("DaemonSet")[0].spec.template.spec.containers;
  // docs/sizing.md, with client-node and prom-client kept: up to 297 MB settled and up to 315 MB
  // while the initial lists are applied (10,000 pods, 5,000 policies); up to 389 MB at the peak
  // at 20,000 pods.
  assert.ok(mebibytes(c.resources.requests.memory) >= 300, "request below the settled RSS");
  assert.ok(
    mebibytes(c.resources.limits.memory) >= 1.25 * 389,
    "limit without room over the peaks",
  );
  assert.ok(
    mebibytes(c.resources.limits.memory) >= 1.5 * mebibytes(c.resources.requests.memory),
    "a relist (after an API outage) goes through the peak again",
  );
});

Deno.test("install.yaml: the DaemonSet is a node agent with netfilter capabilities only", () => {
  const [ds] = byKind("DaemonSet");
  assert.equal(ds.metadata.namespace, "kube-system");
  const pod = ds.spec.template.spec;
  assert.equal(pod.hostNetwork, true);
  assert.equal(pod.serviceAccountName, "kube-netpol");
  assert.equal(pod.priorityClassName, "system-node-critical");
  assert.deepEqual(pod.tolerations, [{ operator: "Exists" }], "tolerates every taint");
  assert.deepEqual(pod.nodeSelector, { "kubernetes.io/os": "linux" });
  assert.equal(ds.spec.updateStrategy.type, "RollingUpdate");
  const [c] = pod.containers;
  assert.equal(c.securityContext.privileged, false);
  assert.equal(c.securityContext.allowPrivilegeEscalation, false);
  assert.equal(c.securityContext.readOnlyRootFilesystem, true);
  assert.deepEqual(c.securityContext.seccompProfile, { type: "RuntimeDefault" });
  // NET_RAW only because iptables-legacy (libiptc) needs a raw socket; see the comment there.
  assert.deepEqual(c.securityContext.capabilities, {
    drop: ["ALL"],
    add: ["NET_ADMIN", "NET_RAW"],
  });
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
  assert.ok(!mounts.includes("/lib/modules"), "loads no kernel modules");
  const hostPaths = pod.volumes.filter((v: Obj) => v.hostPath).map((v: Obj) => v.hostPath.path);
  assert.deepEqual(hostPaths, ["/run/xtables.lock"], "no host path beyond the iptables lock");
});

const dockerfile = (await Deno.readTextFile(`${root}Dockerfile`)).replace(/\s*\\\n\s*/g, " ");
const [buildStage = "", runtimeStage = ""] = dockerfile.split(/^FROM /m).slice(1);

Deno.test("Dockerfile: the build stage cross-compiles for $TARGETARCH through scripts/compile.ts", () => {
  assert.match(
    buildStage,
    /^--platform=\$BUILDPLATFORM denoland\/deno:[a-z-]*2\.9\.6 AS build/,
    "pinned to the project's Deno, on the build machine's platform (no emulation)",
  );
  assert.match(buildStage, /^ARG TARGETARCH$/m);
  const compile = buildStage.split("\n").find((l) => l.includes("scripts/compile.ts --target"));
  assert.ok(compile, "a step running scripts/compile.ts");
  assert.match(
    compile,
    /^RUN deno run --frozen [^|;&]*scripts\/compile\.ts --target "\$TARGETARCH"/,
  );
  assert.ok(!/--allow-ffi|linux-gnu/.test(dockerfile), "no permission or library path of its own");
});

Deno.test("Dockerfile: the runtime stage is Debian 12 per target platform, with the library", () => {
  assert.match(runtimeStage, /^debian:12-slim\n/, "no --platform pin: buildx picks each target's");
  assert.match(runtimeStage, /libnetfilter-queue1/);
  assert.match(runtimeStage, /COPY --from=build \/kube-netpol /);
});

Deno.test(".dockerignore lets in everything the build stage copies", async () => {
  const ignore = await Deno.readTextFile(`${root}.dockerignore`);
  const copied = [...buildStage.matchAll(/^COPY (.+) \S+$/gm)].flatMap((m) => m[1]!.split(" "));
  for (const path of copied) {
    assert.match(ignore, new RegExp(`^!${path.replace(/[.]/g, "\\.")}/?$`, "m"), path);
  }
});

Deno.test("scripts/compile.ts: Docker's TARGETARCH names map to Deno targets", () => {
  assert.equal(targetArch("amd64"), "x86_64");
  assert.equal(targetArch("arm64"), "aarch64");
  assert.equal(targetArch("aarch64-unknown-linux-gnu"), "aarch64");
  assert.throws(() => targetArch("arm"), /unsupported target "arm" \(one of: amd64/);
});

for (const arch of ARCHES) {
  Deno.test(`scripts/compile.ts: ${arch} bakes the agent's permission list for ${arch}`, () => {
    const args = compileArgs(arch, "/kube-netpol");
    assert.deepEqual(args.slice(0, 6), [
      "compile",
      "--frozen",
      "--target",
      DENO_TARGETS[arch],
      "--output",
      "/kube-netpol",
    ]);
    const i = args.indexOf("--include");
    assert.equal(args[i + 1], "src/verdict/verdict_worker.ts", "the Worker is embedded");
    const flags = args.filter((a) =>
      a.startsWith("--") && !["--frozen", "--target", "--output", "--include"].includes(a)
    );
    assert.deepEqual(flags, agentDenoFlags(imagePermissions(arch)));
    assert.ok(flags.includes("--unstable-worker-options") && flags.includes("--no-prompt"));
    assert.equal(args.at(-1), "main.ts");
    const ffi = flags.find((f) => f.startsWith("--allow-ffi="))!.slice("--allow-ffi=".length);
    assert.deepEqual(ffi.split(","), ffiPaths(arch));
    // Where Debian 12's libnetfilter-queue1 installs the library on this architecture.
    assert.ok(ffi.split(",").includes(candidatePaths(NFQ_SONAME, arch)[0]!));
    assert.ok(flags.includes(`--allow-read=${SERVICE_ACCOUNT_DIR}`));
  });
}

Deno.test("deno.json: the agent and compile tasks go through the scripts that compute the flags", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(`${root}deno.json`)).tasks;
  assert.match(tasks.agent, /^deno run [^&;|]* scripts\/agent\.ts$/);
  assert.match(tasks.compile, /^deno run [^&;|]* scripts\/compile\.ts$/);
  for (const name of ["agent", "compile"]) {
    assert.ok(!/--allow-ffi|linux-gnu/.test(tasks[name]), `${name}: no library path of its own`);
  }
});
