/**
 * The cluster the lab pretends to be, as Kubernetes objects for the agent's manifest directory:
 * one Namespace per pod namespace and one Running Pod per lab pod, scheduled on the lab node, with
 * the lab's IPs and the container ports the policies may name.
 */
import type { ContainerPort, Namespace, NetworkPolicy, Pod } from "../../src/policy/types.ts";
import type { Lab, LabPodSpec } from "./topology.ts";
import { labIP, MODEL_NAMESPACES, MODEL_PODS } from "../cases/model.ts";

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
