/**
 * Every program our tests, labs, benchmarks and tasks start, and the Debian package it comes
 * from. `./dev` installs the packages (its PKGS list); `tests/programs_test.ts` fails when a
 * deno.json task may run a program missing here, or a package missing from ./dev, and the lab's
 * netns helpers (e2e/lab/topology.ts) refuse to start a program that is not listed. So a test
 * that needs a new tool fails on this machine too, not only on a fresh one.
 *
 * "base" marks what a bare Debian 12 machine of ours has before ./dev runs: Node.js/npm, git,
 * python3, gcc, make, iproute2, curl, and the essential packages (coreutils, procps).
 */
export const PROGRAMS: Readonly<Record<string, string>> = {
  // network namespaces, links, routes, sysctls
  ip: "iproute2",
  sysctl: "procps",
  // rule backends (what the agent runs, and what lab tests inspect)
  iptables: "iptables",
  ip6tables: "iptables",
  "iptables-save": "iptables",
  "ip6tables-save": "iptables",
  "iptables-nft": "iptables",
  "iptables-nft-save": "iptables",
  "iptables-nft-restore": "iptables",
  "ip6tables-nft": "iptables",
  "ip6tables-nft-save": "iptables",
  "ip6tables-nft-restore": "iptables",
  "iptables-legacy": "iptables",
  "iptables-legacy-save": "iptables",
  "iptables-legacy-restore": "iptables",
  "ip6tables-legacy": "iptables",
  "ip6tables-legacy-save": "iptables",
  "ip6tables-legacy-restore": "iptables",
  ipset: "ipset",
  nft: "nftables",
  conntrack: "conntrack",
  // lab clients and helpers
  curl: "curl",
  socat: "socat",
  python3: "python3",
  ln: "base",
  cat: "base",
  prlimit: "base",
  // a lab agent run as in a pod gets the service account's files in a mount namespace of its own
  unshare: "base",
  ps: "procps",
  // the packet-path benchmark builds its C reference loop and load generator
  gcc: "gcc",
  // the kind e2e (a machine with Docker)
  docker: "docker (not installed by ./dev: the kind e2e needs Docker, kind and kubectl)",
  kind: "docker (not installed by ./dev: the kind e2e needs Docker, kind and kubectl)",
  kubectl: "docker (not installed by ./dev: the kind e2e needs Docker, kind and kubectl)",
  // the upstream Netpol suite, downloaded by the user into .tools/k8s-test (see README)
  ".tools/k8s-test/e2e.test": "docker (downloaded by the user for the kind e2e)",
  ".tools/k8s-test/ginkgo": "docker (downloaded by the user for the kind e2e)",
};

/** Programs the lab may start inside a network namespace: listed ones, Deno, or our own builds. */
export function isKnownProgram(program: string): boolean {
  if (program === Deno.execPath() || program === "deno") return true;
  // Binaries a benchmark built itself from this repository (bench/*.c) live in a temp dir.
  if (program.startsWith("/tmp/")) return true;
  return Object.hasOwn(PROGRAMS, program);
}
