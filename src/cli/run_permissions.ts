/**
 * The narrowest permissions for one `deno run` of the agent, computed from its flags before it
 * starts (by scripts/agent.ts for `deno task agent`, and by the lab's LabAgent): reading only the
 * kubeconfig and the files it names, or the manifest paths, or the service-account directory; the
 * network only to the bind address and the API server of the kubeconfig's current context.
 * Kubeconfig resolution mirrors src/k8s/api_client.ts (flag, then $KUBECONFIG, then in-cluster).
 */
import { parse } from "yaml";
import { type Arch, hostArch } from "../../ffi/library.ts";
import { parseBindAddress } from "../server.ts";
import { type AgentPermissions, SERVICE_ACCOUNT_DIR } from "./permissions.ts";

export interface RunPermissionInput {
  kubeconfig?: string;
  manifests: string[];
  metricsAddress: string;
  /**
   * The checkout main.ts runs from. Under `deno run` the verdict Worker's modules are read with
   * the main thread's read permission, so its `src/` and `ffi/` are readable (our own sources).
   */
  sourceRoot: string;
  env: (name: string) => string | undefined;
  readTextFile: (path: string) => string;
  /** Symlinks resolved (a manifest directory may be one); returns the path itself when absent. */
  realPath: (path: string) => string;
  arch?: Arch;
}

// deno-lint-ignore no-explicit-any
type Obj = Record<string, any>;

function dirname(path: string): string {
  const cut = path.lastIndexOf("/");
  return cut <= 0 ? (cut === 0 ? "/" : ".") : path.slice(0, cut);
}

function absoluteFrom(dir: string, file: string): string {
  return file.startsWith("/") ? file : `${dir}/${file}`;
}

/** `host:port` of an API server URL, in Deno's --allow-net spelling (IPv6 in brackets). */
export function serverHostPort(server: string): string {
  let url: URL | undefined;
  try {
    url = new URL(server);
  } catch { /* reported below */ }
  if (url?.protocol !== "https:" && url?.protocol !== "http:") {
    throw new Error(`kubeconfig: server ${JSON.stringify(server)} is not an http(s) URL`);
  }
  const port = url.port || (url.protocol === "http:" ? "80" : "443");
  return `${url.hostname}:${port}`;
}

/** What a bind address needs: both wildcard families for ":port" (server.ts tries "::" first). */
export function bindHostPorts(address: string): string[] {
  const { hostname, port } = parseBindAddress(address);
  // Port 0 picks a free port at bind time: allow the host on any port.
  const at = (host: string) => port === 0 ? host : `${host}:${port}`;
  if (hostname === "") return [at("[::]"), at("0.0.0.0")];
  return [at(hostname.includes(":") ? `[${hostname}]` : hostname)];
}

interface KubeconfigFacts {
  /** Files the kubeconfigs name (CA, client certificate and key, token files). */
  files: string[];
  /** The current context's API server. */
  server?: string;
}

/**
 * Files named by kubeconfigs and the current context's server, as src/k8s/kubeconfig.ts reads
 * them: CA and client certificate paths are relative to their kubeconfig, `token-file` (and
 * kubectl's `tokenFile`) to the working directory, and the first file that names a context,
 * cluster or `current-context` wins.
 */
export function kubeconfigFacts(
  paths: string[],
  readTextFile: (p: string) => string,
): KubeconfigFacts {
  const files: string[] = [];
  const clusters = new Map<string, Obj>();
  const contexts = new Map<string, Obj>();
  let current: string | undefined;
  for (const path of paths) {
    let doc: Obj;
    try {
      doc = (parse(readTextFile(path)) ?? {}) as Obj;
    } catch (e) {
      throw new Error(`kubeconfig ${path}: ${e instanceof Error ? e.message : e}`);
    }
    const dir = dirname(path);
    for (const c of Array.isArray(doc.clusters) ? doc.clusters : []) {
      const ca = c?.cluster?.["certificate-authority"];
      if (typeof ca === "string" && ca) files.push(absoluteFrom(dir, ca));
      if (typeof c?.name === "string" && !clusters.has(c.name)) {
        clusters.set(c.name, c.cluster ?? {});
      }
    }
    for (const u of Array.isArray(doc.users) ? doc.users : []) {
      for (const key of ["client-certificate", "client-key"]) {
        const f = u?.user?.[key];
        if (typeof f === "string" && f) files.push(absoluteFrom(dir, f));
      }
      for (const key of ["token-file", "tokenFile"]) {
        const token = u?.user?.[key];
        if (typeof token === "string" && token) files.push(token);
      }
    }
    for (const c of Array.isArray(doc.contexts) ? doc.contexts : []) {
      if (typeof c?.name === "string" && !contexts.has(c.name)) {
        contexts.set(c.name, c.context ?? {});
      }
    }
    if (current === undefined && typeof doc["current-context"] === "string") {
      current = doc["current-context"];
    }
  }
  const clusterName = current === undefined ? undefined : contexts.get(current)?.cluster;
  const server = typeof clusterName === "string" ? clusters.get(clusterName)?.server : undefined;
  return { files, server: typeof server === "string" ? server : undefined };
}

/** The permissions for one run; throws (naming the file) when a kubeconfig cannot be read. */
export function runPermissions(input: RunPermissionInput): AgentPermissions {
  const root = input.sourceRoot.replace(/\/+$/, "");
  const read = [`${root}/src`, `${root}/ffi`];
  const net = bindHostPorts(input.metricsAddress);
  if (input.manifests.length) {
    // The paths as given and as resolved: the loader follows symlinks (load.ts realPath).
    for (const m of input.manifests) read.push(m, input.realPath(m));
  } else {
    const envPaths = (input.env("KUBECONFIG") ?? "").split(":").filter(Boolean);
    const kubeconfigs = input.kubeconfig ? [input.kubeconfig] : envPaths;
    if (kubeconfigs.length) {
      const facts = kubeconfigFacts(kubeconfigs, input.readTextFile);
      read.push(...kubeconfigs, ...facts.files);
      if (facts.server) net.push(serverHostPort(facts.server));
    } else {
      read.push(SERVICE_ACCOUNT_DIR);
      const host = input.env("KUBERNETES_SERVICE_HOST");
      const port = input.env("KUBERNETES_SERVICE_PORT") ?? "443";
      if (host) net.push(`${host.includes(":") ? `[${host}]` : host}:${port}`);
    }
  }
  return { arch: input.arch ?? hostArch(), read: [...new Set(read)], net: [...new Set(net)] };
}

/** runPermissions with this process's environment and file system. */
export function runPermissionsHere(
  run: { kubeconfig?: string; manifests: string[]; metricsAddress: string },
  sourceRoot: string,
): AgentPermissions {
  return runPermissions({
    ...run,
    sourceRoot,
    env: (name) => Deno.env.get(name),
    readTextFile: (path) => Deno.readTextFileSync(path),
    realPath: (path) => {
      try {
        return Deno.realPathSync(path);
      } catch {
        return path;
      }
    },
  });
}
