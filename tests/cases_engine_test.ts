/**
 * Every connectivity case in e2e/cases (and the cluster-tier cases in e2e/cases/tiers), judged by
 * the engine cell by cell (both sides, as `simulate` does), on the lab's fixed IP plan. The
 * matrices were written by hand from the NetworkPolicy and network-policy-api specs, so a mismatch
 * is either an engine bug or a case bug: read the diff.
 */
import assert from "node:assert/strict";
import { PolicyEngine } from "../src/policy/engine.ts";
import {
  type ConnectivityCase,
  formatMatrixDiff,
  loadCases,
  type Matrix,
  NODE_ENDPOINT,
  resolvePlaceholders,
} from "../e2e/cases/format.ts";
import {
  LAB_NODE_IP,
  LAB_NODE_NAME,
  labIP,
  MODEL_PODS,
  modelNamespaces,
  modelNodes,
  modelPods,
} from "../e2e/cases/model.ts";

const CASES_DIR = new URL("../e2e/cases", import.meta.url).pathname;
const cases = await loadCases(CASES_DIR);
const tierCases = await loadCases(`${CASES_DIR}/tiers`);

Deno.test("there are at least 30 connectivity cases", () => {
  assert.ok(cases.length >= 30, `${cases.length} cases`);
});

Deno.test("cluster-tier cases: at least 20, names unique across both directories", () => {
  assert.ok(tierCases.length >= 20, `${tierCases.length} cases`);
  assert.ok(tierCases.every((c) => c.clusterPolicies.length > 0 || c.probes.length > 0));
  const names = [...cases, ...tierCases].map((c) => c.name);
  assert.equal(new Set(names).size, names.length);
});

const ipOf = (ns: string, pod: string) => labIP(`${ns}/${pod}`);
const endpointIP = (e: string) => (e === NODE_ENDPOINT ? LAB_NODE_IP : labIP(e));

function engineFor(c: ConnectivityCase): PolicyEngine {
  const engine = new PolicyEngine();
  for (const ns of modelNamespaces()) assert.deepEqual(engine.upsertNamespace(ns), []);
  for (const n of modelNodes()) assert.deepEqual(engine.upsertNode(n), []);
  const pods = modelPods((ns, name) => ({
    ip: labIP(`${ns}/${name}`),
    nodeName: LAB_NODE_NAME,
    hostIP: LAB_NODE_IP,
  }));
  for (const p of pods) assert.deepEqual(engine.upsertPod(p), []);
  for (const np of resolvePlaceholders(c.policies, ipOf)) {
    assert.deepEqual(engine.upsertPolicy(np, c.file), [], `${c.file}: policy must be valid`);
  }
  for (const p of resolvePlaceholders(c.clusterPolicies, ipOf)) {
    assert.deepEqual(
      engine.upsertClusterPolicy(p.kind!, p, c.file),
      [],
      `${c.file}: ${p.kind} ${p.metadata.name} must be valid, without warnings`,
    );
  }
  return engine;
}

for (const c of [...cases, ...tierCases]) {
  Deno.test(`case ${c.name}: engine matches the hand-written matrix`, () => {
    const engine = engineFor(c);
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
    for (const p of c.probes) {
      const got = engine.evaluate({
        src: endpointIP(p.from),
        dst: endpointIP(p.to),
        protocol: p.protocol,
        port: p.port,
      }).verdict;
      assert.equal(got, p.expect, `${c.file}: probe ${p.from} -> ${p.to} ${p.protocol}/${p.port}`);
    }
  });
}
