/**
 * The verdict worker's own memory of recent decisions, for when the kernel's verdict cache is off
 * or a key is not in it yet: the same (source, destination, protocol, destination port) judged
 * again within one engine generation gets the same decision, so it is looked up by the packet's
 * raw bytes instead of parsed into strings and evaluated. Only IPv4 TCP, UDP and SCTP packets
 * the parser would read whole (the checks below mirror its success path); everything else, and
 * every packet after a state change (any new engine generation empties the memo), takes the full
 * path. Bounded: emptied when it holds MAX_ENTRIES decisions. Pure.
 */
import type { ConnectionProtocol } from "../net/protocol.ts";
import type { Decision } from "../policy/types.ts";

export const MAX_ENTRIES = 8192;

export interface MemoEntry {
  decision: Decision;
  protocol: ConnectionProtocol;
}

const PROTOCOL_INDEX: Record<number, number> = { 6: 1, 17: 2, 132: 3 };

export class VerdictMemo {
  /** destination address -> (source address, protocol, destination port) -> decision. */
  private readonly byDst = new Map<number, Map<number, MemoEntry>>();
  private size = 0;
  private generation = -1;
  private version = -1;
  // The key of the packet last passed to key(), for get() and set().
  private dst = 0;
  private rest = 0;

  /**
   * Forget everything when the engine's state (`generation`), or anything else the decisions
   * depended on (`version`: which local addresses are unknown pods), is no longer the one the
   * entries came from.
   */
  sync(generation: number, version = 0): void {
    if (generation === this.generation && version === this.version) return;
    this.generation = generation;
    this.version = version;
    this.clear();
  }

  clear(): void {
    this.byDst.clear();
    this.size = 0;
  }

  /**
   * Reads the key of `b` (an IPv4 TCP/UDP/SCTP packet with its ports captured, not a fragment);
   * false when the packet is not one the memo serves.
   */
  key(b: Uint8Array): boolean {
    if (b.length < 20 || b[0]! >> 4 !== 4) return false;
    const headerLen = (b[0]! & 0x0f) * 4;
    if (headerLen < 20 || b.length < headerLen + 4) return false;
    const totalLen = (b[2]! << 8) | b[3]!;
    if (totalLen !== 0 && totalLen < headerLen + 4) return false;
    if ((((b[6]! & 0x1f) << 8) | b[7]!) !== 0) return false;
    const index = PROTOCOL_INDEX[b[9]!];
    if (index === undefined) return false;
    const src = ((b[12]! << 24) | (b[13]! << 16) | (b[14]! << 8) | b[15]!) >>> 0;
    this.dst = ((b[16]! << 24) | (b[17]! << 16) | (b[18]! << 8) | b[19]!) >>> 0;
    // 32 + 2 + 16 bits: exact in a double.
    this.rest = (src * 4 + index) * 65536 + ((b[headerLen + 2]! << 8) | b[headerLen + 3]!);
    return true;
  }

  /** The decision for the key last read, if remembered. */
  get(): MemoEntry | undefined {
    return this.byDst.get(this.dst)?.get(this.rest);
  }

  /** Remember `entry` under the key last read. */
  set(entry: MemoEntry): void {
    if (this.size >= MAX_ENTRIES) this.clear();
    let inner = this.byDst.get(this.dst);
    if (!inner) this.byDst.set(this.dst, inner = new Map());
    if (!inner.has(this.rest)) this.size++;
    inner.set(this.rest, entry);
  }
}
