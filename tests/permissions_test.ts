/**
 * The agent's permissions: library paths per architecture from the loader's one candidate list,
 * the flags a `deno run` of the agent gets for its own flags (kubeconfig, manifests, in-cluster),
 * what the image bakes in, and the verdict Worker's own grant.
 */
import assert from "node:assert/strict";
import {
  ARCHES,
  candidatePaths,
  ffiPaths,
  LIBC_SONAME,
  loadLibraries,
  NFQ_SONAME,
} from "../ffi/library.ts";
import {
  agentDenoFlags,
  imagePermissions,
  permissionFlags,
  RULE_TOOLS,
  SERVICE_ACCOUNT_DIR,
} from "../src/cli/permissions.ts";
import {
  bindHostPorts,
  type RunPermissionInput,
  runPermissions,
  serverHostPort,
} from "../src/cli/run_permissions.ts";
import { verdictWorkerPermissions } from "../src/verdict/worker_spawn.ts";

const ROOT = new URL("../", import.meta.url).pathname;

Deno.test("library paths: each architecture's multiarch directory first, never the other's", () => {
  assert.deepEqual(candidatePaths(NFQ_SONAME, "x86_64").slice(0, 2), [
    "/usr/lib/x86_64-linux-gnu/libnetfilter_queue.so.1",
    "/lib/x86_64-linux-gnu/libnetfilter_queue.so.1",
  ]);
  assert.deepEqual(candidatePaths(LIBC_SONAME, "aarch64").slice(0, 2), [
    "/usr/lib/aarch64-linux-gnu/libc.so.6",
    "/lib/aarch64-linux-gnu/libc.so.6",
  ]);
  assert.ok(ffiPaths("aarch64").every((p) => !p.includes("x86_64")));
  assert.ok(ffiPaths("x86_64").every((p) => !p.includes("aarch64")));
  // Both libraries, every directory the loader tries, for --allow-ffi and the Worker's grant.
  assert.deepEqual(ffiPaths("aarch64"), [
    ...candidatePaths(NFQ_SONAME, "aarch64"),
    ...candidatePaths(LIBC_SONAME, "aarch64"),
  ]);
});

Deno.test("library paths live in ffi/library.ts only (build files and code derive them)", async () => {
  const offenders: string[] = [];
  const scan = async (path: string) => {
    const info = await Deno.stat(`${ROOT}${path}`);
    if (info.isDirectory) {
      for await (const e of Deno.readDir(`${ROOT}${path}`)) await scan(`${path}/${e.name}`);
    } else if (/\.(ts|json|sh)$|Dockerfile$/.test(path) && path !== "ffi/library.ts") {
      if (/(x86_64|aarch64)-linux-gnu/.test(await Deno.readTextFile(`${ROOT}${path}`))) {
        offenders.push(path);
      }
    }
  };
  for (const p of ["src", "ffi", "scripts", "e2e", "bench", "main.ts", "Dockerfile", "deno.json"]) {
    await scan(p);
  }
  // Tests name the paths on purpose (they check the derivation).
  assert.deepEqual(offenders, []);
});

Deno.test("permission flags: ffi per architecture, then net, read, env, the rule tools, hostname", () => {
  for (const arch of ARCHES) {
    const flags = permissionFlags({ arch, read: ["/a", "/b"], net: ["127.0.0.1:9080"] });
    assert.deepEqual(flags, [
      `--allow-ffi=${ffiPaths(arch).join(",")}`,
      "--allow-net=127.0.0.1:9080",
      "--allow-read=/a,/b",
      "--allow-env",
      `--allow-run=${RULE_TOOLS.join(",")}`,
      "--allow-sys=hostname",
    ]);
  }
  assert.ok(
    !permissionFlags(imagePermissions("x86_64")).some((f) => f.startsWith("--allow-write")),
  );
  assert.deepEqual(agentDenoFlags(imagePermissions("aarch64")).slice(0, 2), [
    "--unstable-worker-options",
    "--no-prompt",
  ]);
});

Deno.test("the image: reads only the service account; the network is unscoped", () => {
  const flags = permissionFlags(imagePermissions("aarch64"));
  assert.ok(flags.includes(`--allow-read=${SERVICE_ACCOUNT_DIR}`));
  assert.ok(flags.includes("--allow-net"), "the API server's IP is known only at run time");
});

function input(over: Partial<RunPermissionInput>, files: Record<string, string> = {}) {
  return runPermissions({
    manifests: [],
    metricsAddress: ":9080",
    sourceRoot: "/repo/",
    env: () => undefined,
    readTextFile: (p) => {
      if (!(p in files)) throw new Error(`ENOENT ${p}`);
      return files[p]!;
    },
    realPath: (p) => p === "/etc/knp" ? "/srv/knp-manifests" : p,
    arch: "x86_64",
    ...over,
  });
}

Deno.test("deno run with --manifests: the paths (and their targets), no API server", () => {
  const p = input({ manifests: ["/etc/knp", "policies.yaml"], metricsAddress: "127.0.0.1:9080" });
  assert.deepEqual(p.read, [
    "/repo/src",
    "/repo/ffi",
    "/etc/knp",
    "/srv/knp-manifests",
    "policies.yaml",
  ]);
  assert.deepEqual(p.net, ["127.0.0.1:9080"]);
});

const KUBECONFIG = `
apiVersion: v1
kind: Config
current-context: kind
clusters:
  - name: other
    cluster: { server: "https://10.9.9.9:6443", certificate-authority: /etc/other-ca.crt }
  - name: kind
    cluster: { server: "https://[fd00::10]:6443", certificate-authority: ca.crt }
contexts:
  - name: other
    context: { cluster: other, user: admin }
  - name: kind
    context: { cluster: kind, user: admin }
users:
  - name: admin
    user: { client-certificate: certs/admin.crt, client-key: /keys/admin.key, token-file: tok }
`;

Deno.test("deno run with --kubeconfig: it and the files it names; its current API server", () => {
  const p = input({ kubeconfig: "/home/u/.kube/config", metricsAddress: ":9443" }, {
    "/home/u/.kube/config": KUBECONFIG,
  });
  assert.deepEqual(p.read, [
    "/repo/src",
    "/repo/ffi",
    "/home/u/.kube/config",
    "/etc/other-ca.crt",
    "/home/u/.kube/ca.crt", // relative to the kubeconfig, as kubeconfig.ts resolves it
    "/home/u/.kube/certs/admin.crt",
    "/keys/admin.key",
    "tok", // token-file: read relative to the working directory
  ]);
  assert.deepEqual(p.net, ["[::]:9443", "0.0.0.0:9443", "[fd00::10]:6443"]);
});

Deno.test("deno run with $KUBECONFIG: every file, the first current-context wins", () => {
  const first = "current-context: b\n";
  const second =
    "current-context: a\nclusters: [{name: c1, cluster: {server: 'http://127.0.0.1:8080'}}]\n" +
    "contexts: [{name: a, context: {cluster: c0}}, {name: b, context: {cluster: c1}}]\n";
  const p = input({ env: (n) => n === "KUBECONFIG" ? "/k/1:/k/2" : undefined }, {
    "/k/1": first,
    "/k/2": second,
  });
  assert.deepEqual(p.read, ["/repo/src", "/repo/ffi", "/k/1", "/k/2"]);
  assert.deepEqual(p.net, ["[::]:9080", "0.0.0.0:9080", "127.0.0.1:8080"]);
  assert.throws(() => input({ kubeconfig: "/missing" }), /ENOENT \/missing/);
});

Deno.test("deno run in a pod: the service account, the API server from the environment", () => {
  const env: Record<string, string> = {
    KUBERNETES_SERVICE_HOST: "10.96.0.1",
    KUBERNETES_SERVICE_PORT: "443",
  };
  const p = input({ env: (n) => env[n] });
  assert.deepEqual(p.read, ["/repo/src", "/repo/ffi", SERVICE_ACCOUNT_DIR]);
  assert.deepEqual(p.net, ["[::]:9080", "0.0.0.0:9080", "10.96.0.1:443"]);
});

Deno.test("host:port spellings for --allow-net", () => {
  assert.equal(serverHostPort("https://api.example:6443/"), "api.example:6443");
  assert.equal(serverHostPort("https://api.example"), "api.example:443");
  assert.equal(serverHostPort("http://[::1]"), "[::1]:80");
  assert.throws(() => serverHostPort("api:6443"), /not an http\(s\) URL/);
  assert.deepEqual(bindHostPorts("[::1]:9080"), ["[::1]:9080"]);
  assert.deepEqual(bindHostPorts("127.0.0.1:0"), ["127.0.0.1"]);
  assert.throws(() => bindHostPorts("9080"), /missing port/);
});

Deno.test("the verdict Worker: FFI to the granted library paths, nothing else", () => {
  const granted = new Set(ffiPaths().slice(0, 2));
  const perms = verdictWorkerPermissions((p) => granted.has(p));
  assert.deepEqual(perms, {
    ffi: [...granted],
    read: false,
    write: false,
    net: false,
    run: false,
    env: false,
    sys: false,
    import: false,
  });
  assert.throws(() => verdictWorkerPermissions(() => false), /needs --allow-ffi/);
});

Deno.test("the loader tries every candidate, and says which ones it was not permitted", () => {
  // Unit tests run without --allow-ffi: every path is refused, and the error lists them all.
  let message = "";
  try {
    loadLibraries();
  } catch (e) {
    message = (e as Error).message;
  }
  const tried = candidatePaths(NFQ_SONAME).map((p) => `${p} (not permitted)`).join(", ");
  assert.equal(
    message,
    `could not load ${NFQ_SONAME} (tried ${tried}); install it: apt-get install libnetfilter-queue1`,
  );
});
