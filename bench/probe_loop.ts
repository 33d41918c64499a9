/**
 * Runs inside a client pod's network namespace: opens a new TCP connection to HOST:PORT every
 * INTERVAL ms for at most DURATION ms and prints one line per attempt, "<epoch ms> <ok|refused|
 * timeout>", so the driver can see when a policy change took effect on real packets.
 *   deno run --allow-net probe_loop.ts HOST PORT INTERVAL_MS DURATION_MS
 */
const [host, portText, intervalText, durationText] = Deno.args;
const port = Number(portText);
const interval = Number(intervalText);
const until = Date.now() + Number(durationText);
const enc = new TextEncoder();

async function attempt(): Promise<string> {
  const timeout = new Promise<string>((r) => setTimeout(() => r("timeout"), 250));
  const connect = Deno.connect({ hostname: host!, port }).then(
    (c) => {
      c.close();
      return "ok";
    },
    () => "refused",
  );
  return await Promise.race([connect, timeout]);
}

while (Date.now() < until) {
  const started = Date.now();
  const outcome = await attempt();
  Deno.stdout.writeSync(enc.encode(`${started} ${outcome}\n`));
  const wait = interval - (Date.now() - started);
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}
