/**
 * The cluster the verdict-loop labs judge (verdict_loop_test.ts, verdict_cache_test.ts): three
 * pods in namespace x on one node, and the one policy they change (ingress to app=server on TCP
 * and UDP 80 from the given apps).
 */
import type { NetworkPolicy, Pod } from "../../src/policy/types.ts";
import type { StateEvent } from "../../src/state/events.ts";

export interface VlPod {
  namespace: string;
  name: string;
  ip: string;
  labels: Record<string, string>;
}

export const VL_PODS: readonly VlPod[] = [
  { namespace: "x", name: "client", ip: "10.244.1.11", labels: { app: "client" } },
  { namespace: "x", name: "server", ip: "10.244.1.12", labels: { app: "server" } },
  { namespace: "x", name: "other", ip: "10.244.1.13", labels: { app: "other" } },
];

/** The Pod object of `p` on `node`, dual-stack with the lab's IPv6 address. */
export function vlPodObject(node: string, p: VlPod, ip6: string): Pod {
  return {
    metadata: { namespace: p.namespace, name: p.name, labels: p.labels },
    spec: { nodeName: node },
    status: { phase: "Running", podIP: p.ip, podIPs: [{ ip: p.ip }, { ip: ip6 }] },
  };
}

/** Ingress to app=server on TCP/UDP 80 only from the given apps. */
export function serverPolicy(fromApps: string[]): NetworkPolicy {
  return {
    metadata: { namespace: "x", name: "server-ingress" },
    spec: {
      podSelector: { matchLabels: { app: "server" } },
      policyTypes: ["Ingress"],
      ingress: [{
        from: [{
          podSelector: { matchExpressions: [{ key: "app", operator: "In", values: fromApps }] },
        }],
        ports: [{ protocol: "TCP", port: 80 }, { protocol: "UDP", port: 80 }],
      }],
    },
  };
}

export const upsertPolicy = (np: NetworkPolicy): StateEvent => ({
  op: "upsert",
  kind: "NetworkPolicy",
  object: np,
});
