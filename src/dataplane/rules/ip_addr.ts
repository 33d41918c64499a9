/**
 * IP address parsing for set diffs. The kernel tools print IPv6 in their own canonical form
 * (`fd00::a`), while pod IPs may arrive written differently (`FD00:0::A`). Comparing text would
 * make every sync delete and re-add the same member, so members are compared by `key`: the
 * address fully expanded. IPv4-mapped IPv6 addresses stay IPv6 (they live in the inet6 sets).
 */

export type IPFamily = 4 | 6;

export interface ParsedIP {
  family: IPFamily;
  /** Expanded form, identical for every spelling of the same address. */
  key: string;
}

function parseIPv4Octets(text: string): number[] | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const octets: number[] = [];
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    octets.push(n);
  }
  return octets;
}

function parseIPv6Groups(text: string): number[] | undefined {
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const toGroups = (part: string): number[] | undefined => {
    if (part === "") return [];
    const groups: number[] = [];
    const fields = part.split(":");
    for (let i = 0; i < fields.length; i++) {
      const f = fields[i] ?? "";
      if (i === fields.length - 1 && f.includes(".")) {
        // Embedded IPv4 in the last 32 bits (`::ffff:10.0.0.1`).
        const o = parseIPv4Octets(f);
        if (!o) return undefined;
        groups.push(((o[0] ?? 0) << 8) | (o[1] ?? 0), ((o[2] ?? 0) << 8) | (o[3] ?? 0));
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(f)) return undefined;
        groups.push(parseInt(f, 16));
      }
    }
    return groups;
  };
  const head = toGroups(halves[0] ?? "");
  const tail = halves.length === 2 ? toGroups(halves[1] ?? "") : [];
  if (!head || !tail) return undefined;
  if (halves.length === 1) return head.length === 8 ? head : undefined;
  const missing = 8 - head.length - tail.length;
  if (missing < 1) return undefined;
  return [...head, ...new Array<number>(missing).fill(0), ...tail];
}

/** Parse an IPv4 or IPv6 address (no prefix length, no zone); undefined when it is neither. */
export function parseIP(text: string): ParsedIP | undefined {
  if (text.includes(":")) {
    const groups = parseIPv6Groups(text);
    if (!groups) return undefined;
    return { family: 6, key: groups.map((g) => g.toString(16).padStart(4, "0")).join(":") };
  }
  const octets = parseIPv4Octets(text);
  return octets ? { family: 4, key: octets.join(".") } : undefined;
}
