#!/usr/bin/env python3
"""One end of a long-lived connection for the strict-mode lab (e2e/lab/strict_mode_test.ts).

Runs inside a pod netns. One side SPEAKS (sends a line every --interval seconds and waits for its
echo), the other ECHOES every line back. Either may be the server. It reports, as JSON lines on
stdout, with wall-clock times (time.time(), comparable with the agent's log):

  {"event": "ready"}                                   server: listening / bound
  {"event": "connected", "t": T}                       first line exchanged
  {"event": "ok", "n": N, "t": T}                      every 10th exchange
  {"event": "cut", "t": T, "last": T0, "error": E}     the connection failed: E is reset, refused,
                                                       closed or silence (no echo in --silence s);
                                                       T0 the last good exchange; then it exits
  {"event": "end", "n": N, "last": T0}                 still alive after --seconds; exits

An echoing side that hears nothing for --probe-after seconds starts speaking itself (one line per
--interval), so a test can show the cut holds whichever side speaks next. Every run is bounded by
--seconds.

  stream_peer.py server tcp|udp PORT speak|echo [options]
  stream_peer.py client tcp|udp HOST PORT speak|echo [--sport N] [options]
"""
import argparse
import json
import socket
import sys
import time


def say(**fields):
    print(json.dumps(fields), flush=True)


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("proto", choices=["tcp", "udp"])
    p.add_argument("rest", nargs="+")
    p.add_argument("--sport", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--silence", type=float, default=2.0)
    p.add_argument("--probe-after", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=30.0)
    a = p.parse_args()
    if a.role == "server":
        a.host, a.port, a.mode = "0.0.0.0", int(a.rest[0]), a.rest[1]
    else:
        a.host, a.port, a.mode = a.rest[0], int(a.rest[1]), a.rest[2]
    if a.mode not in ("speak", "echo"):
        p.error("mode must be speak or echo")
    return a


class Line:
    """Line-oriented send/receive over a connected TCP or UDP socket."""

    def __init__(self, sock, proto):
        self.sock, self.proto, self.buf = sock, proto, b""

    def send(self, text):
        data = (text + "\n").encode()
        if self.proto == "tcp":
            self.sock.sendall(data)
        else:
            self.sock.send(data)

    def recv(self, timeout):
        """One line, or None after `timeout` seconds; raises on a failed connection."""
        self.sock.settimeout(timeout)
        if self.proto == "udp":
            try:
                return self.sock.recv(2048).decode().strip()
            except socket.timeout:
                return None
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                return None
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def error_name(e):
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, EOFError):
        return "closed"
    return type(e).__name__


def converse(line, mode, a, deadline):
    n, last, speaking = 0, None, mode == "speak"
    next_probe = None
    while time.time() < deadline:
        try:
            if speaking:
                line.send(f"line {n}")
                got = line.recv(a.silence)
                if got is None:
                    say(event="cut", t=time.time(), last=last, error="silence")
                    return
            else:
                wait = a.probe_after if a.probe_after > 0 else min(1.0, deadline - time.time())
                got = line.recv(max(wait, 0.01))
                if got is None:
                    if a.probe_after > 0:
                        # Nothing heard for a while: speak ourselves from now on.
                        speaking = True
                        say(event="probing", t=time.time())
                    continue
                line.send(got)
        except (OSError, EOFError) as e:
            say(event="cut", t=time.time(), last=last, error=error_name(e))
            return
        n += 1
        last = time.time()
        if n == 1:
            say(event="connected", t=last)
        elif n % 10 == 0:
            say(event="ok", n=n, t=last)
        if speaking:
            time.sleep(a.interval)
    say(event="end", n=n, last=last)


def main():
    a = parse()
    deadline = time.time() + a.seconds
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    kind = socket.SOCK_STREAM if a.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if a.role == "server":
        sock.bind((a.host, a.port))
        if a.proto == "tcp":
            sock.listen(8)
            say(event="ready")
            sock.settimeout(max(deadline - time.time(), 0.01))
            conn, _ = sock.accept()
            sock.close()
            sock = conn
        else:
            say(event="ready")
            sock.settimeout(max(deadline - time.time(), 0.01))
            _, peer = sock.recvfrom(2048)  # the client's hello
            sock.connect(peer)
    else:
        if a.sport:
            sock.bind(("", a.sport))
        sock.settimeout(5)
        sock.connect((a.host, a.port))
        if a.proto == "udp":
            sock.send(b"hello\n")
    converse(Line(sock, a.proto), a.mode, a, deadline)
    sock.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # setup failures: say so and exit non-zero
        say(event="error", error=f"{type(e).__name__}: {e}")
        sys.exit(1)
