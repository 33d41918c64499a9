/**
 * The cluster the lab pretends to be, as Kubernetes objects for the agent's manifest directory:
 * one Namespace per pod namespace and one Running Pod per lab pod, scheduled on its lab node, with
 * the lab's IPs and the container ports the policies may name; with several nodes also one Node
 * per lab node (name, IPs, `spec.podCIDRs`).
 *
 * Two plans of the case model (e2e/cases/model.ts): `defaultPlan`, everything on one node with the
 * model's IPs; `spreadPlan(n)`, the same pods spread over n nodes, where each node owns one pod
 * CIDR per family (what Kubernetes allows in Node `spec.podCIDRs`), so pod IPs name their node:
 *
 *   node k (1-based): name lab-node (k = 1) or lab-node-<k>, IP 10.<243+k>.0.1,
 *                     pod CIDRs 10.<243+k>.0.0/16 and fd00:10:<243+k>::/64
 *   pod <ns>/<pod> on node k: the model IP with 243+k as its second octet
 *                     (x/a on node 1 = 10.244.1.11, as in the model; x/b on node 2 = 10.245.1.12)
 *   pod number j of each namespace (a = 0, b = 1, c = 2) runs on node (j mod n) + 1
 *
 * Node 1's addresses are the model's, so a one-node spread plan is the default plan. Like the
 * bridge address of a flannel node, each node IP lies inside its own pod CIDR. Case files name pod
 * IPs only through `{{ip ns/pod}}` placeholders, which resolve to whatever the lab assigned.
 */
import type { ContainerPort, Namespace, NetworkPolicy, Pod } from "../../src/policy/types.ts";
import { DEFAULT_NODE_NAME, type Lab, type LabNodeSpec, type LabPodSpec } from "./topology.ts";
import { labIP, MODEL_NAMESPACES, MODEL_POD_NAMES, MODEL_PODS } from "../cases/model.ts";

export interface LabPodPlan extends LabPodSpec {
  labels: Record<string, string>;
  ports: ContainerPort[];
}

export interface LabClusterPlan {
  /** The (first) node's name: where pods without `node` run. */
  nodeName: string;
  /** Absent: a single-node lab. */
  nodes?: LabNodeSpec[];
  namespaces: { name: string; labels: Record<string, string> }[];
  pods: LabPodPlan[];
}

/** A Node object as far as the lab fills it in (the agent may read names, IPs and pod CIDRs). */
export interface NodeObject {
  apiVersion: "v1";
  kind: "Node";
  metadata: { name: string; labels: Record<string, string> };
  spec: { podCIDR?: string; podCIDRs?: string[] };
  status: { addresses: { type: "InternalIP" | "Hostname"; address: string }[] };
}

/** Port names in the style of the upstream e2e suite: serve-<port>-<protocol>. */
export function servePorts(ports: readonly number[]): ContainerPort[] {
  return ports.flatMap((p) =>
    (["TCP", "UDP"] as const).map((protocol) => ({
      name: `serve-${p}-${protocol.toLowerCase()}`,
      containerPort: p,
      protocol,
    }))
  );
}

/** The case model (e2e/cases/model.ts) as a lab plan: same names, labels and IP plan. */
export function defaultPlan(nodeName = "lab-node"): LabClusterPlan {
  return {
    nodeName,
    namespaces: MODEL_NAMESPACES.map((n) => ({
      name: n,
      labels: { ns: n, "kubernetes.io/metadata.name": n },
    })),
    pods: MODEL_PODS.map((key) => {
      const [namespace, name] = key.split("/") as [string, string];
      return {
        namespace,
        name,
        ip: labIP(key),
        labels: { pod: name },
        ports: servePorts([80, 81]),
      };
    }),
  };
}

/** Node k (1-based) of a spread plan: name, node IP and pod CIDRs (see the module comment). */
export function spreadNode(k: number): LabNodeSpec {
  if (!Number.isInteger(k) || k < 1 || k > 11) {
    throw new Error(`lab node number must be 1..11 (second octet 244..254): ${k}`);
  }
  const octet = 243 + k;
  return {
    name: k === 1 ? DEFAULT_NODE_NAME : `${DEFAULT_NODE_NAME}-${k}`,
    ip: `10.${octet}.0.1`,
    podCIDRs: [`10.${octet}.0.0/16`, `fd00:10:${octet}::/64`],
  };
}

/** The case model spread over `nodeCount` nodes (see the module comment). */
export function spreadPlan(nodeCount: number): LabClusterPlan {
  const nodes = Array.from({ length: nodeCount }, (_, i) => spreadNode(i + 1));
  const base = defaultPlan(nodes[0]!.name);
  return {
    ...base,
    nodes,
    pods: base.pods.map((p) => {
      const k = MODEL_POD_NAMES.indexOf(p.name as "a") % nodeCount + 1;
      const [, , third, fourth] = p.ip.split(".");
      return { ...p, node: nodes[k - 1]!.name, ip: `10.${243 + k}.${third}.${fourth}` };
    }),
  };
}

/** The options `createLab` needs for a plan: its pods, and its nodes when it has several. */
export function labLayout(plan: LabClusterPlan): { pods: LabPodSpec[]; nodes?: LabNodeSpec[] } {
  return { pods: plan.pods, ...(plan.nodes ? { nodes: plan.nodes } : {}) };
}

/**
 * One Node object per lab node, with the addresses and pod CIDRs the lab really has, labelled like
 * a real Linux node (`nodes` peers of the tier cases select `kubernetes.io/os: linux`).
 */
export function nodeObjects(lab: Lab): NodeObject[] {
  return lab.nodes.map((n) => ({
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name: n.name,
      labels: { "kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux" },
    },
    spec: n.podCIDRs.length ? { podCIDR: n.podCIDRs[0]!, podCIDRs: n.podCIDRs } : {},
    status: {
      addresses: [
        ...[n.ip, ...(n.ip6 ? [n.ip6] : [])].map((address) => ({
          type: "InternalIP" as const,
          address,
        })),
        { type: "Hostname" as const, address: n.name },
      ],
    },
  }));
}

export function clusterObjects(plan: LabClusterPlan, lab: Lab): (Namespace | Pod)[] {
  const namespaces: Namespace[] = plan.namespaces.map((n) => ({
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name: n.name, labels: n.labels },
  }));
  const pods: Pod[] = plan.pods.map((p) => {
    const lp = lab.pod(`${p.namespace}/${p.name}`);
    const ips = [lp.ip, ...(lp.ip6 ? [lp.ip6] : [])];
    const node = lab.node(lp.node);
    const hostIPs = [node.ip, ...(node.ip6 ? [node.ip6] : [])];
    // A single-node plan may name its node differently from the lab's one node.
    const nodeName = plan.nodes ? node.name : plan.nodeName;
    return {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { namespace: p.namespace, name: p.name, labels: p.labels },
      spec: { nodeName, containers: [{ name: "server", ports: p.ports }] },
      status: {
        phase: "Running",
        podIP: lp.ip,
        podIPs: ips.map((ip) => ({ ip })),
        hostIP: node.ip,
        hostIPs: hostIPs.map((ip) => ({ ip })),
      },
    };
  });
  return [...namespaces, ...pods];
}

/** A NetworkPolicy object, for tests that write policies inline. */
export function networkPolicy(
  namespace: string,
  name: string,
  spec: NetworkPolicy["spec"],
): NetworkPolicy {
  return {
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    metadata: { namespace, name },
    spec,
  };
}
