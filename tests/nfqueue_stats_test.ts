/** /proc/net/netfilter/nfnetlink_queue as the kernel prints it, and the gauges it feeds. */
import assert from "node:assert/strict";
import { parseNfqueueStats, recordNfqueueStats } from "../src/verdict/nfqueue_stats.ts";
import { AgentMetrics } from "../src/metrics.ts";

// Format of net/netfilter/nfnetlink_queue.c seq_show: "%5u %6u %5u %1u %5u %5u %5u %8u %2d".
const PROC_TEXT = [
  "  100 3123456     3 2   128    17     5     4242  1",
  "    7  98765     0 2   128     0     0        9  1",
  "",
].join("\n");

Deno.test("each queue line parses into its counters", () => {
  assert.deepEqual(parseNfqueueStats(PROC_TEXT), [
    {
      queue: 100,
      peerPortId: 3123456,
      queueTotal: 3,
      copyMode: 2,
      copyRange: 128,
      queueDropped: 17,
      userDropped: 5,
      idSequence: 4242,
    },
    {
      queue: 7,
      peerPortId: 98765,
      queueTotal: 0,
      copyMode: 2,
      copyRange: 128,
      queueDropped: 0,
      userDropped: 0,
      idSequence: 9,
    },
  ]);
});

Deno.test("an empty file (no queue bound) and garbage lines give no stats", () => {
  assert.deepEqual(parseNfqueueStats(""), []);
  assert.deepEqual(parseNfqueueStats("queue peer total\n 1 2 x 4 5 6 7 8 1\n1 2 3\n"), []);
});

Deno.test("the gauges carry the queue's counters under its number", async () => {
  const metrics = new AgentMetrics();
  recordNfqueueStats(metrics, parseNfqueueStats(PROC_TEXT));
  const text = await metrics.registry.metrics();
  assert.match(text, /^nfqueue_queue_total\{queue="100"\} 3$/m);
  assert.match(text, /^nfqueue_queue_dropped\{queue="100"\} 17$/m);
  assert.match(text, /^nfqueue_user_dropped\{queue="100"\} 5$/m);
  assert.match(text, /^nfqueue_packet_id\{queue="100"\} 4242$/m);
  assert.match(text, /^nfqueue_packet_id\{queue="7"\} 9$/m);
});
