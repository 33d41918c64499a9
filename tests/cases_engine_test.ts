/**
 * Every connectivity case in e2e/cases, judged by the engine cell by cell (both sides, as
 * `simulate` does), on the lab's fixed IP plan. The matrices were written by hand from the
 * NetworkPolicy spec, so a mismatch is either an engine bug or a case bug: read the diff.
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import {
  formatMatrixDiff,
  loadCases,
  type Matrix,
  resolvePlaceholders,
} from "../e2e/cases/format.ts";
import { LAB_NODE_IP, labIP, MODEL_PODS, modelNamespaces, modelPods } from "../e2e/cases/model.ts";

const cases = await loadCases(new URL("../e2e/cases", import.meta.url).pathname);

Deno.test("there are at least 30 connectivity cases", () => {
  assert.ok(cases.length >= 30, `${cases.length} cases`);
});

for (const c of cases) {
  Deno.test(`case ${c.name}: engine matches the hand-written matrix`, () => {
    const engine = new PolicyEngine();
    for (const ns of modelNamespaces()) assert.deepEqual(engine.upsertNamespace(ns), []);
    const pods = modelPods((ns, name) => ({
      ip: labIP(`${ns}/${name}`),
      nodeName: "lab-node",
      hostIP: LAB_NODE_IP,
    }));
    for (const p of pods) assert.deepEqual(engine.upsertPod(p), []);
    for (const np of resolvePlaceholders(c.policies, (ns, pod) => labIP(`${ns}/${pod}`))) {
      assert.deepEqual(engine.upsertPolicy(np, c.file), [], `${c.file}: policy must be valid`);
    }
    for (const e of c.expect) {
      const observed: Matrix = new Map();
      for (const from of MODEL_PODS) {
        const row = new Map();
        for (const to of MODEL_PODS) {
          if (from === to) continue;
          row.set(
            to,
            engine.evaluate({
              src: labIP(from),
              dst: labIP(to),
              protocol: e.protocol,
              port: e.port,
            })
              .verdict,
          );
        }
        observed.set(from, row);
      }
      const differs = MODEL_PODS.some((f) =>
        MODEL_PODS.some((t) => f !== t && observed.get(f)!.get(t) !== e.matrix.get(f)!.get(t))
      );
      assert.ok(
        !differs,
        `${c.file} ${e.protocol}/${e.port}:\n${formatMatrixDiff(e.matrix, observed)}`,
      );
    }
  });
}
