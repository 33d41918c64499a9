/**
 * Canonical text of IP addresses from bytes, shared by the packet parser (addresses read from
 * packets) and the policy engine (src/policy/cidr.ts formats parsed Pod IPs with these): both
 * sides must produce exactly the same string for the same address, or map lookups by IP miss.
 *
 * The canonical form: IPv4 as a dotted quad without leading zeros; IPv6 per RFC 5952 (lower-case
 * hex, no leading zeros in a group, the longest run of two or more zero groups written as "::",
 * the first such run on a tie). IPv4-mapped IPv6 (::ffff:a.b.c.d) is written as the plain IPv4
 * address, as Go's net package (and so the API server and src/policy/cidr.ts) treats it.
 *
 * Pure, no dependencies, no exceptions. The formatters run twice per queued packet, so they avoid
 * temporary arrays: only the returned string is built.
 */

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
