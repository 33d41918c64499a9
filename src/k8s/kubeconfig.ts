/**
 * Where the API server is and who we are to it: kubeconfig files (`--kubeconfig`, or the
 * KUBECONFIG path list) or the pod's service account. Our own reader, replacing client-node's
 * KubeConfig (the package cost some 80 MB of memory to import, see list_watch.ts).
 *
 * Supported, as kubectl reads them: clusters (`server`, `certificate-authority[-data]`,
 * `insecure-skip-tls-verify`), users (`token`, `token-file`/`tokenFile`, `client-certificate
 * [-data]`, `client-key[-data]`, `username`/`password`, the `tokenFile` auth provider), contexts
 * and `current-context`; several files merge with the first one naming an entry winning. Paths in
 * a kubeconfig are relative to its own directory. Exec credential plugins and other auth
 * providers are refused with a clear error: the agent may run no program but its rule tools.
 * Files are JSON or YAML (the YAML parser is loaded only when a file is not JSON, so the
 * in-cluster agent never loads it).
 */

/** The service account's files in a pod. */
export const SERVICE_ACCOUNT_ROOT = "/var/run/secrets/kubernetes.io/serviceaccount";

export interface KubeCluster {
  name: string;
  server: string;
  /** PEM of the CA to trust. */
  caData?: Uint8Array;
  skipTLSVerify: boolean;
}

export interface KubeUser {
  name: string;
  token?: string;
  /** A file holding the token, read again as it rotates (api_client.ts). */
  tokenFile?: string;
  certData?: Uint8Array;
  keyData?: Uint8Array;
  username?: string;
  password?: string;
}

/** What the HTTPS client needs (the shape api_client.ts fills per request). */
export interface HttpsOptions {
  headers?: Record<string, string>;
  ca?: Uint8Array;
  cert?: Uint8Array;
  key?: Uint8Array;
  rejectUnauthorized?: boolean;
  auth?: string;
}

type Obj = Record<string, unknown>;

const obj = (v: unknown): Obj | undefined =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? v as Obj : undefined;
const str = (v: unknown): string | undefined => typeof v === "string" && v !== "" ? v : undefined;

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

function resolveFrom(dir: string, path: string): string {
  return path.startsWith("/") ? path : `${dir}/${path}`;
}

function base64Bytes(text: string, what: string): Uint8Array {
  try {
    return Uint8Array.from(atob(text.replace(/\s+/g, "")), (c) => c.charCodeAt(0));
  } catch {
    throw new Error(`${what} is not valid base64`);
  }
}

/** `-data` (base64) wins over the file, as in kubectl. */
function dataOrFile(entry: Obj, key: string, dir: string, what: string): Uint8Array | undefined {
  const data = str(entry[`${key}-data`]);
  if (data) return base64Bytes(data, `${what} ${key}-data`);
  const file = str(entry[key]);
  return file ? Deno.readFileSync(resolveFrom(dir, file)) : undefined;
}

async function parseDocument(path: string, text: string): Promise<Obj> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    try {
      const { parse } = await import("yaml");
      doc = parse(text);
    } catch (e) {
      throw new Error(`kubeconfig ${path}: ${e instanceof Error ? e.message : e}`);
    }
  }
  return obj(doc) ?? {};
}

export class KubeConfig {
  private cluster: KubeCluster | null = null;
  private user: KubeUser | null = null;

  getCurrentCluster(): KubeCluster | null {
    return this.cluster;
  }

  getCurrentUser(): KubeUser | null {
    return this.user;
  }

  /** The pod's service account (KUBERNETES_SERVICE_HOST/PORT, its CA and rotating token). */
  loadFromCluster(root = SERVICE_ACCOUNT_ROOT): void {
    const host = Deno.env.get("KUBERNETES_SERVICE_HOST");
    const port = Deno.env.get("KUBERNETES_SERVICE_PORT") ?? "443";
    if (!host) throw new Error("KUBERNETES_SERVICE_HOST is not set: not running in a cluster");
    this.cluster = {
      name: "in-cluster",
      server: `https://${host.includes(":") ? `[${host}]` : host}:${port}`,
      caData: Deno.readFileSync(`${root}/ca.crt`),
      skipTLSVerify: false,
    };
    this.user = { name: "service-account", tokenFile: `${root}/token` };
  }

  /** One or more kubeconfig files, merged (the first to name an entry or a context wins). */
  async loadFromFiles(paths: string[]): Promise<void> {
    const clusters = new Map<string, { entry: Obj; dir: string }>();
    const users = new Map<string, { entry: Obj; dir: string }>();
    const contexts = new Map<string, Obj>();
    let current: string | undefined;
    for (const path of paths) {
      const doc = await parseDocument(path, Deno.readTextFileSync(path));
      const dir = dirOf(path);
      const named = (
        list: unknown,
        field: string,
        into: Map<string, { entry: Obj; dir: string }>,
      ) => {
        for (const item of Array.isArray(list) ? list : []) {
          const name = str(obj(item)?.name);
          if (name && !into.has(name)) {
            into.set(name, { entry: obj(obj(item)?.[field]) ?? {}, dir });
          }
        }
      };
      named(doc.clusters, "cluster", clusters);
      named(doc.users, "user", users);
      for (const item of Array.isArray(doc.contexts) ? doc.contexts : []) {
        const name = str(obj(item)?.name);
        if (name && !contexts.has(name)) contexts.set(name, obj(obj(item)?.context) ?? {});
      }
      current ??= str(doc["current-context"]);
    }
    const where = paths.join(":");
    if (!current) throw new Error(`kubeconfig ${where}: no current-context`);
    const context = contexts.get(current);
    if (!context) throw new Error(`kubeconfig ${where}: context ${current} not found`);
    const clusterName = str(context.cluster);
    const c = clusterName ? clusters.get(clusterName) : undefined;
    if (!c) throw new Error(`kubeconfig ${where}: cluster ${clusterName} not found`);
    const server = str(c.entry.server);
    if (!server) throw new Error(`kubeconfig ${where}: cluster ${clusterName} has no server`);
    this.cluster = {
      name: clusterName!,
      server: server.replace(/\/+$/, ""),
      caData: dataOrFile(c.entry, "certificate-authority", c.dir, `cluster ${clusterName}`),
      skipTLSVerify: c.entry["insecure-skip-tls-verify"] === true,
    };
    const userName = str(context.user);
    const u = userName ? users.get(userName) : undefined;
    this.user = u ? readUser(userName!, u.entry, u.dir) : null;
  }

  /**
   * Fills `opts` for one request: trust, client certificate, credentials. Refuses plain http
   * unless the cluster says `insecure-skip-tls-verify: true` (a test server, never a real one).
   */
  applyToHTTPSOptions(opts: HttpsOptions): Promise<void> {
    const c = this.cluster;
    if (!c) return Promise.reject(new Error("kubeconfig has no current cluster"));
    if (c.server.startsWith("http:") && !c.skipTLSVerify) {
      return Promise.reject(
        new Error(
          `plain http to ${c.server} is refused unless the cluster sets insecure-skip-tls-verify`,
        ),
      );
    }
    if (c.caData) opts.ca = c.caData;
    if (c.skipTLSVerify) opts.rejectUnauthorized = false;
    const u = this.user;
    if (u?.certData) opts.cert = u.certData;
    if (u?.keyData) opts.key = u.keyData;
    if (u?.token) opts.headers = { ...opts.headers, Authorization: `Bearer ${u.token}` };
    if (u?.username !== undefined && u.password !== undefined) {
      opts.auth = `${u.username}:${u.password}`;
    }
    return Promise.resolve();
  }
}

function readUser(name: string, entry: Obj, dir: string): KubeUser {
  if (entry.exec !== undefined) {
    throw new Error(
      `kubeconfig user ${name}: exec credential plugins are not supported (the agent runs no ` +
        `programs but its rule tools); use a token, a token file or a client certificate`,
    );
  }
  const user: KubeUser = { name };
  const provider = obj(entry["auth-provider"]);
  if (provider) {
    const file = str(obj(provider.config)?.tokenFile);
    if (provider.name !== "tokenFile" || !file) {
      throw new Error(
        `kubeconfig user ${name}: auth provider ${JSON.stringify(provider.name)} is not ` +
          `supported (only tokenFile)`,
      );
    }
    user.tokenFile = file;
  }
  const token = str(entry.token);
  if (token) user.token = token;
  const tokenFile = str(entry["token-file"]) ?? str(entry.tokenFile);
  if (tokenFile && !user.tokenFile) user.tokenFile = tokenFile;
  const cert = dataOrFile(entry, "client-certificate", dir, `user ${name}`);
  if (cert) user.certData = cert;
  const key = dataOrFile(entry, "client-key", dir, `user ${name}`);
  if (key) user.keyData = key;
  if (typeof entry.username === "string") user.username = entry.username;
  if (typeof entry.password === "string") user.password = entry.password;
  return user;
}
