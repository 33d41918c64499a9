/**
 * The kernel's per-queue counters from /proc/net/netfilter/nfnetlink_queue, for the nfqueue_*
 * gauges. One line per bound queue, whitespace-separated (net/netfilter/nfnetlink_queue.c):
 *   queue_number peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
 * The verdict Worker reads the file (system_stats.ts); the main thread records the gauges.
 */
import type { AgentMetrics } from "../metrics.ts";

export const NFQUEUE_PROC_PATH = "/proc/net/netfilter/nfnetlink_queue";

export interface NfqueueStats {
  queue: number;
  peerPortId: number;
  /** Packets waiting for a verdict right now. */
  queueTotal: number;
  copyMode: number;
  copyRange: number;
  /** Dropped (or bypassed, when fail-open) because the queue was at its maximum length. */
  queueDropped: number;
  /** Dropped because the netlink socket buffer was full. */
  userDropped: number;
  /** Id of the most recent packet queued. */
  idSequence: number;
}

/** Parses the file's text; lines that are not 9 non-negative integers are skipped. */
export function parseNfqueueStats(text: string): NfqueueStats[] {
  const out: NfqueueStats[] = [];
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || !f.slice(0, 8).every((x) => /^\d+$/.test(x))) continue;
    const n = f.map(Number);
    out.push({
      queue: n[0]!,
      peerPortId: n[1]!,
      queueTotal: n[2]!,
      copyMode: n[3]!,
      copyRange: n[4]!,
      queueDropped: n[5]!,
      userDropped: n[6]!,
      idSequence: n[7]!,
    });
  }
  return out;
}

export function recordNfqueueStats(metrics: AgentMetrics, stats: NfqueueStats[]): void {
  for (const s of stats) {
    const labels = { queue: String(s.queue) };
    metrics.nfqueueQueueTotal.set(labels, s.queueTotal);
    metrics.nfqueueQueueDropped.set(labels, s.queueDropped);
    metrics.nfqueueUserDropped.set(labels, s.userDropped);
    metrics.nfqueuePacketId.set(labels, s.idSequence);
  }
}
