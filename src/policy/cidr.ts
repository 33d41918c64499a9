/**
 * CIDR blocks as numbers, for ipBlock matching on the verdict path (addresses: src/net/ip.ts).
 */

import { formatIP, type ParsedIP, parseIP, parseIPv6 } from "../net/ip.ts";
import { Interned } from "./intern.ts";

export type { ParsedIP };

export class Cidr {
  private constructor(
    readonly family: 4 | 6,
    readonly prefix: number,
    /** Network address, host bits cleared: one word for IPv4, four for IPv6. */
    private readonly net: Uint32Array,
    private readonly mask: Uint32Array,
  ) {}

  /**
   * Parse "a.b.c.d/n" or "x::/n". Host bits may be set (the API server accepts them). Policies
   * repeat the same blocks: each text is parsed into one shared instance.
   */
  static parse(text: string): Cidr | string {
    const known = parsed.lookup(text);
    if (known) return known;
    const c = Cidr.parseNew(text);
    return typeof c === "string" ? c : parsed.put(text, c);
  }

  private static parseNew(text: string): Cidr | string {
    const slash = text.indexOf("/");
    if (slash < 0) return `"${text}" is not a CIDR (missing "/prefix")`;
    const addrText = text.slice(0, slash);
    const prefixText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(prefixText)) return `"${text}": prefix length is not a number`;
    const prefix = Number(prefixText);
    // A mapped address with a v6 prefix is ambiguous; keep the family the text was written in.
    const ip = addrText.includes(":")
      ? (() => {
        const w = parseIPv6(addrText);
        return w ? { family: 6 as const, v6: w } : null;
      })()
      : parseIP(addrText);
    if (!ip) return `"${text}": "${addrText}" is not an IP address`;
    const bits = ip.family === 4 ? 32 : 128;
    if (prefix > bits) return `"${text}": prefix length ${prefix} exceeds ${bits}`;
    const words = ip.family === 4 ? 1 : 4;
    const mask = new Uint32Array(words);
    const net = new Uint32Array(words);
    for (let i = 0; i < words; i++) {
      const left = Math.min(32, Math.max(0, prefix - 32 * i));
      mask[i] = left === 0 ? 0 : (0xffffffff << (32 - left)) >>> 0;
      const word = ip.family === 4 ? ip.v4 : ip.v6[i]!;
      net[i] = (word & mask[i]!) >>> 0;
    }
    return new Cidr(ip.family, prefix, net, mask);
  }

  contains(ip: ParsedIP): boolean {
    if (ip.family !== this.family) return false;
    if (ip.family === 4) return ((ip.v4 & this.mask[0]!) >>> 0) === this.net[0];
    for (let i = 0; i < 4; i++) {
      if (((ip.v6[i]! & this.mask[i]!) >>> 0) !== this.net[i]) return false;
    }
    return true;
  }

  /** True when every address of `other` is inside this block. */
  covers(other: Cidr): boolean {
    if (other.family !== this.family || other.prefix < this.prefix) return false;
    for (let i = 0; i < this.net.length; i++) {
      if (((other.net[i]! & this.mask[i]!) >>> 0) !== this.net[i]) return false;
    }
    return true;
  }

  toString(): string {
    const net = this.family === 4
      ? { family: 4 as const, v4: this.net[0]! }
      : { family: 6 as const, v6: this.net };
    return `${formatIP(net)}/${this.prefix}`;
  }
}

const parsed = new Interned<Cidr>();
