/**
 * Runs INSIDE a client pod's netns: tries every target in parallel, once, and prints the results
 * as one JSON array on stdout. Each attempt is a NEW connection (fresh socket, fresh source port),
 * which is what NetworkPolicy governs.
 *
 *   deno run --no-config --allow-net probe_client.ts '<json ProbeTarget[]>' [timeoutMs]
 *
 * Outcomes: "connected" (TCP handshake done / UDP answer received), "refused" (TCP RST or ICMP
 * unreachable), "timeout" (nothing within the timeout: dropped), "error" (anything else).
 */
import dgram from "node:dgram";

export interface ProbeTarget {
  ip: string;
  protocol: "TCP" | "UDP";
  port: number;
}

export type ProbeOutcome = "connected" | "refused" | "timeout" | "error";

export interface ProbeResult extends ProbeTarget {
  outcome: ProbeOutcome;
  /** Time from the attempt's start to its outcome. */
  ms: number;
  /** The "namespace/name" the server answered with, when it answered. */
  server?: string;
  error?: string;
}

function timeout<T>(ms: number, value: T): { promise: Promise<T>; cancel: () => void } {
  let id: ReturnType<typeof setTimeout> | undefined;
  const promise = new Promise<T>((r) => {
    id = setTimeout(() => r(value), ms);
  });
  return { promise, cancel: () => clearTimeout(id) };
}

async function probeTcp(t: ProbeTarget, timeoutMs: number): Promise<Omit<ProbeResult, "ms">> {
  const deadline = timeout(timeoutMs, "timeout" as const);
  try {
    const conn = await Promise.race([
      Deno.connect({ hostname: t.ip, port: t.port }),
      deadline.promise,
    ]);
    if (conn === "timeout") return { ...t, outcome: "timeout" };
    // Connected. The server's greeting names it; a short wait for it is enough (same host).
    const buf = new Uint8Array(256);
    const n = await Promise.race([conn.read(buf).catch(() => null), deadline.promise]);
    try {
      conn.close();
    } catch { /* closed by peer */ }
    const server = typeof n === "number"
      ? new TextDecoder().decode(buf.subarray(0, n)).trim()
      : undefined;
    return { ...t, outcome: "connected", ...(server ? { server } : {}) };
  } catch (e) {
    if (e instanceof Deno.errors.ConnectionRefused) return { ...t, outcome: "refused" };
    return { ...t, outcome: "error", error: (e as Error).message };
  } finally {
    deadline.cancel();
  }
}

function probeUdp(t: ProbeTarget, timeoutMs: number): Promise<Omit<ProbeResult, "ms">> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket(t.ip.includes(":") ? "udp6" : "udp4");
    let done = false;
    const finish = (r: Omit<ProbeResult, "ms">) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try {
        sock.close();
      } catch { /* closed */ }
      resolve(r);
    };
    const timer = setTimeout(() => finish({ ...t, outcome: "timeout" }), timeoutMs);
    sock.on("message", (msg) => {
      finish({ ...t, outcome: "connected", server: new TextDecoder().decode(msg).trim() });
    });
    sock.on("error", (e: Error & { code?: string }) => {
      // A connected UDP socket reports an ICMP port/host unreachable as ECONNREFUSED.
      if (e.code === "ECONNREFUSED") finish({ ...t, outcome: "refused" });
      else finish({ ...t, outcome: "error", error: e.message });
    });
    sock.connect(t.port, t.ip, () => sock.send("probe\n"));
  });
}

export async function probeAll(targets: ProbeTarget[], timeoutMs: number): Promise<ProbeResult[]> {
  return await Promise.all(targets.map(async (t) => {
    const start = performance.now();
    const r = t.protocol === "TCP" ? await probeTcp(t, timeoutMs) : await probeUdp(t, timeoutMs);
    return { ...r, ms: Math.round((performance.now() - start) * 10) / 10 };
  }));
}

if (import.meta.main) {
  const [json, ms] = Deno.args;
  if (!json) {
    console.error("usage: probe_client.ts '<json targets>' [timeoutMs]");
    Deno.exit(2);
  }
  const results = await probeAll(JSON.parse(json) as ProbeTarget[], Number(ms ?? 1500));
  console.log(JSON.stringify(results));
  // Pending kernel-level connects (SYN retries) must not keep the process alive.
  Deno.exit(0);
}
