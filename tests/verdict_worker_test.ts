/**
 * The verdict Worker's two kinds of trouble, without root: a loop that cannot start is "fatal"
 * (here: no FFI permission, so the queue cannot be opened), state events out of order are only a
 * "warning" (the worker keeps judging, so the main thread must not say it stopped).
 */
import assert from "node:assert/strict";
import { CONTROL_BYTES, type FromWorker, type ToWorker } from "../src/verdict/verdict_protocol.ts";

const WORKER = new URL("../src/verdict/verdict_worker.ts", import.meta.url).href;

Deno.test("worker: a loop that cannot start is fatal; an out-of-order event only a warning", async () => {
  const worker = new Worker(WORKER, { type: "module" });
  const got: FromWorker[] = [];
  try {
    const both = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only got ${JSON.stringify(got)}`)), 10_000);
      worker.onmessage = (e: MessageEvent<FromWorker>) => {
        got.push(e.data);
        const types = new Set(got.map((m) => m.type));
        if (types.has("fatal") && types.has("warning")) {
          clearTimeout(timer);
          resolve();
        }
      };
    });
    const control = new SharedArrayBuffer(CONTROL_BYTES);
    worker.postMessage(
      {
        type: "init",
        control,
        opts: { queueId: 1, queueMaxLen: 16, failOpen: true, denyMark: 1, nodeName: "n" },
      } satisfies ToWorker,
    );
    // Sequence numbers start at 1: event 3 arriving first is out of order.
    worker.postMessage(
      {
        type: "event",
        seq: 3,
        event: { op: "upsert", kind: "Namespace", object: { metadata: { name: "x" } } },
      } satisfies ToWorker,
    );
    await both;
    const warning = got.find((m) => m.type === "warning");
    assert.match(
      warning?.type === "warning" ? warning.message : "",
      /state event 3 arrived after 0/,
    );
    assert.ok(!got.some((m) => m.type === "ready"), "the queue was never bound");
  } finally {
    worker.terminate();
  }
});
