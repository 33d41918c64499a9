/**
 * Cost of parsing the first packet of a connection, as the verdict loop does once per queued
 * packet. Inputs are the captured TCP SYNs (the common case) and an IPv6 SYN behind a destination
 * options header (the extension header walk).
 * Run: deno bench --frozen bench/packet_parse_bench.ts
 */
import { parsePacket } from "../src/packet/parse.ts";
import { canonicalIP } from "../src/net/ip.ts";
import tcp4Syn from "../tests/fixtures/packets/tcp4-syn.json" with { type: "json" };
import tcp6Syn from "../tests/fixtures/packets/tcp6-syn.json" with { type: "json" };
import tcp6DstoptsSyn from "../tests/fixtures/packets/tcp6-dstopts-syn.json" with { type: "json" };

/** The capture fixtures are hex text (see tests/fixtures/packets/). */
function fromHex(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
}

const v4 = fromHex(tcp4Syn.hex);
const v6 = fromHex(tcp6Syn.hex);
const v6Ext = fromHex(tcp6DstoptsSyn.hex);

// A sink the optimizer cannot see through, so the parse is not eliminated as dead code.
let sink = 0;
function consume(r: ReturnType<typeof parsePacket>) {
  if (r.ok) sink += r.packet.dstPort + r.packet.src.length;
}

Deno.bench(
  "parse TCP SYN, IPv4",
  { group: "parse", baseline: true },
  () => consume(parsePacket(v4)),
);
Deno.bench("parse TCP SYN, IPv6", { group: "parse" }, () => consume(parsePacket(v6)));
Deno.bench(
  "parse TCP SYN, IPv6 + dest options",
  { group: "parse" },
  () => consume(parsePacket(v6Ext)),
);
Deno.bench("canonicalIP, IPv6 text", { group: "text" }, () => {
  sink += canonicalIP("fd00:10:244:1::a")?.length ?? 0;
});

addEventListener("unload", () => {
  if (sink === 42) console.log(sink);
});
