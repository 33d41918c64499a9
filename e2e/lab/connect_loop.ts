/**
 * Runs INSIDE a pod's netns: opens a new TCP connection to every target every `everyMs` for
 * `forMs` (at least one round), each attempt bounded by `timeoutMs`, and reports every outcome
 * with when it started and how long it took. Prints `{"started":true}` as soon as the first
 * round is under way (the test times its next step from that line), then one JSON array.
 *
 *   deno run --no-config --allow-net connect_loop.ts '<json LoopSpec>'
 */

export interface LoopSpec {
  targets: { ip: string; port: number }[];
  everyMs: number;
  forMs: number;
  timeoutMs: number;
}

export interface LoopAttempt {
  /** Index of the target. */
  i: number;
  /** Milliseconds from the loop's start to this attempt's start. */
  at: number;
  /** Milliseconds from the attempt's start to its outcome. */
  ms: number;
  outcome: "connected" | "refused" | "timeout" | "error";
  error?: string;
}

async function attempt(
  t: { ip: string; port: number },
  timeoutMs: number,
): Promise<Omit<LoopAttempt, "i" | "at" | "ms">> {
  try {
    const conn = await Deno.connect({
      hostname: t.ip,
      port: t.port,
      signal: AbortSignal.timeout(timeoutMs),
    });
    conn.close();
    return { outcome: "connected" };
  } catch (e) {
    if (e instanceof Deno.errors.ConnectionRefused) return { outcome: "refused" };
    const name = (e as Error).name;
    if (name === "TimeoutError" || name === "AbortError") return { outcome: "timeout" };
    return { outcome: "error", error: `${name}: ${(e as Error).message}` };
  }
}

if (import.meta.main) {
  const spec = JSON.parse(Deno.args[0] ?? "{}") as LoopSpec;
  const start = performance.now();
  const pending: Promise<LoopAttempt>[] = [];
  const round = () => {
    const at = performance.now() - start;
    spec.targets.forEach((t, i) => {
      pending.push(
        attempt(t, spec.timeoutMs).then((r) => ({
          i,
          at: Math.round(at),
          ms: Math.round(performance.now() - start - at),
          ...r,
        })),
      );
    });
  };
  round();
  console.log(JSON.stringify({ started: true }));
  while (performance.now() - start + spec.everyMs < spec.forMs) {
    await new Promise((r) => setTimeout(r, spec.everyMs));
    round();
  }
  console.log(JSON.stringify(await Promise.all(pending)));
}
