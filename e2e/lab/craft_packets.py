#!/usr/bin/env python3
"""The attacker in a pod, for the lab's evasion tests (run inside a pod netns by the test).

Each command sends a bounded number of packets (or makes one connection) and prints one JSON
line. Nothing here loops without a bound or waits longer than its timeout.

  connect6 DST PORT KIND        TCP connect over IPv6 with an ordinary socket carrying an
                                extension header set by socket option; KIND: dstopts256, hbh88.
                                Prints {"outcome": "connected" | "refused" | "timeout" | ...}.
  raw6 SRC DST PORT KIND        one IPv6 TCP SYN built whole on a raw socket, behind KIND:
                                rh0 (routing header type 0, segments left 0, 16 addresses: 264
                                bytes), chain17 (17 destination options headers of 8 bytes).
  flags FAMILY SRC DST PORT F   one TCP segment with flags F on a raw socket (4 or 6); F is
                                synfin, synrst, fin, null, xmas (packets conntrack calls INVALID).
  icmperr4 SRC DST              one ICMP port unreachable about a TCP connection that never was.
"""
import json
import os
import socket
import struct
import sys

TIMEOUT_S = 2.0
NEXTHDR_TCP, NEXTHDR_ROUTING, NEXTHDR_DEST = 6, 43, 60


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_segment(family: int, src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
    """A 20-byte TCP header with a correct checksum (so flags are the only thing wrong)."""
    seq = int.from_bytes(os.urandom(4), "big")
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 64240, 0, 0)
    if family == 4:
        pseudo = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
        pseudo += struct.pack("!BBH", 0, NEXTHDR_TCP, len(hdr))
    else:
        pseudo = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
        pseudo += struct.pack("!IxxxB", len(hdr), NEXTHDR_TCP)
    c = csum(pseudo + hdr)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:]


def sport() -> int:
    return 20000 + int.from_bytes(os.urandom(2), "big") % 40000


def options_header(nexthdr: int, length: int) -> bytes:
    """A Hop-by-Hop or Destination Options header of `length` bytes (a multiple of 8, >= 8).

    Filled with one experimental option (type 0x1e: skip if unknown, RFC 4727) so receivers
    accept it; Linux rejects padding runs longer than 7 bytes."""
    assert length % 8 == 0 and length >= 8
    body = length - 2
    if body == 6:
        opts = bytes([1, 4, 0, 0, 0, 0])  # PadN of 6: the smallest header
    else:
        opts = bytes([0x1E, body - 2]) + bytes(body - 2)
    return bytes([nexthdr, length // 8 - 1]) + opts


def connect6(dst: str, port: int, kind: str) -> dict:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT_S)
    try:
        if kind == "dstopts256":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, options_header(0, 256))
        elif kind == "hbh88":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, options_header(0, 88))
        else:
            return {"outcome": f"error: unknown kind {kind}"}
        s.connect((dst, port))
        return {"outcome": "connected"}
    except ConnectionRefusedError:
        return {"outcome": "refused"}
    except (socket.timeout, TimeoutError):
        return {"outcome": "timeout"}
    except OSError as e:
        return {"outcome": f"error: {e}"}
    finally:
        s.close()


def raw6(src: str, dst: str, port: int, kind: str) -> dict:
    tcp = tcp_segment(6, src, dst, sport(), port, 0x02)
    if kind == "rh0":
        addrs = 16
        chain = bytes([NEXTHDR_TCP, 2 * addrs, 0, 0]) + bytes(4)  # type 0, segments left 0
        chain += b"".join(socket.inet_pton(socket.AF_INET6, dst) for _ in range(addrs))
        first = NEXTHDR_ROUTING
    elif kind == "chain17":
        chain = b"".join(
            options_header(NEXTHDR_TCP if i == 16 else NEXTHDR_DEST, 8) for i in range(17)
        )
        first = NEXTHDR_DEST
    else:
        return {"error": f"unknown kind {kind}"}
    payload = chain + tcp
    ip6 = struct.pack("!IHBB", 6 << 28, len(payload), first, 64)
    ip6 += socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    # IPPROTO_RAW on an IPv6 raw socket means the header is ours (IPV6_HDRINCL).
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        s.sendto(ip6 + payload, (dst, 0))
    finally:
        s.close()
    return {"sent": 1, "bytes": len(ip6) + len(payload)}


FLAGS = {"synfin": 0x03, "synrst": 0x06, "fin": 0x01, "null": 0x00, "xmas": 0x29}


def flags(family: int, src: str, dst: str, port: int, name: str) -> dict:
    seg = tcp_segment(family, src, dst, sport(), port, FLAGS[name])
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    # A raw TCP socket: the kernel writes the IP header, the TCP header is ours.
    s = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        s.bind((src, 0))  # the source the checksum was computed with
        s.sendto(seg, (dst, 0))
    finally:
        s.close()
    return {"sent": 1}


def icmperr4(src: str, dst: str) -> dict:
    # The packet the error claims to answer: dst -> src TCP, a connection conntrack never saw.
    inner_tcp = struct.pack("!HHI", 443, sport(), 12345)
    inner_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20, 0, 0x4000, 64, NEXTHDR_TCP, 0,
                           socket.inet_pton(socket.AF_INET, dst),
                           socket.inet_pton(socket.AF_INET, src))
    inner_ip = inner_ip[:10] + struct.pack("!H", csum(inner_ip)) + inner_ip[12:]
    body = struct.pack("!BBHI", 3, 3, 0, 0) + inner_ip + inner_tcp
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.bind((src, 0))
        s.sendto(body, (dst, 0))
    finally:
        s.close()
    return {"sent": 1}


def main(argv: list) -> dict:
    cmd, *a = argv
    if cmd == "connect6":
        return connect6(a[0], int(a[1]), a[2])
    if cmd == "raw6":
        return raw6(a[0], a[1], int(a[2]), a[3])
    if cmd == "flags":
        return flags(int(a[0]), a[1], a[2], int(a[3]), a[4])
    if cmd == "icmperr4":
        return icmperr4(a[0], a[1])
    return {"error": f"unknown command {cmd}"}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
