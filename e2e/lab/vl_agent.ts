/**
 * Runs a VerdictLoop inside the lab's node netns for verdict_loop_test.ts and the packet-path
 * bench. Driven by JSON lines on stdin, answers with JSON lines on stdout:
 *   in:  {"events": StateEvent[]}   -> out: {"applied": <count so far>}
 *        (with "current": true, answered once the worker applied them and emptied the verdict
 *        cache after them)
 *        {"synced": true}           -> out: {"synced": true}
 *        {"metrics": true}          -> out: {"metrics": "<Prometheus text>"}
 *        {"stop": true}             -> out: {"stopped": true}, then exit
 *   out: {"ready": true} once the queue is bound; {"record": VerdictRecord} per record;
 *        {"error": "..."} if start-up fails (exit 1).
 * Usage: vl_agent.ts <queueId> <nodeName> <denyMark> <failOpen 0|1> [maxBatch] [logAllows 0|1]
 *        [copyRange (0: whole packet)] [more VerdictLoopOptions as JSON (verdictCache, ...)]
 */
import { VerdictLoop } from "../../src/verdict/verdict_loop.ts";
import { AgentMetrics } from "../../src/metrics.ts";
import { createLogger } from "../../src/log.ts";
import type { StateEvent } from "../../src/state/events.ts";

const [
  queueArg,
  nodeName = "node",
  markArg = "0x100000",
  failOpenArg = "0",
  batchArg,
  allowsArg,
  copyArg,
  moreArg,
] = Deno.args;
const enc = new TextEncoder();
const out = (o: unknown) => Deno.stdout.writeSync(enc.encode(JSON.stringify(o) + "\n"));

const metrics = new AgentMetrics();
const log = createLogger({ verbosity: 0 });
let loop: VerdictLoop;
try {
  loop = await VerdictLoop.start(
    {
      queueId: Number(queueArg ?? 100),
      queueMaxLen: 4096,
      failOpen: failOpenArg === "1",
      denyMark: Number(markArg),
      nodeName,
      logAllows: allowsArg !== "0",
      ...(batchArg ? { maxBatch: Number(batchArg) } : {}),
      ...(copyArg && copyArg !== "0" ? { copyRange: Number(copyArg) } : {}),
      ...(moreArg ? JSON.parse(moreArg) : {}),
    },
    metrics,
    { write: (records) => records.forEach((record) => out({ record })) },
    log,
  );
} catch (e) {
  out({ error: (e as Error).message });
  Deno.exit(1);
}
out({ ready: true });

let applied = 0;
let buffered = "";
const dec = new TextDecoder();
for await (const chunk of Deno.stdin.readable) {
  buffered += dec.decode(chunk, { stream: true });
  let nl: number;
  while ((nl = buffered.indexOf("\n")) >= 0) {
    const line = buffered.slice(0, nl).trim();
    buffered = buffered.slice(nl + 1);
    if (!line) continue;
    const cmd = JSON.parse(line);
    if (cmd.events) {
      for (const ev of cmd.events as StateEvent[]) loop.applyEvent(ev);
      applied += cmd.events.length;
      if (cmd.current) await loop.cacheCurrent();
      out({ applied });
    } else if (cmd.synced) {
      loop.markSynced();
      out({ synced: true });
    } else if (cmd.metrics) {
      out({ metrics: await metrics.registry.metrics(), heartbeat: loop.lastHeartbeat() });
    } else if (cmd.stop) {
      await loop.stop();
      out({ stopped: true });
      Deno.exit(0);
    }
  }
}
await loop.stop();
