/**
 * Every agnhost invocation the kind driver renders, checked against what agnhost really accepts.
 * The facts below are read from agnhost's source in kubernetes/kubernetes (test/images/agnhost/):
 *
 * - porter/porter.go: `porter` takes no arguments (cobra.MaximumNArgs(0)); it serves each
 *   environment variable SERVE_PORT_<n> / SERVE_TCP_PORT_<n> (TCP), SERVE_UDP_PORT_<n>,
 *   SERVE_SCTP_PORT_<n>, SERVE_TLS_PORT_<n>. UDP (and SERVE_TCP_PORT_) came with
 *   kubernetes/kubernetes#135911, first released in agnhost 2.60.
 * - connect/connect.go: `connect [host:port]` (cobra.ExactArgs(1)) with the flags --timeout (Go
 *   duration), --protocol (tcp, udp or sctp), --udp-data, --sctp-data.
 * - serve-hostname/serve_hostname.go has --tcp, --udp, --http, --close, --port and no --sctp:
 *   the driver's old `serve-hostname --sctp` servers could not start.
 * - The image's entrypoint is /agnhost, and the upstream Netpol suite
 *   (test/e2e/network/netpol/kubemanager.go) execs `/agnhost connect <JoinHostPort> --timeout=Ns
 *   --protocol=<p>` in the client pod.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { connectCommand, SERVER_CONTAINER, serverContainer } from "../e2e/kind/agnhost.ts";
import { KindDriver } from "../e2e/kind/driver.ts";
import type { Executor } from "../e2e/kind/exec.ts";
import { MODEL_PORTS, MODEL_PROTOCOLS } from "../e2e/cases/model.ts";
import { AGNHOST_IMAGE } from "../e2e/kind/versions.ts";

const AGNHOST = {
  porter: {
    maxArgs: 0,
    env: {
      TCP: ["SERVE_PORT_", "SERVE_TCP_PORT_"],
      UDP: ["SERVE_UDP_PORT_"],
      SCTP: ["SERVE_SCTP_PORT_"],
    },
    udpSince: [2, 60],
  },
  connect: {
    args: 1,
    flags: ["timeout", "protocol", "udp-data", "sctp-data"],
    protocols: ["tcp", "udp", "sctp"],
  },
} as const;

const all = MODEL_PORTS.flatMap((port) => MODEL_PROTOCOLS.map((protocol) => ({ port, protocol })));

Deno.test("agnhost: the image is a release whose porter serves UDP", () => {
  const m = /^registry\.k8s\.io\/e2e-test-images\/agnhost:(\d+)\.(\d+)(?:\.\d+)?$/.exec(
    AGNHOST_IMAGE,
  );
  assert.ok(m, AGNHOST_IMAGE);
  const [major, minor] = [Number(m[1]), Number(m[2])];
  const [wantMajor, wantMinor] = AGNHOST.porter.udpSince;
  assert.ok(major > wantMajor || (major === wantMajor && minor >= wantMinor), AGNHOST_IMAGE);
});

Deno.test("agnhost: each model pod runs one porter, one env var per served port, no arguments", () => {
  const c = serverContainer(all);
  assert.equal(c.name, SERVER_CONTAINER);
  assert.equal(c.image, AGNHOST_IMAGE);
  const [binary, sub, ...rest] = c.command;
  assert.deepEqual([binary, sub], ["/agnhost", "porter"]);
  assert.equal(rest.length, AGNHOST.porter.maxArgs);
  assert.ok(!("args" in c), "porter takes no arguments");
  assert.equal(c.env.length, c.ports.length);
  for (const p of c.ports) {
    const served = c.env.filter((e) =>
      AGNHOST.porter.env[p.protocol].some((prefix) => e.name === `${prefix}${p.containerPort}`)
    );
    assert.equal(served.length, 1, `${p.protocol}/${p.containerPort} served exactly once`);
    assert.ok(served[0]!.value, "porter answers with the variable's value; it must not be empty");
    assert.equal(p.name, `serve-${p.containerPort}-${p.protocol.toLowerCase()}`);
  }
  // Every env var is one porter understands.
  const prefixes = Object.values(AGNHOST.porter.env).flat();
  for (const e of c.env) {
    assert.ok(prefixes.some((p) => e.name.startsWith(p) && /^\d+$/.test(e.name.slice(p.length))));
  }
});

Deno.test("agnhost: probes use only connect's flags, one host:port, brackets for IPv6", () => {
  for (
    const [host, family, want] of [["10.0.0.7", 4, "10.0.0.7:81"], [
      "fd00::7",
      6,
      "[fd00::7]:81",
    ]] as const
  ) {
    for (const protocol of MODEL_PROTOCOLS) {
      const cmd = connectCommand(host, family, 81, protocol, 1);
      assert.deepEqual(cmd.slice(0, 2), ["/agnhost", "connect"]);
      const positional = cmd.slice(2).filter((a) => !a.startsWith("--"));
      assert.deepEqual(positional, [want]);
      assert.equal(positional.length, AGNHOST.connect.args);
      const flags = Object.fromEntries(
        cmd.slice(2).filter((a) => a.startsWith("--")).map((a) =>
          a.slice(2).split("=") as [string, string]
        ),
      );
      for (const f of Object.keys(flags)) {
        assert.ok((AGNHOST.connect.flags as readonly string[]).includes(f), f);
      }
      assert.match(flags.timeout!, /^\d+s$/, "a Go duration");
      assert.ok((AGNHOST.connect.protocols as readonly string[]).includes(flags.protocol!));
      assert.equal(flags.protocol, protocol.toLowerCase());
    }
  }
});

Deno.test("agnhost: the driver's probes exec connect in the pod's porter container", async () => {
  const calls: string[][] = [];
  const x: Executor = {
    run: (cmd) => (calls.push(cmd), Promise.resolve({ code: 0, stdout: "", stderr: "" })),
    sysctl: () => Promise.resolve("1"),
  };
  const d = new KindDriver(x, {
    clusterName: "t",
    ipFamily: "ipv4",
    repoRoot: "/r/",
    keep: true,
    artifactsDir: "/tmp/x",
    probeTimeoutSeconds: 1,
    parallel: 1,
    settleRounds: 1,
    sleep: () => Promise.resolve(),
  }, () => {});
  assert.equal(await d.probe("y/b", "10.0.0.7", 4, "SCTP", 80), "allow");
  assert.deepEqual(calls[0], [
    "kubectl",
    "--context",
    "kind-t",
    "exec",
    "-n",
    "y",
    "b",
    "-c",
    SERVER_CONTAINER,
    "--",
    ...connectCommand("10.0.0.7", 4, 80, "SCTP", 1),
  ]);
  const pods = parseAllDocuments(d.modelManifests(all)).map((doc) => doc.toJS()).filter((o) =>
    o.kind === "Pod"
  );
  for (const p of pods) {
    assert.deepEqual(p.spec.containers.map((c: { name: string }) => c.name), [SERVER_CONTAINER]);
    assert.deepEqual(p.spec.containers[0].command, ["/agnhost", "porter"]);
  }
});
