/**
 * The workload of one lab pod: runs INSIDE the pod's netns and serves every given port over TCP
 * and UDP. Each answer is the pod's "namespace/name", so a probe can tell which pod it reached
 * (a misrouted packet would otherwise look like an allowed one).
 *
 *   deno run --no-config --allow-net pod_server.ts <namespace/name> <port,port,...> [--ipv6]
 *
 * Prints one line `{"ready":true}` on stdout once every socket is bound; runs until killed.
 */
import dgram from "node:dgram";

const [name, portList, ...flags] = Deno.args;
if (!name || !portList) {
  console.error("usage: pod_server.ts <namespace/name> <port,...> [--ipv6]");
  Deno.exit(2);
}
const ports = portList.split(",").map(Number);
const ipv6 = flags.includes("--ipv6");
// With --ipv6 one dual-stack socket on "::" takes IPv4 too (net.ipv6.bindv6only is 0 in the lab).
const anyAddress = ipv6 ? "::" : "0.0.0.0";
const answer = new TextEncoder().encode(`${name}\n`);

async function serveTcp(port: number): Promise<void> {
  const listener = Deno.listen({ hostname: anyAddress, port });
  (async () => {
    for await (const conn of listener) {
      // Answer and close: a probe only needs the handshake and the pod's name.
      conn.write(answer).catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch { /* peer went first */ }
      });
    }
  })();
  await Promise.resolve();
}

function serveUdp(port: number): Promise<void> {
  const sock = dgram.createSocket({ type: ipv6 ? "udp6" : "udp4", ipv6Only: false });
  sock.on("message", (_msg, rinfo) => {
    sock.send(answer, rinfo.port, rinfo.address);
  });
  sock.on("error", (e) => console.error(`udp ${port}: ${e.message}`));
  return new Promise((resolve, reject) => {
    sock.once("error", reject);
    sock.bind(port, anyAddress, () => resolve());
  });
}

await Promise.all(ports.flatMap((p) => [serveTcp(p), serveUdp(p)]));
console.log(JSON.stringify({ ready: true }));
