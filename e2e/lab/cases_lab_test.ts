/**
 * Every connectivity case of e2e/cases on real packets, one Deno test per case so CI counts them.
 * One lab and one agent serve all cases (policies are swapped live between cases); the first test
 * builds it, the last one tears it down. Skipped when not root.
 */
import assert from "node:assert/strict";
import { loadCases } from "../cases/format.ts";
import { CASES_DIR, LabCaseRunner } from "./cases_lab.ts";
import { listNetns } from "./topology.ts";

const root = Deno.uid() === 0;
const cases = await loadCases(CASES_DIR);
let runner: LabCaseRunner | undefined;
const shared = { sanitizeOps: false, sanitizeResources: false, ignore: !root };

Deno.test({
  name: "lab cases: lab, servers and agent start",
  ...shared,
  fn: async () => {
    runner = await LabCaseRunner.start();
  },
});

for (const c of cases) {
  Deno.test({
    name: `lab case ${c.name}`,
    ...shared,
    fn: async () => {
      assert.ok(runner, "the lab did not start");
      await runner.runExpectingPass(c);
    },
  });
}

Deno.test({
  name: "lab cases: teardown leaves nothing behind",
  ...shared,
  fn: async () => {
    assert.ok(runner, "the lab did not start");
    const prefix = runner.lab.prefix;
    await runner.stop();
    assert.deepEqual(await listNetns(prefix), [], `lab namespaces ${prefix}-* removed`);
  },
});
