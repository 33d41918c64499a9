/** Which API server the agent talks to, and the configurations it refuses up front. */
import assert from "node:assert/strict";
import { createApiClient, loadKubeConfig } from "../src/k8s/api_client.ts";
import { KubeConfig } from "../src/k8s/kubeconfig.ts";

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
        const byFlag = await loadKubeConfig({ kubeconfig: `${dir}/flag` });
        assert.equal(byFlag.kc.getCurrentCluster()?.server, "http://127.0.0.1:1111");
        const byEnv = await loadKubeConfig({});
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
    await assert.rejects(loadKubeConfig({}), /--kubeconfig.*KUBECONFIG/);
  });
});

Deno.test("plain http without insecure-skip-tls-verify is refused before any request", async () => {
  await withFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/k`, kubeconfig("http://127.0.0.1:1"));
    const { kc } = await loadKubeConfig({ kubeconfig: `${dir}/k` });
    await assert.rejects(createApiClient(kc), /insecure-skip-tls-verify/);
  });
});

Deno.test("https with insecure-skip-tls-verify is refused: Deno always verifies", async () => {
  await withFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/k`, kubeconfig("https://127.0.0.1:1", SKIP));
    const { kc } = await loadKubeConfig({ kubeconfig: `${dir}/k` });
    await assert.rejects(createApiClient(kc), /certificate-authority-data/);
  });
});

Deno.test("kubeconfig: YAML with paths relative to the file, data fields, merged files", async () => {
  await withFiles(async (dir) => {
    await Deno.mkdir(`${dir}/sub`);
    await Deno.writeTextFile(`${dir}/sub/ca.pem`, "CA-PEM");
    await Deno.writeTextFile(
      `${dir}/sub/a.yaml`,
      [
        "apiVersion: v1",
        "clusters:",
        "- name: c1",
        "  cluster: { server: 'https://10.0.0.1:6443/', certificate-authority: ca.pem }",
        "users:",
        "- name: u1",
        `  user: { client-certificate-data: ${btoa("CERT")}, client-key-data: ${btoa("KEY")} }`,
        "contexts:",
        "- { name: ctx, context: { cluster: c1, user: u1 } }",
        "current-context: ctx",
      ].join("\n"),
    );
    // A second file naming the same cluster does not override the first; its token user is unused.
    await Deno.writeTextFile(
      `${dir}/b.json`,
      JSON.stringify({
        clusters: [{ name: "c1", cluster: { server: "https://evil:1" } }],
        users: [{ name: "u2", user: { token: "t2" } }],
        "current-context": "other",
      }),
    );
    await withEnv({ KUBECONFIG: `${dir}/sub/a.yaml:${dir}/b.json` }, async () => {
      const { kc } = await loadKubeConfig({});
      assert.equal(kc.getCurrentCluster()?.server, "https://10.0.0.1:6443");
      const opts: Record<string, unknown> = {};
      await kc.applyToHTTPSOptions(opts);
      const text = (b: unknown) => new TextDecoder().decode(b as Uint8Array);
      assert.equal(text(opts.ca), "CA-PEM");
      assert.equal(text(opts.cert), "CERT");
      assert.equal(text(opts.key), "KEY");
      assert.equal(opts.headers, undefined);
    });
  });
});

Deno.test("kubeconfig: tokens, token files and basic auth; exec plugins refused by name", async () => {
  await withFiles(async (dir) => {
    const write = (user: Record<string, unknown>) =>
      Deno.writeTextFile(
        `${dir}/k`,
        JSON.stringify({
          clusters: [{ name: "c", cluster: { server: "https://10.0.0.1" } }],
          users: [{ name: "u", user }],
          contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
          "current-context": "x",
        }),
      );
    await write({ token: "abc" });
    let { kc } = await loadKubeConfig({ kubeconfig: `${dir}/k` });
    const opts: { headers?: Record<string, string>; auth?: string } = {};
    await kc.applyToHTTPSOptions(opts);
    assert.equal(opts.headers?.Authorization, "Bearer abc");
    await write({ "token-file": "/run/token" });
    ({ kc } = await loadKubeConfig({ kubeconfig: `${dir}/k` }));
    assert.equal(kc.getCurrentUser()?.tokenFile, "/run/token");
    await write({ username: "admin", password: "pw" });
    ({ kc } = await loadKubeConfig({ kubeconfig: `${dir}/k` }));
    const basic: { auth?: string } = {};
    await kc.applyToHTTPSOptions(basic);
    assert.equal(basic.auth, "admin:pw");
    await write({ exec: { command: "aws", args: ["eks", "get-token"] } });
    await assert.rejects(loadKubeConfig({ kubeconfig: `${dir}/k` }), /user u: exec credential/);
  });
});

Deno.test("in-cluster: the service's address (IPv6 in brackets), its CA, the rotating token", async () => {
  await withFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/ca.crt`, "CLUSTER-CA");
    await withEnv(
      { KUBERNETES_SERVICE_HOST: "fd00::1", KUBERNETES_SERVICE_PORT: "6443" },
      async () => {
        const kc = new KubeConfig();
        kc.loadFromCluster(dir);
        assert.equal(kc.getCurrentCluster()?.server, "https://[fd00::1]:6443");
        assert.equal(kc.getCurrentUser()?.tokenFile, `${dir}/token`);
        const opts: { ca?: Uint8Array } = {};
        await kc.applyToHTTPSOptions(opts);
        assert.equal(new TextDecoder().decode(opts.ca), "CLUSTER-CA");
        await Promise.resolve();
      },
    );
  });
});
