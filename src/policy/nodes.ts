/**
 * Node objects, for `nodes` egress peers: which node (and so which labels) owns an address.
 * A node's addresses are its status.addresses of type InternalIP and ExternalIP, as the API
 * defines the peer; a hostNetwork pod has its node's address, so it is matched as that node.
 * Also each node's pod CIDRs (spec.podCIDRs, else spec.podCIDR): the addresses its pods get,
 * which the agent watches for pods it does not know yet (local_pods.ts).
 */
import { canonicalIP } from "../net/ip.ts";
import { Cidr } from "./cidr.ts";
import { type Labels, toLabels } from "./selector.ts";
import type { Node, ObjectError } from "./types.ts";

interface NodeEntry {
  name: string;
  labels: Labels;
  ips: string[];
  /** Canonical CIDR texts (host bits cleared). */
  podCIDRs: string[];
}

const ADDRESS_TYPES = new Set(["InternalIP", "ExternalIP"]);

export class NodeIndex {
  private readonly nodes = new Map<string, NodeEntry>();
  /** Every node claiming an address; the first by name answers (deterministic if two do). */
  private readonly byIP = new Map<string, NodeEntry[]>();

  get size(): number {
    return this.nodes.size;
  }

  upsert(node: Node): ObjectError[] {
    const name = node?.metadata?.name;
    if (typeof name !== "string" || name === "") {
      return [{ object: "Node <unnamed>", field: "metadata.name", message: "is required" }];
    }
    const object = `Node ${name}`;
    const problems: [string, string][] = [];
    const labels = toLabels(node.metadata.labels, problems);
    const ips: string[] = [];
    const addresses = node.status?.addresses ?? [];
    if (!Array.isArray(addresses)) problems.push(["status.addresses", "must be a list"]);
    else {
      addresses.forEach((a, i) => {
        if (!ADDRESS_TYPES.has(a?.type as string)) return;
        const ip = typeof a.address === "string" ? canonicalIP(a.address) : null;
        if (ip === null) {
          problems.push([
            `status.addresses[${i}].address`,
            `invalid IP ${JSON.stringify(a.address)}`,
          ]);
        } else if (!ips.includes(ip)) ips.push(ip);
      });
    }
    const podCIDRs = readPodCIDRs(node, problems);
    this.delete(name);
    const entry: NodeEntry = { name, labels, ips, podCIDRs };
    this.nodes.set(name, entry);
    for (const ip of ips) {
      const list = this.byIP.get(ip) ?? [];
      list.push(entry);
      list.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      this.byIP.set(ip, list);
    }
    return problems.map(([field, message]) => ({ object, field, message }));
  }

  delete(name: string): boolean {
    const old = this.nodes.get(name);
    if (!old) return false;
    this.nodes.delete(name);
    for (const ip of old.ips) {
      const list = (this.byIP.get(ip) ?? []).filter((n) => n !== old);
      if (list.length) this.byIP.set(ip, list);
      else this.byIP.delete(ip);
    }
    return true;
  }

  /**
   * A node's addresses and a signature of everything `nodes` peers match on (labels, addresses):
   * equal signatures before and after an update mean no verdict changed.
   */
  describe(name: string): { ips: string[]; signature: string } | undefined {
    const n = this.nodes.get(name);
    if (!n) return undefined;
    const labels = [...n.labels].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return { ips: [...n.ips], signature: JSON.stringify([labels, [...n.ips].sort()]) };
  }

  /** Labels of the node owning `ip` (canonical text), if any. */
  labelsAt(ip: string): Labels | undefined {
    return this.byIP.get(ip)?.[0]?.labels;
  }

  /** The pod CIDRs of node `name` ([] when it has none; undefined when there is no such node). */
  podCIDRsOf(name: string): readonly string[] | undefined {
    return this.nodes.get(name)?.podCIDRs;
  }

  /** The name of the node owning `ip` (canonical text), if any. */
  nameAt(ip: string): string | undefined {
    return this.byIP.get(ip)?.[0]?.name;
  }

  /** A node's InternalIP/ExternalIP addresses (canonical text); none for an unknown node. */
  addressesOf(name: string): readonly string[] {
    return this.nodes.get(name)?.ips ?? [];
  }
}

/** spec.podCIDRs, or spec.podCIDR when the list is absent; bad entries reported and skipped. */
function readPodCIDRs(node: Node, problems: [string, string][]): string[] {
  const spec = node.spec;
  const list: [unknown, string][] = Array.isArray(spec?.podCIDRs)
    ? spec.podCIDRs.map((c, i) => [c, `spec.podCIDRs[${i}]`])
    : spec?.podCIDRs !== undefined
    ? (problems.push(["spec.podCIDRs", "must be a list"]), [])
    : spec?.podCIDR !== undefined
    ? [[spec.podCIDR, "spec.podCIDR"]]
    : [];
  const out: string[] = [];
  for (const [text, field] of list) {
    const cidr = typeof text === "string"
      ? Cidr.parse(text)
      : `${JSON.stringify(text)} is not a CIDR`;
    if (typeof cidr === "string") problems.push([field, cidr]);
    else if (!out.includes(cidr.toString())) out.push(cidr.toString());
  }
  return out;
}
