/**
 * The kind driver replayed against a fake cluster: the exact sequence of commands and manifests
 * for one case, that probes compare against the case's matrix, and that a wrong cell is reported
 * as an expected-vs-observed diff. (Docker and kind are not on our machines; this is how the
 * driver is checked here.)
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { type ConnectivityCase, loadCases } from "../e2e/cases/format.ts";
import { MODEL_PODS } from "../e2e/cases/model.ts";
import type { CommandResult, Executor } from "../e2e/kind/exec.ts";
import { KindDriver, KINDNET_WITHOUT_POLICY, LOCAL_IMAGE } from "../e2e/kind/driver.ts";

const root = new URL("../", import.meta.url).pathname;
const cases = await loadCases(`${root}e2e/cases`);
const installYaml = await Deno.readTextFile(`${root}install.yaml`);
const ipOf = (pod: string) => `10.9.${MODEL_PODS.indexOf(pod)}.5`;
const podAt = new Map(MODEL_PODS.map((p) => [ipOf(p), p]));

/** A cluster that answers every probe as `truth` says, and records everything it was asked. */
class FakeCluster implements Executor {
  calls: { cmd: string[]; stdin?: string }[] = [];
  constructor(private readonly truth: (from: string, to: string, port: number) => boolean) {}
  run(cmd: string[], opts: { stdin?: string } = {}): Promise<CommandResult> {
    this.calls.push({ cmd, stdin: opts.stdin });
    const ok = (stdout = "") => Promise.resolve({ code: 0, stdout, stderr: "" });
    if (cmd.includes("get") && cmd.includes("pods")) {
      return ok(JSON.stringify({
        items: MODEL_PODS.map((p) => {
          const [namespace, name] = p.split("/");
          return { metadata: { namespace, name }, status: { podIP: ipOf(p) } };
        }),
      }));
    }
    const connect = cmd.indexOf("connect");
    if (connect > 0) {
      const [ip, port] = cmd[connect + 1]!.split(":");
      const from = `${cmd[cmd.indexOf("-n") + 1]}/${cmd[cmd.indexOf("-n") + 2]}`;
      const allowed = this.truth(from, podAt.get(ip!)!, Number(port));
      return Promise.resolve({ code: allowed ? 0 : 1, stdout: "", stderr: "" });
    }
    return ok();
  }
}

function driver(x: Executor, lines: string[] = []) {
  return new KindDriver(x, {
    clusterName: "t",
    ipFamily: "ipv4",
    repoRoot: "/repo/",
    keep: false,
    probeTimeoutSeconds: 1,
    parallel: 4,
    settleRounds: 2,
    sleep: () => Promise.resolve(),
  }, (l) => lines.push(l));
}

const named = cases.find((c) => c.name === "named-port")!;
const matrixTruth = (c: ConnectivityCase) => (from: string, to: string, port: number) =>
  c.expect.find((e) => e.protocol === "TCP" && e.port === port)?.matrix.get(from)?.get(to) ===
    "allow";

Deno.test("kind driver: the exact plan of a run with one case", async () => {
  const fake = new FakeCluster(matrixTruth(named));
  const results = await driver(fake).runAll([{
    ...named,
    expect: named.expect.filter((e) => e.protocol === "TCP"),
  }], installYaml);
  assert.deepEqual(results, [{ name: "named-port", pass: true, diffs: [] }]);
  const plan = fake.calls.filter((c) => !c.cmd.includes("connect")).map((c) => c.cmd.join(" "));
  assert.deepEqual(plan, [
    "docker version",
    "kind version",
    "kubectl version --client",
    "kind create cluster --name t --image kindest/node:v1.31.4 --config - --wait 120s",
    `kubectl --context kind-t -n kube-system set image daemonset/kindnet kindnet-cni=${KINDNET_WITHOUT_POLICY}`,
    "kubectl --context kind-t -n kube-system rollout status daemonset/kindnet --timeout=180s",
    `docker build -t ${LOCAL_IMAGE} /repo/`,
    `kind load docker-image ${LOCAL_IMAGE} --name t`,
    "kubectl --context kind-t apply -f -",
    "kubectl --context kind-t -n kube-system rollout status daemonset/kube-netpol --timeout=180s",
    "kubectl --context kind-t apply -f -",
    "kubectl --context kind-t -n x wait --for=condition=Ready pod --all --timeout=300s",
    "kubectl --context kind-t -n y wait --for=condition=Ready pod --all --timeout=300s",
    "kubectl --context kind-t -n z wait --for=condition=Ready pod --all --timeout=300s",
    "kubectl --context kind-t get pods -A -l pod -o json",
    "kubectl --context kind-t apply -f -",
    "kubectl --context kind-t -n x delete networkpolicy --all --wait=true",
    "kind delete cluster --name t",
  ]);
  // The manifests: the agent with the image just built, the model, the case's policies.
  const applied = fake.calls.filter((c) => c.cmd.at(-1) === "-" && c.cmd.includes("apply"));
  const [install, model, policies] = applied.map((c) =>
    parseAllDocuments(c.stdin!).map((d) => d.toJS())
  );
  const ds = install!.find((o) => o.kind === "DaemonSet");
  assert.equal(ds.spec.template.spec.containers[0].image, LOCAL_IMAGE);
  assert.equal(ds.spec.template.spec.containers[0].imagePullPolicy, "Never");
  const pods = model!.filter((o) => o.kind === "Pod");
  assert.equal(pods.length, 9);
  assert.deepEqual(
    pods[0].spec.containers.map((c: { ports: { name: string }[] }) => c.ports[0]!.name),
    [
      "serve-80-tcp",
      "serve-80-udp",
      "serve-80-sctp",
      "serve-81-tcp",
      "serve-81-udp",
      "serve-81-sctp",
    ],
  );
  assert.deepEqual(policies!.map((p) => p.metadata.name), ["a-named"]);
  // Every ordered pair of distinct pods was probed on each TCP column, from inside the client.
  const probes = fake.calls.filter((c) => c.cmd.includes("connect"));
  assert.equal(probes.length, 72 * 2);
  assert.ok(probes.every((p) => p.cmd.includes("exec") && p.cmd.includes("/agnhost")));
});

Deno.test("kind driver: placeholders get the cluster's pod IPs", async () => {
  const c = cases.find((x) => x.name === "ipblock-pod-ips")!;
  const fake = new FakeCluster(matrixTruth(c));
  await driver(fake).runAll(
    [{ ...c, expect: c.expect.filter((e) => e.protocol === "TCP") }],
    installYaml,
  );
  const applied = fake.calls.filter((x) => x.cmd.includes("apply")).at(-1)!;
  assert.match(applied.stdin!, new RegExp(`cidr: ${ipOf("y/a").replaceAll(".", "\\.")}/32`));
});

Deno.test("kind driver: a wrong cell fails the case with an expected-vs-observed matrix", async () => {
  const truth = matrixTruth(named);
  const fake = new FakeCluster((
    f,
    t,
    p,
  ) => (f === "y/b" && t === "x/a" ? !truth(f, t, p) : truth(f, t, p)));
  const lines: string[] = [];
  const [r] = await driver(fake, lines).runAll([{
    ...named,
    expect: named.expect.filter((e) => e.protocol === "TCP"),
  }], installYaml);
  assert.equal(r!.pass, false);
  assert.match(r!.diffs.join("\n"), /y\/b\s.*(\.>X|X>\.)/);
  assert.ok(lines.some((l) => l.includes("FAIL")));
  assert.ok(fake.calls.at(-1)!.cmd.join(" ") === "kind delete cluster --name t", "cluster deleted");
});

Deno.test("kind driver: missing prerequisites stop the run before anything is created", async () => {
  const calls: string[] = [];
  const x: Executor = {
    run(cmd) {
      calls.push(cmd.join(" "));
      return Promise.resolve({ code: cmd[0] === "kind" ? 127 : 0, stdout: "", stderr: "" });
    },
  };
  await assert.rejects(
    () => driver(x).runAll([named], installYaml),
    /missing or not working: kind/,
  );
  assert.ok(!calls.some((c) => c.includes("create")));
});
