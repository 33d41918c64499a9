/**
 * The cluster the lab pretends to be, as Kubernetes objects for the agent's manifest directory:
 * one Namespace per pod namespace and one Running Pod per lab pod, scheduled on the lab node, with
 * the lab's IPs and the container ports the policies may name.
 */
import type { ContainerPort, Namespace, Pod } from "../../src/policy/types.ts";
import type { Lab, LabPodSpec } from "./topology.ts";

export interface LabPodPlan extends LabPodSpec {
  labels: Record<string, string>;
  ports: ContainerPort[];
}

export interface LabClusterPlan {
  nodeName: string;
  namespaces: { name: string; labels: Record<string, string> }[];
  pods: LabPodPlan[];
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

/**
 * The 3x3 plan: namespaces x, y, z (label ns=<name>) with pods a, b, c (label pod=<name>);
 * x/a = 10.244.1.11 ... z/c = 10.244.3.13, the node is 10.244.0.1.
 */
export function defaultPlan(nodeName = "lab-node"): LabClusterPlan {
  const nss = ["x", "y", "z"];
  const names = ["a", "b", "c"];
  return {
    nodeName,
    namespaces: nss.map((n) => ({
      name: n,
      labels: { ns: n, "kubernetes.io/metadata.name": n },
    })),
    pods: nss.flatMap((ns, i) =>
      names.map((name, j) => ({
        namespace: ns,
        name,
        ip: `10.244.${i + 1}.${11 + j}`,
        labels: { pod: name },
        ports: servePorts([80, 81]),
      }))
    ),
  };
}

/** Namespace and Pod objects for `plan`, with the addresses the lab actually gave the pods. */
export function clusterObjects(plan: LabClusterPlan, lab: Lab): (Namespace | Pod)[] {
  const namespaces: Namespace[] = plan.namespaces.map((n) => ({
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name: n.name, labels: n.labels },
  }));
  const pods: Pod[] = plan.pods.map((p) => {
    const lp = lab.pod(`${p.namespace}/${p.name}`);
    const ips = [lp.ip, ...(lp.ip6 ? [lp.ip6] : [])];
    const hostIPs = [lab.nodeIP, ...(lab.nodeIP6 ? [lab.nodeIP6] : [])];
    return {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { namespace: p.namespace, name: p.name, labels: p.labels },
      spec: { nodeName: plan.nodeName, containers: [{ name: "server", ports: p.ports }] },
      status: {
        phase: "Running",
        podIP: lp.ip,
        podIPs: ips.map((ip) => ({ ip })),
        hostIP: lab.nodeIP,
        hostIPs: hostIPs.map((ip) => ({ ip })),
      },
    };
  });
  return [...namespaces, ...pods];
}
