/**
 * The kind e2e driver: a real 3-node cluster (1 control plane + 2 workers) whose CNI does not
 * enforce NetworkPolicy, kube-netpol installed from this repository's Dockerfile (or `--image`)
 * and install.yaml, the connectivity model deployed with agnhost servers, every selected case of
 * e2e/cases and e2e/cases/tiers probed from inside the client pods, optionally the upstream
 * Netpol suite, and at the end the documented uninstall, checked on every node. All outside calls
 * go through an Executor (exec.ts); versions.ts says where each pinned image was proven.
 *
 * The cluster-tier cases: the agent starts on a cluster without the network-policy-api CRDs (so
 * the NetworkPolicy cases before them run as any cluster without them would); the CRDs are
 * installed before the first case that needs them, and the run waits out the agent's recheck
 * interval, so the agent's pick-up of a CRD installed while it runs is part of every such run. A
 * case's `node` endpoint is the first worker: a hostNetwork agnhost pod there serves the node's
 * addresses and runs the probes that start on the node.
 *
 * Nothing but kube-netpol enforces policies: kindnet is swapped for a build without its policy
 * controller and the DaemonSet is read back before anything runs; the final uninstall check
 * (a deny-all policy still present, every pair allowed once kube-netpol is gone) shows it again
 * on the live cluster.
 */
import { stringify } from "yaml";
import {
  type CaseProbe,
  type ClusterScopedPolicy,
  type ConnectivityCase,
  formatMatrixDiff,
  type Matrix,
  NODE_ENDPOINT,
  type Verdict,
} from "../cases/format.ts";
import { MODEL_PODS, MODEL_PORTS, MODEL_PROTOCOLS, modelNamespaces } from "../cases/model.ts";
import type { NetworkPolicy } from "../../src/policy/types.ts";
import type { Protocol } from "../../src/net/protocol.ts";
import { connectCommand, type ServedPort, SERVER_CONTAINER, serverContainer } from "./agnhost.ts";
import type { Executor } from "./exec.ts";
import { parseScan, SCAN_SCRIPT } from "./leftovers.ts";
import {
  clusterPoliciesFor,
  familiesOf,
  type Family,
  type IpFamily,
  planCase,
  policiesFor,
} from "./plan.ts";
import { UPSTREAM_FOCUS, upstreamCommand } from "./upstream.ts";
import {
  KIND_NODE_IMAGE,
  KIND_VERSION,
  KINDNET_WITHOUT_POLICY,
  NETWORK_POLICY_API_CRDS,
} from "./versions.ts";
import { DEFAULT_ABSENT_RECHECK_MS } from "../../src/k8s/kinds.ts";

export { AGNHOST_IMAGE, KIND_NODE_IMAGE, KINDNET_WITHOUT_POLICY } from "./versions.ts";
/** The tag the driver builds from the Dockerfile and loads into the nodes (never pulled). */
export const LOCAL_IMAGE = "kube-netpol:e2e";
export const IPV6_FORWARDING = "net.ipv6.conf.all.forwarding";
/** Where the `node` endpoint's hostNetwork pod runs (never a policy subject or pod peer). */
export const NODE_POD = { namespace: "knp-e2e-node", name: "node" } as const;
/** The resource names kubectl deletes cluster-scoped policies by. */
const CLUSTER_RESOURCES: Record<ClusterScopedPolicy["kind"] & string, string> = {
  ClusterNetworkPolicy: "clusternetworkpolicies.policy.networking.k8s.io",
  AdminNetworkPolicy: "adminnetworkpolicies.policy.networking.k8s.io",
  BaselineAdminNetworkPolicy: "baselineadminnetworkpolicies.policy.networking.k8s.io",
};
export interface KindOptions {
  clusterName: string;
  ipFamily: IpFamily;
  repoRoot: string;
  /** Keep the cluster (and the agent: no uninstall) at the end. */
  keep: boolean;
  /** Run this image instead of building one from the Dockerfile. */
  image?: string;
  /** Also run the upstream Netpol suite with this e2e.test (ginkgo next to it). */
  upstream?: { e2eTest: string; nodes: number; skip: string };
  /** Where kubeconfig, ginkgo reports and exported logs go. */
  artifactsDir: string;
  probeTimeoutSeconds: number;
  /** Probes in flight at once. */
  parallel: number;
  /** Probe rounds per check while waiting for a change to be enforced. */
  settleRounds: number;
  sleep: (ms: number) => Promise<void>;
  /** Only print the plan: every step runs against the dry-run executor, nothing is judged. */
  dryRun?: boolean;
}

export interface CaseResult {
  name: string;
  pass: boolean;
  diffs: string[];
  /** Families of the run this case was not probed in, and why. */
  skipped?: string[];
}

export interface Manifests {
  install: string;
  uninstall: string;
}

export class KindError extends Error {
  override name = "KindError";
}

interface AgentImage {
  ref: string;
  pullPolicy: "Never" | "IfNotPresent";
}

/** Each model pod's address per family; NODE_ENDPOINT: the node pod's (the node's) addresses. */
type PodIPs = Map<string, Partial<Record<Family, string>>>;

const FIRST_CONTAINER_ARGS = "/spec/template/spec/containers/0/args/-";

const UNINSTALL_POLICY: NetworkPolicy = {
  apiVersion: "networking.k8s.io/v1",
  kind: "NetworkPolicy",
  metadata: { namespace: "x", name: "uninstall-check-deny-ingress" },
  spec: { podSelector: {}, policyTypes: ["Ingress"] },
};

export class KindDriver {
  private crdsInstalled = false;

  constructor(
    private readonly x: Executor,
    private readonly o: KindOptions,
    private readonly log: (line: string) => void,
  ) {}

  private async must(
    cmd: string[],
    stdin?: string,
    timeoutMs?: number,
  ): Promise<string> {
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

  private get families(): Family[] {
    return familiesOf(this.o.ipFamily);
  }

  /** kind names the nodes of this cluster config so. */
  nodeNames(): string[] {
    const n = this.o.clusterName;
    return [`${n}-control-plane`, `${n}-worker`, `${n}-worker2`];
  }

  /** docker, kind and kubectl must be there before anything is created. */
  async checkPrerequisites(): Promise<void> {
    const missing: string[] = [];
    let kindVersion = "";
    for (
      const cmd of [["docker", "version"], ["kind", "version"], ["kubectl", "version", "--client"]]
    ) {
      const r = await this.x.run(cmd, { timeoutMs: 30_000 }).catch(() => ({
        code: 127,
        stdout: "",
        stderr: "",
      }));
      if (r.code !== 0) missing.push(cmd[0]!);
      if (cmd[0] === "kind") kindVersion = r.stdout.trim();
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
    if (!this.o.dryRun && !kindVersion.includes(`kind ${KIND_VERSION} `)) {
      this.log(
        `warning: ${kindVersion || "kind"} is not ${KIND_VERSION}, the release the node image ` +
          `${KIND_NODE_IMAGE.split("@")[0]} was built for`,
      );
    }
  }

  /**
   * IPv6 kind clusters need IPv6 forwarding on the Docker host (kind's known issues; the
   * kube-network-policies workflow enables it too). Returns whether it was switched on here,
   * so the run can switch it back off.
   */
  async ensureIPv6Forwarding(): Promise<boolean> {
    if (this.o.ipFamily === "ipv4") return false;
    let now: string;
    try {
      now = await this.x.sysctl(IPV6_FORWARDING);
    } catch (e) {
      this.log(`warning: cannot read ${IPV6_FORWARDING} (${(e as Error).message}); not changed`);
      return false;
    }
    if (now === "1") return false;
    this.log(`enabling ${IPV6_FORWARDING} on this host for the IPv6 cluster (reset at the end)`);
    try {
      await this.x.sysctl(IPV6_FORWARDING, "1");
    } catch (e) {
      throw new KindError(
        `${IPV6_FORWARDING} is ${now} and could not be set (${(e as Error).message}); ` +
          `run \`sudo sysctl -w ${IPV6_FORWARDING}=1\` first, or run the e2e as root`,
      );
    }
    return true;
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
    // --retain keeps failed nodes for `kind export logs`; the run deletes the cluster itself.
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
        "--retain",
      ],
      this.kindConfig(),
      600_000,
    );
  }

  /** kindnet without its own policy controller, read back from the DaemonSet. */
  async replaceKindnet(): Promise<void> {
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
    const images = await this.kubectl([
      "-n",
      "kube-system",
      "get",
      "daemonset/kindnet",
      "-o",
      "jsonpath={.spec.template.spec.containers[*].image}",
    ]);
    if (!this.o.dryRun && images.trim() !== KINDNET_WITHOUT_POLICY) {
      throw new KindError(
        `kindnet runs ${images.trim() || "nothing"}, not ${KINDNET_WITHOUT_POLICY}: another ` +
          "NetworkPolicy enforcer would hide kube-netpol's results",
      );
    }
  }

  /** The Dockerfile's image, built and loaded; or `--image`, loaded when Docker has it locally. */
  async provideImage(): Promise<AgentImage> {
    if (!this.o.image) {
      this.log(`building ${LOCAL_IMAGE} from the Dockerfile`);
      await this.must(["docker", "build", "-t", LOCAL_IMAGE, this.o.repoRoot], undefined, 900_000);
      await this.loadImage(LOCAL_IMAGE);
      return { ref: LOCAL_IMAGE, pullPolicy: "Never" };
    }
    const local = await this.x.run([
      "docker",
      "image",
      "inspect",
      "--format",
      "{{.Id}}",
      this.o.image,
    ]);
    if (local.code === 0) await this.loadImage(this.o.image);
    else this.log(`${this.o.image} is not in the local Docker; the nodes pull it`);
    return { ref: this.o.image, pullPolicy: "IfNotPresent" };
  }

  private loadImage(ref: string): Promise<string> {
    return this.must(
      ["kind", "load", "docker-image", ref, "--name", this.o.clusterName],
      undefined,
      300_000,
    );
  }

  /** A manifest with every container image replaced by the agent image. */
  withImage(manifest: string, image: AgentImage): string {
    return manifest.replace(
      /^(\s*)image: \S+$/gm,
      (_, indent) => `${indent}image: ${image.ref}\n${indent}imagePullPolicy: ${image.pullPolicy}`,
    );
  }

  async installAgent(installYaml: string, image: AgentImage): Promise<void> {
    await this.kubectl(["apply", "-f", "-"], this.withImage(installYaml, image));
    await this.kubectl(
      ["-n", "kube-system", "rollout", "status", "daemonset/kube-netpol", "--timeout=180s"],
      undefined,
      200_000,
    );
  }

  /** What every model pod serves: TCP and UDP always, SCTP only when a case probes it. */
  servedPorts(cases: ConnectivityCase[]): ServedPort[] {
    const sctp = cases.some((c) => c.expect.some((e) => e.protocol === "SCTP"));
    return MODEL_PORTS.flatMap((port) =>
      MODEL_PROTOCOLS.filter((p) => p !== "SCTP" || sctp).map((protocol) => ({ port, protocol }))
    );
  }

  /** Whether a case probes from or to the node. */
  private needsNode(cases: ConnectivityCase[]): boolean {
    return cases.some((c) =>
      c.probes.some((p) => p.from === NODE_ENDPOINT || p.to === NODE_ENDPOINT)
    );
  }

  /**
   * The model: namespaces x, y, z and their pods, each one agnhost porter (agnhost.ts); with
   * `node`, also the hostNetwork porter on the first worker that stands for the node.
   */
  modelManifests(serve: ServedPort[], node = false): string {
    const objects: unknown[] = [...modelNamespaces()];
    if (node) {
      objects.push({ apiVersion: "v1", kind: "Namespace", metadata: { name: NODE_POD.namespace } });
      objects.push({
        apiVersion: "v1",
        kind: "Pod",
        metadata: { namespace: NODE_POD.namespace, name: NODE_POD.name },
        spec: {
          terminationGracePeriodSeconds: 0,
          hostNetwork: true,
          nodeSelector: { "kubernetes.io/hostname": `${this.o.clusterName}-worker` },
          containers: [serverContainer(serve.filter((p) => p.protocol !== "SCTP"))],
        },
      });
    }
    for (const key of MODEL_PODS) {
      const [namespace, name] = key.split("/") as [string, string];
      objects.push({
        apiVersion: "v1",
        kind: "Pod",
        metadata: { namespace, name, labels: { pod: name } },
        spec: {
          terminationGracePeriodSeconds: 0,
          nodeSelector: { "kubernetes.io/os": "linux" },
          containers: [serverContainer(serve)],
        },
      });
    }
    return objects.map((o) => stringify(o)).join("---\n");
  }

  /** Deploy the model and return each pod's address in every family of the run. */
  async deployModel(cases: ConnectivityCase[]): Promise<PodIPs> {
    const node = this.needsNode(cases);
    await this.kubectl(["apply", "-f", "-"], this.modelManifests(this.servedPorts(cases), node));
    for (const ns of ["x", "y", "z", ...(node ? [NODE_POD.namespace] : [])]) {
      await this.kubectl(
        ["-n", ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=300s"],
        undefined,
        320_000,
      );
    }
    const list = JSON.parse(
      await this.kubectl(["get", "pods", "-A", "-l", "pod", "-o", "json"]) || '{"items":[]}',
    );
    const ips: PodIPs = new Map();
    for (const p of list.items ?? []) {
      const addrs: string[] = (p.status?.podIPs ?? []).map((i: { ip: string }) => i.ip);
      if (!addrs.length && p.status?.podIP) addrs.push(p.status.podIP);
      const byFamily: Partial<Record<Family, string>> = {};
      for (const a of addrs) byFamily[a.includes(":") ? 6 : 4] ??= a;
      ips.set(`${p.metadata.namespace}/${p.metadata.name}`, byFamily);
    }
    if (node) {
      // A hostNetwork pod's addresses are its node's.
      const p = JSON.parse(
        await this.kubectl([
          "-n",
          NODE_POD.namespace,
          "get",
          "pod",
          NODE_POD.name,
          "-o",
          "json",
        ]) || "{}",
      );
      const byFamily: Partial<Record<Family, string>> = {};
      for (const a of (p.status?.podIPs ?? []).map((i: { ip: string }) => i.ip)) {
        byFamily[a.includes(":") ? 6 : 4] ??= a;
      }
      ips.set(NODE_ENDPOINT, byFamily);
    }
    for (const pod of [...MODEL_PODS, ...(node ? [NODE_ENDPOINT] : [])]) {
      const have = ips.get(pod) ?? {};
      for (const f of this.families) {
        if (have[f]) continue;
        if (!this.o.dryRun) throw new KindError(`pod ${pod} has no IPv${f} address`);
        have[f] = `<${pod} IPv${f}>`;
      }
      ips.set(pod, have);
    }
    return ips;
  }

  /** One connection attempt from inside the client pod (or the node pod), as upstream does. */
  async probe(
    from: string,
    toIP: string,
    family: Family,
    protocol: Protocol,
    port: number,
  ): Promise<Verdict> {
    const [ns, pod] = from === NODE_ENDPOINT
      ? [NODE_POD.namespace, NODE_POD.name]
      : from.split("/") as [string, string];
    const r = await this.x.run([
      "kubectl",
      "--context",
      `kind-${this.o.clusterName}`,
      "exec",
      "-n",
      ns,
      pod,
      "-c",
      SERVER_CONTAINER,
      "--",
      ...connectCommand(toIP, family, port, protocol, this.o.probeTimeoutSeconds),
    ], { timeoutMs: (this.o.probeTimeoutSeconds + 20) * 1000 });
    return r.code === 0 ? "allow" : "deny";
  }

  private async probeAll(
    ips: PodIPs,
    family: Family,
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
        observed.get(f)!.set(t, await this.probe(f, ips.get(t)![family]!, family, protocol, port));
      }
    };
    await Promise.all(Array.from({ length: this.o.parallel }, worker));
    return observed;
  }

  /**
   * Probe until the matrix matches (a change takes a moment to reach every node), bounded by
   * settleRounds. Returns the diff text, or "" when it matched. A dry run probes once.
   */
  private async settle(
    expected: Matrix,
    ips: PodIPs,
    family: Family,
    protocol: Protocol,
    port: number,
  ): Promise<string> {
    const label = `${this.families.length > 1 ? `IPv${family} ` : ""}${protocol}/${port}`;
    if (this.o.dryRun) {
      await this.probeAll(ips, family, protocol, port);
      return "";
    }
    let observed: Matrix = new Map();
    for (let round = 0; round < this.o.settleRounds; round++) {
      observed = await this.probeAll(ips, family, protocol, port);
      if (sameAs(expected, observed)) return "";
      if (round + 1 < this.o.settleRounds) await this.o.sleep(3000);
    }
    return `${label}:\n${formatMatrixDiff(expected, observed)}`;
  }

  private async deletePolicies(policies: NetworkPolicy[]): Promise<void> {
    for (const n of new Set(policies.map((p) => p.metadata.namespace ?? "default"))) {
      await this.kubectl(["-n", n, "delete", "networkpolicy", "--all", "--wait=true"]);
    }
  }

  private async deleteClusterPolicies(policies: ClusterScopedPolicy[]): Promise<void> {
    for (const [kind, resource] of Object.entries(CLUSTER_RESOURCES)) {
      const names = policies.filter((p) => p.kind === kind).map((p) => p.metadata.name!);
      if (names.length) {
        await this.kubectl(["delete", resource, ...names, "--ignore-not-found", "--wait=true"]);
      }
    }
  }

  /**
   * The network-policy-api CRDs (versions.ts), installed while the agent runs; then the agent's
   * recheck interval is waited out (plus slack) so it watches them before the first case.
   */
  async installPolicyCrds(): Promise<void> {
    if (this.crdsInstalled) return;
    this.log("installing the network-policy-api CRDs while the agent runs");
    for (const crd of NETWORK_POLICY_API_CRDS) {
      await this.kubectl(["apply", "--server-side", "-f", crd.url], undefined, 120_000);
    }
    await this.kubectl(
      [
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        ...NETWORK_POLICY_API_CRDS.map((c) => `crd/${c.name}`),
      ],
      undefined,
      90_000,
    );
    const waitMs = DEFAULT_ABSENT_RECHECK_MS + 10_000;
    this.log(
      `  waiting ${waitMs / 1000} s: the agent looks for absent CRDs every ` +
        `${DEFAULT_ABSENT_RECHECK_MS / 1000} s`,
    );
    await this.o.sleep(waitMs);
    this.crdsInstalled = true;
  }

  /** The case's probes outside the matrix, settled like the matrix (bounded). */
  private async settleProbes(
    probes: CaseProbe[],
    ips: PodIPs,
    family: Family,
  ): Promise<string[]> {
    const label = this.families.length > 1 ? `IPv${family} ` : "";
    const check = async () => {
      const wrong: string[] = [];
      for (const p of probes) {
        const got = await this.probe(p.from, ips.get(p.to)![family]!, family, p.protocol, p.port);
        if (!this.o.dryRun && got !== p.expect) {
          wrong.push(
            `${label}probe ${p.from} -> ${p.to} ${p.protocol}/${p.port}: expected ${p.expect}, ` +
              `observed ${got}`,
          );
        }
      }
      return wrong;
    };
    let wrong = await check();
    for (let round = 1; round < this.o.settleRounds && wrong.length && !this.o.dryRun; round++) {
      await this.o.sleep(3000);
      wrong = await check();
    }
    return wrong;
  }

  async runCase(c: ConnectivityCase, ips: PodIPs): Promise<CaseResult> {
    this.log(`case ${c.name}: ${c.description}`);
    const plan = planCase(c, this.families);
    for (const s of plan.skipped) this.log(`  skipped ${s}`);
    if (!plan.probeIn.length) return { name: c.name, pass: true, diffs: [], skipped: plan.skipped };
    const ipOf = (pod: string, f: Family) => ips.get(pod)![f]!;
    const policies = policiesFor(c, plan.resolveIn, ipOf);
    const cluster = clusterPoliciesFor(c, plan.resolveIn, ipOf);
    if (cluster.length) await this.installPolicyCrds();
    const objects = [...policies, ...cluster];
    if (objects.length) {
      await this.kubectl(["apply", "-f", "-"], objects.map((p) => stringify(p)).join("---\n"));
    }
    const diffs: string[] = [];
    try {
      for (const family of plan.probeIn) {
        for (const e of c.expect) {
          const d = await this.settle(e.matrix, ips, family, e.protocol, e.port);
          if (d) diffs.push(d);
        }
        diffs.push(...await this.settleProbes(c.probes, ips, family));
      }
    } finally {
      await this.deleteClusterPolicies(cluster);
      await this.deletePolicies(policies);
    }
    for (const d of diffs) this.log(`  expected vs observed, ${d}`);
    this.log(`  ${this.o.dryRun ? "(dry run: not compared)" : diffs.length ? "FAIL" : "PASS"}`);
    const result: CaseResult = { name: c.name, pass: diffs.length === 0, diffs };
    return plan.skipped.length ? { ...result, skipped: plan.skipped } : result;
  }

  async runUpstreamSuite(): Promise<CaseResult> {
    const u = this.o.upstream!;
    const kubeconfig = `${this.o.artifactsDir}/kubeconfig`;
    await this.must([
      "kind",
      "export",
      "kubeconfig",
      "--name",
      this.o.clusterName,
      "--kubeconfig",
      kubeconfig,
    ]);
    const { cmd, env } = upstreamCommand({
      e2eTest: u.e2eTest,
      nodes: u.nodes,
      focus: UPSTREAM_FOCUS,
      skip: u.skip,
      kubeconfig,
      reportDir: `${this.o.artifactsDir}/upstream`,
    });
    this.log(`upstream ${UPSTREAM_FOCUS} suite on ${u.nodes} ginkgo nodes`);
    const r = await this.x.run(cmd, { env, inheritOutput: true, timeoutMs: 2 * 3600_000 });
    const pass = this.o.dryRun || r.code === 0;
    this.log(
      `  ${this.o.dryRun ? "(dry run: not judged)" : pass ? "PASS" : `FAIL (exit ${r.code})`}`,
    );
    return { name: `upstream ${UPSTREAM_FOCUS} suite (e2e.test)`, pass, diffs: [] };
  }

  /** Every kube-netpol rule, chain, set and table on each node, seen from its network namespace. */
  async scanNodes(image: AgentImage): Promise<{ leftovers: string[]; unknown: string[] }> {
    const leftovers: string[] = [];
    const unknown: string[] = [];
    for (const node of this.nodeNames()) {
      // The agent image's own tools in the node's network namespace: the node image need not
      // carry ipset or nft.
      const out = await this.must(
        [
          "docker",
          "run",
          "--rm",
          `--network=container:${node}`,
          "--cap-add=NET_ADMIN",
          "--entrypoint=sh",
          image.ref,
          "-c",
          SCAN_SCRIPT,
        ],
        undefined,
        120_000,
      );
      const scan = parseScan(out);
      leftovers.push(...scan.leftovers.map((l) => `${node}: ${l.listing}: ${l.line}`));
      unknown.push(...scan.unknown.map((l) => `${node}: ${l}`));
    }
    return { leftovers, unknown };
  }

  /**
   * The README's uninstall, against the worst case: the agent fail-closed, a policy selecting
   * every pod of x. Deleting install.yaml leaves the rules and x unreachable (as documented);
   * uninstall.yaml must then leave no rule on any node and every pair reachable again (with the
   * policy still there: nobody else enforces it).
   */
  async uninstall(m: Manifests, image: AgentImage, ips: PodIPs): Promise<CaseResult[]> {
    this.log("uninstall: fail-closed agent, deleted, then uninstall.yaml");
    const judge = (name: string, problems: string[]): CaseResult => {
      const pass = this.o.dryRun || problems.length === 0;
      for (const p of this.o.dryRun ? [] : problems) this.log(`  ${p}`);
      this.log(`  ${name}: ${this.o.dryRun ? "(dry run: not judged)" : pass ? "PASS" : "FAIL"}`);
      return { name, pass, diffs: this.o.dryRun ? [] : problems };
    };
    const family = this.families[0]!;
    const isolatedX = matrixOf((to) => (to.startsWith("x/") ? "deny" : "allow"));
    const open = matrixOf(() => "allow");

    await this.kubectl([
      "-n",
      "kube-system",
      "patch",
      "daemonset/kube-netpol",
      "--type=json",
      `--patch=${
        JSON.stringify([{ op: "add", path: FIRST_CONTAINER_ARGS, value: "--fail-open=false" }])
      }`,
    ]);
    await this.kubectl(
      ["-n", "kube-system", "rollout", "status", "daemonset/kube-netpol", "--timeout=180s"],
      undefined,
      200_000,
    );
    await this.kubectl(["apply", "-f", "-"], stringify(UNINSTALL_POLICY));
    const results: CaseResult[] = [];
    const enforced = await this.settle(isolatedX, ips, family, "TCP", 80);
    results.push(judge("uninstall: fail-closed agent isolates x", enforced ? [enforced] : []));

    await this.kubectl(
      ["delete", "-f", "-", "--cascade=foreground", "--wait=true", "--timeout=180s"],
      this.withImage(m.install, image),
      200_000,
    );
    const kept = await this.scanNodes(image);
    const stillIsolated = await this.settle(isolatedX, ips, family, "TCP", 80);
    results.push(judge("uninstall: deleting install.yaml keeps fail-closed rules", [
      ...this.nodeNames().filter((n) => !kept.leftovers.some((l) => l.startsWith(`${n}: `)))
        .map((n) => `${n}: no kube-netpol rules left after a fail-closed exit`),
      ...(stillIsolated ? [stillIsolated] : []),
    ]));

    await this.kubectl(["apply", "-f", "-"], this.withImage(m.uninstall, image));
    await this.kubectl(
      ["-n", "kube-system", "rollout", "status", "daemonset/kube-netpol-cleanup", "--timeout=300s"],
      undefined,
      320_000,
    );
    const after = await this.scanNodes(image);
    results.push(judge("uninstall: uninstall.yaml leaves no rule, chain, set or table", [
      ...after.leftovers.map((l) => `left behind: ${l}`),
      ...after.unknown.map((l) => `could not list: ${l}`),
    ]));
    const reopened = await this.settle(open, ips, family, "TCP", 80);
    results.push(
      judge("uninstall: no node refuses connections afterwards", reopened ? [reopened] : []),
    );
    await this.kubectl(
      ["delete", "-f", "-", "--cascade=foreground", "--wait=true", "--timeout=120s"],
      this.withImage(m.uninstall, image),
      140_000,
    );
    await this.deletePolicies([UNINSTALL_POLICY]);
    return results;
  }

  get logsDir(): string {
    return `${this.o.artifactsDir}/logs`;
  }

  async exportLogs(): Promise<void> {
    await this.must(
      ["kind", "export", "logs", this.logsDir, "--name", this.o.clusterName],
      undefined,
      300_000,
    );
    this.log(`cluster logs in ${this.logsDir}`);
  }

  async deleteCluster(): Promise<void> {
    await this.must(
      ["kind", "delete", "cluster", "--name", this.o.clusterName],
      undefined,
      300_000,
    );
  }

  /**
   * The whole run. On any failure the cluster's logs are exported first; the cluster is deleted
   * at the end unless `keep` (which also skips the uninstall, leaving the agent running).
   */
  async runAll(cases: ConnectivityCase[], m: Manifests): Promise<CaseResult[]> {
    await this.checkPrerequisites();
    const forwardingChanged = await this.ensureIPv6Forwarding();
    const results: CaseResult[] = [];
    let error: unknown;
    try {
      await this.createCluster();
      await this.replaceKindnet();
      const image = await this.provideImage();
      await this.installAgent(m.install, image);
      const ips = await this.deployModel(cases);
      for (const c of cases) results.push(await this.runCase(c, ips));
      if (this.o.upstream) results.push(await this.runUpstreamSuite());
      if (!this.o.keep) results.push(...(await this.uninstall(m, image, ips)));
    } catch (e) {
      error = e;
    }
    // Clean-up never hides the first error; its own failures are reported after it.
    const cleanupErrors: string[] = [];
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (e) {
        cleanupErrors.push(`${what}: ${(e as Error).message}`);
      }
    };
    if (this.o.dryRun) {
      this.log(`# on a failure: kind export logs ${this.logsDir} --name ${this.o.clusterName}`);
    } else if (error || results.some((r) => !r.pass)) {
      await step("kind export logs", () => this.exportLogs());
    }
    if (this.o.keep) this.log(`kept cluster kind-${this.o.clusterName}`);
    else {
      await step("kind delete cluster", () => this.deleteCluster());
      if (forwardingChanged) {
        await step(`reset ${IPV6_FORWARDING}`, () => this.x.sysctl(IPV6_FORWARDING, "0"));
      }
    }
    for (const e of cleanupErrors) this.log(`clean-up failed: ${e}`);
    if (error) throw error;
    if (cleanupErrors.length) throw new KindError(`clean-up failed: ${cleanupErrors.join("; ")}`);
    return results;
  }
}

/** Every ordered pair of distinct model pods, the verdict by destination. */
function matrixOf(verdict: (to: string) => Verdict): Matrix {
  return new Map(MODEL_PODS.map((f) => [
    f,
    new Map(MODEL_PODS.filter((t) => t !== f).map((t) => [t, verdict(t)])),
  ]));
}

function sameAs(expected: Matrix, observed: Matrix): boolean {
  for (const [from, row] of observed) {
    for (const [to, v] of row) if (expected.get(from)?.get(to) !== v) return false;
  }
  return true;
}
