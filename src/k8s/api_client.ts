/**
 * Where the API server is and how to talk to it. kubeconfig.ts does the loading (in-cluster
 * service account, kubeconfig users); the requests go through Deno's own fetch: under Deno the
 * npm `undici` fetch never ends a response body whose connection was cut, so a dropped watch
 * would hang forever without a word.
 */
import { type HttpsOptions, KubeConfig } from "./kubeconfig.ts";
import { type Clock, realClock } from "../clock.ts";

export interface KubeConfigOptions {
  /** Path of a kubeconfig file; wins over the KUBECONFIG env var and in-cluster config. */
  kubeconfig?: string;
}

/** `--kubeconfig`, else `KUBECONFIG`, else the pod's service account (the DaemonSet case). */
export async function loadKubeConfig(
  opts: KubeConfigOptions = {},
): Promise<{ kc: KubeConfig; origin: string }> {
  const kc = new KubeConfig();
  const envPath = Deno.env.get("KUBECONFIG");
  if (opts.kubeconfig) {
    await kc.loadFromFiles([opts.kubeconfig]);
    return { kc, origin: opts.kubeconfig };
  }
  if (envPath) {
    // KUBECONFIG may list several files (path-list); they are merged.
    await kc.loadFromFiles(envPath.split(":").filter(Boolean));
    return { kc, origin: `KUBECONFIG=${envPath}` };
  }
  if (!Deno.env.get("KUBERNETES_SERVICE_HOST")) {
    throw new Error(
      "not running in a cluster (KUBERNETES_SERVICE_HOST is unset): pass --kubeconfig or set " +
        "KUBECONFIG, or use --manifests to run without a cluster",
    );
  }
  kc.loadFromCluster();
  return { kc, origin: "in-cluster" };
}

export interface ApiClient {
  readonly server: string;
  /** GET `path` with `query`; the caller owns the body and the signal. */
  get(path: string, query: Record<string, string>, signal: AbortSignal): Promise<Response>;
  close(): void;
}

const decoder = new TextDecoder();

/** How long a token read from a file is used before the file is read again (as client-go). */
const TOKEN_MAX_AGE_MS = 60_000;

/**
 * The in-cluster service-account token (or a kubeconfig's token file). Bound tokens
 * rotate: kubelet rewrites the file well before the old token expires. Read at most once a
 * minute, and at once when the API server answered 401 (`reread`), so a rotated token is picked
 * up on the first refusal instead of up to a minute later.
 */
class TokenFile {
  private token = "";
  private readAt = -Infinity;

  constructor(readonly path: string, private readonly clock: Clock) {}

  async get(): Promise<string> {
    if (this.clock.now() - this.readAt > TOKEN_MAX_AGE_MS) await this.reread();
    return this.token;
  }

  /** Reads the file now; true when the token changed. */
  async reread(): Promise<boolean> {
    const before = this.token;
    this.token = (await Deno.readTextFile(this.path)).trim();
    this.readAt = this.clock.now();
    return this.token !== before;
  }
}

export async function createApiClient(
  kc: KubeConfig,
  clock: Clock = realClock,
): Promise<ApiClient> {
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error("kubeconfig has no current cluster");
  const server = cluster.server.replace(/\/+$/, "");
  const probe: HttpsOptions = {};
  // Also validates the config: plain http is refused without insecure-skip-tls-verify.
  await kc.applyToHTTPSOptions(probe);
  if (server.startsWith("https:") && probe.rejectUnauthorized === false) {
    throw new Error(
      "insecure-skip-tls-verify is set for an https server: Deno's fetch always verifies; " +
        "give the cluster's CA (certificate-authority-data) instead",
    );
  }
  const tls: Deno.CreateHttpClientOptions & { cert?: string; key?: string } = {};
  if (probe.ca) tls.caCerts = [decoder.decode(probe.ca)];
  if (probe.cert && probe.key) {
    tls.cert = decoder.decode(probe.cert);
    tls.key = decoder.decode(probe.key);
  }
  const client = Deno.createHttpClient(tls);
  const tokenPath = kc.getCurrentUser()?.tokenFile;
  const tokenFile = tokenPath ? new TokenFile(tokenPath, clock) : undefined;

  const send = async (path: string, query: Record<string, string>, signal: AbortSignal) => {
    // Headers are computed per request: service-account tokens rotate and exec plugins expire.
    const opts: HttpsOptions = {};
    await kc.applyToHTTPSOptions(opts);
    const headers = new Headers(opts.headers ?? {});
    headers.set("Accept", "application/json");
    if (opts.auth) headers.set("Authorization", `Basic ${btoa(opts.auth)}`);
    if (tokenFile) headers.set("Authorization", `Bearer ${await tokenFile.get()}`);
    const url = new URL(server + path);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    return await fetch(url, { headers, signal, client });
  };

  return {
    server,
    async get(path, query, signal) {
      const res = await send(path, query, signal);
      if (res.status !== 401 || !tokenFile) return res;
      // Refused: the token may have rotated since we read it. Once, with the file's current one.
      if (!(await tokenFile.reread().catch(() => false))) return res;
      await res.body?.cancel();
      return await send(path, query, signal);
    },
    close() {
      client.close();
    },
  };
}
