/**
 * Test-side handle on vl_agent.ts running in a lab netns, plus the minimal queue rules the
 * verdict-loop lab and bench install in the node netns (the product's own rules live in
 * src/rules/; these are the smallest set honouring the same mark contract).
 */
import type { Lab } from "./topology.ts";
import type { StateEvent } from "../../src/state/events.ts";
import type { VerdictRecord } from "../../src/verdict/verdict_loop.ts";
import { ffiPaths } from "../../ffi/library.ts";
import { AGENT_RUNTIME_FLAGS } from "../../src/cli/permissions.ts";
import type { WorkerCacheOptions } from "../../src/verdict/verdict_protocol.ts";
import type { CommandRunner } from "../../src/rules/command.ts";
import { denoCommandRunner } from "../../src/rules/command.ts";
import { IptablesBackend, type IptablesFlavour } from "../../src/rules/iptables.ts";
import type { RuleOptions } from "../../src/rules/backend.ts";
import { cacheTargetFor } from "../../src/rules/verdict_cache_rules.ts";

const VL_AGENT = new URL("./vl_agent.ts", import.meta.url).pathname;
const REPO_ROOT = new URL("../../", import.meta.url).pathname;

/**
 * What the verdict loop runs with: the agent's FFI grant (which VerdictLoop.start hands to its
 * Worker and revokes from the main thread) and reading the Worker's modules; nothing else.
 */
export const VERDICT_LOOP_PERMISSIONS = [
  ...AGENT_RUNTIME_FLAGS,
  `--allow-ffi=${ffiPaths().join(",")}`,
  `--allow-read=${REPO_ROOT}src,${REPO_ROOT}ffi`,
];

export interface QueueRuleOptions {
  queueId: number;
  denyMark: number;
  /** iptables chain to hook (FORWARD for pod to pod through the node). */
  chain?: string;
  bypass?: boolean;
  /** Also install for IPv6. */
  ipv6?: boolean;
  /** Only queue packets to this destination (default: every new connection). */
  dst?: string;
  /** Spread flows over this many consecutive queues from queueId (--queue-balance). */
  queues?: number;
}

/** Reject marked packets first, then queue new unmarked connections (see marks.ts). */
export async function installQueueRules(lab: Lab, o: QueueRuleOptions): Promise<void> {
  const chain = o.chain ?? "FORWARD";
  const m = `0x${o.denyMark.toString(16)}/0x${o.denyMark.toString(16)}`;
  for (
    const [bin, unreach] of [["iptables", "icmp-port-unreachable"], [
      "ip6tables",
      "icmp6-port-unreachable",
    ]] as const
  ) {
    if (bin === "ip6tables" && !o.ipv6) continue;
    const rules = [
      ["-p", "tcp", "-m", "mark", "--mark", m, "-j", "REJECT", "--reject-with", "tcp-reset"],
      ["-p", "udp", "-m", "mark", "--mark", m, "-j", "REJECT", "--reject-with", unreach],
      ["-m", "mark", "--mark", m, "-j", "DROP"],
      [
        ...(o.dst && bin === "iptables" ? ["-d", o.dst] : []),
        ...["-m", "conntrack", "--ctstate", "NEW", "-m", "mark", "!", "--mark", m],
        ...["-j", "NFQUEUE"],
        ...((o.queues ?? 1) > 1
          ? ["--queue-balance", `${o.queueId}:${o.queueId + o.queues! - 1}`]
          : ["--queue-num", String(o.queueId)]),
        ...(o.bypass ? ["--queue-bypass"] : []),
      ],
    ];
    for (const r of rules) {
      const res = await lab.exec(lab.nodeNetns, [bin, "-w", "5", "-A", chain, ...r]);
      if (res.code !== 0) throw new Error(`${bin} ${r.join(" ")}: ${res.stderr}`);
    }
  }
}

export async function flushQueueRules(lab: Lab, chain = "FORWARD"): Promise<void> {
  for (const bin of ["iptables", "ip6tables"]) {
    await lab.exec(lab.nodeNetns, [bin, "-w", "5", "-F", chain]);
  }
}

// deno-lint-ignore no-explicit-any
type Line = Record<string, any>;

export class VlAgent {
  readonly records: VerdictRecord[] = [];
  private lines: Line[] = [];
  private waiters: (() => void)[] = [];
  private readonly writer: WritableStreamDefaultWriter<Uint8Array>;
  private readonly done: Promise<void>;

  private constructor(private readonly child: Deno.ChildProcess) {
    this.writer = child.stdin.getWriter();
    this.done = this.read();
  }

  /** Starts the agent in the node netns; resolves once its queue is bound. */
  static async start(
    lab: Lab,
    opts: {
      queueId: number;
      nodeName: string;
      denyMark: number;
      failOpen: boolean;
      maxBatch?: number;
      logAllows?: boolean;
      /** Bytes of each packet the queue copies (default: the whole packet). */
      copyRange?: number;
      /** The kernel verdict cache (the product's rules must be installed: productRules). */
      verdictCache?: WorkerCacheOptions;
    },
  ): Promise<VlAgent> {
    const child = lab.spawn(lab.nodeNetns, [
      Deno.execPath(),
      "run",
      "--frozen",
      ...VERDICT_LOOP_PERMISSIONS,
      VL_AGENT,
      String(opts.queueId),
      opts.nodeName,
      String(opts.denyMark),
      opts.failOpen ? "1" : "0",
      String(opts.maxBatch ?? 64),
      opts.logAllows === false ? "0" : "1",
      String(opts.copyRange ?? 0),
      JSON.stringify({
        ...(opts.verdictCache ? { verdictCache: opts.verdictCache } : {}),
      }),
    ], { stdin: "piped", stdout: "piped", stderr: "inherit" });
    const agent = new VlAgent(child);
    const first = await agent.next((l) => "ready" in l || "error" in l, 30_000);
    if (first.error) throw new Error(`vl_agent: ${first.error}`);
    return agent;
  }

  private async read(): Promise<void> {
    let buf = "";
    for await (const chunk of this.child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = JSON.parse(buf.slice(0, nl)) as Line;
        buf = buf.slice(nl + 1);
        if (line.record) this.records.push(line.record);
        else this.lines.push(line);
        for (const w of this.waiters.splice(0)) w();
      }
    }
    for (const w of this.waiters.splice(0)) w();
  }

  /** The first unread line matching `pred` (consumed), waiting up to `timeoutMs`. */
  async next(pred: (l: Line) => boolean, timeoutMs = 10_000): Promise<Line> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const i = this.lines.findIndex(pred);
      if (i >= 0) return this.lines.splice(i, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`vl_agent: no expected line within ${timeoutMs} ms`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((r) => this.waiters.push(r)),
        new Promise<void>((r) => timer = setTimeout(r, Math.min(left, 1000))),
      ]);
      clearTimeout(timer);
    }
  }

  private async send(cmd: unknown): Promise<void> {
    await this.writer.write(new TextEncoder().encode(JSON.stringify(cmd) + "\n"));
  }

  /**
   * Posts state events. With `current`, resolves only once the worker applied them and emptied
   * the verdict cache after them (the moment the change is in force in the kernel too).
   */
  async apply(events: StateEvent[], opts: { current?: boolean } = {}): Promise<void> {
    await this.send({ events, ...(opts.current ? { current: true } : {}) });
    await this.next((l) => "applied" in l);
  }

  async markSynced(): Promise<void> {
    await this.send({ synced: true });
    await this.next((l) => "synced" in l);
  }

  async metrics(): Promise<{ text: string; heartbeat: number }> {
    await this.send({ metrics: true });
    const l = await this.next((x) => "metrics" in x);
    return { text: l.metrics as string, heartbeat: l.heartbeat as number };
  }

  /** Graceful stop (unbinds the queue); kills the process if that takes too long. */
  async stop(): Promise<void> {
    try {
      await this.send({ stop: true });
      await this.next((l) => "stopped" in l, 5_000);
    } catch {
      try {
        this.child.kill("SIGKILL");
      } catch { /* exited */ }
    }
    await this.writer.close().catch(() => {});
    await this.child.status;
    await this.done.catch(() => {});
  }
}

/** Runs the rule backends' tools inside `netns` (as the agent does inside its node). */
export function netnsRunner(netns: string): CommandRunner {
  return {
    run: (cmd, args, stdin) =>
      denoCommandRunner.run("ip", ["netns", "exec", netns, cmd, ...args], stdin),
  };
}

/**
 * The product's iptables rules (src/rules/iptables.ts, with ipsets) in the lab's node netns,
 * queueing new connections to `ingress` pod IPs; returns the backend (install() again re-hooks
 * it after flushQueueRules) and, with a verdict cache, what the worker needs to know about it.
 */
export async function productRules(
  lab: Lab,
  opts: RuleOptions & { flavour?: IptablesFlavour; ingress: string[]; egress?: string[] },
): Promise<{ backend: IptablesBackend; cache?: WorkerCacheOptions }> {
  const { flavour = "nft", ingress, egress = [], ...ruleOpts } = opts;
  const backend = new IptablesBackend(flavour, ruleOpts, netnsRunner(lab.nodeNetns));
  await backend.install();
  await backend.sync({ ingress, egress });
  const c = ruleOpts.verdictCache;
  return {
    backend,
    ...(c
      ? {
        cache: {
          mark: c.mark,
          denies: c.denies,
          target: cacheTargetFor(`iptables-${flavour}`, c),
        },
      }
      : {}),
  };
}
