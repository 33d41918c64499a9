/**
 * The Deno permissions the agent (`kube-netpol run`) needs, and why: the single list used by the
 * container build (Dockerfile `deno compile`), `deno task agent`, and the lab. A test keeps the
 * Dockerfile in step with it.
 */

/** Where Debian 12 (the runtime image and our machines) keeps the two C libraries we bind. */
export const LIBNETFILTER_QUEUE = "/usr/lib/x86_64-linux-gnu/libnetfilter_queue.so.1";
export const LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6";

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

export const AGENT_PERMISSION_FLAGS = [
  // Only JS-owned buffers cross FFI (no callbacks, no pointer reads), so FFI can be scoped.
  `--allow-ffi=${LIBNETFILTER_QUEUE},${LIBC}`,
  // Metrics/health server, and the Kubernetes API server.
  "--allow-net",
  // Manifests, kubeconfig, the service-account token and CA.
  "--allow-read",
  // @kubernetes/client-node reads the environment at import time (unscoped is required).
  "--allow-env",
  `--allow-run=${RULE_TOOLS.join(",")}`,
  // Node name fallback when neither --hostname-override nor NODE_NAME is set.
  "--allow-sys=hostname",
];
