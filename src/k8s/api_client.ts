/**
 * Where the API server is and how to talk to it. In a pod (the DaemonSet) that is the service
 * account: the API server's address from the environment, its token and CA from the mounted
 * files, read here. A kubeconfig (`--kubeconfig`, `KUBECONFIG`) is loaded by client-node's
 * KubeConfig (kubeconfig users, exec plugins, auth providers), imported only then: it costs about
 * 40 MB of memory, which no node should pay for a file it does not have (docs/sizing.md). The
 * requests themselves go through Deno's own fetch: under Deno the npm `undici` fetch that
 * client-node uses never ends a response body whose connection was cut, so a dropped watch would
 * hang forever without a word.
 */
import type { KubeConfig } from "@kubernetes/client-node";
import { type Clock, realClock } from "../clock.ts";
import { SERVICE_ACCOUNT_DIR } from "./service_account.ts";

export interface KubeConfigOptions {
  /** Path of a kubeconfig file; wins over the KUBECONFIG env var and in-cluster config. */
  kubeconfig?: string;
  /** Where the service account is mounted (tests); default the path Kubernetes uses. */
  serviceAccountDir?: string;
}

/** Which API server, and who we are to it. */
export type ClusterConfig =
  | {
    kind: "in-cluster";
    /** `https://<KUBERNETES_SERVICE_HOST>:<KUBERNETES_SERVICE_PORT>`. */
    server: string;
    /** The service account's CA bundle and token files. */
    caFile: string;
    tokenFile: string;
    origin: string;
  }
  | { kind: "kubeconfig"; kc: KubeConfig; origin: string };

/** `--kubeconfig`, else `KUBECONFIG`, else the pod's service account (the DaemonSet case). */
export async function loadClusterConfig(opts: KubeConfigOptions = {}): Promise<ClusterConfig> {
  const envPath = Deno.env.get("KUBECONFIG");
  if (opts.kubeconfig || envPath) {
    const { KubeConfig } = await import("@kubernetes/client-node/dist/config.js");
    const kc = new KubeConfig();
    if (opts.kubeconfig) {
      kc.loadFromFile(opts.kubeconfig);
      return { kind: "kubeconfig", kc, origin: opts.kubeconfig };
    }
    // KUBECONFIG may list several files (path-list); client-node merges them.
    kc.loadFromDefault();
    return { kind: "kubeconfig", kc, origin: `KUBECONFIG=${envPath}` };
  }
  const host = Deno.env.get("KUBERNETES_SERVICE_HOST");
  const port = Deno.env.get("KUBERNETES_SERVICE_PORT");
  if (!host) {
    throw new Error(
      "not running in a cluster (KUBERNETES_SERVICE_HOST is unset): pass --kubeconfig or set " +
        "KUBECONFIG, or use --manifests to run without a cluster",
    );
  }
  if (!port || !/^\d{1,5}$/.test(port) || Number(port) > 65535) {
    throw new Error(
      `in-cluster config: KUBERNETES_SERVICE_PORT must be a port number, got ${
        JSON.stringify(port ?? "")
      }`,
    );
  }
  const dir = (opts.serviceAccountDir ?? SERVICE_ACCOUNT_DIR).replace(/\/+$/, "");
  return {
    kind: "in-cluster",
    server: `https://${host.includes(":") ? `[${host}]` : host}:${port}`,
    caFile: `${dir}/ca.crt`,
    tokenFile: `${dir}/token`,
    origin: "in-cluster",
  };
}

export interface ApiClient {
  readonly server: string;
  /** GET `path` with `query`; the caller owns the body and the signal. */
  get(path: string, query: Record<string, string>, signal: AbortSignal): Promise<Response>;
  close(): void;
}

interface HttpsOptions {
  headers?: Record<string, string>;
  ca?: Uint8Array;
  cert?: Uint8Array;
  key?: Uint8Array;
  rejectUnauthorized?: boolean;
  auth?: string;
}

const decoder = new TextDecoder();

/** How long a token read from a file is used before the file is read again (as client-go). */
const TOKEN_MAX_AGE_MS = 60_000;

/**
 * The in-cluster service-account token (client-node's `tokenFile` auth provider). Bound tokens
 * rotate: kubelet rewrites the file well before the old token expires. Read at most once a
 * minute, and at once when the API server answered 401 (`reread`), so a rotated token is picked
 * up on the first refusal instead of up to a minute later.
 */
class TokenFile {
  private token = "";
  private readAt = -Infinity;

  constructor(readonly path: string, private readonly clock: Clock) {}

  async get(): Promise<string> {
    if (this.clock.now() - this.readAt > TOKEN_MAX_AGE_MS) await this.reread(this.token);
    return this.token;
  }

  /**
   * Reads the file now; true when it holds a token other than `refused`. (Compared with the token
   * a request was refused with, not with the last one read: informers refused at the same time
   * would otherwise see "no change" after the first of them re-read the file.)
   */
  async reread(refused: string): Promise<boolean> {
    this.token = (await Deno.readTextFile(this.path)).trim();
    this.readAt = this.clock.now();
    return this.token !== refused;
  }
}

export async function createApiClient(
  config: ClusterConfig,
  clock: Clock = realClock,
): Promise<ApiClient> {
  const access = config.kind === "in-cluster"
    ? await inClusterAccess(config, clock)
    : await kubeconfigAccess(config.kc, clock);
  const { server, tokenFile } = access;
  const client = Deno.createHttpClient(access.tls);

  /** One request; `token` is the service-account token it carried ("" without one). */
  const send = async (path: string, query: Record<string, string>, signal: AbortSignal) => {
    const headers = await access.headers();
    headers.set("Accept", "application/json");
    const token = tokenFile ? await tokenFile.get() : "";
    if (tokenFile) headers.set("Authorization", `Bearer ${token}`);
    const url = new URL(server + path);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    return { res: await fetch(url, { headers, signal, client }), token };
  };

  return {
    server,
    async get(path, query, signal) {
      const { res, token } = await send(path, query, signal);
      if (res.status !== 401 || !tokenFile) return res;
      // Refused: the token may have rotated since we read it. Once, with the file's current one.
      if (!(await tokenFile.reread(token).catch(() => false))) return res;
      await res.body?.cancel();
      return (await send(path, query, signal)).res;
    },
    close() {
      client.close();
    },
  };
}

/** What a request needs: the server, TLS settings, headers per request, the token file if any. */
interface Access {
  server: string;
  tls: Deno.CreateHttpClientOptions & { cert?: string; key?: string };
  /** Computed per request: exec plugins' credentials expire. */
  headers(): Promise<Headers>;
  tokenFile?: TokenFile;
}

/** The service account: its CA (read now: a missing one is an error at start) and its token. */
async function inClusterAccess(
  config: Extract<ClusterConfig, { kind: "in-cluster" }>,
  clock: Clock,
): Promise<Access> {
  let ca: string;
  try {
    ca = await Deno.readTextFile(config.caFile);
  } catch (e) {
    throw new Error(`in-cluster config: cannot read the CA ${config.caFile}: ${e}`);
  }
  const tokenFile = new TokenFile(config.tokenFile, clock);
  try {
    await tokenFile.get();
  } catch (e) {
    throw new Error(`in-cluster config: cannot read the token ${config.tokenFile}: ${e}`);
  }
  return {
    server: config.server,
    tls: { caCerts: [ca] },
    headers: () => Promise.resolve(new Headers()),
    tokenFile,
  };
}

/** A kubeconfig, through client-node (users, exec plugins, auth providers). */
async function kubeconfigAccess(kc: KubeConfig, clock: Clock): Promise<Access> {
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error("kubeconfig has no current cluster");
  const server = cluster.server.replace(/\/+$/, "");
  const probe: HttpsOptions = {};
  // Also validates the config: client-node refuses plain http without insecure-skip-tls-verify.
  await kc.applyToHTTPSOptions(probe as never);
  if (server.startsWith("https:") && probe.rejectUnauthorized === false) {
    throw new Error(
      "insecure-skip-tls-verify is set for an https server: Deno's fetch always verifies; " +
        "give the cluster's CA (certificate-authority-data) instead",
    );
  }
  const tls: Access["tls"] = {};
  if (probe.ca) tls.caCerts = [decoder.decode(probe.ca)];
  if (probe.cert && probe.key) {
    tls.cert = decoder.decode(probe.cert);
    tls.key = decoder.decode(probe.key);
  }
  const tokenPath = (kc.getCurrentUser()?.authProvider as { config?: { tokenFile?: string } })
    ?.config?.tokenFile;
  return {
    server,
    tls,
    async headers() {
      const opts: HttpsOptions = {};
      await kc.applyToHTTPSOptions(opts as never);
      const headers = new Headers(opts.headers ?? {});
      if (opts.auth) headers.set("Authorization", `Basic ${btoa(opts.auth)}`);
      return headers;
    },
    tokenFile: tokenPath ? new TokenFile(tokenPath, clock) : undefined,
  };
}
