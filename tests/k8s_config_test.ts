/** Which API server the agent talks to, and the configurations it refuses up front. */
import assert from "node:assert/strict";
import { type ClusterConfig, createApiClient, loadClusterConfig } from "../src/k8s/api_client.ts";

function kubeconfig(server: string, cluster: Record<string, unknown> = {}): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "c", cluster: { server, ...cluster } }],
    users: [{ name: "u", user: { token: "t" } }],
    contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
    "current-context": "x",
  });
}

/** Runs `body` with env vars set (undefined = unset), restoring them afterwards. */
async function withEnv(vars: Record<string, string | undefined>, body: () => Promise<void>) {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, Deno.env.get(k)]));
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, val] of Object.entries(v)) {
      val === undefined ? Deno.env.delete(k) : Deno.env.set(k, val);
    }
  };
  apply(vars);
  try {
    await body();
  } finally {
    apply(saved);
  }
}

async function withFiles(body: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "knp-k8s-config-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const SKIP = { "insecure-skip-tls-verify": true };

function kubeconfigOf(c: ClusterConfig) {
  assert.equal(c.kind, "kubeconfig");
  return (c as Extract<ClusterConfig, { kind: "kubeconfig" }>).kc;
}

const IN_CLUSTER_ENV = { KUBECONFIG: undefined, KUBERNETES_SERVICE_PORT: "443" };

Deno.test("--kubeconfig wins over KUBECONFIG; KUBECONFIG wins over in-cluster", async () => {
  await withFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/flag`, kubeconfig("http://127.0.0.1:1111", SKIP));
    await Deno.writeTextFile(`${dir}/env`, kubeconfig("http://127.0.0.1:2222", SKIP));
    await withEnv(
      { KUBECONFIG: `${dir}/env`, KUBERNETES_SERVICE_HOST: "10.96.0.1" },
      async () => {
        const byFlag = await loadClusterConfig({ kubeconfig: `${dir}/flag` });
        assert.equal(kubeconfigOf(byFlag).getCurrentCluster()?.server, "http://127.0.0.1:1111");
        const byEnv = await loadClusterConfig({});
        assert.equal(kubeconfigOf(byEnv).getCurrentCluster()?.server, "http://127.0.0.1:2222");
        assert.match(byEnv.origin, /^KUBECONFIG=/);
        const client = await createApiClient(byEnv);
        assert.equal(client.server, "http://127.0.0.1:2222");
        client.close();
      },
    );
  });
});

Deno.test("outside a cluster without a kubeconfig the error says what to pass", async () => {
  await withEnv({ KUBECONFIG: undefined, KUBERNETES_SERVICE_HOST: undefined }, async () => {
    await assert.rejects(loadClusterConfig({}), /--kubeconfig.*KUBECONFIG/);
  });
});

Deno.test("plain http without insecure-skip-tls-verify is refused before any request", async () => {
  await withFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/k`, kubeconfig("http://127.0.0.1:1"));
    const config = await loadClusterConfig({ kubeconfig: `${dir}/k` });
    await assert.rejects(createApiClient(config), /skipTLSVerify/);
  });
});

Deno.test("https with insecure-skip-tls-verify is refused: Deno always verifies", async () => {
  await withFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/k`, kubeconfig("https://127.0.0.1:1", SKIP));
    const config = await loadClusterConfig({ kubeconfig: `${dir}/k` });
    await assert.rejects(createApiClient(config), /certificate-authority-data/);
  });
});

Deno.test("in a pod: the service's address from the environment, the account's files", async () => {
  await withEnv({ ...IN_CLUSTER_ENV, KUBERNETES_SERVICE_HOST: "10.96.0.1" }, async () => {
    const c = await loadClusterConfig({ serviceAccountDir: "/sa/" });
    assert.deepEqual(c, {
      kind: "in-cluster",
      server: "https://10.96.0.1:443",
      caFile: "/sa/ca.crt",
      tokenFile: "/sa/token",
      origin: "in-cluster",
    });
    const byDefault = await loadClusterConfig({});
    assert.equal(
      byDefault.kind === "in-cluster" && byDefault.tokenFile,
      "/var/run/secrets/kubernetes.io/serviceaccount/token",
    );
  });
  await withEnv({ ...IN_CLUSTER_ENV, KUBERNETES_SERVICE_HOST: "fd00:10:96::1" }, async () => {
    const c = await loadClusterConfig({});
    assert.equal(c.kind === "in-cluster" && c.server, "https://[fd00:10:96::1]:443");
  });
});

Deno.test("in a pod: a bad port, or a missing CA or token, is an error naming it", async () => {
  await withEnv(
    { ...IN_CLUSTER_ENV, KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "https" },
    async () => {
      await assert.rejects(loadClusterConfig({}), /KUBERNETES_SERVICE_PORT must be a port number/);
    },
  );
  await withFiles(async (dir) => {
    await withEnv({ ...IN_CLUSTER_ENV, KUBERNETES_SERVICE_HOST: "127.0.0.1" }, async () => {
      const c = await loadClusterConfig({ serviceAccountDir: dir });
      await assert.rejects(createApiClient(c), new RegExp(`cannot read the CA ${dir}/ca.crt`));
      await Deno.writeTextFile(`${dir}/ca.crt`, "not used before a request");
      await assert.rejects(createApiClient(c), new RegExp(`cannot read the token ${dir}/token`));
    });
  });
});
