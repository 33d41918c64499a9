/**
 * Starts the lab workloads: one small Deno process per pod netns serving TCP and UDP on every
 * port (see pod_server.ts), and on request one per node netns (a hostNetwork server on the node's
 * address, answering with the node's name). SCTP is detected and reported as unsupported rather
 * than faked.
 */
import type { Lab, LabPod } from "./topology.ts";

export const LAB_PORTS = [80, 81] as const;

const POD_SERVER = new URL("./pod_server.ts", import.meta.url).pathname;

export interface SctpSupport {
  supported: boolean;
  reason: string;
}

/**
 * Whether SCTP probes can run here: never, because Deno has no SCTP sockets (and this machine's
 * kernel has no SCTP either), so the lab reports SCTP columns as skipped with this reason.
 */
export function sctpSupport(): SctpSupport {
  return { supported: false, reason: "the lab servers (Deno) cannot open SCTP sockets" };
}

export interface LabServers {
  ports: number[];
  /** Kill the servers (lab.destroy() does it too). */
  stop(): Promise<void>;
}

async function waitReady(child: Deno.ChildProcess, who: string, timeoutMs: number): Promise<void> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const deadline = Date.now() + timeoutMs;
  try {
    while (!buf.includes('"ready":true')) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`server in ${who} not ready after ${timeoutMs} ms`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const chunk = await Promise.race([
        reader.read(),
        new Promise<"late">((r) => timer = setTimeout(() => r("late"), left)),
      ]);
      clearTimeout(timer);
      if (chunk === "late") continue;
      if (chunk.done) throw new Error(`server in ${who} exited before it was ready`);
      buf += chunk.value;
    }
  } finally {
    // Keep draining stdout so the server never blocks on a full pipe.
    reader.releaseLock();
    child.stdout.pipeTo(new WritableStream()).catch(() => {});
  }
}

/**
 * Start a server in every pod (or in `pods`, e.g. one added late) and return once all of them have
 * bound all their sockets.
 */
export function startServers(
  lab: Lab,
  opts: { ports?: readonly number[]; timeoutMs?: number; pods?: LabPod[] } = {},
): Promise<LabServers> {
  const pods = opts.pods ?? lab.pods;
  const ipv6 = pods.some((p) => p.ip6);
  return startIn(
    lab,
    pods.map((p) => ({ netns: p.netns, name: `${p.namespace}/${p.name}`, ipv6 })),
    opts,
  );
}

/**
 * A hostNetwork server in every node netns (or in `nodes`), answering with the node's name on the
 * node's addresses: what a pod reaches when it connects to its node, or to another node. Killed
 * with the lab (or `stop()`).
 */
export function startNodeServers(
  lab: Lab,
  opts: { ports?: readonly number[]; timeoutMs?: number; nodes?: string[] } = {},
): Promise<LabServers> {
  const nodes = lab.nodes.filter((n) => !opts.nodes || opts.nodes.includes(n.name));
  return startIn(lab, nodes.map((n) => ({ netns: n.netns, name: n.name, ipv6: !!n.ip6 })), opts);
}

/** One pod_server.ts per place, answering with its name; all killed again if one fails to start. */
async function startIn(
  lab: Lab,
  places: { netns: string; name: string; ipv6: boolean }[],
  opts: { ports?: readonly number[]; timeoutMs?: number },
): Promise<LabServers> {
  const ports = [...(opts.ports ?? LAB_PORTS)];
  const children = places.map((pl) =>
    lab.spawn(pl.netns, [
      Deno.execPath(),
      "run",
      "--no-config",
      "--allow-net",
      POD_SERVER,
      pl.name,
      ports.join(","),
      ...(pl.ipv6 ? ["--ipv6"] : []),
    ], { stdout: "piped", stderr: "inherit" })
  );
  const stop = async () => {
    for (const c of children) {
      try {
        c.kill("SIGKILL");
      } catch { /* exited */ }
    }
    await Promise.allSettled(children.map((c) => c.status));
  };
  try {
    await Promise.all(
      children.map((c, i) => waitReady(c, places[i]!.netns, opts.timeoutMs ?? 15_000)),
    );
  } catch (e) {
    await stop();
    throw e;
  }
  return { ports, stop };
}
