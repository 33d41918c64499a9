/**
 * IP addresses and CIDR blocks as numbers, for ipBlock matching on the verdict path.
 *
 * IPv4 is one uint32; IPv6 is four uint32 words, most significant first. IPv4-mapped IPv6
 * (::ffff:a.b.c.d) is treated as IPv4, as Go's net package (and so the API server) does.
 */

import { formatIPv4, formatIPv6 } from "../packet/ip.ts";

export type ParsedIP = { family: 4; v4: number } | { family: 6; v6: Uint32Array };

const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function parseIPv4(text: string): number | null {
  const m = IPV4_RE.exec(text);
  if (!m) return null;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i]!;
    // Leading zeros are rejected as the API server does (they are ambiguous: octal or decimal?).
    if (part.length > 1 && part[0] === "0") return null;
    const octet = Number(part);
    if (octet > 255) return null;
    n = n * 256 + octet;
  }
  return n >>> 0;
}

function parseIPv6(text: string): Uint32Array | null {
  if (text.length < 2 || text.length > 45 || text.includes("%")) return null;
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const groups: number[] = [];
  const parseGroups = (part: string, allowTrailingV4: boolean): number[] | null => {
    if (part === "") return [];
    const out: number[] = [];
    const fields = part.split(":");
    for (let i = 0; i < fields.length; i++) {
      const f = fields[i]!;
      if (allowTrailingV4 && i === fields.length - 1 && f.includes(".")) {
        const v4 = parseIPv4(f);
        if (v4 === null) return null;
        out.push(v4 >>> 16, v4 & 0xffff);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(f)) return null;
        out.push(parseInt(f, 16));
      }
    }
    return out;
  };
  if (halves.length === 2) {
    const head = parseGroups(halves[0]!, false);
    const tail = parseGroups(halves[1]!, true);
    if (!head || !tail || head.length + tail.length > 7) return null;
    groups.push(...head, ...new Array(8 - head.length - tail.length).fill(0), ...tail);
  } else {
    const all = parseGroups(text, true);
    if (!all || all.length !== 8) return null;
    groups.push(...all);
  }
  const w = new Uint32Array(4);
  for (let i = 0; i < 4; i++) w[i] = ((groups[2 * i]! << 16) | groups[2 * i + 1]!) >>> 0;
  return w;
}

/** Parse an IPv4 or IPv6 address; null when it is not one. */
export function parseIP(text: string): ParsedIP | null {
  if (text.includes(":")) {
    const w = parseIPv6(text);
    if (!w) return null;
    if (w[0] === 0 && w[1] === 0 && w[2] === 0xffff) return { family: 4, v4: w[3]! };
    return { family: 6, v6: w };
  }
  const v4 = parseIPv4(text);
  return v4 === null ? null : { family: 4, v4 };
}

function toBytes(ip: ParsedIP): Uint8Array {
  const words = ip.family === 4 ? [ip.v4] : ip.v6;
  const bytes = new Uint8Array(words.length * 4);
  words.forEach((w, i) => new DataView(bytes.buffer).setUint32(4 * i, w));
  return bytes;
}

function formatParsed(ip: ParsedIP): string {
  return ip.family === 4 ? formatIPv4(toBytes(ip), 0) : formatIPv6(toBytes(ip), 0);
}

/** Canonical text of an address (dotted quad, or RFC 5952 lower-case IPv6); null if invalid. */
export function canonicalIP(text: string): string | null {
  const ip = parseIP(text.trim());
  return ip ? formatParsed(ip) : null;
}

export class Cidr {
  private constructor(
    readonly family: 4 | 6,
    readonly prefix: number,
    /** Network address, host bits cleared: one word for IPv4, four for IPv6. */
    private readonly net: Uint32Array,
    private readonly mask: Uint32Array,
  ) {}

  /** Parse "a.b.c.d/n" or "x::/n". Host bits may be set (the API server accepts them). */
  static parse(text: string): Cidr | string {
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
    return `${formatParsed(net)}/${this.prefix}`;
  }
}
