/**
 * Deterministic synthetic clusters for the engine benchmark: namespaces of 50 pods, labelled like
 * real apps, and a policy mix that exercises every engine path (pod and namespace selectors with
 * expressions, ipBlocks with except, named ports, endPort ranges, both directions).
 */
import type { Namespace, NetworkPolicy, Pod } from "../src/policy/types.ts";

export interface GeneratedCluster {
  namespaces: Namespace[];
  pods: Pod[];
  policies: NetworkPolicy[];
  podIPs: string[];
}

/** Small seeded PRNG (mulberry32) so every run judges the same connections. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TIERS = ["web", "api", "db"];
const ENVS = ["prod", "staging"];

export function podIP(i: number): string {
  return `10.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
}

export function generateCluster(podCount: number, policyCount: number): GeneratedCluster {
  const nsCount = Math.max(2, Math.ceil(podCount / 50));
  const namespaces: Namespace[] = [];
  for (let n = 0; n < nsCount; n++) {
    namespaces.push({
      metadata: { name: `ns-${n}`, labels: { env: ENVS[n % 2]!, team: `team-${n % 7}` } },
    });
  }
  const pods: Pod[] = [];
  const podIPs: string[] = [];
  for (let i = 0; i < podCount; i++) {
    const ip = podIP(i + 1);
    podIPs.push(ip);
    pods.push({
      metadata: {
        namespace: `ns-${i % nsCount}`,
        name: `pod-${i}`,
        labels: { app: `app-${i % 20}`, tier: TIERS[i % 3]!, version: `v${i % 4}` },
      },
      spec: {
        // 100 pods per node, like a real node (kubelet's default limit is 110)
        nodeName: `node-${Math.floor(i / 100)}`,
        containers: [{
          ports: [
            { name: "http", containerPort: 8080, protocol: "TCP" },
            { name: "metrics", containerPort: 9090, protocol: "TCP" },
            { name: "dns", containerPort: 53, protocol: "UDP" },
          ],
        }],
      },
      status: {
        phase: "Running",
        podIP: ip,
        hostIP: `192.168.${Math.floor(i / 100) >> 8}.${Math.floor(i / 100) & 255}`,
      },
    });
  }
  const policies: NetworkPolicy[] = [];
  for (let p = 0; p < policyCount; p++) {
    const namespace = `ns-${p % nsCount}`;
    const app = `app-${p % 20}`;
    const meta = { namespace, name: `policy-${p}` };
    switch (p % 5) {
      case 0: // isolate an app, allow its own app on a named port
        policies.push({
          metadata: meta,
          spec: {
            podSelector: { matchLabels: { app } },
            ingress: [{
              from: [{ podSelector: { matchLabels: { app } } }],
              ports: [{ port: "http" }],
            }],
          },
        });
        break;
      case 1: // web tier from prod namespaces on a port range
        policies.push({
          metadata: meta,
          spec: {
            podSelector: {
              matchExpressions: [{ key: "tier", operator: "In", values: ["web", "api"] }],
            },
            ingress: [{
              from: [{
                namespaceSelector: {
                  matchExpressions: [{ key: "env", operator: "In", values: ["prod"] }],
                },
                podSelector: {
                  matchExpressions: [{ key: "version", operator: "NotIn", values: ["v3"] }],
                },
              }],
              ports: [{ protocol: "TCP", port: 8000, endPort: 8100 }],
            }],
          },
        });
        break;
      case 2: // egress to the outside except a private range
        policies.push({
          metadata: meta,
          spec: {
            podSelector: { matchLabels: { app, tier: "api" } },
            policyTypes: ["Egress"],
            egress: [
              {
                to: [{ ipBlock: { cidr: "0.0.0.0/0", except: ["10.0.0.0/8", "172.16.0.0/12"] } }],
                ports: [{ port: 443 }],
              },
              {
                to: [{
                  namespaceSelector: { matchExpressions: [{ key: "team", operator: "Exists" }] },
                }],
                ports: [{ protocol: "UDP", port: "dns" }],
              },
            ],
          },
        });
        break;
      case 3: // metrics scraping from a monitoring namespace, both directions isolated
        policies.push({
          metadata: meta,
          spec: {
            podSelector: {
              matchExpressions: [{ key: "app", operator: "Exists" }, {
                key: "tier",
                operator: "NotIn",
                values: ["db"],
              }],
            },
            policyTypes: ["Ingress", "Egress"],
            ingress: [{
              from: [{ namespaceSelector: { matchLabels: { team: "team-3" } } }],
              ports: [{ port: "metrics" }],
            }],
            egress: [{ to: [{ podSelector: {} }] }],
          },
        });
        break;
      default: // db reachable from api pods of the same namespace and an admin CIDR
        policies.push({
          metadata: meta,
          spec: {
            podSelector: { matchLabels: { tier: "db" } },
            ingress: [{
              from: [{ podSelector: { matchLabels: { tier: "api" } } }, {
                ipBlock: { cidr: "10.64.0.0/16", except: ["10.64.0.0/24"] },
              }],
              ports: [{ port: 5432 }, { port: "http" }],
            }],
          },
        });
    }
  }
  return { namespaces, pods, policies, podIPs };
}
