/**
 * Cut API objects down to the fields the policy engine reads before anything stores them.
 * A Pod from the API server carries managedFields, volumes, env, probes and statuses: often 5-20 kB
 * each. The informer caches every object it sees, so keeping only what `src/policy/types.ts`
 * describes is what keeps the agent small on nodes of big clusters.
 */
import type {
  ClusterPolicyObject,
  ContainerPort,
  Namespace,
  NetworkPolicy,
  Node,
  NodeAddress,
  ObjectMeta,
  Pod,
  StateObjectKind,
} from "../policy/types.ts";

type Json = Record<string, unknown>;

function obj(v: unknown): Json | undefined {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? v as Json : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

/** Name, namespace, labels, resourceVersion (the informer compares it) and uid. */
export function slimMeta(meta: unknown): ObjectMeta {
  const m = obj(meta) ?? {};
  const out: ObjectMeta = {};
  const name = str(m.name);
  if (name !== undefined) out.name = name;
  const namespace = str(m.namespace);
  if (namespace !== undefined) out.namespace = namespace;
  const labels = obj(m.labels);
  if (labels) out.labels = labels as Record<string, string>;
  const rv = str(m.resourceVersion);
  if (rv !== undefined) out.resourceVersion = rv;
  const uid = str(m.uid);
  if (uid !== undefined) out.uid = uid;
  return out;
}

function slimPorts(ports: unknown): ContainerPort[] | undefined {
  if (!Array.isArray(ports)) return undefined;
  return ports.map((p) => {
    const o = obj(p) ?? {};
    const port: ContainerPort = { containerPort: o.containerPort as number };
    if (o.name !== undefined) port.name = o.name as string;
    if (o.protocol !== undefined) port.protocol = o.protocol as ContainerPort["protocol"];
    return port;
  });
}

function ipList(v: unknown): { ip: string }[] | undefined {
  if (!Array.isArray(v)) return undefined;
  return v.map((e) => ({ ip: str(obj(e)?.ip) ?? "" }));
}

export function slimPod(raw: unknown): Pod {
  const o = obj(raw) ?? {};
  const spec = obj(o.spec);
  const status = obj(o.status);
  const pod: Pod = { metadata: slimMeta(o.metadata) };
  if (spec) {
    const s: NonNullable<Pod["spec"]> = {};
    if (spec.nodeName !== undefined) s.nodeName = spec.nodeName as string;
    if (spec.hostNetwork !== undefined) s.hostNetwork = spec.hostNetwork as boolean;
    // Only containers that declare ports matter (named ports); the rest would be empty shells.
    if (Array.isArray(spec.containers)) {
      s.containers = spec.containers.flatMap((c) => {
        const ports = slimPorts(obj(c)?.ports);
        return ports ? [{ name: str(obj(c)?.name), ports }] : [];
      });
    }
    // Sidecars (init containers with restartPolicy Always) keep running and can serve named ports.
    if (Array.isArray(spec.initContainers)) {
      const inits = spec.initContainers.flatMap((c) => {
        const ports = slimPorts(obj(c)?.ports);
        if (!ports) return [];
        const restartPolicy = str(obj(c)?.restartPolicy);
        return [{ name: str(obj(c)?.name), ports, ...(restartPolicy ? { restartPolicy } : {}) }];
      });
      if (inits.length) s.initContainers = inits;
    }
    pod.spec = s;
  }
  if (status) {
    const s: NonNullable<Pod["status"]> = {};
    if (status.phase !== undefined) s.phase = status.phase as string;
    if (status.podIP !== undefined) s.podIP = status.podIP as string;
    const podIPs = ipList(status.podIPs);
    if (podIPs) s.podIPs = podIPs;
    if (status.hostIP !== undefined) s.hostIP = status.hostIP as string;
    const hostIPs = ipList(status.hostIPs);
    if (hostIPs) s.hostIPs = hostIPs;
    pod.status = s;
  }
  return pod;
}

export function slimNamespace(raw: unknown): Namespace {
  return { metadata: slimMeta(obj(raw)?.metadata) };
}

/** Policies are small and the engine validates every field of the spec: keep the spec whole. */
export function slimNetworkPolicy(raw: unknown): NetworkPolicy {
  const o = obj(raw) ?? {};
  return { metadata: slimMeta(o.metadata), spec: o.spec as NetworkPolicy["spec"] };
}

/**
 * A Node carries images, conditions, capacity and daemon endpoints (often several kB); `nodes`
 * peers read its labels and addresses, and the pod CIDRs say where new pods get addresses.
 */
export function slimNode(raw: unknown): Node {
  const o = obj(raw) ?? {};
  const node: Node = { metadata: slimMeta(o.metadata) };
  const spec = obj(o.spec);
  if (spec) {
    const s: NonNullable<Node["spec"]> = {};
    const podCIDR = str(spec.podCIDR);
    if (podCIDR !== undefined) s.podCIDR = podCIDR;
    if (Array.isArray(spec.podCIDRs)) s.podCIDRs = spec.podCIDRs as string[];
    node.spec = s;
  }
  const addresses = obj(o.status)?.addresses;
  if (Array.isArray(addresses)) {
    node.status = {
      addresses: addresses.map((a) => {
        const e = obj(a) ?? {};
        const out: NodeAddress = {};
        if (e.type !== undefined) out.type = e.type as string;
        if (e.address !== undefined) out.address = e.address as string;
        return out;
      }),
    };
  }
  return node;
}

/**
 * Cluster-scoped policies are small and validated field by field when compiled: keep the spec
 * whole (a field this agent does not know must reach the compiler, which fails closed on it),
 * drop the status (conditions written by other implementations).
 */
export function slimClusterPolicy(raw: unknown): ClusterPolicyObject {
  const o = obj(raw) ?? {};
  return { metadata: slimMeta(o.metadata), spec: o.spec } as ClusterPolicyObject;
}

/** Every kind the informers deliver. */
export type SlimObject = Pod | Namespace | NetworkPolicy | Node | ClusterPolicyObject;

export function slimObject(kind: StateObjectKind, raw: unknown): SlimObject {
  switch (kind) {
    case "Pod":
      return slimPod(raw);
    case "Namespace":
      return slimNamespace(raw);
    case "NetworkPolicy":
      return slimNetworkPolicy(raw);
    case "Node":
      return slimNode(raw);
    case "ClusterNetworkPolicy":
    case "AdminNetworkPolicy":
    case "BaselineAdminNetworkPolicy":
      return slimClusterPolicy(raw);
  }
}
