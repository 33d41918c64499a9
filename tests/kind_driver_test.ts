/**
 * The kind driver replayed against a fake cluster: the exact sequence of commands and manifests
 * of a run (cluster, kindnet, image, agent, model, cases, uninstall), probes compared against the
 * case's matrix, a wrong cell reported as an expected-vs-observed diff, logs exported on any
 * failure, IPv6 and dual-stack runs, `--image`, the upstream suite, and the uninstall checks.
 * (Docker and kind are not on our machines; this is how the driver is checked here.)
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { type ConnectivityCase, loadCases } from "../e2e/cases/format.ts";
import { MODEL_PODS } from "../e2e/cases/model.ts";
import type { CommandResult, Executor, RunOptions } from "../e2e/kind/exec.ts";
import {
  KIND_NODE_IMAGE,
  KindDriver,
  KindError,
  KINDNET_WITHOUT_POLICY,
  type KindOptions,
  LOCAL_IMAGE,
} from "../e2e/kind/driver.ts";

const root = new URL("../", import.meta.url).pathname;
const cases = await loadCases(`${root}e2e/cases`);
const manifests = {
  install: await Deno.readTextFile(`${root}install.yaml`),
  uninstall: await Deno.readTextFile(`${root}uninstall.yaml`),
};
const ip4 = (pod: string) => `10.9.${MODEL_PODS.indexOf(pod)}.5`;
const ip6 = (pod: string) => `fd00:9::${MODEL_PODS.indexOf(pod) + 1}`;
/** The first worker's addresses: the `node` endpoint (its hostNetwork pod's podIPs). */
const NODE_IP4 = "172.18.0.3";
const NODE_IP6 = "fc00:f853:ccd:e793::3";
const podAt = new Map<string, string>([
  ...MODEL_PODS.flatMap((p): [string, string][] => [[ip4(p), p], [ip6(p), p]]),
  [NODE_IP4, "node"],
  [NODE_IP6, "node"],
]);
const CLUSTER_KINDS =
  /^kind: (ClusterNetworkPolicy|AdminNetworkPolicy|BaselineAdminNetworkPolicy)$/m;

// deno-lint-ignore no-explicit-any
type Obj = any;
/** Flips the cluster's answer for some probes (a wrong cell). */
type Tamper = (from: string, to: string, port: number, allowed: boolean) => boolean;

/**
 * A cluster that records everything it is asked. While the agent runs, probes answer as the
 * matrix of the case whose policies are applied says (all open without one); once the agent is
 * gone, as the node's rules would: blackholed into x while fail-closed rules are left, open once
 * they are cleaned (unless `cleanupMisses` names a node that keeps them).
 */
class FakeCluster implements Executor {
  calls: { cmd: string[]; stdin?: string; env?: Record<string, string> }[] = [];
  sysctls = new Map<string, string>([["net.ipv6.conf.all.forwarding", "0"]]);
  families: (4 | 6)[] = [4];
  localImages = new Set<string>();
  failOn?: (cmd: string) => boolean;
  upstreamExit = 0;
  cleanupMisses?: string;
  agent: "none" | "running" | "rules-kept" | "cleaned" = "none";
  failClosed = false;
  private active?: ConnectivityCase;
  constructor(private readonly known: ConnectivityCase[], private readonly tamper?: Tamper) {}

  private allowedByCase(from: string, to: string, port: number, protocol: string): boolean {
    let allowed = true;
    if (from === "node" || to === "node") {
      const p = this.active?.probes.find((p) =>
        p.from === from && p.to === to && p.port === port && p.protocol === protocol.toUpperCase()
      );
      allowed = p ? p.expect === "allow" : true;
    } else {
      const e = this.active?.expect.find((e) =>
        e.protocol === protocol.toUpperCase() && e.port === port
      );
      allowed = e ? e.matrix.get(from)?.get(to) === "allow" : true;
    }
    return this.tamper ? this.tamper(from, to, port, allowed) : allowed;
  }

  private rulesOn(node: string): boolean {
    return this.agent === "running" || this.agent === "rules-kept" ||
      (this.agent === "cleaned" && node === this.cleanupMisses);
  }

  run(cmd: string[], opts: RunOptions = {}): Promise<CommandResult> {
    this.calls.push({ cmd, stdin: opts.stdin, env: opts.env });
    const line = cmd.join(" ");
    const answer = (code: number, stdout = "") => Promise.resolve({ code, stdout, stderr: "" });
    if (this.failOn?.(line)) return answer(1);
    if (line === "kind version") return answer(0, "kind v0.29.0 go1.24.2 linux/amd64\n");
    if (line.includes("get daemonset/kindnet")) return answer(0, KINDNET_WITHOUT_POLICY);
    if (line.startsWith("docker image inspect")) {
      return answer(this.localImages.has(cmd.at(-1)!) ? 0 : 1);
    }
    if (cmd.includes("patch") && line.includes("--fail-open=false")) this.failClosed = true;
    if (cmd.includes("apply") && opts.stdin?.includes("name: kube-netpol\n")) {
      this.agent = "running";
    }
    if (cmd.includes("apply") && opts.stdin?.includes("name: kube-netpol-cleanup")) {
      this.agent = "cleaned";
    }
    if (cmd.includes("delete") && opts.stdin?.includes("name: kube-netpol\n")) {
      this.agent = this.failClosed ? "rules-kept" : "none";
    }
    const applied = opts.stdin ?? "";
    if (
      cmd.includes("apply") &&
      (applied.includes("kind: NetworkPolicy\n") || CLUSTER_KINDS.test(applied))
    ) {
      const names = parseAllDocuments(applied).map((d) => d.toJS()?.metadata?.name);
      this.active = this.known.find((c) =>
        [...c.policies, ...c.clusterPolicies].some((p) => names.includes(p.metadata.name))
      );
    }
    if (line.includes("delete networkpolicy --all")) this.active = undefined;
    if (cmd.includes("delete") && line.includes(".policy.networking.k8s.io ")) {
      this.active = undefined;
    }
    if (line.endsWith("-n knp-e2e-node get pod node -o json")) {
      const podIPs = this.families.map((f) => ({ ip: f === 4 ? NODE_IP4 : NODE_IP6 }));
      return answer(0, JSON.stringify({ status: { podIP: podIPs[0]!.ip, podIPs } }));
    }
    if (cmd[0] === "docker" && cmd[1] === "run") {
      const node = cmd.find((a) => a.startsWith("--network=container:"))!.split(":")[1]!;
      const rules = this.rulesOn(node);
      return answer(
        0,
        [
          "### iptables-nft-save",
          ...(rules ? [":KUBE-NETPOL - [0:0]", "-A FORWARD -m comment --comment kube-netpol"] : []),
          "### ip6tables-nft-save",
          "### iptables-legacy-save",
          "### ip6tables-legacy-save",
          "### ipset list -n",
          ...(rules ? ["kube-netpol-ingress-v4"] : []),
          "### nft list tables",
          "table ip filter",
        ].join("\n") + "\n",
      );
    }
    if (cmd.includes("get") && cmd.includes("pods")) {
      return answer(
        0,
        JSON.stringify({
          items: MODEL_PODS.map((p) => {
            const [namespace, name] = p.split("/");
            const podIPs = this.families.map((f) => ({ ip: f === 4 ? ip4(p) : ip6(p) }));
            return { metadata: { namespace, name }, status: { podIP: podIPs[0]!.ip, podIPs } };
          }),
        }),
      );
    }
    if (cmd[0]!.endsWith("ginkgo")) return answer(this.upstreamExit);
    const connect = cmd.indexOf("connect");
    if (connect > 0) {
      const hostPort = cmd[connect + 1]!;
      const ip = hostPort.startsWith("[")
        ? hostPort.slice(1, hostPort.indexOf("]"))
        : hostPort.split(":")[0]!;
      const port = Number(hostPort.slice(hostPort.lastIndexOf(":") + 1));
      const protocol = cmd.find((a) => a.startsWith("--protocol="))!.split("=")[1]!;
      const ns = cmd[cmd.indexOf("-n") + 1];
      const from = ns === "knp-e2e-node" ? "node" : `${ns}/${cmd[cmd.indexOf("-n") + 2]}`;
      const to = podAt.get(ip)!;
      let ok: boolean;
      if (this.agent === "running" && !this.failClosed) {
        ok = this.allowedByCase(from, to, port, protocol);
      } else if (this.agent === "running" || this.agent === "rules-kept") ok = !to.startsWith("x/");
      else ok = true;
      return answer(ok ? 0 : 1);
    }
    return answer(0);
  }

  sysctl(key: string, value?: string): Promise<string> {
    this.calls.push({ cmd: ["sysctl", key, ...(value === undefined ? [] : [value])] });
    if (value !== undefined) this.sysctls.set(key, value);
    return Promise.resolve(this.sysctls.get(key) ?? "0");
  }

  /** Every command but the probes, as text. */
  plan(): string[] {
    return this.calls.filter((c) => !c.cmd.includes("connect")).map((c) => c.cmd.join(" "));
  }
  probes() {
    return this.calls.filter((c) => c.cmd.includes("connect")).map((c) => c.cmd);
  }
  applied(): Obj[][] {
    return this.calls.filter((c) => c.cmd.includes("apply") && c.stdin).map((c) =>
      parseAllDocuments(c.stdin!).map((d) => d.toJS())
    );
  }
}

function driver(x: Executor, lines: string[] = [], o: Partial<KindOptions> = {}) {
  return new KindDriver(x, {
    clusterName: "t",
    ipFamily: "ipv4",
    repoRoot: "/repo/",
    keep: false,
    artifactsDir: "/tmp/knp-test",
    probeTimeoutSeconds: 1,
    parallel: 4,
    settleRounds: 2,
    sleep: () => Promise.resolve(),
    ...o,
  }, (l) => lines.push(l));
}

const byName = (n: string) => cases.find((c) => c.name === n)!;
const named = byName("named-port");
const tcpOnly = (c: ConnectivityCase): ConnectivityCase => ({
  ...c,
  expect: c.expect.filter((e) => e.protocol === "TCP"),
});

const K = "kubectl --context kind-t";
const scan = (node: string) => `docker run --rm --network=container:${node}`;

Deno.test("kind driver: the exact plan of a run with one case, uninstall included", async () => {
  const fake = new FakeCluster([named]);
  const results = await driver(fake).runAll([tcpOnly(named)], manifests);
  assert.deepEqual(results.map((r) => [r.name, r.pass]), [
    ["named-port", true],
    ["uninstall: fail-closed agent isolates x", true],
    ["uninstall: deleting install.yaml keeps fail-closed rules", true],
    ["uninstall: uninstall.yaml leaves no rule, chain, set or table", true],
    ["uninstall: no node refuses connections afterwards", true],
  ]);
  const plan = fake.plan().map((l) => (l.startsWith("docker run") ? l.split(" --cap-add")[0]! : l));
  assert.deepEqual(plan, [
    "docker version",
    "kind version",
    "kubectl version --client",
    `kind create cluster --name t --image ${KIND_NODE_IMAGE} --config - --wait 120s --retain`,
    `${K} -n kube-system set image daemonset/kindnet kindnet-cni=${KINDNET_WITHOUT_POLICY}`,
    `${K} -n kube-system rollout status daemonset/kindnet --timeout=180s`,
    `${K} -n kube-system get daemonset/kindnet -o jsonpath={.spec.template.spec.containers[*].image}`,
    `docker build -t ${LOCAL_IMAGE} /repo/`,
    `kind load docker-image ${LOCAL_IMAGE} --name t`,
    `${K} apply -f -`,
    `${K} -n kube-system rollout status daemonset/kube-netpol --timeout=180s`,
    `${K} apply -f -`,
    `${K} -n x wait --for=condition=Ready pod --all --timeout=300s`,
    `${K} -n y wait --for=condition=Ready pod --all --timeout=300s`,
    `${K} -n z wait --for=condition=Ready pod --all --timeout=300s`,
    `${K} get pods -A -l pod -o json`,
    `${K} apply -f -`,
    `${K} -n x delete networkpolicy --all --wait=true`,
    // uninstall: fail-closed agent, a policy selecting all of x, delete, check, clean, check
    `${K} -n kube-system patch daemonset/kube-netpol --type=json ` +
    `--patch=[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--fail-open=false"}]`,
    `${K} -n kube-system rollout status daemonset/kube-netpol --timeout=180s`,
    `${K} apply -f -`,
    `${K} delete -f - --cascade=foreground --wait=true --timeout=180s`,
    scan("t-control-plane"),
    scan("t-worker"),
    scan("t-worker2"),
    `${K} apply -f -`,
    `${K} -n kube-system rollout status daemonset/kube-netpol-cleanup --timeout=300s`,
    scan("t-control-plane"),
    scan("t-worker"),
    scan("t-worker2"),
    `${K} delete -f - --cascade=foreground --wait=true --timeout=120s`,
    `${K} -n x delete networkpolicy --all --wait=true`,
    "kind delete cluster --name t",
  ]);
  // The manifests: the agent with the image just built, the model, the case's policies, the
  // uninstall check's policy, uninstall.yaml with the same image in both containers.
  const [install, model, policies, check, uninstall] = fake.applied();
  const ds = install!.find((o) => o.kind === "DaemonSet");
  assert.equal(ds.spec.template.spec.containers[0].image, LOCAL_IMAGE);
  assert.equal(ds.spec.template.spec.containers[0].imagePullPolicy, "Never");
  const pods = model!.filter((o) => o.kind === "Pod");
  assert.equal(pods.length, 9);
  assert.deepEqual(pods[0]!.spec.containers.map((c: { name: string }) => c.name), ["server"]);
  assert.deepEqual(policies!.map((p) => p.metadata.name), ["a-named"]);
  assert.deepEqual(check!.map((p) => [p.metadata.namespace, p.spec]), [
    ["x", { podSelector: {}, policyTypes: ["Ingress"] }],
  ]);
  const cleanup = uninstall!.find((o) => o.kind === "DaemonSet").spec.template.spec;
  for (const c of [...cleanup.initContainers, ...cleanup.containers]) {
    assert.deepEqual([c.image, c.imagePullPolicy], [LOCAL_IMAGE, "Never"]);
  }
  // The install manifest deleted is the one applied.
  const deleted = fake.calls.find((c) => c.cmd.includes("delete") && c.cmd.includes("-f"))!;
  assert.equal(deleted.stdin, fake.calls.find((c) => c.cmd.includes("apply"))!.stdin);
  // Case probes: every ordered pair on each TCP column; then the four uninstall rounds.
  assert.equal(fake.probes().length, 72 * 2 + 72 * 3);
  assert.ok(
    fake.probes().every((p) =>
      p.join(" ").startsWith(`${K} exec -n `) && p.includes("server") && p.includes("/agnhost")
    ),
  );
});

Deno.test("kind driver: placeholders get the cluster's pod IPs", async () => {
  const c = byName("ipblock-pod-ips");
  const fake = new FakeCluster([c]);
  await driver(fake, [], { keep: true }).runAll([tcpOnly(c)], manifests);
  const applied = fake.applied().at(-1);
  assert.deepEqual(
    applied![0]!.spec.ingress[0].from.map((p: { ipBlock: { cidr: string } }) => p.ipBlock.cidr),
    [`${ip4("y/a")}/32`, `${ip4("y/b")}/32`],
  );
});

Deno.test("kind driver: a wrong cell fails the case; logs are exported before the cluster goes", async () => {
  const fake = new FakeCluster([named], (f, t, _p, ok) => (f === "y/b" && t === "x/a" ? !ok : ok));
  const lines: string[] = [];
  const [r] = await driver(fake, lines).runAll([tcpOnly(named)], manifests);
  assert.equal(r!.pass, false);
  assert.match(r!.diffs.join("\n"), /y\/b\s.*(\.>X|X>\.)/);
  assert.ok(lines.some((l) => l.includes("FAIL")));
  assert.deepEqual(fake.plan().slice(-2), [
    "kind export logs /tmp/knp-test/logs --name t",
    "kind delete cluster --name t",
  ]);
});

Deno.test("kind driver: an error mid-run still exports logs and deletes the cluster", async () => {
  const fake = new FakeCluster([named]);
  fake.failOn = (l) => l.includes("rollout status daemonset/kube-netpol ");
  await assert.rejects(
    () => driver(fake).runAll([named], manifests),
    (e) => e instanceof KindError && /rollout status daemonset\/kube-netpol/.test(e.message),
  );
  assert.deepEqual(fake.plan().slice(-2), [
    "kind export logs /tmp/knp-test/logs --name t",
    "kind delete cluster --name t",
  ]);
  assert.ok(!fake.probes().length);
});

Deno.test("kind driver: a kindnet that is not the pinned build stops the run", async () => {
  const fake = new FakeCluster([named]);
  const run = fake.run.bind(fake);
  fake.run = (cmd, opts) =>
    cmd.join(" ").includes("get daemonset/kindnet")
      ? Promise.resolve({
        code: 0,
        stdout: "docker.io/kindest/kindnetd:v20250512-df8de77b",
        stderr: "",
      })
      : run(cmd, opts);
  await assert.rejects(
    () => driver(fake).runAll([named], manifests),
    /another NetworkPolicy enforcer/,
  );
  assert.ok(!fake.plan().some((l) => l.startsWith("docker build")));
});

Deno.test("kind driver: missing prerequisites stop the run before anything is created", async () => {
  const calls: string[] = [];
  const x: Executor = {
    run(cmd) {
      calls.push(cmd.join(" "));
      return Promise.resolve({ code: cmd[0] === "kind" ? 127 : 0, stdout: "", stderr: "" });
    },
    sysctl: () => Promise.resolve("0"),
  };
  await assert.rejects(() => driver(x).runAll([named], manifests), /missing or not working: kind/);
  assert.ok(!calls.some((c) => c.includes("create")));
});

Deno.test("kind driver: uninstall that misses a node fails, naming what is left", async () => {
  const fake = new FakeCluster([named]);
  fake.cleanupMisses = "t-worker2";
  const results = await driver(fake).runAll([tcpOnly(named)], manifests);
  const left = results.find((r) => r.name.includes("leaves no rule"))!;
  assert.equal(left.pass, false);
  assert.ok(left.diffs.length > 0);
  assert.ok(
    left.diffs.every((d) => d.startsWith("left behind: t-worker2: ")),
    left.diffs.join("\n"),
  );
  assert.ok(left.diffs.some((d) => d.includes("ipset list -n: kube-netpol-ingress-v4")));
  assert.ok(fake.plan().includes("kind export logs /tmp/knp-test/logs --name t"));
});

Deno.test("kind driver: a fail-closed exit that leaves nothing is reported (uninstall would be untested)", async () => {
  const fake = new FakeCluster([named]);
  const run = fake.run.bind(fake);
  fake.run = (cmd, opts) => {
    if (cmd.includes("delete") && opts?.stdin?.includes("name: kube-netpol\n")) {
      fake.failClosed = false;
    }
    return run(cmd, opts);
  };
  const results = await driver(fake).runAll([tcpOnly(named)], manifests);
  const kept = results.find((r) => r.name.includes("keeps fail-closed rules"))!;
  assert.equal(kept.pass, false);
  assert.ok(kept.diffs.some((d) => d.includes("t-control-plane: no kube-netpol rules left")));
});

Deno.test("kind driver: --keep leaves the cluster and the agent; no uninstall", async () => {
  const fake = new FakeCluster([named]);
  const lines: string[] = [];
  await driver(fake, lines, { keep: true }).runAll([tcpOnly(named)], manifests);
  assert.ok(!fake.plan().some((l) => l.includes("delete cluster") || l.includes("patch")));
  assert.ok(lines.includes("kept cluster kind-t"));
});

Deno.test("kind driver: dual-stack probes both families and enables IPv6 forwarding for the run", async () => {
  const ipblock = byName("ipblock-except");
  const fake = new FakeCluster([named, ipblock]);
  fake.families = [4, 6];
  const lines: string[] = [];
  const results = await driver(fake, lines, { ipFamily: "dual" }).runAll(
    [tcpOnly(named), tcpOnly(ipblock)],
    manifests,
  );
  const create = fake.calls.find((c) => c.cmd.includes("create"))!;
  assert.match(create.stdin!, /ipFamily: dual/);
  // Forwarding read, enabled before the cluster, reset after it is deleted.
  const order = fake.calls.map((c) => c.cmd.join(" "));
  const at = (s: string) => order.findIndex((l) => l.startsWith(s));
  assert.ok(at("sysctl net.ipv6.conf.all.forwarding 1") < at("kind create"));
  assert.ok(at("sysctl net.ipv6.conf.all.forwarding 0") > at("kind delete"));
  assert.equal(fake.sysctls.get("net.ipv6.conf.all.forwarding"), "0");
  // named-port in both families; IPv6 hosts in brackets.
  const casePorbes = fake.probes().slice(0, 72 * 2 * 2);
  assert.equal(casePorbes.filter((p) => p.some((a) => a.startsWith("["))).length, 72 * 2);
  assert.ok(casePorbes.some((p) => p.includes(`[${ip6("x/a")}]:81`)));
  // ipblock-except names 0.0.0.0/0: IPv4 only, and it says why.
  const r = results.find((x) => x.name === "ipblock-except")!;
  assert.equal(r.pass, true);
  assert.deepEqual(r.skipped, ["IPv6: ipBlock 0.0.0.0/0 is an IPv4 range"]);
  assert.ok(lines.includes("  skipped IPv6: ipBlock 0.0.0.0/0 is an IPv4 range"));
});

Deno.test("kind driver: IPv6 fills pod /32s as /128s and skips a case of IPv4 ranges", async () => {
  const fake = new FakeCluster(cases);
  fake.families = [6];
  fake.sysctls.set("net.ipv6.conf.all.forwarding", "1");
  const c = byName("ipblock-pod-ips");
  const results = await driver(fake, [], { ipFamily: "ipv6", keep: true }).runAll(
    [tcpOnly(c), byName("ipblock-except")],
    manifests,
  );
  const policy = fake.applied().at(-1);
  assert.deepEqual(
    policy![0]!.spec.ingress[0].from.map((p: { ipBlock: { cidr: string } }) => p.ipBlock.cidr),
    [`${ip6("y/a")}/128`, `${ip6("y/b")}/128`],
  );
  const skipped = results.find((r) => r.name === "ipblock-except")!;
  assert.deepEqual(skipped.skipped, ["IPv6: ipBlock 0.0.0.0/0 is an IPv4 range"]);
  // Already on: not touched.
  assert.ok(!fake.calls.some((x) => x.cmd.join(" ") === "sysctl net.ipv6.conf.all.forwarding 1"));
});

Deno.test("kind driver: IPv6 forwarding that cannot be enabled stops the run before the cluster", async () => {
  const fake = new FakeCluster(cases);
  fake.sysctl = (
    _k,
    v,
  ) => (v === undefined ? Promise.resolve("0") : Promise.reject(new Error("permission denied")));
  await assert.rejects(
    () => driver(fake, [], { ipFamily: "ipv6" }).runAll([named], manifests),
    /sudo sysctl -w net.ipv6.conf.all.forwarding=1/,
  );
  assert.ok(!fake.plan().some((l) => l.startsWith("kind create")));
});

Deno.test("kind driver: --image skips the build, loads a local image, pulls a remote one", async () => {
  for (const local of [true, false]) {
    const fake = new FakeCluster([named]);
    const ref = "registry.example/kube-netpol:v9";
    if (local) fake.localImages.add(ref);
    await driver(fake, [], { image: ref, keep: true }).runAll([tcpOnly(named)], manifests);
    const plan = fake.plan();
    assert.ok(!plan.some((l) => l.startsWith("docker build")));
    assert.ok(plan.includes(`docker image inspect --format {{.Id}} ${ref}`));
    assert.equal(plan.includes(`kind load docker-image ${ref} --name t`), local);
    const ds = fake.applied()[0]!.find((o) => o.kind === "DaemonSet");
    assert.deepEqual(
      [
        ds.spec.template.spec.containers[0].image,
        ds.spec.template.spec.containers[0].imagePullPolicy,
      ],
      [ref, "IfNotPresent"],
    );
  }
});

Deno.test("kind driver: the upstream Netpol suite runs on parallel ginkgo nodes as upstream CI does", async () => {
  for (const exit of [0, 1]) {
    const fake = new FakeCluster([named]);
    fake.upstreamExit = exit;
    const results = await driver(fake, [], {
      keep: true,
      upstream: { e2eTest: ".tools/k8s-test/e2e.test", nodes: 25, skip: "" },
    }).runAll([tcpOnly(named)], manifests);
    const plan = fake.plan();
    const at = plan.indexOf(
      "kind export kubeconfig --name t --kubeconfig /tmp/knp-test/kubeconfig",
    );
    assert.ok(at > 0);
    assert.equal(
      plan[at + 1],
      ".tools/k8s-test/ginkgo --nodes=25 --focus=Netpol .tools/k8s-test/e2e.test -- " +
        "--kubeconfig=/tmp/knp-test/kubeconfig --provider=local --dump-logs-on-failure=false " +
        "--report-dir=/tmp/knp-test/upstream --disable-log-dump=true",
    );
    assert.deepEqual(fake.calls.find((c) => c.cmd[0]!.endsWith("ginkgo"))!.env, {
      KUBERNETES_CONFORMANCE_TEST: "y",
    });
    const r = results.find((x) => x.name.startsWith("upstream"))!;
    assert.equal(r.pass, exit === 0);
  }
});

Deno.test("kind driver: the model serves SCTP only when a selected case probes it", async () => {
  const envNames = async (cs: ConnectivityCase[]) => {
    const fake = new FakeCluster(cases);
    await driver(fake, [], { keep: true }).runAll(cs, manifests);
    const pod = fake.applied()[1]!.find((o) => o.kind === "Pod");
    return pod.spec.containers[0].env.map((e: { name: string }) => e.name);
  };
  assert.deepEqual(await envNames([tcpOnly(named)]), [
    "SERVE_PORT_80",
    "SERVE_UDP_PORT_80",
    "SERVE_PORT_81",
    "SERVE_UDP_PORT_81",
  ]);
  assert.ok((await envNames([byName("sctp-port")])).includes("SERVE_SCTP_PORT_80"));
});

const tierCases = await loadCases(`${root}e2e/cases/tiers`);
const tierByName = (n: string) => tierCases.find((c) => c.name === n)!;

Deno.test("kind driver: a tier case installs the CRDs while the agent runs, then applies, probes the node and deletes", async () => {
  const nodes = tierByName("tier-egress-nodes-peers");
  const fake = new FakeCluster([named, nodes]);
  const sleeps: number[] = [];
  const results = await driver(fake, [], {
    keep: true,
    sleep: (ms) => {
      sleeps.push(ms);
      return Promise.resolve();
    },
  }).runAll([tcpOnly(named), nodes], manifests);
  assert.deepEqual(results.map((r) => [r.name, r.pass]), [
    ["named-port", true],
    ["tier-egress-nodes-peers", true],
  ]);
  const plan = fake.plan();
  const at = (s: string) => plan.findIndex((l) => l.startsWith(s));
  const crds = plan.filter((l) => l.startsWith(`${K} apply --server-side -f https://`));
  assert.deepEqual(crds.map((l) => l.split("/").at(-1)), [
    "policy.networking.k8s.io_clusternetworkpolicies.yaml",
    "policy.networking.k8s.io_adminnetworkpolicies.yaml",
    "policy.networking.k8s.io_baselineadminnetworkpolicies.yaml",
  ]);
  // A cluster without the CRDs first: the agent and the NetworkPolicy case; then the CRDs, and
  // the agent's recheck interval waited out before the first cluster policy.
  assert.ok(at(`${K} -n kube-system rollout status daemonset/kube-netpol`) < at(crds[0]!));
  assert.ok(at(`${K} -n x delete networkpolicy --all`) < at(crds[0]!), "after the NP case");
  assert.equal(
    plan[at(crds[0]!) + 3],
    `${K} wait --for=condition=Established --timeout=60s ` +
      "crd/clusternetworkpolicies.policy.networking.k8s.io " +
      "crd/adminnetworkpolicies.policy.networking.k8s.io " +
      "crd/baselineadminnetworkpolicies.policy.networking.k8s.io",
  );
  assert.ok(sleeps.includes(40_000), `waited out the 30 s recheck: ${sleeps}`);
  assert.equal(
    plan.at(-1),
    `${K} delete clusternetworkpolicies.policy.networking.k8s.io x-to-nodes --ignore-not-found ` +
      "--wait=true",
  );
  // The cluster policy as the case wrote it; the node pod: hostNetwork on the first worker.
  const applied = fake.applied();
  assert.deepEqual(applied.at(-1)!.map((o) => [o.kind, o.metadata.name]), [
    ["ClusterNetworkPolicy", "x-to-nodes"],
  ]);
  const nodePod = applied[1]!.find((o) => o.kind === "Pod" && o.metadata.name === "node");
  assert.equal(nodePod.metadata.namespace, "knp-e2e-node");
  assert.equal(nodePod.spec.hostNetwork, true);
  assert.deepEqual(nodePod.spec.nodeSelector, { "kubernetes.io/hostname": "t-worker" });
  // The node probes: to the node's address from the pods, from the node pod to x/a.
  const probes = fake.probes().map((p) => p.join(" "));
  assert.ok(probes.includes(
    `${K} exec -n x a -c server -- /agnhost connect ${NODE_IP4}:81 --timeout=1s --protocol=tcp`,
  ));
  assert.ok(probes.includes(
    `${K} exec -n knp-e2e-node node -c server -- /agnhost connect ${ip4("x/a")}:81 ` +
      "--timeout=1s --protocol=udp",
  ));
});

Deno.test("kind driver: a node probe that differs fails the case, named", async () => {
  const nodes = tierByName("tier-egress-nodes-peers");
  const fake = new FakeCluster(
    [nodes],
    (f, t, p, ok) => (f === "x/a" && t === "node" && p === 81 ? !ok : ok),
  );
  const [r] = await driver(fake, [], { keep: true }).runAll([nodes], manifests);
  assert.equal(r!.pass, false);
  assert.deepEqual(r!.diffs, [
    "probe x/a -> node TCP/81: expected deny, observed allow",
  ]);
});

Deno.test("kind driver: NetworkPolicy-only runs need no CRD and no node pod", async () => {
  const fake = new FakeCluster([named]);
  await driver(fake, [], { keep: true }).runAll([tcpOnly(named)], manifests);
  assert.ok(!fake.plan().some((l) => l.includes("policy.networking.k8s.io")));
  assert.ok(!fake.applied()[1]!.some((o) => o.metadata.namespace === "knp-e2e-node"));
});
