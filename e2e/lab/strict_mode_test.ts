/**
 * Strict mode with real connections (root only): long-lived TCP and UDP flows between lab pods,
 * each exchanging a line every 50 ms (stream_peer.py), then a policy change that denies some of
 * them, through the real agent.
 *
 *   deno test --frozen --allow-read --allow-write --allow-net --allow-env --allow-sys \
 *     --allow-ffi --allow-run=<deno.json's test:lab list> e2e/lab/strict_mode_test.ts
 *
 * What it shows: each denied flow is refused at the next packet of whichever side speaks next
 * (TCP reset, ICMP port unreachable), the client's side and the server's side alike, while the
 * allowed flows beside them keep exchanging; after the policies are removed a UDP flow reusing
 * the very same 5-tuple works again (the cut was lifted, not just left to expire). The latency
 * printed is from the moment the agent applied the change (its own log) to the moment the peer
 * saw its connection fail. With `--strict-mode=false` the same denied connection lives on: the
 * behaviour before strict mode, and proof that the first test depends on it.
 */
import assert from "node:assert/strict";
import type { LabAgent } from "./agent.ts";
import { networkPolicy as policy } from "./cluster.ts";
import { applyPolicies, labTest, pollUntil, withLabAgent } from "./harness.ts";
import type { Lab } from "./topology.ts";

const PREFIX = "knpstrict";
const PEER = new URL("./stream_peer.py", import.meta.url).pathname;

interface PeerEvent {
  event: "ready" | "connected" | "ok" | "cut" | "end" | "probing" | "error";
  t?: number;
  last?: number | null;
  n?: number;
  error?: string;
}

/** One stream_peer.py process in a pod netns and the events it printed. */
class Peer {
  readonly events: PeerEvent[] = [];
  private constructor(readonly name: string, private readonly child: Deno.ChildProcess) {
    (async () => {
      let rest = "";
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        const lines = (rest + chunk).split("\n");
        rest = lines.pop() ?? "";
        for (const l of lines) if (l.trim()) this.events.push(JSON.parse(l) as PeerEvent);
      }
    })().catch(() => {});
  }

  static start(lab: Lab, pod: string, name: string, args: string[]): Peer {
    const child = lab.spawn(lab.pod(pod).netns, ["python3", PEER, ...args], { stdout: "piped" });
    return new Peer(`${name} (${pod})`, child);
  }

  /** `stream_peer.py server ARGS` in `pod`; ARGS: "tcp|udp PORT speak|echo [options]". */
  static server(lab: Lab, pod: string, name: string, args: string): Peer {
    return Peer.start(lab, pod, name, ["server", ...args.split(" ")]);
  }

  /**
   * `stream_peer.py client ARGS` in `pod`; ARGS: "tcp|udp SERVER PORT speak|echo [options]", with
   * the server's pod ("x/a") for its address.
   */
  static client(lab: Lab, pod: string, name: string, args: string): Peer {
    const [proto, server, ...rest] = args.split(" ");
    return Peer.start(lab, pod, name, ["client", proto!, ip(lab, server!), ...rest]);
  }

  find(kind: PeerEvent["event"]): PeerEvent | undefined {
    return this.events.find((e) => e.event === kind);
  }

  async waitFor(kind: PeerEvent["event"], timeoutMs = 10_000): Promise<PeerEvent> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const e = this.find(kind);
      if (e) return e;
      const err = this.find("error");
      if (err) throw new Error(`${this.name}: ${err.error}`);
      await sleep(20);
    }
    throw new Error(
      `${this.name}: no "${kind}" within ${timeoutMs} ms: ${JSON.stringify(this.events)}`,
    );
  }

  /** Exchanges counted after `since` (wall-clock ms): "ok" every 10th line. */
  okAfter(since: number): number {
    return this.events.filter((e) => e.event === "ok" && e.t! * 1000 > since).length;
  }

  stop(): void {
    try {
      this.child.kill("SIGKILL");
    } catch { /* exited */ }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const ip = (lab: Lab, pod: string) => lab.pod(pod).ip;

/** The 3x3 model on one node, no servers (the peers serve). */
const SETUP = { prefix: PREFIX, servers: false } as const;

/** x/a accepts ingress only from y/a (every port). */
const X_A_ONLY_FROM_Y_A = policy("x", "a-only-from-y-a", {
  podSelector: { matchLabels: { pod: "a" } },
  ingress: [{
    from: [{
      namespaceSelector: { matchLabels: { ns: "y" } },
      podSelector: { matchLabels: { pod: "a" } },
    }],
  }],
});
/** y/c may open nothing (egress). */
const Y_C_NO_EGRESS = policy("y", "c-no-egress", {
  podSelector: { matchLabels: { pod: "c" } },
  policyTypes: ["Egress"],
});
/** z/a accepts nothing (ingress). */
const Z_A_NO_INGRESS = policy("z", "a-no-ingress", {
  podSelector: { matchLabels: { pod: "a" } },
  policyTypes: ["Ingress"],
});
/** x/c may open nothing (egress). */
const X_C_NO_EGRESS = policy("x", "c-no-egress", {
  podSelector: { matchLabels: { pod: "c" } },
  policyTypes: ["Egress"],
});
const DENYING = [X_A_ONLY_FROM_Y_A, Y_C_NO_EGRESS, Z_A_NO_INGRESS, X_C_NO_EGRESS];

/** The agent's "connection cut" log lines: flow -> when the change was applied (ms) and cutAfterMs. */
function cutLines(
  agent: LabAgent,
  mark: number,
): Map<string, { appliedAt: number; after: number }> {
  const out = new Map<string, { appliedAt: number; after: number }>();
  for (const line of agent.logsSince(mark)) {
    if (!line.includes("connection cut (strict mode)")) continue;
    const src = / src=(\S+)/.exec(line)?.[1];
    const dst = / dst=(\S+)/.exec(line)?.[1];
    const at = / changeAppliedAt=(\S+)/.exec(line)?.[1];
    const after = / cutAfterMs=(\S+)/.exec(line)?.[1];
    if (src && dst && at) {
      out.set(`${src}>${dst}`, { appliedAt: Date.parse(at), after: Number(after) });
    }
  }
  return out;
}

/**
 * A cut UDP flow is refused with an ICMP port unreachable, which the kernel rate-limits (per
 * destination and globally): on a busy machine the error can be lost and the flow just falls
 * silent. Either way it is cut; without strict mode it would keep exchanging lines.
 */
function assertUdpCut(error: string | undefined): void {
  assert.ok(error === "refused" || error === "silence", `UDP flow not cut: ${error}`);
}

Deno.test(
  "strict mode: a denying change cuts live TCP and UDP flows whichever side speaks next; allowed ones live on; removing it lets the same 5-tuple back",
  labTest,
  async () => {
    await withLabAgent(SETUP, async ({ lab, agent, dir }) => {
      const secs = "--seconds 40";
      // Servers first; each serves one flow.
      const servers = {
        tcpEcho: Peer.server(lab, "x/a", "tcp server, echoes", `tcp 7001 echo ${secs}`),
        tcpAllowed: Peer.server(lab, "x/a", "tcp server, echoes", `tcp 7011 echo ${secs}`),
        tcpSpeaks: Peer.server(lab, "x/b", "tcp server, speaks", `tcp 7002 speak ${secs}`),
        udpEcho: Peer.server(lab, "z/a", "udp server, echoes", `udp 7003 echo ${secs}`),
        udpSpeaks: Peer.server(lab, "z/b", "udp server, speaks", `udp 7004 speak ${secs}`),
        udpAllowed: Peer.server(lab, "z/c", "udp server, echoes", `udp 7005 echo ${secs}`),
      };
      for (const s of Object.values(servers)) await s.waitFor("ready");
      const probe = "--probe-after 0.5";
      const clients = {
        // Denied by x/a's ingress; the client speaks next.
        tcp: Peer.client(lab, "y/b", "tcp client, speaks", `tcp x/a 7001 speak ${secs}`),
        // Allowed (y/a may reach x/a): must live on.
        tcpAllowed: Peer.client(lab, "y/a", "tcp client, speaks", `tcp x/a 7011 speak ${secs}`),
        // Denied by y/c's egress; the SERVER speaks next (then the client, after 0.5 s of silence).
        tcpServerFirst: Peer.client(
          lab,
          "y/c",
          "tcp client, echoes",
          `tcp x/b 7002 echo ${probe} ${secs}`,
        ),
        // Denied by z/a's ingress; a fixed source port, reused after the policy is gone.
        udp: Peer.client(
          lab,
          "y/a",
          "udp client, speaks",
          `udp z/a 7003 speak --sport 40123 ${secs}`,
        ),
        // Denied by x/c's egress; the server speaks next.
        udpServerFirst: Peer.client(
          lab,
          "x/c",
          "udp client, echoes",
          `udp z/b 7004 echo ${probe} ${secs}`,
        ),
        udpAllowed: Peer.client(lab, "y/b", "udp client, speaks", `udp z/c 7005 speak ${secs}`),
      };
      for (const c of Object.values(clients)) await c.waitFor("connected");
      await sleep(300); // a few exchanges each

      const mark = agent.logMark();
      await applyPolicies({ agent, dir }, DENYING);

      // The side that speaks next is refused at once: reset for TCP, port unreachable for UDP.
      const cutTcp = await clients.tcp.waitFor("cut");
      const cutTcpServer = await servers.tcpSpeaks.waitFor("cut");
      const cutUdp = await clients.udp.waitFor("cut");
      const cutUdpServer = await servers.udpSpeaks.waitFor("cut");
      assert.equal(cutTcp.error, "reset");
      assert.equal(cutTcpServer.error, "reset");
      assertUdpCut(cutUdp.error);
      assertUdpCut(cutUdpServer.error);
      // ... and so is the other side when it speaks in turn (after 0.5 s of silence).
      assert.equal((await clients.tcpServerFirst.waitFor("cut")).error, "reset");
      assertUdpCut((await clients.udpServerFirst.waitFor("cut")).error);

      // The agent said what it cut, and when it had applied the change.
      const cuts = cutLines(agent, mark);
      const flows: [string, string, PeerEvent][] = [
        ["TCP, client speaks (x/a ingress)", `${ip(lab, "y/b")}:`, cutTcp],
        ["TCP, server speaks (y/c egress)", `${ip(lab, "y/c")}:`, cutTcpServer],
        ["UDP, client speaks (z/a ingress)", `${ip(lab, "y/a")}:40123`, cutUdp],
        ["UDP, server speaks (x/c egress)", `${ip(lab, "x/c")}:`, cutUdpServer],
      ];
      console.log("flow                              agent: cut after   peer: failed after change");
      for (const [title, src, ev] of flows) {
        const hit = [...cuts].find(([f]) => f.startsWith(src));
        assert.ok(
          hit,
          `no cut logged for ${title} (${src}); cut lines: ${JSON.stringify([...cuts])}`,
        );
        const seen = Math.round(ev.t! * 1000 - hit[1].appliedAt);
        console.log(
          `${title.padEnd(34)}${String(hit[1].after).padStart(5)} ms ${
            String(seen).padStart(12)
          } ms`,
        );
      }
      const line = agent.logsSince(mark).find((l) =>
        l.includes("connection cut") && l.includes(":7001")
      );
      console.log(`agent: ${line}`);
      assert.match(
        line!,
        /why="ingress: x\/a isolated by x\/a-only-from-y-a; no rule matched"/,
      );

      // The allowed flows beside them kept exchanging well after the change.
      await sleep(1000);
      const applied = Math.min(...[...cuts.values()].map((c) => c.appliedAt));
      for (const c of [clients.tcpAllowed, clients.udpAllowed, servers.tcpAllowed]) {
        assert.equal(c.find("cut"), undefined, `${c.name} was cut: ${JSON.stringify(c.events)}`);
      }
      assert.ok(clients.tcpAllowed.okAfter(applied + 500) > 0, "allowed TCP flow stalled");
      assert.ok(clients.udpAllowed.okAfter(applied + 500) > 0, "allowed UDP flow stalled");

      // The marks are on exactly the denied connections (conntrack of the node netns).
      const marked = await lab.exec(lab.nodeNetns, [
        "conntrack",
        "-L",
        "--mark",
        "0x400000/0x400000",
      ]);
      assert.match(
        marked.stdout,
        new RegExp(`src=${ip(lab, "y/b")} dst=${ip(lab, "x/a")} sport=\\d+ dport=7001 `),
      );
      assert.doesNotMatch(marked.stdout, /dport=7011 /);
      assert.doesNotMatch(marked.stdout, /dport=7005 /);

      const m = await agent.scrape();
      assert.ok(m.value("kube_netpol_connections_cut_total", { direction: "ingress" }) >= 2);
      assert.ok(m.value("kube_netpol_connections_cut_total", { direction: "egress" }) >= 2);
      assert.ok(m.value("kube_netpol_connection_cut_latency_seconds_count") >= 4);

      // Policies removed: the UDP flow with the very same 5-tuple works again. Its old entry is
      // still in conntrack (UDP keeps it 120 s); only the lifted cut lets it through.
      for (const p of [...Object.values(servers), ...Object.values(clients)]) p.stop();
      const mark2 = agent.logMark();
      await applyPolicies({ agent, dir }, []);
      await pollUntil(
        () => Promise.resolve(agent.logsSince(mark2).some((l) => l.includes("no longer cut"))),
        (logged) => logged,
        5000,
        50,
      );
      const again = Peer.server(lab, "z/a", "udp server again", "udp 7003 echo --seconds 5");
      await again.waitFor("ready");
      const reused = Peer.client(
        lab,
        "y/a",
        "udp client, same 5-tuple",
        "udp z/a 7003 speak --sport 40123 --seconds 1.5",
      );
      const end = await reused.waitFor("end");
      assert.equal(reused.find("cut"), undefined, JSON.stringify(reused.events));
      assert.ok(end.n! >= 10, `only ${end.n} exchanges`);
      // And a new TCP connection from the pod that was cut.
      const tcpAgain = Peer.server(lab, "x/a", "tcp server again", "tcp 7001 echo --seconds 5");
      await tcpAgain.waitFor("ready");
      const tcpNew = Peer.client(lab, "y/b", "tcp client again", "tcp x/a 7001 speak --seconds 1");
      assert.ok((await tcpNew.waitFor("end")).n! >= 10);
      assert.ok(await agent.metric("kube_netpol_connections_uncut_total") >= 1);
    });
  },
);

Deno.test(
  "strict mode off (--strict-mode=false): the denied connection lives on, as before strict mode",
  labTest,
  async () => {
    const setup = { ...SETUP, agent: { extraArgs: ["--strict-mode=false"] } };
    await withLabAgent(setup, async ({ lab, agent, dir }) => {
      const server = Peer.server(lab, "x/a", "tcp server", "tcp 7001 echo --seconds 20");
      await server.waitFor("ready");
      const client = Peer.client(lab, "y/b", "tcp client", "tcp x/a 7001 speak --seconds 20");
      await client.waitFor("connected");
      await applyPolicies({ agent, dir }, [X_A_ONLY_FROM_Y_A]);
      const applied = Date.now();
      await sleep(2000);
      assert.equal(client.find("cut"), undefined, JSON.stringify(client.events));
      assert.ok(client.okAfter(applied + 1000) > 0, "the connection kept exchanging");
      // No cut rule in the chain either.
      const rules = await lab.exec(lab.nodeNetns, ["iptables-save", "-t", "filter"]);
      assert.doesNotMatch(rules.stdout, /connmark/);
      // But a NEW connection is judged, and denied.
      const fresh = Peer.client(lab, "y/b", "tcp client, new", "tcp x/a 7001 speak --seconds 2");
      const failed = await fresh.waitFor("error");
      assert.match(failed.error!, /ConnectionRefused/);
    });
  },
);
