/**
 * The namespace lab: fake Kubernetes nodes built from network namespaces, for tests that need real
 * packets. Each "node" netns routes between one netns per pod (a veth pair each), exactly like a
 * CNI that gives every pod a /32 and routes through the host. With two or more nodes, a "router"
 * netns joins them (a veth pair per node), as the network between the machines of a routed CNI:
 * a connection between pods on different nodes leaves one node netns and enters the other.
 * Everything lives in namespaces this module creates; the root namespace is never touched (every
 * `ip` call names a netns). Only programs listed in e2e/programs.ts (what ./dev installs) can be
 * started.
 *
 *   pod netns (eth0: 10.244.1.11/32) ──veth── node netns (<hostIf>, route 10.244.1.11/32)
 *                                              node netns (uplink) ──veth── router netns (n1)
 *   pod netns (eth0: 10.245.1.12/32) ──veth── node2 netns          ──veth── router netns (n2)
 *
 * Names carry the creating process id, so `cleanupStaleLabs` can tell leftovers of crashed runs
 * from labs of tests running in parallel.
 */
import { Cidr } from "../../src/policy/cidr.ts";
import { canonicalIP, parseIP } from "../../src/net/ip.ts";

import { isKnownProgram } from "../programs.ts";

export interface LabPodSpec {
  namespace: string;
  name: string;
  ip: string;
  ip6?: string;
  /** Name of the node the pod runs on; default the lab's first node. */
  node?: string;
}

export interface LabPod extends LabPodSpec {
  /** The pod's network namespace (use with `Lab.exec` / `Lab.spawn`). */
  netns: string;
  /** The node-side end of the pod's veth, inside its node's netns. */
  hostIf: string;
  node: string;
  /** Its node's netns. */
  nodeNetns: string;
}

export interface LabNodeSpec {
  /** The Kubernetes node name (pods name it in `node`, agents run as it). */
  name: string;
  /** The node IP, on the node netns' `lo`. */
  ip: string;
  /** Its IPv6 node IP (labs with `ipv6`); default derived from `ip` (see deriveIPv6). */
  ip6?: string;
  /**
   * The node's pod CIDRs (Node `spec.podCIDRs`), at most one per family. In labs with a router the
   * router routes each CIDR to the node and the node answers "unreachable" for its unused
   * addresses; pods outside their node's CIDRs get a route of their own on the router.
   */
  podCIDRs?: string[];
}

export interface LabNode {
  name: string;
  netns: string;
  ip: string;
  ip6?: string;
  /** The CIDRs of the families the lab has (IPv6 ones only with `ipv6`). */
  podCIDRs: string[];
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
  /** True when the command was killed for running past `timeoutMs`. */
  timedOut: boolean;
}

export interface SpawnOptions {
  stdin?: "piped" | "null";
  stdout?: "piped" | "null" | "inherit";
  stderr?: "piped" | "null" | "inherit";
  env?: Record<string, string>;
  cwd?: string;
}

export interface Lab {
  /** Unique per lab: the given prefix plus creator pid and a random suffix. */
  prefix: string;
  /** The first node's netns, IP and IPv6 IP (the only node of a single-node lab). */
  nodeNetns: string;
  nodeIP: string;
  nodeIP6?: string;
  nodes: LabNode[];
  /** The netns joining the nodes; only in labs with two or more nodes. */
  routerNetns?: string;
  pods: LabPod[];
  /** Look a pod up by "namespace/name". */
  pod(key: string): LabPod;
  /** Look a node up by name. */
  node(name: string): LabNode;
  /**
   * Add a pod to a running lab (a pod that starts late). Inside its node's pod CIDR it needs no
   * change on the router; elsewhere the router gets a route for it.
   */
  addPod(spec: LabPodSpec): Promise<LabPod>;
  exec(
    netns: string,
    cmd: string[],
    opts?: { stdin?: string; timeoutMs?: number },
  ): Promise<ExecResult>;
  /** Start a long-running process in `netns`; it is killed by `destroy()`. */
  spawn(netns: string, cmd: string[], opts?: SpawnOptions): Deno.ChildProcess;
  /** Idempotent: kills spawned processes, removes every netns (and so every veth) it made. */
  destroy(): Promise<void>;
}

export interface CreateLabOptions {
  /** Short name prefix, e.g. "knplab"; a pid and random suffix are appended. */
  prefix: string;
  pods: LabPodSpec[];
  /** Default 10.244.0.1. Single-node labs only (with `nodes`, each node names its IP). */
  nodeIP?: string;
  /** Also give pods IPv6 addresses (pods without `ip6` get one derived from their IPv4). */
  ipv6?: boolean;
  /** Default fd00:10:244::1. Single-node labs only. */
  nodeIP6?: string;
  /** The nodes; default one node named DEFAULT_NODE_NAME with `nodeIP`/`nodeIP6`. */
  nodes?: LabNodeSpec[];
}

export const DEFAULT_NODE_NAME = "lab-node";
export const DEFAULT_NODE_IP = "10.244.0.1";
export const DEFAULT_NODE_IP6 = "fd00:10:244::1";
/** Gateway the pods use for IPv6: a fixed link-local address on every node-side veth. */
const GATEWAY6 = "fe80::1";
/**
 * The router's own IPv4 address (on its `lo`): the next hop of every node's default route. Link
 * local, so no pod CIDR of the lab covers it; it is never the source of pod traffic.
 */
export const ROUTER_IP = "169.254.0.1";
/** IPv6 next hops on each node-router link: the router's end and the node's end. */
const ROUTER_LINK6 = "fe80::1";
const NODE_LINK6 = "fe80::2";

/**
 * fd00:10:<second>::<third>:<fourth> for 10.<second>.<third>.<fourth>, as the case model does
 * (10.244.1.11 -> fd00:10:244::1:11; a second node's 10.245.1.12 -> fd00:10:245::1:12).
 */
export function deriveIPv6(ipv4: string): string {
  const parts = ipv4.split(".");
  if (parts.length !== 4) throw new Error(`not an IPv4 address: ${ipv4}`);
  const text = `fd00:10:${parts[1]}::${parts[2]}:${parts[3]}`;
  const canonical = canonicalIP(text);
  if (!canonical) throw new Error(`cannot derive an IPv6 address from ${ipv4}`);
  return canonical;
}

/** Run a command (no shell), capture output, kill it with SIGKILL after `timeoutMs`. */
export async function run(
  cmd: string[],
  opts: { stdin?: string; timeoutMs?: number } = {},
): Promise<ExecResult> {
  const [program, ...args] = known(cmd);
  const child = new Deno.Command(program, {
    args,
    stdin: opts.stdin !== undefined ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
  }, opts.timeoutMs ?? 30_000);
  try {
    if (opts.stdin !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(opts.stdin));
      await w.close();
    }
    const out = await child.output();
    const dec = new TextDecoder();
    return {
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      timedOut,
    };
  } finally {
    clearTimeout(timer);
  }
}

/** Run and throw with the command line and stderr on a non-zero exit. */
async function must(cmd: string[], timeoutMs = 10_000): Promise<string> {
  const r = await run(cmd, { timeoutMs });
  if (r.code !== 0) {
    throw new Error(`${cmd.join(" ")} failed (exit ${r.code}): ${r.stderr.trim()}`);
  }
  return r.stdout;
}

/** Refuses programs ./dev does not install (see e2e/programs.ts), before anything starts. */
function known(cmd: string[]): [string, ...string[]] {
  const [program, ...args] = cmd;
  if (program === undefined || !isKnownProgram(program)) {
    throw new Error(`lab: ${program} is not in e2e/programs.ts (add it there and to ./dev's PKGS)`);
  }
  return [program, ...args];
}

function inNetns(netns: string, cmd: string[]): string[] {
  known(cmd);
  return ["ip", "netns", "exec", netns, ...cmd];
}

/** Netns names that start with `prefix-` (with a lab's `prefix`: the namespaces of that lab). */
export async function listNetns(prefix: string): Promise<string[]> {
  const out = await must(["ip", "netns", "list"]);
  return out.split("\n")
    .map((l) => l.trim().split(/\s+/)[0] ?? "")
    .filter((n) => n.startsWith(`${prefix}-`));
}

/** Kill (SIGKILL) every process still inside `netns`: all of them were started by a lab. */
async function killNetnsProcesses(netns: string): Promise<void> {
  const r = await run(["ip", "netns", "pids", netns], { timeoutMs: 5_000 });
  for (const pid of r.stdout.split(/\s+/).filter((p) => /^\d+$/.test(p))) {
    try {
      Deno.kill(Number(pid), "SIGKILL");
    } catch { /* exited meanwhile */ }
  }
}

async function deleteNetns(netns: string): Promise<void> {
  await killNetnsProcesses(netns);
  const r = await run(["ip", "netns", "del", netns], { timeoutMs: 10_000 });
  if (r.code !== 0 && !/No such file/.test(r.stderr)) {
    throw new Error(`ip netns del ${netns}: ${r.stderr.trim()}`);
  }
}

/**
 * Whether a process exists. `ps`, not /proc: Deno reads /proc only with --allow-all, and the lab
 * runs with narrower permissions.
 */
export async function processAlive(pid: number): Promise<boolean> {
  return (await run(["ps", "-p", String(pid)], { timeoutMs: 5_000 })).code === 0;
}

const LAB_NAME = /^(.*)-(\d+)-([0-9a-z]{4})-(node\d*|rt|p\d+)$/;

/**
 * Remove labs under `prefix` left behind by runs that died without cleaning up: every netns named
 * `<prefix>-<pid>-<rand>-...` whose creating process no longer exists. Labs of live processes
 * (tests running in parallel) are left alone. Returns the netns names removed.
 */
export async function cleanupStaleLabs(prefix: string): Promise<string[]> {
  const removed: string[] = [];
  for (const netns of await listNetns(prefix)) {
    const m = LAB_NAME.exec(netns);
    if (!m || m[1] !== prefix) continue;
    if (await processAlive(Number(m[2]))) continue;
    await deleteNetns(netns);
    removed.push(netns);
  }
  return removed;
}

function randomSuffix(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => (b % 36).toString(36))
    .join("");
}

function family(ip: string): 4 | 6 {
  const parsed = parseIP(ip);
  if (!parsed) throw new Error(`not an IP address: ${ip}`);
  return parsed.family;
}

/** The node specs, checked: unique names, valid IPs, at most one pod CIDR per family. */
function resolveNodes(opts: CreateLabOptions): LabNodeSpec[] {
  if (!opts.nodes) {
    return [{
      name: DEFAULT_NODE_NAME,
      ip: opts.nodeIP ?? DEFAULT_NODE_IP,
      ...(opts.ipv6 ? { ip6: opts.nodeIP6 ?? DEFAULT_NODE_IP6 } : {}),
    }];
  }
  if (opts.nodeIP !== undefined || opts.nodeIP6 !== undefined) {
    throw new Error("createLab: give node IPs in `nodes`, not nodeIP/nodeIP6, when naming nodes");
  }
  if (opts.nodes.length === 0) throw new Error("createLab: `nodes` is empty");
  const names = new Set<string>();
  return opts.nodes.map((n) => {
    if (names.has(n.name)) throw new Error(`duplicate lab node ${n.name}`);
    names.add(n.name);
    if (family(n.ip) !== 4) throw new Error(`node ${n.name}: ip ${n.ip} is not IPv4`);
    const ip6 = opts.ipv6 ? (n.ip6 ?? deriveIPv6(n.ip)) : undefined;
    if (ip6 && family(ip6) !== 6) throw new Error(`node ${n.name}: ip6 ${ip6} is not IPv6`);
    const seen = new Set<number>();
    for (const c of n.podCIDRs ?? []) {
      const parsed = Cidr.parse(c);
      if (typeof parsed === "string") throw new Error(`node ${n.name}: podCIDRs: ${parsed}`);
      if (seen.has(parsed.family)) {
        throw new Error(
          `node ${n.name}: podCIDRs has two IPv${parsed.family} CIDRs (one per family)`,
        );
      }
      seen.add(parsed.family);
    }
    return { ...n, ...(ip6 ? { ip6 } : {}) };
  });
}

/** Whether `ip` lies in one of `cidrs`. */
function inCIDRs(ip: string, cidrs: readonly string[]): boolean {
  const parsed = parseIP(ip);
  if (!parsed) return false;
  return cidrs.some((c) => {
    const cidr = Cidr.parse(c);
    return typeof cidr !== "string" && cidr.contains(parsed);
  });
}

/**
 * Build the lab. On any failure everything made so far is removed before the error propagates,
 * so callers only need `try { ... } finally { await lab.destroy() }` once this returns.
 */
export async function createLab(opts: CreateLabOptions): Promise<Lab> {
  if (!/^[a-z][a-z0-9]{0,11}$/.test(opts.prefix)) {
    throw new Error(`lab prefix must be 1-12 lower-case letters/digits: ${opts.prefix}`);
  }
  const nodeSpecs = resolveNodes(opts);
  const prefix = `${opts.prefix}-${Deno.pid}-${randomSuffix()}`;
  // The first node keeps the single-node name; the others are numbered from 2.
  const nodes: LabNode[] = nodeSpecs.map((n, i) => ({
    name: n.name,
    netns: i === 0 ? `${prefix}-node` : `${prefix}-node${i + 1}`,
    ip: n.ip,
    ...(n.ip6 ? { ip6: n.ip6 } : {}),
    podCIDRs: (n.podCIDRs ?? []).filter((c) => opts.ipv6 || !c.includes(":")),
  }));
  const first = nodes[0]!;
  const routerNetns = nodes.length > 1 ? `${prefix}-rt` : undefined;
  const nodeByName = new Map(nodes.map((n) => [n.name, n]));
  const pods: LabPod[] = [];
  let nextPod = 0;
  const spawned = new Set<Deno.ChildProcess>();
  let destroyed = false;

  /** Check a pod spec against the lab and name its netns and veth. */
  const planPod = (p: LabPodSpec): LabPod => {
    const key = `${p.namespace}/${p.name}`;
    if (pods.some((x) => `${x.namespace}/${x.name}` === key)) {
      throw new Error(`duplicate lab pod ${key}`);
    }
    const node = nodeByName.get(p.node ?? first.name);
    if (!node) throw new Error(`lab pod ${key}: no lab node ${p.node}`);
    const ip6 = opts.ipv6 ? p.ip6 ?? deriveIPv6(p.ip) : undefined;
    for (const ip of [p.ip, ...(ip6 ? [ip6] : [])]) {
      const other = nodes.find((n) => n !== node && inCIDRs(ip, n.podCIDRs));
      if (other) {
        throw new Error(`lab pod ${key} on ${node.name}: ${ip} is in ${other.name}'s pod CIDR`);
      }
    }
    const i = nextPod++;
    return {
      ...p,
      ...(ip6 ? { ip6 } : {}),
      node: node.name,
      nodeNetns: node.netns,
      netns: `${prefix}-p${i}`,
      // Interface names inside the node netns only: unique there, well under the 15-char limit.
      hostIf: `veth${i}`,
    };
  };

  /** The netns, veth, addresses and routes of one pod (on its node, and on the router). */
  const buildPod = async (p: LabPod): Promise<void> => {
    const n = nodeByName.get(p.node)!;
    const pod = (cmd: string[]) => must(["ip", "-n", p.netns, ...cmd]);
    const node = (cmd: string[]) => must(["ip", "-n", n.netns, ...cmd]);
    await must(["ip", "netns", "add", p.netns]);
    await node(["link", "add", p.hostIf, "type", "veth", "peer", "name", "eth0", "netns", p.netns]);
    await pod(["link", "set", "lo", "up"]);
    await pod(["addr", "add", `${p.ip}/32`, "dev", "eth0"]);
    if (p.ip6) {
      await must(inNetns(p.netns, ["sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_dad=0"]));
      await pod(["addr", "add", `${p.ip6}/128`, "dev", "eth0", "nodad"]);
    }
    await pod(["link", "set", "eth0", "up"]);
    // The node IP is not on the veth; `onlink` lets the pod ARP for it there (the node answers
    // ARP for any of its local addresses), as CNIs with a /32 per pod do.
    await pod(["route", "add", "default", "via", n.ip, "dev", "eth0", "onlink"]);
    await node(["link", "set", p.hostIf, "up"]);
    await node(["route", "add", `${p.ip}/32`, "dev", p.hostIf, "src", n.ip]);
    if (p.ip6 && n.ip6) {
      await node(["addr", "add", `${GATEWAY6}/64`, "dev", p.hostIf, "nodad"]);
      await node(["-6", "route", "add", `${p.ip6}/128`, "dev", p.hostIf, "src", n.ip6]);
      await pod(["-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0"]);
    }
    if (!routerNetns) return;
    // A pod outside its node's pod CIDRs needs a route of its own between the nodes.
    const link = routerLink(n);
    if (!inCIDRs(p.ip, n.podCIDRs)) {
      await must([
        "ip",
        "-n",
        routerNetns,
        "route",
        "add",
        `${p.ip}/32`,
        "via",
        n.ip,
        "dev",
        link,
        "onlink",
      ]);
    }
    if (p.ip6 && !inCIDRs(p.ip6, n.podCIDRs)) {
      await must([
        "ip",
        "-n",
        routerNetns,
        "-6",
        "route",
        "add",
        `${p.ip6}/128`,
        "via",
        NODE_LINK6,
        "dev",
        link,
      ]);
    }
  };

  /** The router-side name of a node's link. */
  const routerLink = (n: LabNode) => `n${nodes.indexOf(n) + 1}`;

  const lab: Lab = {
    prefix,
    nodeNetns: first.netns,
    nodeIP: first.ip,
    ...(first.ip6 ? { nodeIP6: first.ip6 } : {}),
    nodes,
    ...(routerNetns ? { routerNetns } : {}),
    pods,
    pod(key: string): LabPod {
      const p = pods.find((x) => `${x.namespace}/${x.name}` === key);
      if (!p) throw new Error(`no lab pod ${key}`);
      return p;
    },
    node(name: string): LabNode {
      const n = nodeByName.get(name);
      if (!n) throw new Error(`no lab node ${name}`);
      return n;
    },
    async addPod(spec) {
      if (destroyed) throw new Error(`lab ${prefix} is destroyed`);
      const p = planPod(spec);
      pods.push(p);
      try {
        await buildPod(p);
      } catch (e) {
        // Leave no half-built pod behind: its netns (and veth) go, and so does its record.
        pods.splice(pods.indexOf(p), 1);
        await deleteNetns(p.netns).catch(() => {});
        throw e;
      }
      return p;
    },
    exec(netns, cmd, o) {
      return run(inNetns(netns, cmd), o);
    },
    spawn(netns, cmd, o = {}) {
      const full = inNetns(netns, cmd);
      const child = new Deno.Command(full[0]!, {
        args: full.slice(1),
        stdin: o.stdin ?? "null",
        stdout: o.stdout ?? "null",
        stderr: o.stderr ?? "inherit",
        ...(o.env ? { env: o.env } : {}),
        ...(o.cwd ? { cwd: o.cwd } : {}),
      }).spawn();
      spawned.add(child);
      child.status.finally(() => spawned.delete(child));
      return child;
    },
    async destroy() {
      if (destroyed) return;
      destroyed = true;
      // Ask politely first (the agent may want to tidy up), then make sure.
      const children = [...spawned];
      for (const c of children) {
        try {
          c.kill("SIGTERM");
        } catch { /* exited */ }
      }
      await Promise.race([
        Promise.allSettled(children.map((c) => c.status)),
        new Promise((r) => setTimeout(r, 2_000)),
      ]);
      for (const c of spawned) {
        try {
          c.kill("SIGKILL");
        } catch { /* exited */ }
      }
      await Promise.race([
        Promise.allSettled(children.map((c) => c.status)),
        new Promise((r) => setTimeout(r, 2_000)),
      ]);
      // Whatever is listed under our prefix goes, including a half-built netns from a failed setup.
      const errors: string[] = [];
      for (const netns of await listNetns(prefix)) {
        try {
          await deleteNetns(netns);
        } catch (e) {
          errors.push((e as Error).message);
        }
      }
      if (errors.length) throw new Error(`lab ${prefix} cleanup: ${errors.join("; ")}`);
    },
  };

  try {
    for (const p of opts.pods) pods.push(planPod(p));
    await Promise.all(nodes.map((n) => buildNode(n, routerNetns !== undefined)));
    if (routerNetns) await buildRouter(routerNetns, nodes, routerLink);
    // Pods are independent of each other: build them in parallel.
    await Promise.all(pods.map(buildPod));
  } catch (e) {
    await lab.destroy().catch(() => {});
    throw e;
  }
  return lab;
}

/** A node netns: forwarding on, node IPs on `lo`; with a router, its uplink and default routes. */
async function buildNode(n: LabNode, routed: boolean): Promise<void> {
  await must(["ip", "netns", "add", n.netns]);
  const node = (cmd: string[]) => must(["ip", "-n", n.netns, ...cmd]);
  await node(["link", "set", "lo", "up"]);
  await node(["addr", "add", `${n.ip}/32`, "dev", "lo"]);
  // sysctls run inside the node netns: /proc/sys/net shows the netns of the reading process.
  const sysctls = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"];
  if (n.ip6) {
    await node(["addr", "add", `${n.ip6}/128`, "dev", "lo"]);
    sysctls.push("net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.accept_dad=0");
  }
  await must(inNetns(n.netns, ["sysctl", "-q", "-w", ...sysctls]));
  if (!routed) return;
  // Addresses of the node's own pod CIDRs that no pod holds end here instead of bouncing between
  // the node's default route and the router's CIDR route until their TTL runs out.
  for (const c of n.podCIDRs) {
    await node([...(c.includes(":") ? ["-6"] : []), "route", "add", "unreachable", c]);
  }
}

/**
 * The router netns: one veth pair per node (`n<k>` here, `uplink` in the node), forwarding on,
 * a route to each node IP and pod CIDR through that node; each node's default route points here.
 */
async function buildRouter(
  netns: string,
  nodes: LabNode[],
  linkOf: (n: LabNode) => string,
): Promise<void> {
  await must(["ip", "netns", "add", netns]);
  const router = (cmd: string[]) => must(["ip", "-n", netns, ...cmd]);
  await router(["link", "set", "lo", "up"]);
  await router(["addr", "add", `${ROUTER_IP}/32`, "dev", "lo"]);
  const ipv6 = nodes.some((n) => n.ip6);
  const sysctls = [
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
  ];
  if (ipv6) sysctls.push("net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.accept_dad=0");
  await must(inNetns(netns, ["sysctl", "-q", "-w", ...sysctls]));
  for (const n of nodes) {
    const link = linkOf(n);
    const node = (cmd: string[]) => must(["ip", "-n", n.netns, ...cmd]);
    await router(["link", "add", link, "type", "veth", "peer", "name", "uplink", "netns", n.netns]);
    await router(["link", "set", link, "up"]);
    await node(["link", "set", "uplink", "up"]);
    // Same trick as for pods: no subnet on the link, `onlink` next hops that answer ARP for an
    // address on their `lo`.
    await router(["route", "add", `${n.ip}/32`, "dev", link, "src", ROUTER_IP]);
    await node([
      "route",
      "add",
      "default",
      "via",
      ROUTER_IP,
      "dev",
      "uplink",
      "onlink",
      "src",
      n.ip,
    ]);
    for (const c of n.podCIDRs.filter((c) => !c.includes(":"))) {
      await router(["route", "add", c, "via", n.ip, "dev", link, "onlink"]);
    }
    if (n.ip6) {
      await router(["addr", "add", `${ROUTER_LINK6}/64`, "dev", link, "nodad"]);
      await node(["addr", "add", `${NODE_LINK6}/64`, "dev", "uplink", "nodad"]);
      await router(["-6", "route", "add", `${n.ip6}/128`, "via", NODE_LINK6, "dev", link]);
      await node([
        "-6",
        "route",
        "add",
        "default",
        "via",
        ROUTER_LINK6,
        "dev",
        "uplink",
        "src",
        n.ip6,
      ]);
      for (const c of n.podCIDRs.filter((c) => c.includes(":"))) {
        await router(["-6", "route", "add", c, "via", NODE_LINK6, "dev", link]);
      }
    }
  }
}
