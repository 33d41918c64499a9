/**
 * Node objects, for `nodes` egress peers: which node (and so which labels) owns an address.
 * A node's addresses are its status.addresses of type InternalIP and ExternalIP, as the API
 * defines the peer; a hostNetwork pod has its node's address, so it is matched as that node.
 * Each node's pod CIDRs (spec.podCIDRs, else spec.podCIDR) are kept too: where a pod that the API
 * has not reported yet may get its address.
 */
import { canonicalIP } from "../net/ip.ts";
import { Cidr } from "./cidr.ts";
import { type Labels, toLabels } from "./selector.ts";
import type { Node, ObjectError } from "./types.ts";

interface NodeEntry {
  name: string;
  labels: Labels;
  ips: string[];
  /** Pod CIDRs in canonical text (network address, prefix), in the order the Node lists them. */
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
}

/** spec.podCIDRs, or the older single spec.podCIDR when the list is absent; bad entries reported. */
function readPodCIDRs(node: Node, problems: [string, string][]): string[] {
  const spec = node.spec;
  const list = spec?.podCIDRs ?? (spec?.podCIDR === undefined ? [] : [spec.podCIDR]);
  const field = spec?.podCIDRs !== undefined ? "spec.podCIDRs" : "spec.podCIDR";
  if (!Array.isArray(list)) {
    problems.push([field, "must be a list"]);
    return [];
  }
  const out: string[] = [];
  list.forEach((text, i) => {
    const where = spec?.podCIDRs !== undefined ? `${field}[${i}]` : field;
    const cidr = typeof text === "string"
      ? Cidr.parse(text)
      : `${JSON.stringify(text)} is not a CIDR`;
    if (typeof cidr === "string") problems.push([where, cidr]);
    else if (!out.includes(cidr.toString())) out.push(cidr.toString());
  });
  return out;
}
