/**
 * Runs inside a lab netns for cache_flush_test.ts: empties the sets named on the command line
 * exactly as the verdict Worker does (CacheFlusher over its own NETLINK_NETFILTER socket) and
 * prints the result as one JSON line.
 *
 *   cache_flush_probe.ts '<FlushTarget as JSON>'
 */
import { NETLINK_NETFILTER, NetlinkSocket } from "../../ffi/netlink_socket.ts";
import { CacheFlusher } from "../../src/verdict/verdict_cache.ts";

const socket = NetlinkSocket.open(NETLINK_NETFILTER, { recvTimeoutMs: 50 });
try {
  console.log(JSON.stringify(new CacheFlusher(JSON.parse(Deno.args[0]!), socket).flush()));
} finally {
  socket.close();
}
