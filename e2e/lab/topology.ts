/**
 * The namespace lab: a fake Kubernetes node built from network namespaces, for tests that need
 * real packets. One "node" netns routes between one netns per pod (a veth pair each), exactly like
 * a CNI that gives every pod a /32 and routes through the host. Everything lives in namespaces
 * this module creates; the root namespace is never touched (every `ip` call names a netns).
 * Only programs listed in e2e/programs.ts (what ./dev installs) can be started.
 *
 *   pod netns (eth0: 10.244.1.11/32) ──veth── node netns (<hostIf>, route 10.244.1.11/32)
 *
 * Names carry the creating process id, so `cleanupStaleLabs` can tell leftovers of crashed runs
 * from labs of tests running in parallel.
 */

import { isKnownProgram } from "../programs.ts";

export interface LabPodSpec {
  namespace: string;
  name: string;
  ip: string;
  ip6?: string;
}

export interface LabPod extends LabPodSpec {
  /** The pod's network namespace (use with `Lab.exec` / `Lab.spawn`). */
  netns: string;
  /** The node-side end of the pod's veth, inside the node netns. */
  hostIf: string;
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
  nodeNetns: string;
  nodeIP: string;
  nodeIP6?: string;
  pods: LabPod[];
  /** Look a pod up by "namespace/name". */
  pod(key: string): LabPod;
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
  /** Default 10.244.0.1. */
  nodeIP?: string;
  /** Also give pods IPv6 addresses (pods without `ip6` get one derived from their IPv4). */
  ipv6?: boolean;
  /** Default fd00:10:244::1. */
  nodeIP6?: string;
}

export const DEFAULT_NODE_IP = "10.244.0.1";
export const DEFAULT_NODE_IP6 = "fd00:10:244::1";
/** Gateway the pods use for IPv6: a fixed link-local address on every node-side veth. */
const GATEWAY6 = "fe80::1";

/** fd00:10:244::<third octet>:<fourth octet> for 10.244.<third>.<fourth>, as the case model does. */
export function deriveIPv6(ipv4: string): string {
  const parts = ipv4.split(".");
  if (parts.length !== 4) throw new Error(`not an IPv4 address: ${ipv4}`);
  return `fd00:10:244::${parts[2]}:${parts[3]}`;
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

/** Netns names that start with `prefix-`. */
async function listNetns(prefix: string): Promise<string[]> {
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

const LAB_NAME = /^(.*)-(\d+)-([0-9a-z]{4})-(node|p\d+)$/;

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

/**
 * Build the lab. On any failure everything made so far is removed before the error propagates,
 * so callers only need `try { ... } finally { await lab.destroy() }` once this returns.
 */
export async function createLab(opts: CreateLabOptions): Promise<Lab> {
  if (!/^[a-z][a-z0-9]{0,11}$/.test(opts.prefix)) {
    throw new Error(`lab prefix must be 1-12 lower-case letters/digits: ${opts.prefix}`);
  }
  const seen = new Set<string>();
  for (const p of opts.pods) {
    const key = `${p.namespace}/${p.name}`;
    if (seen.has(key)) throw new Error(`duplicate lab pod ${key}`);
    seen.add(key);
  }
  const prefix = `${opts.prefix}-${Deno.pid}-${randomSuffix()}`;
  const nodeIP = opts.nodeIP ?? DEFAULT_NODE_IP;
  const nodeIP6 = opts.ipv6 ? (opts.nodeIP6 ?? DEFAULT_NODE_IP6) : undefined;
  const nodeNetns = `${prefix}-node`;
  const pods: LabPod[] = opts.pods.map((p, i) => ({
    ...p,
    ...(opts.ipv6 ? { ip6: p.ip6 ?? deriveIPv6(p.ip) } : {}),
    netns: `${prefix}-p${i}`,
    // Interface names inside the node netns only: unique there, well under the 15-char limit.
    hostIf: `veth${i}`,
  }));
  const spawned = new Set<Deno.ChildProcess>();
  let destroyed = false;

  const lab: Lab = {
    prefix,
    nodeNetns,
    nodeIP,
    ...(nodeIP6 ? { nodeIP6 } : {}),
    pods,
    pod(key: string): LabPod {
      const p = pods.find((x) => `${x.namespace}/${x.name}` === key);
      if (!p) throw new Error(`no lab pod ${key}`);
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
    await must(["ip", "netns", "add", nodeNetns]);
    const node = (cmd: string[]) => must(["ip", "-n", nodeNetns, ...cmd]);
    await node(["link", "set", "lo", "up"]);
    await node(["addr", "add", `${nodeIP}/32`, "dev", "lo"]);
    // sysctls run inside the node netns: /proc/sys/net shows the netns of the reading process.
    const sysctls = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"];
    if (nodeIP6) {
      await node(["addr", "add", `${nodeIP6}/128`, "dev", "lo"]);
      sysctls.push("net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.accept_dad=0");
    }
    await must(inNetns(nodeNetns, ["sysctl", "-q", "-w", ...sysctls]));
    // Pods are independent of each other: build them in parallel.
    await Promise.all(pods.map(async (p) => {
      const pod = (cmd: string[]) => must(["ip", "-n", p.netns, ...cmd]);
      await must(["ip", "netns", "add", p.netns]);
      await node([
        "link",
        "add",
        p.hostIf,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        p.netns,
      ]);
      await pod(["link", "set", "lo", "up"]);
      await pod(["addr", "add", `${p.ip}/32`, "dev", "eth0"]);
      if (p.ip6) {
        await must(inNetns(p.netns, ["sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_dad=0"]));
        await pod(["addr", "add", `${p.ip6}/128`, "dev", "eth0", "nodad"]);
      }
      await pod(["link", "set", "eth0", "up"]);
      // The node IP is not on the veth; `onlink` lets the pod ARP for it there (the node answers
      // ARP for any of its local addresses), as CNIs with a /32 per pod do.
      await pod(["route", "add", "default", "via", nodeIP, "dev", "eth0", "onlink"]);
      await node(["link", "set", p.hostIf, "up"]);
      await node(["route", "add", `${p.ip}/32`, "dev", p.hostIf, "src", nodeIP]);
      if (p.ip6 && nodeIP6) {
        await node(["addr", "add", `${GATEWAY6}/64`, "dev", p.hostIf, "nodad"]);
        await node(["-6", "route", "add", `${p.ip6}/128`, "dev", p.hostIf, "src", nodeIP6]);
        await pod(["-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0"]);
      }
    }));
  } catch (e) {
    await lab.destroy().catch(() => {});
    throw e;
  }
  return lab;
}
