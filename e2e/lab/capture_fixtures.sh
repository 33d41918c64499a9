#!/usr/bin/env bash
# Regenerate tests/fixtures/packets/*.json: real packets for the packet parser's table tests.
#
# Builds two network namespaces (knpfix-a, knpfix-b) joined by a veth pair with MTU 1280, sends one
# probe of each kind from knpfix-a to knpfix-b (sockets, and raw sockets for the protocols this
# kernel has no socket type for), captures them with tcpdump inside knpfix-b, and writes each
# packet from its IP header on (what NFQUEUE hands the agent) as hex, with how it was produced.
# Nothing touches the root namespace; every packet stays on the veth pair. Needs root, iproute2,
# tcpdump and python3. Usage: sudo e2e/lab/capture_fixtures.sh [output-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${1:-tests/fixtures/packets}
A=knpfix-a
B=knpfix-b
work=$(mktemp -d /tmp/knpfix.XXXXXX)
tcpdump_pid=

cleanup() {
  if [ -n "$tcpdump_pid" ]; then kill "$tcpdump_pid" 2>/dev/null || true; fi
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for ns in "$A" "$B"; do
  if ip netns list | grep -qw "$ns"; then
    echo "namespace $ns exists (another run?); remove it first" >&2
    exit 1
  fi
done

ip netns add "$A"
ip netns add "$B"
# The pair is created inside knpfix-a and its peer moved straight into knpfix-b.
ip -n "$A" link add knpfix-va mtu 1280 type veth peer name knpfix-vb netns "$B" mtu 1280
ip -n "$A" link set knpfix-va address 02:00:00:fe:00:01
ip -n "$B" link set knpfix-vb address 02:00:00:fe:00:02
ip -n "$A" addr add 10.203.0.1/24 dev knpfix-va
ip -n "$B" addr add 10.203.0.2/24 dev knpfix-vb
ip -n "$A" addr add fd00:203::1/64 dev knpfix-va nodad
ip -n "$B" addr add fd00:203::2/64 dev knpfix-vb nodad
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set knpfix-va up
ip -n "$B" link set knpfix-vb up
# Static neighbours: no ARP or neighbour discovery interleaved with the probes.
ip -n "$A" neigh replace 10.203.0.2 lladdr 02:00:00:fe:00:02 dev knpfix-va nud permanent
ip -n "$A" neigh replace fd00:203::2 lladdr 02:00:00:fe:00:02 dev knpfix-va nud permanent
ip -n "$B" neigh replace 10.203.0.1 lladdr 02:00:00:fe:00:01 dev knpfix-vb nud permanent
ip -n "$B" neigh replace fd00:203::1 lladdr 02:00:00:fe:00:01 dev knpfix-vb nud permanent

ip netns exec "$B" tcpdump -i knpfix-vb -U -n -s 2048 -w "$work/probes.pcap" \
  'src host 10.203.0.1 or src host fd00:203::1' 2>"$work/tcpdump.log" &
tcpdump_pid=$!
for _ in $(seq 1 50); do
  grep -q "listening on" "$work/tcpdump.log" 2>/dev/null && break
  sleep 0.1
done

# The probes, in order; probes.json lists the fixtures each one yields (same order as on the wire).
ip netns exec "$A" timeout 60 python3 - "$work/probes.json" <<'PY'
import json, socket, struct, sys, time

A4, B4, A6, B6 = "10.203.0.1", "10.203.0.2", "fd00:203::1", "fd00:203::2"
probes = []

def probe(names, how):
    def wrap(fn):
        fn()
        time.sleep(0.2)
        probes.append({"names": names, "how": how})
    return wrap

def inet_sum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

def sctp_init(sport, dport):
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, 0x4B4E5046, 65536, 10, 10, 1)
    pkt = struct.pack("!HHII", sport, dport, 0, 0) + chunk
    crc = crc32c(pkt)
    return pkt[:8] + struct.pack("<I", crc) + pkt[12:]

def tcp_connect(family, addr, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect((addr, port))
    except OSError:
        pass  # refused (nothing listens): only the SYN matters
    s.close()

def udp_send(family, addr, port, payload, setup=None):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if setup:
        setup(s)
    s.sendto(payload, (addr, port))
    s.close()

def raw_send(family, proto, addr, payload, setup=None):
    s = socket.socket(family, socket.SOCK_RAW, proto)
    if setup:
        setup(s)
    s.sendto(payload, (addr, 0))
    s.close()

@probe(["tcp4-syn"], "TCP connect() from 10.203.0.1 to 10.203.0.2:8080 (python socket; refused)")
def _():
    tcp_connect(socket.AF_INET, B4, 8080)

@probe(["tcp6-syn"], "TCP connect() from fd00:203::1 to [fd00:203::2]:8080 (python socket; refused)")
def _():
    tcp_connect(socket.AF_INET6, B6, 8080)

@probe(["udp4"], "UDP sendto 10.203.0.2:5353, 6-byte payload (python socket)")
def _():
    udp_send(socket.AF_INET, B4, 5353, b"knpfix")

@probe(["udp6"], "UDP sendto [fd00:203::2]:5353, 6-byte payload (python socket)")
def _():
    udp_send(socket.AF_INET6, B6, 5353, b"knpfix")

@probe(["icmp4-echo"], "ICMP echo request id 0x4b4e seq 1 via a raw IPPROTO_ICMP socket")
def _():
    hdr = struct.pack("!BBHHH", 8, 0, 0, 0x4B4E, 1) + b"knpfix-ping"
    hdr = hdr[:2] + struct.pack("!H", inet_sum(hdr)) + hdr[4:]
    raw_send(socket.AF_INET, socket.IPPROTO_ICMP, B4, hdr)

@probe(["icmp6-echo"], "ICMPv6 echo request id 0x4b4e seq 1 via a raw IPPROTO_ICMPV6 socket")
def _():
    raw_send(socket.AF_INET6, socket.IPPROTO_ICMPV6, B6,
             struct.pack("!BBHHH", 128, 0, 0, 0x4B4E, 1) + b"knpfix-ping")

@probe(["udp4-options"],
       "UDP to 10.203.0.2:5354 with IP_OPTIONS = record-route (11 bytes) + EOL: IHL 8")
def _():
    rr = bytes([7, 11, 4]) + bytes(8) + bytes([0])
    udp_send(socket.AF_INET, B4, 5354, b"knpfix",
             lambda s: s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, rr))

@probe(["udp4-frag-first", "udp4-frag-middle", "udp4-frag-last"],
       "3000-byte UDP datagram to 10.203.0.2:5355 over the 1280-MTU veth, DF off: fragmented")
def _():
    udp_send(socket.AF_INET, B4, 5355, b"k" * 3000,
             lambda s: s.setsockopt(socket.IPPROTO_IP, 10, 0))  # IP_MTU_DISCOVER = DONT

@probe(["udp6-frag-first", "udp6-frag-middle", "udp6-frag-last"],
       "3000-byte UDP datagram to [fd00:203::2]:5355 over the 1280-MTU veth: fragment headers")
def _():
    udp_send(socket.AF_INET6, B6, 5355, b"k" * 3000)

@probe(["udp6-hopopts"], "UDP to [fd00:203::2]:5356 with IPV6_HOPOPTS = one PadN option")
def _():
    udp_send(socket.AF_INET6, B6, 5356, b"knpfix",
             lambda s: s.setsockopt(socket.IPPROTO_IPV6, 54, bytes([0, 0, 1, 4, 0, 0, 0, 0])))

@probe(["tcp6-dstopts-syn"],
       "TCP connect() to [fd00:203::2]:8081 with 16 bytes of IPV6_DSTOPTS (option 0x1e, PadN)")
def _():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    # Option 0x1e (RFC 4727 experiment, "skip if unknown") with 10 bytes, then a 2-byte PadN:
    # Linux drops runs of more than 7 padding bytes, so the header is not all padding.
    s.setsockopt(socket.IPPROTO_IPV6, 59, bytes([0, 1, 0x1E, 10]) + bytes(10) + bytes([1, 0]))
    s.settimeout(1)
    try:
        s.connect((B6, 8081))
    except OSError:
        pass
    s.close()

@probe(["sctp4-init"], "SCTP INIT 40000 -> 9999 (CRC32c valid) via a raw IPPROTO_SCTP socket")
def _():
    raw_send(socket.AF_INET, 132, B4, sctp_init(40000, 9999))

@probe(["sctp6-init"], "SCTP INIT 40000 -> 9999 (CRC32c valid) via a raw IPv6 socket, protocol 132")
def _():
    raw_send(socket.AF_INET6, 132, B6, sctp_init(40000, 9999))

@probe(["gre4"], "GRE (protocol 47) header carrying 8 bytes, via a raw socket")
def _():
    raw_send(socket.AF_INET, 47, B4, struct.pack("!HH", 0, 0x0800) + b"knpfix!!")

@probe(["esp6"], "ESP (protocol 50) SPI 0x4b4e5046 seq 1 + 16 bytes, via a raw IPv6 socket")
def _():
    raw_send(socket.AF_INET6, 50, B6, struct.pack("!II", 0x4B4E5046, 1) + bytes(16))

@probe(["ah6-tcp-syn"],
       "AH (protocol 51, 24 bytes, next header TCP) then a TCP SYN 40001 -> 443, raw IPv6 socket")
def _():
    ah = struct.pack("!BBHII", 6, 4, 0, 0x4B4E5046, 1) + bytes(12)
    tcp = struct.pack("!HHIIBBHHH", 40001, 443, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    raw_send(socket.AF_INET6, 51, B6, ah + tcp)

@probe(["nonext6"], "IPv6 with next header 59 (no next header), empty payload, raw IPv6 socket")
def _():
    raw_send(socket.AF_INET6, 59, B6, b"")

json.dump(probes, open(sys.argv[1], "w"))
PY

sleep 0.5
kill "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true
tcpdump_pid=

# pcap -> one JSON file per packet, IP header first (the Ethernet header dropped).
# tcpdump's own one-line reading of each packet goes into the fixture as an independent decoding.
mkdir -p "$out"
tcpdump -n -tt -r "$work/probes.pcap" 'ip or ip6' 2>/dev/null | cut -d' ' -f2- >"$work/summary.txt"
if ! python3 - "$work/probes.pcap" "$work/probes.json" "$out" "$work/summary.txt" <<'PY'
import json, struct, sys

pcap, manifest, out, summary = sys.argv[1:]
summaries = open(summary).read().splitlines()
data = open(pcap, "rb").read()
magic = struct.unpack("<I", data[:4])[0]
endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
linktype = struct.unpack(endian + "I", data[20:24])[0]
assert linktype == 1, "expected Ethernet captures"
packets, off = [], 24
while off + 16 <= len(data):
    _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
    frame = data[off + 16:off + 16 + incl]
    off += 16 + incl
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype in (0x0800, 0x86DD):
        packets.append(frame[14:])
probes = json.load(open(manifest))
names = [(n, p["how"]) for p in probes for n in p["names"]]
if len(names) != len(packets) or len(summaries) != len(packets):
    sys.exit(f"captured {len(packets)} packets, expected {len(names)}: {[n for n, _ in names]}")
for (name, how), pkt, line in zip(names, packets, summaries):
    doc = {
        "name": name,
        "producedBy": how + "; captured with tcpdump on a veth between two network namespaces "
        "(e2e/lab/capture_fixtures.sh), Ethernet header removed",
        "tcpdump": line,
        "length": len(pkt),
        "hex": pkt.hex(),
    }
    with open(f"{out}/{name}.json", "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
print(f"wrote {len(packets)} fixtures to {out}")
PY
then
  tcpdump -n -v -r "$work/probes.pcap" >&2
  exit 1
fi
