import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  listManifestFiles,
  loadManifests,
  parseManifestText,
  readManifestFile,
} from "../src/manifests/load.ts";
import { PolicyEngine } from "../src/policy/engine.ts";
import { applyEvent } from "../src/state/apply.ts";
import { formatObjectError, type ObjectError } from "../src/policy/types.ts";

const FIXTURES = fileURLToPath(new URL("./fixtures/manifests", import.meta.url));

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "kn7-manifests-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function ids(
  objects: { kind: string; object: { metadata: { namespace?: string; name?: string } } }[],
) {
  return objects.map((o) =>
    o.kind === "Namespace"
      ? `Namespace ${o.object.metadata.name}`
      : `${o.kind} ${o.object.metadata.namespace}/${o.object.metadata.name}`
  );
}

/** `ln -s`: Deno.symlink needs unscoped write permission, the test task grants only /tmp. */
async function symlink(target: string, link: string): Promise<void> {
  const { success } = await new Deno.Command("ln", { args: ["-s", target, link] }).output();
  assert.ok(success, `ln -s ${target} ${link}`);
}

function lines(errors: ObjectError[]): string[] {
  return errors.map(formatObjectError);
}

Deno.test("load: a directory is read recursively, sorted, .yaml/.yml/.json only, hidden skipped", async () => {
  const r = await loadManifests([FIXTURES]);
  assert.deepEqual(r.errors, []);
  assert.deepEqual(ids(r.objects), [
    "Namespace shop",
    "Namespace monitoring",
    "Pod shop/web-1",
    "Pod monitoring/prometheus",
    "Pod default/debug", // no namespace: "default", as kubectl does
    "NetworkPolicy shop/allow-monitoring",
    "NetworkPolicy shop/deny-all",
  ]);
  assert.deepEqual(r.files.map((f) => f.slice(FIXTURES.length + 1)), [
    "namespaces.yaml",
    "pods.json",
    "policies/allow-monitoring.yml",
    "policies/deny-all.yaml",
  ]);
  const bySource = Object.fromEntries(
    r.objects.map((o) => [ids([o])[0]!, o.source.slice(FIXTURES.length + 1)]),
  );
  assert.equal(bySource["Namespace monitoring"], "namespaces.yaml#doc 2");
  assert.equal(bySource["Pod monitoring/prometheus"], "pods.json#items[1]");
  assert.equal(bySource["NetworkPolicy shop/allow-monitoring"], "policies/allow-monitoring.yml");
  assert.equal(bySource["NetworkPolicy shop/deny-all"], "policies/deny-all.yaml#doc 1");
  // PodList items carry no kind; the list's kind implies it.
  assert.equal(r.objects[2]!.object.kind, "Pod");
  assert.equal(r.notices.length, 1);
  assert.match(
    r.notices[0]!,
    /deny-all\.yaml#doc 2: skipped apps\/v1 Deployment web \(only Namespace/,
  );
});

Deno.test("load: fixture objects drive the engine end to end", async () => {
  const r = await loadManifests([FIXTURES]);
  const engine = new PolicyEngine();
  for (const o of r.objects) {
    const errs = applyEvent(
      engine,
      { op: "upsert", kind: o.kind, object: o.object, source: o.source } as never,
    );
    assert.deepEqual(errs, [], o.source);
  }
  assert.deepEqual(engine.stats(), { pods: 3, namespaces: 2, policies: 2 });
  const fromProm = engine.evaluate({
    src: "10.0.2.20",
    dst: "10.0.1.10",
    protocol: "TCP",
    port: 8080,
  });
  assert.equal(fromProm.verdict, "allow");
  const fromDebug = engine.evaluate({
    src: "10.0.2.30",
    dst: "10.0.1.10",
    protocol: "TCP",
    port: 8080,
  });
  assert.equal(fromDebug.verdict, "deny");
});

Deno.test("load: a YAML syntax error costs only its document, with line and column", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/mixed.yaml`;
    await Deno.writeTextFile(
      file,
      "kind: Namespace\nmetadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: b\n---\n" +
        "kind: Namespace\nmetadata: {name: c}\n",
    );
    const r = await loadManifests([file]);
    assert.deepEqual(ids(r.objects), ["Namespace a", "Namespace c"]);
    assert.equal(r.errors.length, 1);
    assert.equal(r.errors[0]!.source, `${file}#doc 2`);
    assert.equal(r.errors[0]!.field, "yaml");
    assert.match(r.errors[0]!.message, /at line 6, column 1$/);
    assert.deepEqual(r.incompleteFiles, [file]);
  });
});

Deno.test("load: document-level errors name file, object and field", async () => {
  await withTempDir(async (dir) => {
    const docs = [
      "metadata: {name: nokind}", // 1
      "kind: Pod\nmetadata: {namespace: x}", // 2
      "kind: Pod", // 3
      "- just\n- a list", // 4
      "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: old}", // 5
      "kind: Pod\nmetadata: {name: p, namespace: 7}", // 6
      "apiVersion: 7\nkind: Pod\nmetadata: {name: q}", // 7
      "kind: Namespace\nmetadata: {name: ok}", // 8
      "kind: Namespace\nmetadata: {name: ok, labels: {second: copy}}", // 9
    ];
    const file = `${dir}/bad.yaml`;
    await Deno.writeTextFile(file, docs.join("\n---\n"));
    const r = await loadManifests([file]);
    const f = `${file}#doc`;
    assert.deepEqual(lines(r.errors), [
      `${f} 1: object nokind: kind: is required`,
      `${f} 2: Pod <unnamed>: metadata.name: is required`,
      `${f} 3: Pod <unnamed>: metadata.name: is required`,
      `${f} 4: document: .: must be an object, not an array`,
      `${f} 5: NetworkPolicy old: apiVersion: networking.k8s.io/v1beta1 is not supported, use networking.k8s.io/v1`,
      `${f} 6: Pod ?/p: metadata.namespace: must be a string`,
      `${f} 7: Pod q: apiVersion: must be a string`,
      `${f} 9: Namespace ok: metadata.name: duplicate of ${f} 8; this copy is ignored`,
    ]);
    assert.deepEqual(ids(r.objects), ["Namespace ok"]);
    assert.deepEqual(r.objects[0]!.object.metadata.labels, undefined); // the first copy wins
  });
});

Deno.test("load: kind List items are read, their errors point into items[i]", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/list.yaml`;
    await Deno.writeTextFile(
      file,
      `apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: n}}
  - {apiVersion: v1, kind: Pod, metadata: {namespace: n}}
  - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: p}, spec: {podSelector: {}}}
  - {apiVersion: v1, kind: Service, metadata: {name: svc}}
`,
    );
    const r = await loadManifests([file]);
    assert.deepEqual(ids(r.objects), ["Pod n/a", "NetworkPolicy default/p"]);
    assert.deepEqual(r.objects.map((o) => o.source), [`${file}#items[0]`, `${file}#items[2]`]);
    assert.deepEqual(lines(r.errors), [
      `${file}#items[1]: Pod <unnamed>: items[1].metadata.name: is required`,
    ]);
    assert.deepEqual(r.notices, [
      `${file}#items[3]: skipped v1 Service svc (only Namespace, Node, Pod, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy are read)`,
    ]);
  });
});

Deno.test("load: a same-named kind from another API group is skipped, not misread", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/calico.yaml`;
    await Deno.writeTextFile(
      file,
      "apiVersion: crd.projectcalico.org/v1\nkind: NetworkPolicy\nmetadata: {name: c, namespace: x}\n" +
        "spec: {selector: all()}\n",
    );
    const r = await loadManifests([file]);
    assert.deepEqual(r.objects, []);
    assert.deepEqual(r.errors, []);
    assert.match(
      r.notices[0]!,
      /skipped crd\.projectcalico\.org\/v1 NetworkPolicy c \(not the Kubernetes NetworkPolicy\)/,
    );
  });
});

Deno.test("load: JSON errors, missing paths and explicit files of any name", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/broken.json`,
      '{"kind": "Namespace", "metadata": {"name": "x"},}',
    );
    await Deno.writeTextFile(`${dir}/policy.txt`, "kind: Namespace\nmetadata: {name: from-txt}\n");
    const r = await loadManifests([`${dir}/broken.json`, `${dir}/policy.txt`, `${dir}/nope.yaml`]);
    assert.deepEqual(ids(r.objects), ["Namespace from-txt"]);
    assert.equal(r.errors.length, 2);
    assert.equal(
      formatObjectError(r.errors[0]!),
      `${dir}/nope.yaml: file: path: no such file or directory`,
    );
    assert.equal(r.errors[1]!.source, `${dir}/broken.json`);
    assert.match(r.errors[1]!.message, /^invalid JSON: /);
    assert.deepEqual(r.incompleteFiles, [`${dir}/broken.json`]);
    // Read from a directory, a .txt file is not a manifest.
    assert.deepEqual((await loadManifests([dir])).objects, []);
  });
});

Deno.test("load: ConfigMap volume layout and symlink loops load each object once", async () => {
  await withTempDir(async (dir) => {
    // What kubelet writes for a ConfigMap: data in a hidden timestamped dir, reached through
    // `..data`, plus one visible symlink per key.
    await Deno.mkdir(`${dir}/cm/..2025_01_01_00_00_00.1`, { recursive: true });
    await Deno.writeTextFile(
      `${dir}/cm/..2025_01_01_00_00_00.1/ns.yaml`,
      "kind: Namespace\nmetadata: {name: cm}\n",
    );
    await symlink("..2025_01_01_00_00_00.1", `${dir}/cm/..data`);
    await symlink("..data/ns.yaml", `${dir}/cm/ns.yaml`);
    await symlink("..", `${dir}/cm/loop`); // a cycle back to the parent
    const r = await loadManifests([dir, `${dir}/cm/ns.yaml`]);
    assert.deepEqual(r.errors, []);
    assert.deepEqual(ids(r.objects), ["Namespace cm"]);
  });
});

Deno.test("load: empty documents and comment-only files are fine", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/a.yaml`, "---\nkind: Namespace\nmetadata: {name: a}\n---\n");
    await Deno.writeTextFile(`${dir}/b.yaml`, "# nothing yet\n");
    await Deno.writeTextFile(`${dir}/c.yaml`, "");
    const r = await loadManifests([dir]);
    assert.deepEqual(r.errors, []);
    assert.deepEqual(ids(r.objects), ["Namespace a"]);
  });
});

Deno.test("load: a mistyped kind or apiVersion is an error that marks its file incomplete", () => {
  const file = "/m/p.yaml";
  const r = parseManifestText(
    file,
    [
      "apiVersion: networking.k8s.oi/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}",
      "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicies\nmetadata: {name: b, namespace: x}",
      "apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: c, namespace: x}",
      "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d, namespace: x}",
    ].join("\n---\n"),
  );
  assert.deepEqual(lines(r.errors), [
    `${file}#doc 1: NetworkPolicy a: apiVersion: networking.k8s.oi/v1 is not an apiVersion of NetworkPolicy; did you mean networking.k8s.io/v1?`,
    `${file}#doc 2: NetworkPolicies b: kind: NetworkPolicies is not a kind kube-netpol reads; did you mean NetworkPolicy?`,
    `${file}#doc 3: NetworkPolicy c: apiVersion: v1 is not an apiVersion of NetworkPolicy, use networking.k8s.io/v1`,
  ]);
  assert.deepEqual(ids(r.objects), ["NetworkPolicy x/d"]);
  assert.equal(r.incomplete, true);
  assert.equal(r.status, "read");
});

Deno.test("load: skipped documents keep their names; a skipped one without a name is an error", () => {
  const file = "/m/mixed.yaml";
  const r = parseManifestText(
    file,
    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n" +
      "apiVersion: crd.projectcalico.org/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n",
  );
  assert.deepEqual(r.errors, []);
  assert.equal(r.incomplete, false);
  assert.deepEqual(r.skipped, [
    { source: `${file}#doc 1`, kind: "Deployment", what: "apps/v1 Deployment", name: "web" },
    {
      source: `${file}#doc 2`,
      kind: "NetworkPolicy",
      what: "crd.projectcalico.org/v1 NetworkPolicy",
      name: "p",
    },
  ]);
  const unnamed = parseManifestText(file, "apiVersion: apps/v1\nkind: Deployment\nspec: {}\n");
  assert.deepEqual(lines(unnamed.errors), [
    `${file}: apps/v1 Deployment <unnamed>: metadata.name: is required`,
  ]);
  assert.equal(unnamed.incomplete, true);
});

Deno.test("load: paths that exist but cannot be listed are reported as unreadable", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/ok.yaml`, "kind: Namespace\nmetadata: {name: ok}\n");
    await symlink(`${dir}/loop.yaml`, `${dir}/loop.yaml`);
    await symlink(`${dir}/nowhere.yaml`, `${dir}/dangling.yaml`);
    const listing = await listManifestFiles([dir, `${dir}/not-there`]);
    assert.deepEqual(listing.files, [`${dir}/ok.yaml`]);
    // A missing path the user named is an error, but nothing stood there: not "unreadable".
    assert.deepEqual(listing.unreadable, [`${dir}/dangling.yaml`, `${dir}/loop.yaml`]);
    assert.deepEqual(listing.errors.map((e) => e.source), [
      `${dir}/dangling.yaml`,
      `${dir}/loop.yaml`,
      `${dir}/not-there`,
    ]);
    assert.match(listing.errors[1]!.message, /symbolic links/);
    // loadManifests reports them too.
    const r = await loadManifests([dir]);
    assert.equal(r.errors.length, 2);
  });
});

Deno.test("load: a file read as a directory or not at all says why", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/p.yaml`);
    const asDir = await readManifestFile(`${dir}/p.yaml`);
    assert.equal(asDir.status, "unreadable");
    assert.equal(asDir.incomplete, true);
    assert.equal(asDir.errors.length, 1);
    const missing = await readManifestFile(`${dir}/gone.yaml`);
    assert.equal(missing.status, "missing");
    assert.equal(missing.incomplete, false);
  });
});

Deno.test("load: duplicates across files keep the first, in file order", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/a.yaml`, "kind: Namespace\nmetadata: {name: n}\n");
    await Deno.writeTextFile(
      `${dir}/b.yaml`,
      "kind: List\nitems:\n- {kind: Namespace, metadata: {name: n, labels: {b: x}}}\n",
    );
    const r = await loadManifests([dir]);
    assert.deepEqual(ids(r.objects), ["Namespace n"]);
    assert.deepEqual(lines(r.errors), [
      `${dir}/b.yaml#items[0]: Namespace n: items[0].metadata.name: duplicate of ${dir}/a.yaml; this copy is ignored`,
    ]);
  });
});
