/**
 * Which addresses of this node's pod CIDRs the agent does not know yet: the pod-start race.
 *
 * A pod can send its first packets before the agent has seen its IP (the Pod object arrives
 * later, or the informer lags). Such a pod is in no queued set, so without this its first
 * connections would never be judged: a pod in a default-deny namespace could reach anything for
 * its first moments. Every address of this node's pod CIDRs belongs to a local pod (or to the node
 * itself), so an address in them that the agent cannot place is a pod it has not seen yet. The
 * rules queue new connections from and to such addresses, and the verdict worker holds them until
 * the pod appears (src/verdict/held_verdicts.ts).
 *
 * Known = owned by a pod on this node, isolated or not, or an address of this node: its Node
 * object's addresses and its interfaces' (on flannel-like CNIs the bridge address lies inside the
 * pod CIDR and is on no Node object). Pure: the interface addresses are handed in.
 */
import { canonicalIP, parseIP } from "../net/ip.ts";
import { Cidr } from "./cidr.ts";

/** What this needs from the engine (PolicyEngine implements it). */
export interface LocalAddressSource {
  readonly generation: number;
  /** undefined when no such Node is known. */
  nodePodCIDRs(node: string): readonly string[] | undefined;
  isLocalAddress(ip: string, node: string): boolean;
  localAddresses(node: string): string[];
}

/** Members of the rules' sets for unknown local pods (see src/rules/unknown_pod_sets.ts). */
export interface UnknownPodMembers {
  /** This node's pod CIDRs, canonical, none covering another. */
  podCIDRs: string[];
  /** Addresses in them (or anywhere) the agent knows are this node's pods or the node. */
  known: string[];
}

/** Parse `--pod-cidr` values: canonical texts, or the first error naming the bad value. */
export function parsePodCIDRs(texts: readonly string[]): string[] | string {
  const out: string[] = [];
  for (const text of texts) {
    const cidr = Cidr.parse(text.trim());
    if (typeof cidr === "string") return cidr;
    out.push(cidr.toString());
  }
  return out;
}

/**
 * CIDRs without duplicates or blocks inside another (an nft interval set refuses overlapping
 * elements), sorted.
 */
function outermost(cidrs: readonly Cidr[]): Cidr[] {
  const kept = cidrs.filter((c, i) =>
    !cidrs.some((o, j) => o.covers(c) && (o.prefix < c.prefix || j < i))
  );
  return kept.sort((a, b) => (a.toString() < b.toString() ? -1 : 1));
}

export class LocalPodAddresses {
  private cidrs: Cidr[] = [];
  private cidrTexts = "";
  private seenGeneration = -1;
  private readonly override?: Cidr[];
  private interfaceIPs = new Set<string>();

  /**
   * `overrideCIDRs` (the `--pod-cidr` flag, already valid): used instead of the Node object's,
   * for clusters whose Node objects do not carry them. Empty or absent: the Node's.
   */
  constructor(
    private readonly engine: LocalAddressSource,
    private readonly node: string,
    overrideCIDRs?: readonly string[],
  ) {
    if (overrideCIDRs?.length) {
      this.override = outermost(overrideCIDRs.map((t) => {
        const c = Cidr.parse(t);
        if (typeof c === "string") throw new RangeError(`pod CIDR ${c}`);
        return c;
      }));
    }
  }

  /** This node's interface addresses; true when they changed. Bad strings are ignored. */
  setInterfaceAddresses(ips: readonly string[]): boolean {
    const next = new Set<string>();
    for (const ip of ips) {
      const c = canonicalIP(ip);
      if (c !== null) next.add(c);
    }
    const same = next.size === this.interfaceIPs.size &&
      [...next].every((ip) => this.interfaceIPs.has(ip));
    this.interfaceIPs = next;
    return !same;
  }

  /** The pod CIDRs in force (the override, else the Node object's), canonical, sorted. */
  podCIDRs(): string[] {
    return this.current().map((c) => c.toString());
  }

  /** What the rules' sets must hold. */
  members(): UnknownPodMembers {
    const known = new Set(this.engine.localAddresses(this.node));
    for (const ip of this.interfaceIPs) known.add(ip);
    return { podCIDRs: this.podCIDRs(), known: [...known].sort() };
  }

  /**
   * True when `ip` (canonical text, as the packet parser writes it) lies in this node's pod
   * CIDRs and is neither a pod on this node nor an address of the node: a pod not seen yet.
   */
  isUnknown(ip: string): boolean {
    const cidrs = this.current();
    if (cidrs.length === 0) return false;
    if (this.engine.isLocalAddress(ip, this.node) || this.interfaceIPs.has(ip)) return false;
    const parsed = parseIP(ip);
    if (!parsed) return false;
    for (const c of cidrs) if (c.contains(parsed)) return true;
    return false;
  }

  private current(): Cidr[] {
    if (this.override) return this.override;
    const generation = this.engine.generation;
    if (generation !== this.seenGeneration) {
      this.seenGeneration = generation;
      const texts = this.engine.nodePodCIDRs(this.node) ?? [];
      const joined = texts.join(",");
      if (joined !== this.cidrTexts) {
        this.cidrTexts = joined;
        this.cidrs = outermost(texts.map((t) => Cidr.parse(t)).filter((c) => c instanceof Cidr));
      }
    }
    return this.cidrs;
  }
}
