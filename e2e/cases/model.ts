/**
 * The fixed model every connectivity case is written against, as in the upstream Kubernetes e2e
 * `Netpol` suite: namespaces x, y, z (label ns=<name>); pods a, b, c in each (label pod=<name>);
 * every pod serves ports 80 and 81 over TCP, UDP and SCTP, with container ports named
 * serve-<port>-<protocol>. The lab uses the fixed IP plan below; the kind driver uses real IPs.
 */
import type { Namespace, Node, Pod } from "../../src/policy/types.ts";
import type { Protocol } from "../../src/net/protocol.ts";

export const MODEL_NAMESPACES = ["x", "y", "z"] as const;
export const MODEL_POD_NAMES = ["a", "b", "c"] as const;
export const MODEL_PORTS = [80, 81] as const;
export const MODEL_PROTOCOLS: readonly Protocol[] = ["TCP", "UDP", "SCTP"];

/** "x/a", "x/b", ... "z/c", in matrix order. */
export const MODEL_PODS: readonly string[] = MODEL_NAMESPACES.flatMap((ns) =>
  MODEL_POD_NAMES.map((p) => `${ns}/${p}`)
);

/** Fixed addresses for the lab (x/a = 10.244.1.11 ... z/c = 10.244.3.13); node 10.244.0.1. */
export const LAB_NODE_IP = "10.244.0.1";
export const LAB_NODE_NAME = "lab-node";
export function labIP(pod: string): string {
  const [ns, name] = pod.split("/") as [string, string];
  const i = MODEL_NAMESPACES.indexOf(ns as "x");
  const j = MODEL_POD_NAMES.indexOf(name as "a");
  if (i < 0 || j < 0) throw new Error(`${pod} is not a model pod`);
  return `10.244.${i + 1}.${11 + j}`;
}

export function portName(port: number, protocol: Protocol): string {
  return `serve-${port}-${protocol.toLowerCase()}`;
}

export function modelNamespaces(): Namespace[] {
  return MODEL_NAMESPACES.map((name) => ({
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name, labels: { ns: name, "kubernetes.io/metadata.name": name } },
  }));
}

export interface PodPlacement {
  ip: string;
  ips?: string[];
  nodeName?: string;
  hostIP?: string;
}

export function modelPods(assign: (namespace: string, name: string) => PodPlacement): Pod[] {
  return MODEL_PODS.map((key) => {
    const [namespace, name] = key.split("/") as [string, string];
    const at = assign(namespace, name);
    return {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { namespace, name, labels: { pod: name } },
      spec: {
        nodeName: at.nodeName,
        containers: [{
          name: "server",
          ports: MODEL_PORTS.flatMap((port) =>
            MODEL_PROTOCOLS.map((protocol) => ({
              name: portName(port, protocol),
              containerPort: port,
              protocol,
            }))
          ),
        }],
      },
      status: {
        phase: "Running",
        podIP: at.ip,
        podIPs: (at.ips ?? [at.ip]).map((ip) => ({ ip })),
        hostIP: at.hostIP,
      },
    };
  });
}

/**
 * The lab's node as a Node object, for `nodes` peers: labelled like a real Linux node, with its
 * address as InternalIP.
 */
export function modelNodes(name = LAB_NODE_NAME, ip = LAB_NODE_IP): Node[] {
  return [{
    apiVersion: "v1",
    kind: "Node",
    metadata: { name, labels: { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" } },
    status: { addresses: [{ type: "InternalIP", address: ip }] },
  }];
}
