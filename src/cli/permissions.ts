/**
 * The Deno permissions the agent (`kube-netpol run`) runs with, and why: one builder used by the
 * container build (`deno task compile`, scripts/compile.ts, which the Dockerfile runs), `deno task
 * agent` (scripts/agent.ts) and the lab (e2e/lab/agent.ts). Tests keep the build in step with it.
 *
 * What the permissions are, by thread (README, "Security"):
 * - The verdict Worker holds FFI to our two libraries and nothing else (src/verdict/worker_spawn.ts).
 *   FFI reaches all of libc, so only that Worker, which runs only our own code, keeps it.
 * - The main thread revokes FFI right after starting the Worker, before any npm package is loaded,
 *   and keeps: reading what this run needs, the network (scoped where the run says where), the
 *   environment, the rule tools, the hostname and the interface addresses.
 * The process-wide flags below are the union: the Worker's grant must be a subset of them.
 */
import { type Arch, ffiPaths } from "../../ffi/library.ts";
import { SERVICE_ACCOUNT_DIR } from "../k8s/service_account.ts";

/** Programs the rule backends run (probe, install, sync, cleanup), nft and legacy flavours. */
export const RULE_TOOLS = [
  "iptables-nft",
  "iptables-nft-save",
  "iptables-nft-restore",
  "ip6tables-nft",
  "ip6tables-nft-save",
  "ip6tables-nft-restore",
  "iptables-legacy",
  "iptables-legacy-save",
  "iptables-legacy-restore",
  "ip6tables-legacy",
  "ip6tables-legacy-save",
  "ip6tables-legacy-restore",
  "ipset",
  "nft",
];

/**
 * Not permissions, but part of every start of the agent: the Worker's own permission set is an
 * unstable Deno option, and a missing permission must fail, never ask (a `deno run` on a terminal
 * would otherwise prompt, and a "yes" would hand the main thread FFI back). The V8 flags keep the
 * memory small (docs/performance.md, "Memory"): a young generation of 1 MB per thread instead of
 * up to 16 (the agent's objects are few and long-lived), and `gc()` so each thread can hand back
 * what the initial lists used once they are applied (src/release_memory.ts).
 */
export const AGENT_RUNTIME_FLAGS = [
  "--unstable-worker-options",
  "--no-prompt",
  "--v8-flags=--max-semi-space-size=1,--expose-gc",
];

/** Where Kubernetes mounts the pod's service account (read by the in-cluster config). */
export { SERVICE_ACCOUNT_DIR };

export interface AgentPermissions {
  /** The CPU architecture, which decides the library paths. */
  arch: Arch;
  /** Files and directories the main thread reads. */
  read: string[];
  /** `host:port` (or `host`) the main thread listens on or connects to; "any" when unknown. */
  net: string[] | "any";
}

/** The `--allow-*` flags for a set of permissions, in a fixed order. */
export function permissionFlags(p: AgentPermissions): string[] {
  if (p.read.length === 0) throw new Error("the agent always reads something (its own sources)");
  if (p.net !== "any" && p.net.length === 0) throw new Error("the agent always listens");
  return [
    // Every path the loader may try (ffi/library.ts); only the verdict Worker keeps this.
    `--allow-ffi=${ffiPaths(p.arch).join(",")}`,
    p.net === "any" ? "--allow-net" : `--allow-net=${p.net.join(",")}`,
    `--allow-read=${p.read.join(",")}`,
    // @kubernetes/client-node reads the environment at import time (unscoped is required).
    "--allow-env",
    `--allow-run=${RULE_TOOLS.join(",")}`,
    // Node name fallback when neither --hostname-override nor NODE_NAME is set; this node's
    // interface addresses (the pod-start race, src/cli/interface_addresses.ts).
    "--allow-sys=hostname,networkInterfaces",
  ];
}

/** Everything `deno run` / `deno compile` needs besides the module: runtime flags, permissions. */
export function agentDenoFlags(p: AgentPermissions): string[] {
  return [...AGENT_RUNTIME_FLAGS, ...permissionFlags(p)];
}

/**
 * What the container image bakes in at build time. It runs in-cluster: it reads only the
 * service-account directory, and its modules are embedded (no source to read). The network stays
 * unscoped: the API server's address (KUBERNETES_SERVICE_HOST) is known only when the pod starts,
 * after the permissions were compiled in, and `--metrics-bind-address` can change at run time too.
 * `--kubeconfig` and `--manifests` are therefore refused by the image (NotCapable on read).
 */
export function imagePermissions(arch: Arch): AgentPermissions {
  return { arch, read: [SERVICE_ACCOUNT_DIR], net: "any" };
}
