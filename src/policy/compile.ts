/**
 * Turns a NetworkPolicy object into the form the engine evaluates: selectors, CIDRs and port sets
 * parsed once, policyTypes defaulted exactly as the API server does, and every validation problem
 * reported at once with the field it concerns.
 */
import { Cidr } from "./cidr.ts";
import { Selector } from "./selector.ts";
import { Interned } from "./intern.ts";
import type { NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, ObjectError } from "./types.ts";
import type { Protocol } from "../net/protocol.ts";

export type CompiledPeer =
  | { kind: "ipBlock"; cidr: Cidr; except: Cidr[] }
  | {
    kind: "pods";
    /** null: every pod in the selected namespaces. */
    podSelector: Selector | null;
    /** null: only the policy's own namespace. */
    namespaceSelector: Selector | null;
  };

export type CompiledPort =
  | { protocol: Protocol; kind: "any" }
  | { protocol: Protocol; kind: "range"; from: number; to: number }
  | { protocol: Protocol; kind: "named"; name: string };

export interface CompiledRule {
  /** Index into spec.ingress / spec.egress, for explanations. */
  index: number;
  /** null: the rule names no peers, so it matches every source/destination, pod or not. */
  peers: CompiledPeer[] | null;
  /** null: the rule names no ports, so it matches every port and protocol. */
  ports: CompiledPort[] | null;
}

export interface CompiledPolicy {
  /** "namespace/name" */
  key: string;
  namespace: string;
  name: string;
  podSelector: Selector;
  /** null: the policy does not isolate for ingress; [] isolates and allows nothing. */
  ingress: CompiledRule[] | null;
  egress: CompiledRule[] | null;
}

const PROTOCOLS = new Set(["TCP", "UDP", "SCTP"]);
/** IANA_SVC_NAME, as the API validates named ports. */
const PORT_NAME_RE = /^(?=.*[a-z])(?!.*--)[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/;

export function compilePolicy(
  np: NetworkPolicy,
  source?: string,
): { policy: CompiledPolicy | null; errors: ObjectError[] } {
  const problems: [string, string][] = [];
  const name = np?.metadata?.name;
  const namespace = np?.metadata?.namespace ?? "default";
  if (typeof name !== "string" || name === "") problems.push(["metadata.name", "is required"]);
  const spec = np?.spec;
  let policy: CompiledPolicy | null = null;
  if (!spec || typeof spec !== "object") {
    problems.push(["spec", "is required"]);
  } else {
    const podSelector = Selector.compile(spec.podSelector, "spec.podSelector", problems);
    let isolatesIngress = true;
    let isolatesEgress = Array.isArray(spec.egress) && spec.egress.length > 0;
    if (spec.policyTypes !== undefined && spec.policyTypes !== null) {
      if (!Array.isArray(spec.policyTypes)) {
        problems.push(["spec.policyTypes", "must be a list"]);
      } else {
        spec.policyTypes.forEach((t, i) => {
          if (t !== "Ingress" && t !== "Egress") {
            problems.push([
              `spec.policyTypes[${i}]`,
              `must be Ingress or Egress, not ${JSON.stringify(t)}`,
            ]);
          }
        });
        isolatesIngress = spec.policyTypes.includes("Ingress");
        isolatesEgress = spec.policyTypes.includes("Egress");
      }
    }
    const ingress = compileRules(spec.ingress, "spec.ingress", "from", problems);
    const egress = compileRules(spec.egress, "spec.egress", "to", problems);
    if (podSelector && problems.length === 0) {
      policy = {
        key: `${namespace}/${name}`,
        namespace,
        name: name!,
        podSelector,
        ingress: isolatesIngress ? ingress : null,
        egress: isolatesEgress ? egress : null,
      };
    }
  }
  const object = `NetworkPolicy ${namespace}/${typeof name === "string" ? name : "<unnamed>"}`;
  const errors = problems.map(([field, message]) => ({ source, object, field, message }));
  return { policy: errors.length ? null : policy, errors };
}

function compileRules(
  rules: unknown,
  path: string,
  peerField: "from" | "to",
  problems: [string, string][],
): CompiledRule[] {
  if (rules === undefined || rules === null) return [];
  if (!Array.isArray(rules)) {
    problems.push([path, "must be a list"]);
    return [];
  }
  return rules.map((rule, index) => {
    const p = `${path}[${index}]`;
    const r = (rule ?? {}) as Record<string, unknown>;
    return {
      index,
      peers: compilePeers(r[peerField], `${p}.${peerField}`, problems),
      ports: compilePorts(r.ports, `${p}.ports`, problems),
    };
  });
}

function compilePeers(
  peers: unknown,
  path: string,
  problems: [string, string][],
): CompiledPeer[] | null {
  if (peers === undefined || peers === null) return null;
  if (!Array.isArray(peers)) {
    problems.push([path, "must be a list"]);
    return null;
  }
  if (peers.length === 0) return null; // an empty list means the same as no list: everyone
  const out: CompiledPeer[] = [];
  peers.forEach((raw: NetworkPolicyPeer, i) => {
    const p = `${path}[${i}]`;
    const peer = raw ?? {};
    const hasSelectors = peer.podSelector != null || peer.namespaceSelector != null;
    if (peer.ipBlock != null) {
      if (hasSelectors) {
        problems.push([p, "ipBlock may not be combined with podSelector or namespaceSelector"]);
        return;
      }
      const block = compileIPBlock(peer.ipBlock, `${p}.ipBlock`, problems);
      if (block) out.push(block);
      return;
    }
    if (!hasSelectors) {
      problems.push([p, "must specify podSelector, namespaceSelector or ipBlock"]);
      return;
    }
    const podSelector = peer.podSelector == null
      ? null
      : Selector.compile(peer.podSelector, `${p}.podSelector`, problems);
    const namespaceSelector = peer.namespaceSelector == null
      ? null
      : Selector.compile(peer.namespaceSelector, `${p}.namespaceSelector`, problems);
    out.push({ kind: "pods", podSelector, namespaceSelector });
  });
  return out;
}

function compileIPBlock(
  block: NetworkPolicyPeer["ipBlock"],
  path: string,
  problems: [string, string][],
): CompiledPeer | null {
  if (typeof block?.cidr !== "string") {
    problems.push([`${path}.cidr`, "is required"]);
    return null;
  }
  const cidr = Cidr.parse(block.cidr);
  if (typeof cidr === "string") {
    problems.push([`${path}.cidr`, `invalid CIDR: ${cidr}`]);
    return null;
  }
  const except: Cidr[] = [];
  const list = block.except ?? [];
  if (!Array.isArray(list)) {
    problems.push([`${path}.except`, "must be a list"]);
    return null;
  }
  list.forEach((text, i) => {
    const ep = `${path}.except[${i}]`;
    const e = typeof text === "string" ? Cidr.parse(text) : "must be a string";
    if (typeof e === "string") problems.push([ep, `invalid CIDR: ${e}`]);
    else if (!cidr.covers(e) || e.prefix === cidr.prefix) {
      // The API requires each except to lie strictly inside the block.
      problems.push([ep, `${text} is not strictly within ${block.cidr}`]);
    } else except.push(e);
  });
  return { kind: "ipBlock", cidr, except };
}

function compilePorts(
  ports: unknown,
  path: string,
  problems: [string, string][],
): CompiledPort[] | null {
  if (ports === undefined || ports === null) return null;
  if (!Array.isArray(ports)) {
    problems.push([path, "must be a list"]);
    return null;
  }
  if (ports.length === 0) return null;
  const key = JSON.stringify(ports);
  const known = portLists.lookup(key);
  if (known) return known;
  const before = problems.length;
  const out: CompiledPort[] = [];
  ports.forEach((raw: NetworkPolicyPort, i) => {
    const p = `${path}[${i}]`;
    const entry = raw ?? {};
    const protocol = entry.protocol ?? "TCP";
    if (!PROTOCOLS.has(protocol)) {
      problems.push([`${p}.protocol`, `must be TCP, UDP or SCTP, not ${JSON.stringify(protocol)}`]);
      return;
    }
    const { port, endPort } = entry;
    if (endPort !== undefined && endPort !== null) {
      if (typeof port !== "number") {
        problems.push([`${p}.endPort`, "requires a numeric port"]);
        return;
      }
      if (!Number.isInteger(endPort) || endPort < port || endPort > 65535) {
        problems.push([`${p}.endPort`, `must be an integer from port (${port}) to 65535`]);
        return;
      }
    }
    if (port === undefined || port === null) {
      out.push({ protocol, kind: "any" });
    } else if (typeof port === "number") {
      if (!Number.isInteger(port) || port < 1 || port > 65535) {
        problems.push([`${p}.port`, `must be between 1 and 65535, not ${port}`]);
        return;
      }
      out.push({ protocol, kind: "range", from: port, to: endPort ?? port });
    } else if (typeof port === "string") {
      // A numeric string is what kubectl would send as an int-or-string number.
      if (/^\d+$/.test(port)) {
        const n = Number(port);
        if (n < 1 || n > 65535) {
          problems.push([`${p}.port`, `must be between 1 and 65535, not ${port}`]);
          return;
        }
        out.push({ protocol, kind: "range", from: n, to: endPort ?? n });
      } else if (!PORT_NAME_RE.test(port)) {
        problems.push([`${p}.port`, `${JSON.stringify(port)} is not a valid port name`]);
      } else out.push({ protocol, kind: "named", name: port });
    } else {
      problems.push([`${p}.port`, "must be a number or a port name"]);
    }
  });
  // Policies repeat the same port lists: one compiled (never mutated) list each.
  return problems.length > before ? out : portLists.put(key, out);
}

const portLists = new Interned<CompiledPort[]>();
