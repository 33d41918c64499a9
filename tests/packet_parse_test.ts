/**
 * The packet parser on real packets (captured by e2e/lab/capture_fixtures.sh; each fixture says
 * how it was made and how tcpdump read it) and on hand-built edge cases. Fixtures are imported as
 * JSON modules, so the test needs no permissions.
 */
import assert from "node:assert/strict";
import { type ParsedPacket, parsePacket, type ParseResult } from "../src/packet/parse.ts";
import { formatIPv4, formatIPv6 } from "../src/net/ip.ts";
import { canonicalIP } from "../src/net/ip.ts";
import {
  authHeader,
  fragmentHeader,
  fromHex,
  ipv4,
  ipv6,
  optionsHeader,
  PROTO,
  tcpSyn,
} from "./fixtures/packets/build.ts";

import ah6TcpSyn from "./fixtures/packets/ah6-tcp-syn.json" with { type: "json" };
import esp6 from "./fixtures/packets/esp6.json" with { type: "json" };
import gre4 from "./fixtures/packets/gre4.json" with { type: "json" };
import icmp4Echo from "./fixtures/packets/icmp4-echo.json" with { type: "json" };
import icmp6Echo from "./fixtures/packets/icmp6-echo.json" with { type: "json" };
import nonext6 from "./fixtures/packets/nonext6.json" with { type: "json" };
import sctp4Init from "./fixtures/packets/sctp4-init.json" with { type: "json" };
import sctp6Init from "./fixtures/packets/sctp6-init.json" with { type: "json" };
import tcp4Syn from "./fixtures/packets/tcp4-syn.json" with { type: "json" };
import tcp6DstoptsSyn from "./fixtures/packets/tcp6-dstopts-syn.json" with { type: "json" };
import tcp6Syn from "./fixtures/packets/tcp6-syn.json" with { type: "json" };
import udp4FragFirst from "./fixtures/packets/udp4-frag-first.json" with { type: "json" };
import udp4FragLast from "./fixtures/packets/udp4-frag-last.json" with { type: "json" };
import udp4FragMiddle from "./fixtures/packets/udp4-frag-middle.json" with { type: "json" };
import udp4Options from "./fixtures/packets/udp4-options.json" with { type: "json" };
import udp4 from "./fixtures/packets/udp4.json" with { type: "json" };
import udp6FragFirst from "./fixtures/packets/udp6-frag-first.json" with { type: "json" };
import udp6FragLast from "./fixtures/packets/udp6-frag-last.json" with { type: "json" };
import udp6FragMiddle from "./fixtures/packets/udp6-frag-middle.json" with { type: "json" };
import udp6Hopopts from "./fixtures/packets/udp6-hopopts.json" with { type: "json" };
import udp6 from "./fixtures/packets/udp6.json" with { type: "json" };

interface Fixture {
  name: string;
  producedBy: string;
  tcpdump: string;
  length: number;
  hex: string;
}

const A4 = "10.203.0.1", B4 = "10.203.0.2", A6 = "fd00:203::1", B6 = "fd00:203::2";

function v4(protocol: ParsedPacket["protocol"], protocolNumber: number, srcPort = 0, dstPort = 0) {
  return { family: 4, src: A4, dst: B4, protocol, protocolNumber, srcPort, dstPort } as const;
}
function v6(protocol: ParsedPacket["protocol"], protocolNumber: number, srcPort = 0, dstPort = 0) {
  return { family: 6, src: A6, dst: B6, protocol, protocolNumber, srcPort, dstPort } as const;
}

/** Expected readings; the ports agree with each fixture's "tcpdump" line. */
const CAPTURED: [Fixture, ParsedPacket | "fragment"][] = [
  [tcp4Syn, v4("TCP", 6, 50008, 8080)],
  [tcp6Syn, v6("TCP", 6, 57436, 8080)],
  [udp4, v4("UDP", 17, 47755, 5353)],
  [udp6, v6("UDP", 17, 34156, 5353)],
  [icmp4Echo, v4("ICMP", 1)],
  [icmp6Echo, v6("ICMPv6", 58)],
  [udp4Options, v4("UDP", 17, 52135, 5354)],
  [udp4FragFirst, v4("UDP", 17, 46798, 5355)],
  [udp4FragMiddle, "fragment"],
  [udp4FragLast, "fragment"],
  [udp6FragFirst, v6("UDP", 17, 50447, 5355)],
  [udp6FragMiddle, "fragment"],
  [udp6FragLast, "fragment"],
  [udp6Hopopts, v6("UDP", 17, 36678, 5356)],
  [tcp6DstoptsSyn, v6("TCP", 6, 45212, 8081)],
  [sctp4Init, v4("SCTP", 132, 40000, 9999)],
  [sctp6Init, v6("SCTP", 132, 40000, 9999)],
  [gre4, v4("OTHER", 47)],
  [esp6, v6("OTHER", 50)],
  [ah6TcpSyn, v6("TCP", 6, 40001, 443)],
  [nonext6, v6("OTHER", 59)],
];

function expectPacket(result: ParseResult, packet: ParsedPacket, what: string) {
  assert.deepEqual(result, { ok: true, packet }, what);
}
function expectFailure(result: ParseResult, reason: string, what: string) {
  assert.equal(result.ok, false, what);
  assert.equal(!result.ok && result.reason, reason, what);
}

Deno.test("captured packets: addresses, protocol and ports read exactly", () => {
  for (const [fixture, expected] of CAPTURED) {
    const bytes = fromHex(fixture.hex);
    assert.equal(bytes.length, fixture.length, fixture.name);
    const result = parsePacket(bytes);
    if (expected === "fragment") expectFailure(result, "fragment", fixture.name);
    else expectPacket(result, expected, `${fixture.name} (tcpdump: ${fixture.tcpdump})`);
  }
});

Deno.test("captured packets: the agent's 128-byte copy range reads the same as the whole packet", () => {
  for (const [fixture] of CAPTURED) {
    const bytes = fromHex(fixture.hex);
    assert.deepEqual(parsePacket(bytes.subarray(0, 128)), parsePacket(bytes), fixture.name);
  }
});

Deno.test("captured packets: a packet inside a larger buffer (subarray) parses the same", () => {
  for (const [fixture] of CAPTURED) {
    const bytes = fromHex(fixture.hex);
    const buffer = new Uint8Array(bytes.length + 64).fill(0xee);
    buffer.set(bytes, 37);
    assert.deepEqual(parsePacket(buffer.subarray(37, 37 + bytes.length)), parsePacket(bytes));
  }
});

Deno.test("captured packets cut before the L4 ports are truncated, cut after them are fine", () => {
  // Where the ports end in each captured packet that has ports (IP header + extension headers + 4).
  const portsEnd: [Fixture, number][] = [
    [tcp4Syn, 24],
    [tcp6Syn, 44],
    [udp4Options, 36], // IHL 8: 32-byte header
    [udp6Hopopts, 52], // 8-byte hop-by-hop
    [tcp6DstoptsSyn, 60], // 16-byte destination options
    [udp6FragFirst, 52], // 8-byte fragment header
    [ah6TcpSyn, 68], // 24-byte AH
    [sctp4Init, 24],
  ];
  for (const [fixture, end] of portsEnd) {
    const bytes = fromHex(fixture.hex);
    const whole = parsePacket(bytes);
    for (let len = 0; len < end; len++) {
      expectFailure(
        parsePacket(bytes.subarray(0, len)),
        "truncated",
        `${fixture.name} cut at ${len}`,
      );
    }
    for (let len = end; len <= bytes.length; len++) {
      assert.deepEqual(parsePacket(bytes.subarray(0, len)), whole, `${fixture.name} cut at ${len}`);
    }
  }
});

Deno.test("portless captured packets need only the IP header(s)", () => {
  for (const [fixture, end] of [[icmp4Echo, 20], [icmp6Echo, 40], [esp6, 40]] as const) {
    const bytes = fromHex(fixture.hex);
    expectFailure(parsePacket(bytes.subarray(0, end - 1)), "truncated", fixture.name);
    assert.deepEqual(parsePacket(bytes.subarray(0, end)), parsePacket(bytes), fixture.name);
  }
});

Deno.test("version: anything but 4 and 6 is bad-version; an empty buffer is truncated", () => {
  expectFailure(parsePacket(new Uint8Array(0)), "truncated", "empty");
  for (const version of [0, 1, 2, 3, 5, 7, 8, 15]) {
    const bytes = ipv4({ protocol: PROTO.TCP }, tcpSyn(1, 2));
    bytes[0] = (version << 4) | 5;
    expectFailure(parsePacket(bytes), "bad-version", `version ${version}`);
    expectFailure(parsePacket(bytes.subarray(0, 1)), "bad-version", `version ${version}, 1 byte`);
  }
});

Deno.test("IPv4: IHL below 5 and total length below the header are bad-header", () => {
  for (let ihl = 0; ihl < 5; ihl++) {
    const bytes = ipv4({ protocol: PROTO.TCP, ihl }, tcpSyn(1, 2));
    expectFailure(parsePacket(bytes), "bad-header", `IHL ${ihl}`);
  }
  expectFailure(
    parsePacket(ipv4({ protocol: PROTO.TCP, totalLength: 19 }, tcpSyn(1, 2))),
    "bad-header",
    "total 19",
  );
  const withOptions = ipv4(
    { protocol: PROTO.UDP, options: [1, 1, 1, 0], totalLength: 23 },
    tcpSyn(1, 2),
  );
  expectFailure(parsePacket(withOptions), "bad-header", "total length inside the options");
});

Deno.test("IPv4: ports past the packet's own total length are bad-header, not truncated", () => {
  const bytes = ipv4({ protocol: PROTO.TCP, totalLength: 22 }, tcpSyn(1, 2));
  expectFailure(parsePacket(bytes), "bad-header", "total length 22");
  // Bytes after the total length (link padding) are not read as ports.
  const padded = ipv4({ protocol: PROTO.UDP, totalLength: 24 }, [0, 53, 0, 80, 0xaa, 0xbb]);
  expectPacket(parsePacket(padded), v4pkt("UDP", 17, 53, 80), "padding after the packet");
});

function v4pkt(
  protocol: ParsedPacket["protocol"],
  protocolNumber: number,
  srcPort = 0,
  dstPort = 0,
) {
  return {
    family: 4,
    src: "10.0.0.1",
    dst: "10.0.0.2",
    protocol,
    protocolNumber,
    srcPort,
    dstPort,
  } as const;
}
function v6pkt(
  protocol: ParsedPacket["protocol"],
  protocolNumber: number,
  srcPort = 0,
  dstPort = 0,
) {
  return {
    family: 6,
    src: "2001:db8::1",
    dst: "2001:db8::2",
    protocol,
    protocolNumber,
    srcPort,
    dstPort,
  } as const;
}

Deno.test("IPv4: total length 0 (BIG TCP GSO) is read up to the captured bytes", () => {
  expectPacket(
    parsePacket(ipv4({ protocol: PROTO.TCP, totalLength: 0 }, tcpSyn(1000, 443))),
    v4pkt("TCP", 6, 1000, 443),
    "",
  );
});

Deno.test("IPv4: options of every length move the L4 header", () => {
  for (let words = 0; words <= 10; words++) {
    const options = new Array<number>(4 * words).fill(1); // NOPs
    const bytes = ipv4({ protocol: PROTO.TCP, options }, tcpSyn(4321, 22));
    expectPacket(parsePacket(bytes), v4pkt("TCP", 6, 4321, 22), `${words} option words`);
    expectFailure(
      parsePacket(bytes.subarray(0, 20 + 4 * words + 3)),
      "truncated",
      `${words} words, cut`,
    );
  }
});

Deno.test("IPv4 fragments: offset != 0 is a fragment; MF or DF with offset 0 still has ports", () => {
  expectFailure(
    parsePacket(ipv4({ protocol: PROTO.UDP, flagsFragment: 0x0001 }, tcpSyn(1, 2))),
    "fragment",
    "offset 1",
  );
  expectFailure(
    parsePacket(ipv4({ protocol: PROTO.UDP, flagsFragment: 0x3fff }, tcpSyn(1, 2))),
    "fragment",
    "MF, max offset",
  );
  // A fragment offset of 8 bytes would put "ports" inside the first fragment's UDP header.
  expectFailure(
    parsePacket(ipv4({ protocol: PROTO.TCP, flagsFragment: 0x2001 }, tcpSyn(1, 2))),
    "fragment",
    "MF, offset 1",
  );
  for (const flags of [0x0000, 0x2000, 0x4000, 0x8000]) {
    const bytes = ipv4({ protocol: PROTO.UDP, flagsFragment: flags }, tcpSyn(5000, 53));
    expectPacket(parsePacket(bytes), v4pkt("UDP", 17, 5000, 53), `flags ${flags.toString(16)}`);
  }
});

Deno.test("IPv4: transports without ports are ok with ports 0", () => {
  for (
    const [proto, name] of [[1, "ICMP"], [47, "OTHER"], [4, "OTHER"], [58, "ICMPv6"], [
      255,
      "OTHER",
    ]] as const
  ) {
    expectPacket(
      parsePacket(ipv4({ protocol: proto }, [])),
      v4pkt(name, proto),
      `protocol ${proto}`,
    );
  }
});

Deno.test("IPv6: a chain of every extension header kind is walked to the transport", () => {
  const chain = [
    ...optionsHeader(PROTO.DST, 1),
    ...optionsHeader(PROTO.ROUTING, 0),
    ...optionsHeader(PROTO.FRAGMENT, 2),
    ...fragmentHeader(PROTO.AH, 0, true),
    ...authHeader(PROTO.DST, 5),
    ...optionsHeader(PROTO.SCTP, 0),
    ...tcpSyn(2905, 38412),
  ];
  const bytes = ipv6(PROTO.HOP, chain);
  expectPacket(parsePacket(bytes), v6pkt("SCTP", 132, 2905, 38412), "chain");
  const portsEnd = bytes.length - 16;
  for (let len = 0; len < portsEnd; len++) {
    expectFailure(parsePacket(bytes.subarray(0, len)), "truncated", `cut at ${len}`);
  }
  expectPacket(
    parsePacket(bytes.subarray(0, portsEnd)),
    v6pkt("SCTP", 132, 2905, 38412),
    "cut after ports",
  );
});

Deno.test("IPv6 fragments: non-first is a fragment; first and atomic fragments have ports", () => {
  const frag = (offset: number, more: boolean) =>
    parsePacket(
      ipv6(PROTO.FRAGMENT, [...fragmentHeader(PROTO.UDP, offset, more), ...tcpSyn(7, 53)]),
    );
  expectFailure(frag(1, true), "fragment", "offset 1, more");
  expectFailure(frag(8191, false), "fragment", "last");
  expectPacket(frag(0, true), v6pkt("UDP", 17, 7, 53), "first");
  expectPacket(frag(0, false), v6pkt("UDP", 17, 7, 53), "atomic");
});

Deno.test("IPv6: ESP and no-next-header end the walk with protocol OTHER", () => {
  expectPacket(parsePacket(ipv6(PROTO.ESP, [0, 0, 1, 0])), v6pkt("OTHER", 50), "ESP");
  expectPacket(
    parsePacket(ipv6(PROTO.HOP, optionsHeader(PROTO.NONE))),
    v6pkt("OTHER", 59),
    "HBH then none",
  );
  expectPacket(parsePacket(ipv6(PROTO.GRE, [])), v6pkt("OTHER", 47), "GRE");
  expectPacket(parsePacket(ipv6(PROTO.ICMPV6, [])), v6pkt("ICMPv6", 58), "ICMPv6");
});

Deno.test("IPv6: extension headers past the payload length are bad-header", () => {
  const long = ipv6(PROTO.HOP, [...optionsHeader(PROTO.TCP, 2), ...tcpSyn(1, 2)], {
    payloadLength: 16,
  });
  expectFailure(parsePacket(long), "bad-header", "24-byte HBH in a 16-byte payload");
  const noPorts = ipv6(PROTO.TCP, tcpSyn(1, 2), { payloadLength: 3 });
  expectFailure(parsePacket(noPorts), "bad-header", "payload ends before the ports");
});

Deno.test("IPv6: chains of any length and large headers are walked to the transport, as the kernel does", () => {
  const chainOf = (n: number, units = 0) => {
    const rest: number[] = [];
    for (let i = 0; i < n; i++) {
      rest.push(...optionsHeader(i === n - 1 ? PROTO.TCP : PROTO.DST, units));
    }
    return ipv6(PROTO.DST, [...rest, ...tcpSyn(1, 2)]);
  };
  // Headers the kernel forwards and conntrack tracks as TCP: each one once made the agent fail
  // open, because the ports lay past its 128-byte copy.
  for (
    const [n, units, what] of [[16, 0, "16 headers"], [17, 0, "17 headers"], [1000, 0, "1000"]]
  ) {
    expectPacket(
      parsePacket(chainOf(n as number, units as number)),
      v6pkt("TCP", 6, 1, 2),
      `${what}`,
    );
  }
  expectPacket(parsePacket(chainOf(1, 31)), v6pkt("TCP", 6, 1, 2), "256-byte destination options");
  expectPacket(
    parsePacket(chainOf(1, 255)),
    v6pkt("TCP", 6, 1, 2),
    "2048-byte destination options",
  );
  const hbh88 = ipv6(PROTO.HOP, [...optionsHeader(PROTO.TCP, 10), ...tcpSyn(1, 2)]);
  expectPacket(parsePacket(hbh88), v6pkt("TCP", 6, 1, 2), "88-byte hop-by-hop");
  const rh0 = ipv6(PROTO.ROUTING, [...optionsHeader(PROTO.TCP, 2), ...tcpSyn(1, 2)]);
  expectPacket(parsePacket(rh0), v6pkt("TCP", 6, 1, 2), "routing header");
});

Deno.test("failures name the addresses once the fixed header was read", () => {
  const v6cut = ipv6(PROTO.DST, [...optionsHeader(PROTO.TCP, 31), ...tcpSyn(1, 2)]).subarray(
    0,
    128,
  );
  assert.deepEqual(parsePacket(v6cut), {
    ok: false,
    reason: "truncated",
    family: 6,
    src: "2001:db8::1",
    dst: "2001:db8::2",
  });
  const v6frag = ipv6(PROTO.FRAGMENT, [...fragmentHeader(PROTO.UDP, 3, false), 0, 0, 0, 0]);
  assert.deepEqual(parsePacket(v6frag), {
    ok: false,
    reason: "fragment",
    family: 6,
    src: "2001:db8::1",
    dst: "2001:db8::2",
  });
  const v4bad = ipv4({ protocol: PROTO.TCP, totalLength: 22 }, tcpSyn(1, 2));
  assert.deepEqual(parsePacket(v4bad), {
    ok: false,
    reason: "bad-header",
    family: 4,
    src: "10.0.0.1",
    dst: "10.0.0.2",
  });
  // Before the addresses there is nothing to name.
  assert.deepEqual(parsePacket(v4bad.subarray(0, 19)), { ok: false, reason: "truncated" });
  assert.deepEqual(parsePacket(new Uint8Array([0x50])), { ok: false, reason: "bad-version" });
});

Deno.test("IPv6: payload length 0 (jumbogram / BIG TCP) is read up to the captured bytes", () => {
  const bytes = ipv6(PROTO.TCP, tcpSyn(80, 8080), { payloadLength: 0 });
  expectPacket(parsePacket(bytes), v6pkt("TCP", 6, 80, 8080), "");
});

Deno.test("IPv6 addresses come out canonical; IPv4-mapped ones as IPv4, as the engine keys them", () => {
  const cases: [number[], string][] = [
    [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], "::1"],
    [
      [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x1a, 0x2b, 0xff, 0xfe, 0x3c, 0x4d, 0x5e],
      "fe80::21a:2bff:fe3c:4d5e",
    ],
    [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 1, 7], "10.244.1.7"],
  ];
  for (const [src, text] of cases) {
    const result = parsePacket(ipv6(PROTO.UDP, tcpSyn(1, 2), { src }));
    assert.equal(result.ok && result.packet.src, text);
  }
});

Deno.test("formatIPv4 reads 4 bytes at an offset", () => {
  assert.equal(formatIPv4(new Uint8Array([9, 0, 10, 255, 0, 1]), 1), "0.10.255.0");
  assert.equal(formatIPv4(new Uint8Array([192, 168, 100, 200]), 0), "192.168.100.200");
});

Deno.test("formatIPv6 follows RFC 5952", () => {
  const g = (...groups: number[]) => {
    const b = new Uint8Array(18);
    groups.forEach((x, i) => {
      b[2 + 2 * i] = x >> 8;
      b[3 + 2 * i] = x & 0xff;
    });
    return formatIPv6(b, 2);
  };
  assert.equal(g(0, 0, 0, 0, 0, 0, 0, 0), "::");
  assert.equal(g(0, 0, 0, 0, 0, 0, 0, 1), "::1");
  assert.equal(g(1, 0, 0, 0, 0, 0, 0, 0), "1::");
  assert.equal(g(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), "2001:db8::1");
  assert.equal(g(0x2001, 0xdb8, 0, 1, 1, 1, 1, 1), "2001:db8:0:1:1:1:1:1", "one zero group stays");
  assert.equal(g(0x2001, 0, 0, 1, 0, 0, 0, 1), "2001:0:0:1::1", "longest run");
  assert.equal(g(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1), "2001:db8::1:0:0:1", "first run on a tie");
  assert.equal(
    g(0xabcd, 0x0abc, 0x00ab, 0x000a, 0xa000, 0xa0, 0xa00, 0xffff),
    "abcd:abc:ab:a:a000:a0:a00:ffff",
  );
  assert.equal(g(0, 0, 0, 0, 0, 0, 0x0102, 0x0304), "::102:304", "IPv4-compatible stays hex");
  assert.equal(g(0, 0, 0, 0, 0, 0xffff, 0x0102, 0x0304), "1.2.3.4", "IPv4-mapped");
  assert.equal(g(0, 0, 0, 0, 1, 0xffff, 0x0102, 0x0304), "::1:ffff:102:304");
  assert.equal(g(0x64, 0xff9b, 0, 0, 0, 0, 0x0a00, 1), "64:ff9b::a00:1");
});

Deno.test("canonicalIP accepts every textual form and returns the canonical one", () => {
  const cases: [string, string][] = [
    ["10.0.0.1", "10.0.0.1"],
    ["0.0.0.0", "0.0.0.0"],
    ["255.255.255.255", "255.255.255.255"],
    [" 10.1.2.3\n", "10.1.2.3"],
    ["2001:DB8::1", "2001:db8::1"],
    ["2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["::", "::"],
    ["::0", "::"],
    ["0::0", "::"],
    ["::1", "::1"],
    ["1::", "1::"],
    ["1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"],
    ["::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"],
    ["::ffff:10.244.0.5", "10.244.0.5"],
    ["::FFFF:0af4:0005", "10.244.0.5"],
    ["0:0:0:0:0:ffff:10.244.0.5", "10.244.0.5"],
    ["::10.244.0.5", "::af4:5"],
    ["64:ff9b::192.0.2.33", "64:ff9b::c000:221"],
    ["fd00:10:244:1::a", "fd00:10:244:1::a"],
  ];
  for (const [text, canonical] of cases) assert.equal(canonicalIP(text), canonical, text);
});

Deno.test("canonicalIP rejects what is not an address", () => {
  const bad = [
    "",
    " ",
    "10.0.0",
    "10.0.0.1.2",
    "10.0.0.256",
    "010.0.0.1", // leading zero: octal or decimal?
    "10.0.0.-1",
    "10..0.1",
    "1.2.3.4/32",
    "a.b.c.d",
    ":",
    ":::",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7",
    "1::2::3",
    "12345::",
    "::g",
    "1:",
    ":1",
    "1::2:",
    "fe80::1%eth0",
    "::ffff:1.2.3",
    "::ffff:1.2.3.4:5",
    "1.2.3.4::",
    "1:2:3:4:5:6:7:1.2.3.4",
    "[::1]",
  ];
  for (const text of bad) assert.equal(canonicalIP(text), null, JSON.stringify(text));
});
