/**
 * A child process for tests/server_test.ts: the agent's HTTP server with connection caps far above
 * the process's file-descriptor limit (the test starts it under `prlimit --nofile`), so accepts
 * fail with EMFILE. Prints the port, serves until stdin closes, then exits 0.
 *
 * Like the agent (run.ts), it registers its signal listener before serving: Deno sets up its
 * signal machinery on the first registration, needs descriptors for it, and panics when there
 * are none, so that must happen before any client can use them all up.
 */
import { AgentMetrics } from "../src/metrics.ts";
import { nullLogger } from "../src/log.ts";
import { startServer } from "../src/server.ts";

const onTerm = () => Deno.exit(0);
Deno.addSignalListener("SIGTERM", onTerm);
const srv = startServer(
  {
    address: "127.0.0.1:0",
    limits: {
      maxConnections: 1000,
      maxConnectionsPerPeer: 1000,
      nodeConnections: 1000,
      headerTimeoutMs: 60_000,
    },
  },
  new AgentMetrics(),
  {
    live: () => ({ ok: true, detail: "" }),
    ready: () => ({ ok: true, detail: "" }),
    debugPolicies: () => ({}),
  },
  nullLogger,
);
console.log(srv.port);
for await (const _ of Deno.stdin.readable) { /* until the parent closes stdin */ }
await srv.close();
Deno.removeSignalListener("SIGTERM", onTerm);
