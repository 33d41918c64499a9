/**
 * The kind e2e driver: a real 3-node cluster (1 control plane + 2 workers) whose CNI does not
 * enforce NetworkPolicy, kube-netpol installed from this repository's Dockerfile and
 * install.yaml, the connectivity model deployed with real servers, and every case of e2e/cases
 * probed from inside the client pods. All outside calls go through an Executor (exec.ts).
 *
 * CNI: kind's default kindnet, pinned to kindnetd v20230511, which predates kindnet's embedded
 * NetworkPolicy enforcer (recent kindnet images enforce policies themselves and would hide our
 * results). Servers and the probe client are the upstream e2e agnhost image, as the Kubernetes
 * `Netpol` suite uses them.
 */
import { stringify } from "yaml";
import {
  type ConnectivityCase,
  formatMatrixDiff,
  type Matrix,
  resolvePlaceholders,
  type Verdict,
} from "../cases/format.ts";
import {
  MODEL_PODS,
  MODEL_PORTS,
  MODEL_PROTOCOLS,
  modelNamespaces,
  portName,
} from "../cases/model.ts";
import type { Protocol } from "../../src/net/protocol.ts";
import type { Executor } from "./exec.ts";

export const KIND_NODE_IMAGE = "kindest/node:v1.31.4";
export const KINDNET_WITHOUT_POLICY = "docker.io/kindest/kindnetd:v20230511-dc714da8";
export const AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.53";
export const LOCAL_IMAGE = "kube-netpol:e2e";

export interface KindOptions {
  clusterName: string;
  ipFamily: "ipv4" | "ipv6" | "dual";
  repoRoot: string;
  keep: boolean;
  /** Upstream e2e.test binary to run with --ginkgo.focus=Netpol after our cases. */
  e2eTestBinary?: string;
  probeTimeoutSeconds: number;
  /** Probes in flight at once. */
  parallel: number;
  /** Probe rounds per case while waiting for a policy change to be enforced. */
  settleRounds: number;
  sleep: (ms: number) => Promise<void>;
  /** Only print the plan: probes are issued but not compared. */
  dryRun?: boolean;
}

export interface CaseResult {
  name: string;
  pass: boolean;
  diffs: string[];
}

export class KindError extends Error {
  override name = "KindError";
}

export class KindDriver {
  constructor(
    private readonly x: Executor,
    private readonly o: KindOptions,
    private readonly log: (line: string) => void,
  ) {}

  private async must(cmd: string[], stdin?: string, timeoutMs?: number): Promise<string> {
    const r = await this.x.run(cmd, { stdin, timeoutMs });
    if (r.code !== 0) {
      throw new KindError(`${cmd.join(" ")} failed (exit ${r.code}): ${r.stderr.trim()}`);
    }
    return r.stdout;
  }

  private kubectl(args: string[], stdin?: string, timeoutMs?: number): Promise<string> {
    return this.must(
      ["kubectl", "--context", `kind-${this.o.clusterName}`, ...args],
      stdin,
      timeoutMs,
    );
  }

  /** docker, kind and kubectl must be there before anything is created. */
  async checkPrerequisites(): Promise<void> {
    const missing: string[] = [];
    for (
      const cmd of [["docker", "version"], ["kind", "version"], ["kubectl", "version", "--client"]]
    ) {
      const r = await this.x.run(cmd, { timeoutMs: 30_000 }).catch(() => ({
        code: 127,
        stdout: "",
        stderr: "",
      }));
      if (r.code !== 0) missing.push(cmd[0]!);
    }
    if (missing.length) {
      throw new KindError(
        `missing or not working: ${
          missing.join(", ")
        }. The kind e2e needs a running Docker engine, ` +
          "kind (https://kind.sigs.k8s.io) and kubectl on PATH. Without them, `deno task e2e:lab` " +
          "runs the same cases on a network-namespace lab.",
      );
    }
  }

  kindConfig(): string {
    return stringify({
      kind: "Cluster",
      apiVersion: "kind.x-k8s.io/v1alpha4",
      networking: { ipFamily: this.o.ipFamily },
      nodes: [{ role: "control-plane" }, { role: "worker" }, { role: "worker" }],
    });
  }

  async createCluster(): Promise<void> {
    this.log(`creating kind cluster ${this.o.clusterName} (${this.o.ipFamily})`);
    await this.must(
      [
        "kind",
        "create",
        "cluster",
        "--name",
        this.o.clusterName,
        "--image",
        KIND_NODE_IMAGE,
        "--config",
        "-",
        "--wait",
        "120s",
      ],
      this.kindConfig(),
      600_000,
    );
    // Swap kindnet for a build without its own NetworkPolicy enforcer.
    await this.kubectl([
      "-n",
      "kube-system",
      "set",
      "image",
      "daemonset/kindnet",
      `kindnet-cni=${KINDNET_WITHOUT_POLICY}`,
    ]);
    await this.kubectl(
      ["-n", "kube-system", "rollout", "status", "daemonset/kindnet", "--timeout=180s"],
      undefined,
      200_000,
    );
  }

  async buildAndLoadImage(): Promise<void> {
    this.log(`building ${LOCAL_IMAGE} from the Dockerfile`);
    await this.must(["docker", "build", "-t", LOCAL_IMAGE, this.o.repoRoot], undefined, 900_000);
    await this.must(
      ["kind", "load", "docker-image", LOCAL_IMAGE, "--name", this.o.clusterName],
      undefined,
      300_000,
    );
  }

  /** install.yaml with the image swapped for the one just built (never pulled). */
  installManifest(installYaml: string): string {
    return installYaml.replace(
      /^(\s*)image: \S+$/m,
      (_, indent) => `${indent}image: ${LOCAL_IMAGE}\n${indent}imagePullPolicy: Never`,
    );
  }

  async installAgent(installYaml: string): Promise<void> {
    await this.kubectl(["apply", "-f", "-"], this.installManifest(installYaml));
    await this.kubectl(
      ["-n", "kube-system", "rollout", "status", "daemonset/kube-netpol", "--timeout=180s"],
      undefined,
      200_000,
    );
  }

  /** The model with real servers: one agnhost container per port and protocol, as upstream. */
  modelManifests(): string {
    const objects: unknown[] = [...modelNamespaces()];
    for (const key of MODEL_PODS) {
      const [namespace, name] = key.split("/") as [string, string];
      objects.push({
        apiVersion: "v1",
        kind: "Pod",
        metadata: { namespace, name, labels: { pod: name } },
        spec: {
          terminationGracePeriodSeconds: 0,
          containers: MODEL_PORTS.flatMap((port) =>
            MODEL_PROTOCOLS.map((protocol) => ({
              name: `cont-${port}-${protocol.toLowerCase()}`,
              image: AGNHOST_IMAGE,
              args: [
                "serve-hostname",
                `--${protocol.toLowerCase()}`,
                "--http=false",
                `--port=${port}`,
              ],
              ports: [{ name: portName(port, protocol), containerPort: port, protocol }],
            }))
          ),
        },
      });
    }
    return objects.map((o) => stringify(o)).join("---\n");
  }

  /** Deploy the model and return each pod's IP (the first of its IPs). */
  async deployModel(): Promise<Map<string, string>> {
    await this.kubectl(["apply", "-f", "-"], this.modelManifests());
    for (const ns of ["x", "y", "z"]) {
      await this.kubectl(
        ["-n", ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=300s"],
        undefined,
        320_000,
      );
    }
    const list = JSON.parse(
      await this.kubectl(["get", "pods", "-A", "-l", "pod", "-o", "json"]) || '{"items":[]}',
    );
    const ips = new Map<string, string>();
    for (const p of list.items ?? []) {
      ips.set(
        `${p.metadata.namespace}/${p.metadata.name}`,
        p.status?.podIPs?.[0]?.ip ?? p.status?.podIP,
      );
    }
    for (const key of MODEL_PODS) if (!ips.get(key)) ips.set(key, `<ip of ${key}>`);
    return ips;
  }

  /** One connection attempt from inside the client pod, as the upstream suite does. */
  async probe(from: string, toIP: string, protocol: Protocol, port: number): Promise<Verdict> {
    const [ns, pod] = from.split("/") as [string, string];
    const host = toIP.includes(":") ? `[${toIP}]` : toIP;
    const r = await this.x.run([
      "kubectl",
      "--context",
      `kind-${this.o.clusterName}`,
      "exec",
      "-n",
      ns,
      pod,
      "-c",
      `cont-${port}-${protocol.toLowerCase()}`,
      "--",
      "/agnhost",
      "connect",
      `${host}:${port}`,
      `--timeout=${this.o.probeTimeoutSeconds}s`,
      `--protocol=${protocol.toLowerCase()}`,
    ], { timeoutMs: (this.o.probeTimeoutSeconds + 20) * 1000 });
    return r.code === 0 ? "allow" : "deny";
  }

  private async probeAll(
    ips: Map<string, string>,
    protocol: Protocol,
    port: number,
  ): Promise<Matrix> {
    const pairs = MODEL_PODS.flatMap((f) =>
      MODEL_PODS.filter((t) => t !== f).map((t) => [f, t] as const)
    );
    const observed: Matrix = new Map(MODEL_PODS.map((p) => [p, new Map()]));
    let next = 0;
    const worker = async () => {
      while (next < pairs.length) {
        const [f, t] = pairs[next++]!;
        observed.get(f)!.set(t, await this.probe(f, ips.get(t)!, protocol, port));
      }
    };
    await Promise.all(Array.from({ length: this.o.parallel }, worker));
    return observed;
  }

  async runCase(c: ConnectivityCase, ips: Map<string, string>): Promise<CaseResult> {
    this.log(`case ${c.name}: ${c.description}`);
    const policies = resolvePlaceholders(c.policies, (n, p) => ips.get(`${n}/${p}`)!);
    if (policies.length) {
      await this.kubectl(
        ["apply", "-f", "-"],
        policies.map((p) => stringify(p)).join("---\n"),
      );
    }
    const diffs: string[] = [];
    try {
      for (const e of c.expect) {
        if (this.o.dryRun) {
          await this.probeAll(ips, e.protocol, e.port);
          continue;
        }
        // A policy change takes a moment to reach every node: probe until it matches, bounded.
        let observed: Matrix = new Map();
        for (let round = 0; round < this.o.settleRounds; round++) {
          observed = await this.probeAll(ips, e.protocol, e.port);
          if (sameAs(e.matrix, observed)) break;
          if (round + 1 < this.o.settleRounds) await this.o.sleep(3000);
        }
        if (!sameAs(e.matrix, observed)) {
          diffs.push(`${e.protocol}/${e.port}:\n${formatMatrixDiff(e.matrix, observed)}`);
        }
      }
    } finally {
      for (const n of new Set(policies.map((p) => p.metadata.namespace ?? "default"))) {
        await this.kubectl(["-n", n, "delete", "networkpolicy", "--all", "--wait=true"]);
      }
    }
    for (const d of diffs) this.log(`  expected vs observed, ${d}`);
    this.log(`  ${this.o.dryRun ? "(dry run: not compared)" : diffs.length ? "FAIL" : "PASS"}`);
    return { name: c.name, pass: diffs.length === 0, diffs };
  }

  async runUpstreamSuite(): Promise<boolean> {
    if (!this.o.e2eTestBinary) return true;
    const kubeconfig = await this.must(["kind", "get", "kubeconfig", "--name", this.o.clusterName]);
    const path = await Deno.makeTempFile({ suffix: ".kubeconfig" }).catch(() =>
      "/tmp/kind-e2e.kubeconfig"
    );
    await Deno.writeTextFile(path, kubeconfig).catch(() => {});
    const r = await this.x.run([
      this.o.e2eTestBinary,
      `--kubeconfig=${path}`,
      "--provider=local",
      "--ginkgo.focus=Netpol",
      "--ginkgo.skip=Feature:SCTPConnectivity|Serial",
      "--ginkgo.timeout=2h",
    ], { timeoutMs: 2 * 3600_000 });
    this.log(r.stdout.split("\n").slice(-30).join("\n"));
    return r.code === 0;
  }

  async deleteCluster(): Promise<void> {
    await this.must(
      ["kind", "delete", "cluster", "--name", this.o.clusterName],
      undefined,
      300_000,
    );
  }

  /** The whole run; the cluster is deleted at the end unless `keep`. */
  async runAll(cases: ConnectivityCase[], installYaml: string): Promise<CaseResult[]> {
    await this.checkPrerequisites();
    await this.createCluster();
    const results: CaseResult[] = [];
    try {
      await this.buildAndLoadImage();
      await this.installAgent(installYaml);
      const ips = await this.deployModel();
      for (const c of cases) results.push(await this.runCase(c, ips));
      const upstream = await this.runUpstreamSuite();
      if (!upstream) results.push({ name: "upstream Netpol suite", pass: false, diffs: [] });
    } finally {
      if (this.o.keep) this.log(`kept cluster kind-${this.o.clusterName}`);
      else await this.deleteCluster();
    }
    return results;
  }
}

function sameAs(expected: Matrix, observed: Matrix): boolean {
  for (const [from, row] of observed) {
    for (const [to, v] of row) if (expected.get(from)?.get(to) !== v) return false;
  }
  return true;
}
