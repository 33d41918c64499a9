/**
 * IP addresses: the one parser (text -> numbers) and the one formatter (bytes -> canonical text)
 * of the project. The packet parser formats addresses read from packets, the policy engine parses
 * and canonicalizes Pod IPs and CIDRs, the rule backends compare set members: all of them must
 * produce exactly the same string for the same address, or map lookups by IP miss.
 *
 * The canonical form: IPv4 as a dotted quad without leading zeros; IPv6 per RFC 5952 (lower-case
 * hex, no leading zeros in a group, the longest run of two or more zero groups written as "::",
 * the first such run on a tie). IPv4-mapped IPv6 (::ffff:a.b.c.d) is written as the plain IPv4
 * address, as Go's net package (and so the API server and src/policy/cidr.ts) treats it.
 *
 * Pure, no dependencies, no exceptions. The formatters run twice per queued packet, so they avoid
 * temporary arrays: only the returned string is built.
 */

export type IPFamily = 4 | 6;

/** An address as numbers: IPv4 is one uint32; IPv6 four uint32 words, most significant first. */
export type ParsedIP = { family: 4; v4: number } | { family: 6; v6: Uint32Array };

const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Dotted quad to a uint32; null when not one. Leading zeros are refused (octal or decimal?). */
export function parseIPv4(text: string): number | null {
  const m = IPV4_RE.exec(text);
  if (!m) return null;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i]!;
    // Rejected as the API server does: "010" is ambiguous.
    if (part.length > 1 && part[0] === "0") return null;
    const octet = Number(part);
    if (octet > 255) return null;
    n = n * 256 + octet;
  }
  return n >>> 0;
}

/** IPv6 text (with "::" and an optional trailing dotted quad) to four words; null if invalid. */
export function parseIPv6(text: string): Uint32Array | null {
  if (text.length < 2 || text.length > 45 || text.includes("%")) return null;
  const halves = text.split("::");
  if (halves.length > 2) return null;
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
  const groups: number[] = [];
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

/**
 * Parse an IPv4 or IPv6 address (no prefix, no zone); null when it is neither. IPv4-mapped IPv6
 * (::ffff:a.b.c.d) is its IPv4 address, as Go's net package (and so the API server) treats it.
 */
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

/** Network-order bytes of a parsed address (4 or 16). */
export function ipBytes(ip: ParsedIP): Uint8Array {
  const words = ip.family === 4 ? [ip.v4] : ip.v6;
  const bytes = new Uint8Array(words.length * 4);
  const view = new DataView(bytes.buffer);
  words.forEach((w, i) => view.setUint32(4 * i, w));
  return bytes;
}

/** Canonical text of a parsed address (see the module comment). */
export function formatIP(ip: ParsedIP): string {
  const bytes = ipBytes(ip);
  return ip.family === 4 ? formatIPv4(bytes, 0) : formatIPv6(bytes, 0);
}

/** Canonical text of an address written any valid way; null if it is not an address. */
export function canonicalIP(text: string): string | null {
  const ip = parseIP(text.trim());
  return ip ? formatIP(ip) : null;
}

/** "0".."255", so an octet costs a table read instead of a number-to-string conversion. */
const DECIMAL: readonly string[] = Array.from({ length: 256 }, (_, i) => String(i));

/** "0".."ff": a 16-bit group is written as its high byte (when non-zero) and its low byte. */
const HEX: readonly string[] = Array.from({ length: 256 }, (_, i) => i.toString(16));
/** "00".."ff": the low byte of a group whose high byte is non-zero keeps its leading zero. */
const HEX2: readonly string[] = Array.from(
  { length: 256 },
  (_, i) => i.toString(16).padStart(2, "0"),
);

/** Dotted quad of the 4 bytes at `offset`. The caller guarantees offset + 4 <= bytes.length. */
export function formatIPv4(bytes: Uint8Array, offset: number): string {
  return DECIMAL[bytes[offset]!]! + "." + DECIMAL[bytes[offset + 1]!]! + "." +
    DECIMAL[bytes[offset + 2]!]! + "." + DECIMAL[bytes[offset + 3]!]!;
}

/** One 16-bit group (big-endian at `at`) in lower-case hex without leading zeros. */
function hexGroup(bytes: Uint8Array, at: number): string {
  const hi = bytes[at]!;
  const lo = bytes[at + 1]!;
  return hi === 0 ? HEX[lo]! : HEX[hi]! + HEX2[lo]!;
}

/**
 * RFC 5952 text of the 16 bytes at `offset` (the caller guarantees offset + 16 <= bytes.length);
 * an IPv4-mapped address comes out as its IPv4 dotted quad.
 */
export function formatIPv6(bytes: Uint8Array, offset: number): string {
  // Find the longest run of zero groups (>= 2 groups; the first one wins a tie).
  let bestStart = -1;
  let bestLen = 1;
  let runStart = -1;
  for (let g = 0; g < 8; g++) {
    const at = offset + 2 * g;
    if (bytes[at] === 0 && bytes[at + 1] === 0) {
      if (runStart < 0) runStart = g;
      const len = g - runStart + 1;
      if (len > bestLen) {
        bestStart = runStart;
        bestLen = len;
      }
    } else {
      runStart = -1;
    }
  }
  // ::ffff:a.b.c.d — five zero groups then 0xffff.
  if (
    bestStart === 0 && bestLen === 5 && bytes[offset + 10] === 0xff && bytes[offset + 11] === 0xff
  ) {
    return formatIPv4(bytes, offset + 12);
  }
  let text = "";
  for (let g = 0; g < 8; g++) {
    if (g === bestStart) {
      text += "::";
      g += bestLen - 1;
      continue;
    }
    if (text !== "" && g !== bestStart + bestLen) text += ":";
    text += hexGroup(bytes, offset + 2 * g);
  }
  return text;
}
