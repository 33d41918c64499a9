/**
 * Packet mark contract between the verdict loop and the rule backends.
 *
 * A denied TCP or UDP packet gets verdict NF_REPEAT with DENY_MARK set. The backend's chain
 * rejects marked packets first (TCP reset, ICMP port unreachable), so the client fails fast
 * instead of waiting for a timeout. The queue rule itself never matches a marked packet, so even
 * if the reject rule were missing a marked packet cannot loop back into the queue.
 *
 * The bit is chosen clear of kube-proxy's 0x4000/0x8000 and Calico's high bits in common setups;
 * `--deny-mark` overrides it.
 */
export const DEFAULT_DENY_MARK = 0x00100000;

/**
 * "Remember this verdict" (the kernel verdict cache, docs/rules.md): a first packet the agent
 * allowed comes back with NF_REPEAT and this bit; a rule after the queue rules adds its key to
 * the cache set and accepts it. With the deny mark as well, the key goes to the deny cache
 * before the reject rule refuses the packet. The queue rules never match a packet carrying
 * either bit, so a marked packet cannot loop. Another component on the node must not use this
 * bit: a packet arriving with it would skip the queue (`--verdict-cache-mark` moves it).
 */
export const DEFAULT_CACHE_MARK = 0x00200000;

/**
 * Conntrack mark contract of strict mode (strict_cuts.ts): a connection that a state change now
 * denies gets CUT_MARK set in its ct mark (only these bits: the kernel keeps the others), and the
 * backend's chain refuses every packet of such a connection, in both directions (TCP reset, ICMP
 * port unreachable for UDP, anything else dropped). Cleared again when a change allows it.
 *
 * A ct mark bit, not a packet mark: it lives on the connection. Clear of the deny mark and of the
 * verdict cache's packet mark 0x00200000 (so a CNI that copies ct marks into packet marks with
 * CONNMARK --restore-mark cannot turn it into either); `--cut-mark` overrides it.
 */
export const DEFAULT_CUT_MARK = 0x00400000;
