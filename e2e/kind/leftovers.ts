/**
 * Whether anything of kube-netpol is left in a node's network namespace: every iptables flavour
 * and family, the ipsets, the nftables tables. The same listing tools the agent's backends use
 * (from the kube-netpol image, so none can be missing) print the node's state; every line that
 * names kube-netpol (chain KUBE-NETPOL, `--comment kube-netpol`, sets `kube-netpol-*`, table
 * `inet kube-netpol`) is a leftover. A listing that fails leaves its part unknown, never
 * "clean": silence from a broken tool proves nothing. e2e/lab/leftover_scan_test.ts runs this
 * script against real rules in a network namespace.
 */

const LISTINGS: readonly string[] = [
  "iptables-nft-save",
  "ip6tables-nft-save",
  "iptables-legacy-save",
  "ip6tables-legacy-save",
  "ipset list -n",
  "nft list tables",
];

/**
 * One line of POSIX sh: each listing under a `### <listing>` header, and `### failed: <listing>
 * (exit N)` after one that failed. It always runs every listing.
 */
export const SCAN_SCRIPT =
  `for c in ${LISTINGS.map((l) => (l.includes(" ") ? `"${l}"` : l)).join(" ")}; ` +
  'do echo "### $c"; $c 2>&1 || echo "### failed: $c (exit $?)"; done';

export interface ScanResult {
  /** Lines naming kube-netpol, each with the listing it came from. */
  leftovers: { listing: string; line: string }[];
  /** Listings that failed or never ran: the scan proves nothing about them. */
  unknown: string[];
}

export function parseScan(output: string): ScanResult {
  const leftovers: ScanResult["leftovers"] = [];
  const ran = new Set<string>();
  const failed = new Set<string>();
  let listing = "";
  for (const raw of output.split("\n")) {
    const line = raw.trim();
    const fail = /^### failed: (.*) \(exit \d+\)$/.exec(line);
    if (fail) {
      failed.add(fail[1]!);
      continue;
    }
    if (line.startsWith("### ")) {
      listing = line.slice(4);
      ran.add(listing);
      continue;
    }
    if (/kube-netpol/i.test(line)) leftovers.push({ listing, line });
  }
  return { leftovers, unknown: LISTINGS.filter((l) => !ran.has(l) || failed.has(l)) };
}
