/** When a new look at a manifest file replaces the version in force (src/manifests/settle.ts). */
import assert from "node:assert/strict";
import { type FileRead, objectKey, parseManifestText, unreadFile } from "../src/manifests/load.ts";
import { type Observation, TrackedFile } from "../src/manifests/settle.ts";

const FILE = "/m/p.yaml";
const PERIODS = { settleMs: 100, removalSettleMs: 1000 };
const POLICY = (name: string, app = "web") =>
  `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ${name}, namespace: app}\n` +
  `spec: {podSelector: {matchLabels: {app: ${app}}}}\n`;

function look(read: FileRead | string, fingerprint = "f1", steady = true): Observation {
  return {
    fingerprint,
    steady,
    read: typeof read === "string" ? parseManifestText(FILE, read) : read,
  };
}

function inForce(t: TrackedFile): string[] {
  return t.inForce.map(objectKey);
}

/** A file holding p1 and p2, taken at the initial load. */
function loaded(): TrackedFile {
  const t = new TrackedFile(FILE);
  assert.deepEqual(t.offer(look(`${POLICY("p1")}---\n${POLICY("p2")}`, "f0"), 0, PERIODS, true), {
    accepted: true,
  });
  return t;
}

Deno.test("settle: a change is taken once its fingerprint held for settleMs, counted from first sight", () => {
  const t = loaded();
  const v2 = `${POLICY("p1", "api")}---\n${POLICY("p2")}`;
  assert.deepEqual(t.offer(look(v2), 1000, PERIODS, false), { accepted: false, recheckAt: 1100 });
  assert.deepEqual(t.offer(look(v2), 1099, PERIODS, false), { accepted: false, recheckAt: 1100 });
  assert.deepEqual(t.offer(look(v2), 1100, PERIODS, false), { accepted: true });
  assert.match(JSON.stringify(t.inForce[0]!.object), /"app":"api"/);
});

Deno.test("settle: a new fingerprint restarts the count; a read the file changed under is not taken", () => {
  const t = loaded();
  const v2 = `${POLICY("p1", "api")}---\n${POLICY("p2")}`;
  assert.equal(t.offer(look(v2, "f1"), 1000, PERIODS, false).accepted, false);
  assert.deepEqual(t.offer(look(v2, "f2"), 1050, PERIODS, false), {
    accepted: false,
    recheckAt: 1150,
  });
  // Stable fingerprint, but it changed during the read: look again a settle period later.
  assert.deepEqual(t.offer(look(v2, "f2", false), 1200, PERIODS, false), {
    accepted: false,
    recheckAt: 1300,
  });
  assert.equal(t.offer(look(v2, "f2"), 1200, PERIODS, false).accepted, true);
});

Deno.test("settle: a read that removes objects waits removalSettleMs (empty, shorter, deleted)", () => {
  for (
    const removal of [look(""), look(POLICY("p1")), look(unreadFile(FILE, "missing"), "missing")]
  ) {
    const t = loaded();
    assert.deepEqual(t.offer(removal, 1000, PERIODS, false), { accepted: false, recheckAt: 2000 });
    assert.equal(t.offer(removal, 1999, PERIODS, false).accepted, false);
    assert.deepEqual(inForce(t), ["NetworkPolicy app/p1", "NetworkPolicy app/p2"]);
    assert.equal(t.offer(removal, 2000, PERIODS, false).accepted, true);
    assert.ok(inForce(t).length < 2);
  }
});

Deno.test("settle: taken at once: the initial load, the same text again, an unreadable file", () => {
  const t = loaded();
  // Unreadable: taken at once, everything stays in force, its error is reported.
  const err = { source: FILE, object: "file", field: "path", message: "permission denied" };
  assert.equal(
    t.offer(look(unreadFile(FILE, "unreadable", err), "unreadable"), 10, PERIODS, false).accepted,
    true,
  );
  assert.deepEqual(inForce(t), ["NetworkPolicy app/p1", "NetworkPolicy app/p2"]);
  assert.deepEqual(t.errors, [err]);
  assert.deepEqual(t.held.map((h) => h.reason), [
    "its file cannot be read",
    "its file cannot be read",
  ]);
  // Back with the text that was in force: taken at once, nothing held, no error.
  const same = look(`${POLICY("p1")}---\n${POLICY("p2")}`, "f9");
  assert.equal(t.offer(same, 20, PERIODS, false).accepted, true);
  assert.deepEqual(t.held, []);
  assert.deepEqual(t.errors, []);
});

Deno.test("settle: objects a broken file no longer yields stay in force (not a removal)", () => {
  const t = loaded();
  const broken = look(
    `${POLICY("p1")}---\n${POLICY("p2").replace("kind: NetworkPolicy", "kind: NetworkPolicies")}`,
  );
  // Not a removal: the normal settle period.
  assert.deepEqual(t.offer(broken, 1000, PERIODS, false), { accepted: false, recheckAt: 1100 });
  assert.equal(t.offer(broken, 1100, PERIODS, false).accepted, true);
  assert.deepEqual(inForce(t), ["NetworkPolicy app/p1", "NetworkPolicy app/p2"]);
  assert.equal(t.errors.length, 1);
  assert.equal(t.held[0]!.key, "NetworkPolicy app/p2");
  // Later edits keep holding it until the file reads cleanly without it.
  const clean = look(POLICY("p1"), "f3");
  assert.deepEqual(t.offer(clean, 2000, PERIODS, false), { accepted: false, recheckAt: 3000 });
  assert.equal(t.offer(clean, 3000, PERIODS, false).accepted, true);
  assert.deepEqual(inForce(t), ["NetworkPolicy app/p1"]);
});

Deno.test("settle: a vanished file with nothing in force is forgotten at once", () => {
  const t = new TrackedFile(FILE);
  assert.equal(t.offer(look(""), 0, PERIODS, false).accepted, false); // new, not settled yet
  assert.equal(
    t.offer(look(unreadFile(FILE, "missing"), "missing"), 10, PERIODS, false).accepted,
    true,
  );
  assert.equal(t.forgettable, true);
});
