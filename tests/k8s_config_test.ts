/** Which API server the agent talks to, and the configurations it refuses up front. */
import assert from "node:assert/strict";
import { createApiClient, loadKubeConfig } from "../src/k8s/api_client.ts";

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

Deno.test("--kubeconfig wins over KUBECONFIG; KUBECONFIG wins over in-cluster", async () => {
  await withFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/flag`, kubeconfig("http://127.0.0.1:1111", SKIP));
    await Deno.writeTextFile(`${dir}/env`, kubeconfig("http://127.0.0.1:2222", SKIP));
    await withEnv(
      { KUBECONFIG: `${dir}/env`, KUBERNETES_SERVICE_HOST: "10.96.0.1" },
      async () => {
        const byFlag = loadKubeConfig({ kubeconfig: `${dir}/flag` });
        assert.equal(byFlag.kc.getCurrentCluster()?.server, "http://127.0.0.1:1111");
        const byEnv = loadKubeConfig({});
        assert.equal(byEnv.kc.getCurrentCluster()?.server, "http://127.0.0.1:2222");
        assert.match(byEnv.origin, /^KUBECONFIG=/);
        const client = await createApiClient(byEnv.kc);
        assert.equal(client.server, "http://127.0.0.1:2222");
        client.close();
      },
    );
  });
});

Deno.test("outside a cluster without a kubeconfig the error says what to pass", async () => {
  await withEnv({ KUBECONFIG: undefined, KUBERNETES_SERVICE_HOST: undefined }, async () => {
    await Promise.resolve();
    assert.throws(() => loadKubeConfig({}), /--kubeconfig.*KUBECONFIG/);
  });
});

Deno.test("plain http without insecure-skip-tls-verify is refused before any request", async () => {
  await withFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/k`, kubeconfig("http://127.0.0.1:1"));
    const { kc } = loadKubeConfig({ kubeconfig: `${dir}/k` });
    await assert.rejects(createApiClient(kc), /skipTLSVerify/);
  });
});

Deno.test("https with insecure-skip-tls-verify is refused: Deno always verifies", async () => {
  await withFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/k`, kubeconfig("https://127.0.0.1:1", SKIP));
    const { kc } = loadKubeConfig({ kubeconfig: `${dir}/k` });
    await assert.rejects(createApiClient(kc), /certificate-authority-data/);
  });
});
