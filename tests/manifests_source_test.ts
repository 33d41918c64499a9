import assert from "node:assert/strict";
import { createManifestSource, type ManifestSource } from "../src/manifests/source.ts";
import { createLogger, nullLogger } from "../src/log.ts";
import type { StateEvent } from "../src/state/events.ts";

/** One event as a short string: `+Pod ns/name` for upserts, `-Pod ns/name` for deletes. */
function brief(ev: StateEvent): string {
  if (ev.op === "delete") {
    return `-${ev.kind} ${ev.namespace === undefined ? "" : `${ev.namespace}/`}${ev.name}`;
  }
  const m = ev.object.metadata;
  return `+${ev.kind} ${ev.kind === "Namespace" ? "" : `${m.namespace}/`}${m.name}`;
}

interface Harness {
  dir: string;
  source: ManifestSource;
  events: string[];
  raw: StateEvent[];
  logs: string[];
  /** Wait (bounded) until `n` more events arrived since the last take, and return them. */
  take(n: number, timeoutMs?: number): Promise<string[]>;
  /** Assert nothing more arrives within `ms`. */
  quiet(ms?: number): Promise<void>;
}

function withSource(
  files: Record<string, string>,
  fn: (h: Harness) => Promise<void>,
  opts: { pollMs?: number; watchSubdir?: string; debounceMs?: number } = {},
): () => Promise<void> {
  return async () => {
    const dir = await Deno.makeTempDir({ prefix: "kn7-source-" });
    const logs: string[] = [];
    const log = createLogger({ verbosity: 2, write: (l) => logs.push(l) });
    const source = createManifestSource(
      [opts.watchSubdir ? `${dir}/${opts.watchSubdir}` : dir],
      log,
      {
        pollMs: opts.pollMs ?? 0,
        debounceMs: opts.debounceMs ?? 30,
      },
    );
    try {
      for (const [name, text] of Object.entries(files)) {
        await Deno.writeTextFile(`${dir}/${name}`, text);
      }
      const events: string[] = [];
      const raw: StateEvent[] = [];
      let taken = 0;
      const h: Harness = {
        dir,
        source,
        events,
        raw,
        logs,
        async take(n, timeoutMs = 3000) {
          const deadline = performance.now() + timeoutMs;
          while (events.length < taken + n && performance.now() < deadline) {
            await new Promise((r) => setTimeout(r, 10));
          }
          const got = events.slice(taken, taken + n);
          assert.equal(
            got.length,
            n,
            `expected ${n} events, got ${JSON.stringify(events.slice(taken))}`,
          );
          taken += n;
          return got;
        },
        async quiet(ms = 300) {
          await new Promise((r) => setTimeout(r, ms));
          assert.deepEqual(events.slice(taken), [], "unexpected events");
        },
      };
      assert.equal(source.synced(), false);
      await source.start((ev) => {
        raw.push(ev);
        events.push(brief(ev));
      });
      await fn(h);
    } finally {
      await source.stop();
      await source.stop(); // idempotent
      await Deno.remove(dir, { recursive: true });
    }
  };
}

const NS = (name: string, labels = "") =>
  `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ${name}\n${
    labels ? `  labels: ${labels}\n` : ""
  }`;
const POD = (name: string, ip: string) =>
  `apiVersion: v1\nkind: Pod\nmetadata: {name: ${name}, namespace: app, labels: {app: ${name}}}\n` +
  `status: {phase: Running, podIP: ${ip}}\n`;
const POLICY = (name: string, app = "web") =>
  `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ${name}, namespace: app}\n` +
  `spec: {podSelector: {matchLabels: {app: ${app}}}, policyTypes: [Ingress]}\n`;

Deno.test(
  "source: the initial load delivers everything valid, namespaces first, then synced",
  withSource({
    "a-policies.yaml": POLICY("deny-web"),
    "b-pods.yaml": [POD("web", "10.0.0.1"), POD("db", "10.0.0.2")].join("---\n"),
    "c-ns.yaml": NS("app"),
    "d-bad.yaml": "kind: Pod\nmetadata: {namespace: app}\n",
  }, async (h) => {
    assert.deepEqual(await h.take(4), [
      "+Namespace app",
      "+Pod app/web",
      "+Pod app/db",
      "+NetworkPolicy app/deny-web",
    ]);
    assert.equal(h.source.synced(), true);
    const health = h.source.health();
    assert.equal(health.ok, true);
    assert.match(health.detail, /^4 objects from 4 manifest files; 1 invalid/);
    assert.equal(h.source.errors().length, 1);
    assert.equal(h.source.errors()[0]!.field, "metadata.name");
    // The error is logged once, as one line naming file, object and field.
    const warn = h.logs.filter((l) => l.startsWith("W"));
    assert.equal(warn.length, 1);
    assert.match(
      warn[0]!,
      /invalid manifest .*source=.*d-bad\.yaml.* object="Pod <unnamed>" field=metadata\.name/,
    );
    const ev = h.raw[3]!;
    assert.ok(ev.op === "upsert" && ev.source?.endsWith("a-policies.yaml"));
  }),
);

Deno.test(
  "source: live changes arrive as a diff (add, edit, no-op edit, remove doc, delete file)",
  withSource({ "ns.yaml": NS("app"), "pods.yaml": POD("web", "10.0.0.1") }, async (h) => {
    await h.take(2);
    await Deno.writeTextFile(`${h.dir}/policy.yaml`, POLICY("p1"));
    assert.deepEqual(await h.take(1), ["+NetworkPolicy app/p1"]);

    await Deno.writeTextFile(
      `${h.dir}/pods.yaml`,
      POD("web", "10.0.0.9") + "---\n" + POD("db", "10.0.0.2"),
    );
    assert.deepEqual(await h.take(2), ["+Pod app/web", "+Pod app/db"]);

    // Same content, keys reordered and a comment added: nothing to send.
    await Deno.writeTextFile(
      `${h.dir}/ns.yaml`,
      "# the app namespace\nmetadata:\n  name: app\nkind: Namespace\napiVersion: v1\n",
    );
    await h.quiet();

    await Deno.writeTextFile(`${h.dir}/pods.yaml`, POD("db", "10.0.0.2"));
    assert.deepEqual(await h.take(1), ["-Pod app/web"]);

    await Deno.remove(`${h.dir}/policy.yaml`);
    assert.deepEqual(await h.take(1), ["-NetworkPolicy app/p1"]);
    assert.equal(h.source.errors().length, 0);
  }),
);

Deno.test(
  "source: a broken edit keeps the file's other objects and the broken one's last version",
  withSource({
    "all.yaml": [NS("app"), POD("web", "10.0.0.1"), POLICY("p1")].join("---\n"),
  }, async (h) => {
    await h.take(3);
    // Doc 2 gets a syntax error, doc 3 a real change.
    await Deno.writeTextFile(
      `${h.dir}/all.yaml`,
      [NS("app"), "kind: Pod\nmetadata: {name: web\n", POLICY("p1", "api")].join("---\n"),
    );
    assert.deepEqual(await h.take(1), ["+NetworkPolicy app/p1"]);
    await h.quiet(); // no delete for the pod whose document is broken
    const errs = h.source.errors();
    assert.equal(errs.length, 1);
    assert.equal(errs[0]!.source, `${h.dir}/all.yaml#doc 2`);
    assert.match(errs[0]!.message, /line \d+, column \d+/);
    assert.equal(h.source.health().ok, true);

    // Fixed, with the pod removed for real: now the delete goes out.
    await Deno.writeTextFile(`${h.dir}/all.yaml`, [NS("app"), POLICY("p1", "api")].join("---\n"));
    assert.deepEqual(await h.take(1), ["-Pod app/web"]);
    assert.deepEqual(h.source.errors(), []);
    assert.ok(h.logs.some((l) => /manifest error resolved/.test(l)));
  }),
);

Deno.test(
  "source: a file caught mid-write (truncated, then rewritten) deletes nothing",
  withSource({ "p.yaml": [POLICY("p1"), POLICY("p2")].join("---\n") }, async (h) => {
    await h.take(2);
    // Debounce 200 ms: the scan reads the empty file at >= 200 ms, and must read again (>= 400
    // ms) before deleting; by then the rewrite at 300 ms has landed.
    await Deno.writeTextFile(`${h.dir}/p.yaml`, "");
    await new Promise((r) => setTimeout(r, 300));
    await Deno.writeTextFile(`${h.dir}/p.yaml`, [POLICY("p1"), POLICY("p2")].join("---\n"));
    await h.quiet(700);
  }, { debounceMs: 200 }),
);

Deno.test(
  "source: a policy renamed is added before the old name is deleted",
  withSource({ "p.yaml": POLICY("old-name") }, async (h) => {
    await h.take(1);
    await Deno.writeTextFile(`${h.dir}/p.yaml`, POLICY("new-name"));
    assert.deepEqual(await h.take(2), [
      "+NetworkPolicy app/new-name",
      "-NetworkPolicy app/old-name",
    ]);
  }),
);

Deno.test(
  "source: a directory created after start is found by the periodic rescan",
  withSource({}, async (h) => {
    assert.equal(h.source.synced(), true);
    assert.match(h.source.errors()[0]!.message, /no such file or directory/);
    await Deno.mkdir(`${h.dir}/later`);
    await Deno.writeTextFile(`${h.dir}/later/ns.yaml`, NS("late"));
    assert.deepEqual(await h.take(1), ["+Namespace late"]);
    assert.deepEqual(h.source.errors(), []);
  }, { pollMs: 100, watchSubdir: "later" }),
);

Deno.test("source: start twice is refused; a throwing consumer does not stop the stream", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kn7-source-" });
  const source = createManifestSource([dir], nullLogger, { pollMs: 0, debounceMs: 20 });
  try {
    await Deno.writeTextFile(`${dir}/a.yaml`, NS("a"));
    const seen: string[] = [];
    await source.start((ev) => {
      seen.push(brief(ev));
      throw new Error("consumer bug");
    });
    await assert.rejects(() => source.start(() => {}), /already started/);
    await Deno.writeTextFile(`${dir}/b.yaml`, NS("b"));
    const deadline = performance.now() + 3000;
    while (seen.length < 2 && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.deepEqual(seen, ["+Namespace a", "+Namespace b"]);
  } finally {
    await source.stop();
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(source.health().ok, false);
});
