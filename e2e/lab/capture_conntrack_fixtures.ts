/**
 * Regenerates tests/fixtures/conntrack/*.json: real ctnetlink datagrams for the conntrack codec's
 * tests (tests/conntrack_codec_test.ts). Root only.
 *
 * Makes a throwaway netns (knpctfix), creates known conntrack entries in it with `conntrack -I`
 * (no packet is sent anywhere), then runs itself inside that netns (`--inside`) to send our own
 * encoded requests over a netlink socket and record what the kernel answered, byte for byte.
 * The root namespace's conntrack table is never read or changed.
 *
 *   deno run --frozen -A e2e/lab/capture_conntrack_fixtures.ts [output-dir]
 */
import { NETLINK_NETFILTER, NetlinkSocket } from "../../ffi/netlink_socket.ts";
import {
  type ConntrackEntry,
  decodeConntrackMessages,
  type DumpSide,
  encodeDumpRequest,
  encodeMarkUpdate,
} from "../../src/netlink/conntrack.ts";

const NETNS = "knpctfix";
const SELF = new URL(import.meta.url).pathname;
const source = `captured by recv() on a NETLINK_NETFILTER socket in a throwaway netns holding ` +
  `entries made with conntrack -I (kernel ${Deno.osRelease()}); see ` +
  `e2e/lab/capture_conntrack_fixtures.ts`;

const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");

async function sh(cmd: string[]): Promise<void> {
  const r = await new Deno.Command(cmd[0]!, { args: cmd.slice(1), stderr: "piped" }).output();
  if (!r.success) throw new Error(`${cmd.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

const ENTRIES = [
  // IPv4: TCP with a mark of another component, the same address as reply source, UDP, ICMP.
  "-s 10.0.0.1 -d 10.0.0.2 -p tcp --sport 1234 --dport 80 --state ESTABLISHED -u SEEN_REPLY -m 5",
  "-s 10.0.0.3 -d 10.0.0.1 -p tcp --sport 1111 --dport 22 --state ESTABLISHED -u SEEN_REPLY",
  "-s 10.0.0.4 -d 10.0.0.5 -p udp --sport 53 --dport 53",
  "-s 10.0.0.1 -d 10.0.0.9 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 77",
  // IPv6: UDP in zone 3, UDP towards the address, ICMPv6 echo.
  "-s fd00::1 -d fd00::2 -p udp --sport 4000 --dport 81 -w 3",
  "-s fd00::3 -d fd00::1 -p udp --sport 4001 --dport 82",
  "-s fd00::1 -d fd00::7 -p icmpv6 --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 9",
];

async function outside(outDir: string): Promise<void> {
  await sh(["ip", "netns", "add", NETNS]);
  try {
    for (const e of ENTRIES) {
      await sh(["ip", "netns", "exec", NETNS, "conntrack", "-I", ...e.split(" "), "-t", "300"]);
    }
    await sh([
      "ip",
      "netns",
      "exec",
      NETNS,
      Deno.execPath(),
      "run",
      "--no-config",
      "--allow-ffi",
      "--allow-read",
      "--allow-write",
      "--allow-sys=osRelease",
      SELF,
      "--inside",
      outDir,
    ]);
  } finally {
    await sh(["ip", "netns", "del", NETNS]).catch(() => {});
  }
}

/** Sends `request`, returns every datagram until one ends the exchange. */
function exchange(sock: NetlinkSocket, request: Uint8Array, replies: number): Uint8Array[] {
  sock.send(request);
  const out: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  let finished = 0;
  while (finished < replies) {
    const n = sock.recv(buf);
    if (n === 0) throw new Error("no answer");
    out.push(buf.slice(0, n));
    decodeConntrackMessages(buf, n, {
      entry() {},
      ack: () => finished++,
      done: () => finished++,
      malformed: (r) => {
        throw new Error(r);
      },
    });
  }
  return out;
}

function entriesOf(datagrams: Uint8Array[]): ConntrackEntry[] {
  const entries: ConntrackEntry[] = [];
  for (const d of datagrams) {
    decodeConntrackMessages(d, d.length, {
      entry: (e) => entries.push(e),
      ack() {},
      done() {},
      malformed() {},
    });
  }
  return entries;
}

async function inside(outDir: string): Promise<void> {
  const sock = NetlinkSocket.open(NETLINK_NETFILTER);
  const write = (name: string, data: Record<string, unknown>) =>
    Deno.writeTextFile(`${outDir}/${name}`, JSON.stringify({ source, ...data }, null, 2) + "\n");
  const dump = async (
    name: string,
    description: string,
    family: 4 | 6,
    filter?: { ip: string; side: DumpSide },
  ) => {
    const request = encodeDumpRequest(1, family, filter);
    const replies = exchange(sock, request, 1);
    await write(name, {
      description,
      request: hex(request),
      replies: replies.map(hex),
    });
    return entriesOf(replies);
  };
  const v4 = await dump(
    "dump-v4-orig-src.json",
    "dump filtered on original source 10.0.0.1: the TCP entry (mark 5) and the ICMP echo",
    4,
    { ip: "10.0.0.1", side: "orig-src" },
  );
  await dump(
    "dump-v4-reply-src.json",
    "dump filtered on reply source 10.0.0.1: the TCP entry 10.0.0.3 -> 10.0.0.1:22",
    4,
    { ip: "10.0.0.1", side: "reply-src" },
  );
  await dump(
    "dump-v6.json",
    "dump of the IPv6 family (no address filter): UDP fd00::1 -> fd00::2 in zone 3, UDP " +
      "fd00::3 -> fd00::1, an ICMPv6 echo from fd00::1",
    6,
  );
  await dump(
    "dump-v6-filter-inverted.json",
    "dump filtered on original source fd00::1, which the kernel answers with the one entry " +
      "whose original source is NOT fd00::1 (fd00::3 -> fd00::1): its IPv6 filter is inverted " +
      "(ctnetlink_filter_match_tuple, `!ipv6_addr_cmp`), which is why strict mode does not use it",
    6,
    { ip: "fd00::1", side: "orig-src" },
  );
  const tcp = v4.find((e) => e.orig.protocolNumber === 6)!;
  const set = encodeMarkUpdate(2, tcp, 0x400000, 0x400000);
  const setReply = exchange(sock, set, 1);
  const gone = { ...tcp, origAttr: tcp.origAttr.slice() };
  const at = gone.origAttr.length - 3; // the low byte of the destination port
  gone.origAttr[at] = gone.origAttr[at]! ^ 1; // another port: no such entry
  const missing = encodeMarkUpdate(3, gone, 0x400000, 0x400000);
  const missingReply = exchange(sock, missing, 1);
  const after = exchange(sock, encodeDumpRequest(4, 4, { ip: "10.0.0.1", side: "orig-src" }), 1);
  await write("mark-update.json", {
    description: "cut bit 0x400000 set on the TCP entry (mark 5 -> 0x400005), acked; then an " +
      "update of an entry that does not exist (ENOENT); then the dump showing the new mark",
    request: hex(set),
    reply: hex(setReply[0]!),
    missingRequest: hex(missing),
    missingReply: hex(missingReply[0]!),
    dumpAfter: after.map(hex),
  });
  sock.close();
}

if (Deno.args[0] === "--inside") await inside(Deno.args[1]!);
else {
  const out = Deno.args[0] ?? new URL("../../tests/fixtures/conntrack", import.meta.url).pathname;
  await Deno.mkdir(out, { recursive: true });
  await outside(out);
}
