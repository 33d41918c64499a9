/**
 * What the engine keeps of a Pod object, validated once: its addresses, labels, node and named
 * ports, with every problem reported by field (as compile.ts does for policies). The engine adds
 * its own indexes (selecting policies, rule tables, identity) to this.
 */
import { canonicalIP } from "../net/ip.ts";
import type { Protocol } from "../net/protocol.ts";
import { type Labels, toLabels } from "./selector.ts";
import type { ObjectError, Pod } from "./types.ts";

export interface CompiledPod {
  /** "namespace/name" */
  key: string;
  namespace: string;
  name: string;
  labels: Labels;
  nodeName: string | undefined;
  hostNetwork: boolean;
  /** Pod IPs this pod may own (none for hostNetwork, Succeeded or Failed pods). */
  ips: string[];
  hostIPs: ReadonlySet<string>;
  running: boolean;
  /** containerPort by port name, then by protocol, for named ports. */
  namedPorts: ReadonlyMap<string, Partial<Record<Protocol, number>>>;
  /** A hostNetwork pod's addresses (its node's): what `simulate` resolves its name to. */
  hostNetworkIPs: string[];
}

/**
 * Validate a Pod. Without a name it is refused (null); otherwise it is kept with whatever parts
 * are valid, and the invalid parts (an IP, a label value, a port) are reported and left out.
 */
export function compilePod(pod: Pod): { pod: CompiledPod | null; errors: ObjectError[] } {
  const name = pod?.metadata?.name;
  const namespace = pod?.metadata?.namespace ?? "default";
  const object = `Pod ${namespace}/${name ?? "<unnamed>"}`;
  if (typeof name !== "string" || name === "") {
    return { pod: null, errors: [{ object, field: "metadata.name", message: "is required" }] };
  }
  const errors: ObjectError[] = [];
  const phase = pod.status?.phase;
  const hostNetwork = pod.spec?.hostNetwork === true;
  const ownsIPs = !hostNetwork && phase !== "Succeeded" && phase !== "Failed";
  const { ips, hostNetworkIPs } = podAddresses(pod, ownsIPs, hostNetwork, object, errors);
  const labelProblems: [string, string][] = [];
  const labels = toLabels(pod.metadata.labels, labelProblems);
  for (const [field, message] of labelProblems) errors.push({ object, field, message });
  return {
    pod: {
      key: `${namespace}/${name}`,
      namespace,
      name,
      labels,
      nodeName: pod.spec?.nodeName || undefined,
      hostNetwork,
      ips,
      hostIPs: hostAddresses(pod),
      running: phase === "Running",
      namedPorts: namedPorts(pod, object, errors),
      hostNetworkIPs,
    },
    errors,
  };
}

/** status.podIPs (or podIP), canonical: the pod's own when it owns IPs, its node's if hostNetwork. */
function podAddresses(
  pod: Pod,
  ownsIPs: boolean,
  hostNetwork: boolean,
  object: string,
  errors: ObjectError[],
): { ips: string[]; hostNetworkIPs: string[] } {
  const ips: string[] = [];
  const hostNetworkIPs: string[] = [];
  const texts = pod.status?.podIPs?.length
    ? pod.status.podIPs.map((p, i) => [p?.ip, `status.podIPs[${i}].ip`] as const)
    : pod.status?.podIP
    ? [[pod.status.podIP, "status.podIP"] as const]
    : [];
  for (const [text, field] of texts) {
    const ip = typeof text === "string" ? canonicalIP(text) : null;
    if (ownsIPs) {
      if (ip === null) {
        errors.push({ object, field, message: `invalid IP ${JSON.stringify(text)}` });
      } else if (!ips.includes(ip)) ips.push(ip);
    } else if (hostNetwork && ip !== null && !hostNetworkIPs.includes(ip)) {
      hostNetworkIPs.push(ip);
    }
  }
  return { ips, hostNetworkIPs };
}

/** status.hostIP and hostIPs: ingress from the pod's own node is always allowed. */
function hostAddresses(pod: Pod): Set<string> {
  const hostIPs = new Set<string>();
  for (const text of [pod.status?.hostIP, ...(pod.status?.hostIPs ?? []).map((h) => h?.ip)]) {
    const ip = typeof text === "string" ? canonicalIP(text) : null;
    if (ip) hostIPs.add(ip);
  }
  return hostIPs;
}

/** Named container ports (sidecars' too): the first port of a name and protocol wins. */
function namedPorts(
  pod: Pod,
  object: string,
  errors: ObjectError[],
): Map<string, Partial<Record<Protocol, number>>> {
  const out = new Map<string, Partial<Record<Protocol, number>>>();
  const containers = [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])];
  containers.forEach((c, ci) => {
    (c?.ports ?? []).forEach((p, pi) => {
      if (!p?.name) return;
      if (!Number.isInteger(p.containerPort) || p.containerPort < 1 || p.containerPort > 65535) {
        errors.push({
          object,
          field: `spec.containers[${ci}].ports[${pi}].containerPort`,
          message: `must be between 1 and 65535, not ${p.containerPort}`,
        });
        return;
      }
      const byProtocol = out.get(p.name) ?? {};
      byProtocol[p.protocol ?? "TCP"] ??= p.containerPort;
      out.set(p.name, byProtocol);
    });
  });
  return out;
}
