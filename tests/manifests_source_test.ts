/**
 * The live manifest source against a real temporary directory, with time and file events driven
 * by hand (ManualClock, FakeWatch): every timing below is exact, nothing sleeps.
 */
import assert from "node:assert/strict";
import { createManifestSource, type ManifestSource } from "../src/manifests/source.ts";
import { createLogger, nullLogger } from "../src/log.ts";
import { formatObjectError } from "../src/policy/types.ts";
import type { StateEvent } from "../src/state/events.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { FakeWatch } from "./support/fake_watch.ts";

const DEBOUNCE = 50;
const SETTLE = 100;
const REMOVAL_SETTLE = 1000;
/** Long enough for every debounce, settle period and re-check to have run. */
const ALL_DONE = 5000;

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
  clock: ManualClock;
  raw: StateEvent[];
  logs: string[];
  /** Events since the last call. */
  events(): string[];
  /** Write a file and let the watcher report it. */
  write(name: string, text: string): Promise<void>;
  /** Report a change made by other means. */
  changed(): Promise<void>;
  advance(ms: number): Promise<void>;
  /** errors() as lines, with the directory shown as `D`. */
  errors(): string[];
}

interface HarnessOptions {
  pollMs?: number;
  watchSubdir?: string;
  settleMs?: number;
  removalSettleMs?: number;
}

function withSource(
  files: Record<string, string>,
  fn: (h: Harness) => Promise<void> | void,
  opts: HarnessOptions = {},
): () => Promise<void> {
  return async () => {
    const dir = await Deno.makeTempDir({ prefix: "kn7-source-" });
    const logs: string[] = [];
    const clock = new ManualClock(0);
    const watch = new FakeWatch();
    const source = createManifestSource(
      [opts.watchSubdir ? `${dir}/${opts.watchSubdir}` : dir],
      createLogger({ verbosity: 2, write: (l) => logs.push(l) }),
      {
        clock,
        watchFs: () => watch,
        pollMs: opts.pollMs ?? 0,
        debounceMs: DEBOUNCE,
        settleMs: opts.settleMs ?? SETTLE,
        removalSettleMs: opts.removalSettleMs ?? REMOVAL_SETTLE,
      },
    );
    try {
      for (const [name, text] of Object.entries(files)) {
        if (name.includes("/")) await Deno.mkdir(`${dir}/${name.slice(0, name.lastIndexOf("/"))}`);
        await Deno.writeTextFile(`${dir}/${name}`, text);
      }
      const raw: StateEvent[] = [];
      let taken = 0;
      const h: Harness = {
        dir,
        source,
        clock,
        raw,
        logs,
        events() {
          const out = raw.slice(taken).map(brief);
          taken = raw.length;
          return out;
        },
        async write(name, text) {
          await Deno.writeTextFile(`${dir}/${name}`, text);
          await watch.emit();
        },
        changed: () => watch.emit(),
        advance: (ms) => clock.advance(ms),
        errors: () =>
          source.errors().map((e) =>
            formatObjectError(e).replaceAll(dir, "D").replace(/\(os .*/, "")
          ),
      };
      assert.equal(source.synced(), false);
      await source.start((ev) => raw.push(ev));
      await fn(h);
    } finally {
      await source.stop();
      await source.stop(); // idempotent
      assert.deepEqual(clock.pending(), [], "timers left running after stop()");
      if (!opts.watchSubdir) assert.ok(watch.closed, "watcher left open after stop()");
      await Deno.remove(dir, { recursive: true });
    }
  };
}

/** `ln -s`: Deno.symlink needs unscoped write permission, the test task grants only /tmp. */
async function symlink(target: string, link: string): Promise<void> {
  const { success } = await new Deno.Command("ln", { args: ["-s", target, link] }).output();
  assert.ok(success, `ln -s ${target} ${link}`);
}

/** True for root (or CAP_DAC_OVERRIDE): file modes do not stop its reads. */
async function readsWithoutPermission(): Promise<boolean> {
  const file = await Deno.makeTempFile({ prefix: "kn7-mode-" });
  try {
    await Deno.chmod(file, 0o000);
    await Deno.readTextFile(file);
    return true;
  } catch {
    return false;
  } finally {
    await Deno.remove(file);
  }
}

const NS = (name: string) => `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ${name}\n`;
const POD = (name: string, ip: string) =>
  `apiVersion: v1\nkind: Pod\nmetadata: {name: ${name}, namespace: app, labels: {app: ${name}}}\n` +
  `status: {phase: Running, podIP: ${ip}}\n`;
const POLICY = (name: string, app = "web") =>
  `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ${name}, namespace: app}\n` +
  `spec: {podSelector: {matchLabels: {app: ${app}}}, policyTypes: [Ingress]}\n`;
const docs = (...texts: string[]) => texts.join("---\n");

Deno.test(
  "source: the initial load delivers everything valid at once, namespaces first, then synced",
  withSource({
    "a-policies.yaml": POLICY("deny-web"),
    "b-pods.yaml": docs(POD("web", "10.0.0.1"), POD("db", "10.0.0.2")),
    "c-ns.yaml": NS("app"),
    "d-bad.yaml": "kind: Pod\nmetadata: {namespace: app}\n",
  }, (h) => {
    assert.deepEqual(h.events(), [
      "+Namespace app",
      "+Pod app/web",
      "+Pod app/db",
      "+NetworkPolicy app/deny-web",
    ]);
    assert.equal(h.source.synced(), true);
    const health = h.source.health();
    assert.equal(health.ok, true);
    assert.match(health.detail, /^4 objects from 4 manifest files; 1 invalid/);
    assert.deepEqual(h.errors(), ["D/d-bad.yaml: Pod <unnamed>: metadata.name: is required"]);
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
  "source: changes are taken once settled; removals only after the longer removal settle",
  withSource({ "ns.yaml": NS("app"), "pods.yaml": POD("web", "10.0.0.1") }, async (h) => {
    h.events();
    // New file: the event is debounced (50 ms), then the file must look the same for 100 ms.
    await h.write("policy.yaml", POLICY("p1"));
    await h.advance(DEBOUNCE + SETTLE - 1);
    assert.deepEqual(h.events(), []);
    await h.advance(1);
    assert.deepEqual(h.events(), ["+NetworkPolicy app/p1"]);

    await h.write("pods.yaml", docs(POD("web", "10.0.0.9"), POD("db", "10.0.0.2")));
    await h.advance(DEBOUNCE + SETTLE);
    assert.deepEqual(h.events(), ["+Pod app/web", "+Pod app/db"]);

    // Same content, keys reordered and a comment added: nothing to send.
    await h.write(
      "ns.yaml",
      "# the app namespace\nmetadata:\n  name: app\nkind: Namespace\napiVersion: v1\n",
    );
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), []);

    // A document removed: 1 s of the file looking the same before the delete goes out.
    await h.write("pods.yaml", POD("db", "10.0.0.2"));
    await h.advance(DEBOUNCE + REMOVAL_SETTLE - 1);
    assert.deepEqual(h.events(), []);
    await h.advance(1);
    assert.deepEqual(h.events(), ["-Pod app/web"]);

    // A file deleted: the same.
    await Deno.remove(`${h.dir}/policy.yaml`);
    await h.changed();
    await h.advance(DEBOUNCE + REMOVAL_SETTLE - 1);
    assert.deepEqual(h.events(), []);
    await h.advance(1);
    assert.deepEqual(h.events(), ["-NetworkPolicy app/p1"]);
    assert.deepEqual(h.errors(), []);
  }),
);

Deno.test(
  "source: a file that keeps changing is taken only when it stops; earlier versions never apply",
  withSource({ "p.yaml": POLICY("p1") }, async (h) => {
    h.events();
    await h.write("p.yaml", POLICY("p1", "api"));
    await h.advance(80); // seen at 50, would settle at 150
    await h.write("p.yaml", POLICY("p1", "database")); // another size: another fingerprint
    await h.advance(DEBOUNCE + SETTLE - 1); // seen at 130: settles at 230, not 150
    assert.deepEqual(h.events(), []);
    await h.advance(1);
    assert.deepEqual(h.events(), ["+NetworkPolicy app/p1"]);
    const ev = h.raw.at(-1)!;
    assert.ok(ev.op === "upsert" && ev.kind === "NetworkPolicy");
    assert.deepEqual(ev.object.spec.podSelector, { matchLabels: { app: "database" } });
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), []);
  }),
);

Deno.test(
  "source: a file caught mid-write (emptied, or half written, for 200 ms) deletes nothing",
  withSource({ "p.yaml": docs(POLICY("p1"), POLICY("p2")) }, async (h) => {
    h.events();
    const full = docs(POLICY("p1"), POLICY("p2"));
    // Truncated, 200 ms pause, written again: the empty read waits for the removal settle.
    await h.write("p.yaml", "");
    await h.advance(200);
    assert.deepEqual(h.events(), []);
    await h.write("p.yaml", full);
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), []);
    // The first document only (valid on its own), then the rest.
    await h.write("p.yaml", POLICY("p1"));
    await h.advance(200);
    await h.write("p.yaml", full);
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), []);
    // Cut inside a document (a syntax error) and completed: nothing either.
    await h.write("p.yaml", full.slice(0, full.length - 20));
    await h.advance(200);
    await h.write("p.yaml", full);
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), []);
    assert.deepEqual(h.errors(), []);
  }),
);

Deno.test(
  "source: a file emptied for good deletes its objects after the removal settle",
  withSource({ "p.yaml": docs(POLICY("p1"), POLICY("p2")) }, async (h) => {
    h.events();
    await h.write("p.yaml", "");
    await h.advance(DEBOUNCE + REMOVAL_SETTLE - 1);
    assert.deepEqual(h.events(), []);
    await h.advance(1);
    assert.deepEqual(h.events(), ["-NetworkPolicy app/p1", "-NetworkPolicy app/p2"]);
  }),
);

Deno.test(
  "source: a file deleted and put back within the removal settle changes nothing",
  withSource({ "p.yaml": POLICY("p1") }, async (h) => {
    h.events();
    await Deno.remove(`${h.dir}/p.yaml`);
    await h.changed();
    await h.advance(500);
    await h.write("p.yaml", POLICY("p1"));
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), []);
  }),
);

/** Hostile or clumsy edits of doc 2 (policy p2) that must not remove p2. */
const BROKEN_P2: { name: string; text: string; error: RegExp }[] = [
  {
    name: "apiVersion typo",
    text: POLICY("p2").replace("networking.k8s.io/v1", "networking.k8s.oi/v1"),
    error:
      /^D\/p.yaml#doc 2: NetworkPolicy p2: apiVersion: networking.k8s.oi\/v1 .*did you mean networking.k8s.io\/v1\?$/,
  },
  {
    name: "kind typo",
    text: POLICY("p2").replace("kind: NetworkPolicy", "kind: NetworkPolicies"),
    error: /^D\/p.yaml#doc 2: NetworkPolicies p2: kind: .*did you mean NetworkPolicy\?$/,
  },
  {
    name: "apiVersion v1",
    text: POLICY("p2").replace("networking.k8s.io/v1", "v1"),
    error: /^D\/p.yaml#doc 2: NetworkPolicy p2: apiVersion: v1 .*use networking.k8s.io\/v1$/,
  },
  {
    name: "unknown kind",
    text: POLICY("p2").replace("kind: NetworkPolicy", "kind: Netpol"),
    error: /^D\/p.yaml#doc 2: Netpol p2: kind: Netpol is not a kind kube-netpol reads/,
  },
  {
    name: "another API's kind under the same name",
    text: POLICY("p2").replace("networking.k8s.io/v1", "crd.projectcalico.org/v1"),
    error:
      /^D\/p.yaml#doc 2: NetworkPolicy app\/p2: kind: is now crd.projectcalico.org\/v1 NetworkPolicy, which kube-netpol does not read/,
  },
  {
    name: "YAML syntax error",
    text: POLICY("p2").replace("namespace: app}", "namespace: app"),
    error: /^D\/p.yaml#doc 2: document: yaml: .*line \d+, column \d+/,
  },
  {
    name: "name removed",
    text: POLICY("p2").replace("name: p2, ", ""),
    error: /^D\/p.yaml#doc 2: NetworkPolicy <unnamed>: metadata.name: is required$/,
  },
  {
    name: "not an object",
    text: "- a\n- b\n",
    error: /^D\/p.yaml#doc 2: document: .: must be an object, not an array$/,
  },
];

for (const edit of BROKEN_P2) {
  Deno.test(
    `source: a broken edit (${edit.name}) is an error, not a deletion; a real removal deletes`,
    withSource({ "p.yaml": docs(POLICY("p1"), POLICY("p2")) }, async (h) => {
      h.events();
      await h.write("p.yaml", docs(POLICY("p1"), edit.text));
      await h.advance(ALL_DONE);
      assert.deepEqual(h.events(), []);
      const errors = h.errors();
      assert.equal(errors.length, 1, errors.join("\n"));
      assert.match(errors[0]!, edit.error);
      assert.match(h.source.health().detail, /; 1 invalid \(see logs\); 1 kept at their last good/);
      assert.ok(
        h.logs.some((l) => /keeping last good version .*object="NetworkPolicy app\/p2"/.test(l)),
      );
      // Fixed: nothing to send, no errors left.
      await h.write("p.yaml", docs(POLICY("p1"), POLICY("p2")));
      await h.advance(ALL_DONE);
      assert.deepEqual(h.events(), []);
      assert.deepEqual(h.errors(), []);
      // Really removed: deleted.
      await h.write("p.yaml", POLICY("p1"));
      await h.advance(ALL_DONE);
      assert.deepEqual(h.events(), ["-NetworkPolicy app/p2"]);
    }),
  );
}

Deno.test(
  "source: a broken document keeps the file's other changes flowing and its own last version",
  withSource({ "all.yaml": docs(NS("app"), POD("web", "10.0.0.1"), POLICY("p1")) }, async (h) => {
    h.events();
    // Doc 2 gets a syntax error, doc 3 a real change.
    await h.write(
      "all.yaml",
      docs(NS("app"), "kind: Pod\nmetadata: {name: web\n", POLICY("p1", "api")),
    );
    await h.advance(DEBOUNCE + SETTLE); // no removal: the normal settle period
    assert.deepEqual(h.events(), ["+NetworkPolicy app/p1"]);
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), []); // no delete for the pod whose document is broken
    assert.equal(h.errors().length, 1);
    assert.match(h.errors()[0]!, /^D\/all.yaml#doc 2: document: yaml: .*line \d+, column \d+/);
    assert.equal(h.source.health().ok, true);

    // Fixed, with the pod removed for real: now the delete goes out.
    await h.write("all.yaml", docs(NS("app"), POLICY("p1", "api")));
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), ["-Pod app/web"]);
    assert.deepEqual(h.errors(), []);
    assert.ok(h.logs.some((l) => /manifest error resolved/.test(l)));
  }),
);

Deno.test(
  "source: a skipped document of another kind does not hold a removed object of the same name",
  withSource({
    "m.yaml": docs(NS("app"), "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\n"),
  }, async (h) => {
    assert.deepEqual(h.events(), ["+Namespace app"]);
    await h.write("m.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\n");
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), ["-Namespace app"]);
    assert.deepEqual(h.errors(), []);
  }),
);

/** The policy file replaced by something that cannot be read, then restored. */
const UNREADABLE: { name: string; make: (file: string) => Promise<void>; error: RegExp }[] = [
  {
    name: "a symlink loop",
    make: (f) => symlink(f, f),
    error: /^D\/p.yaml: file: path: Too many levels of symbolic links/,
  },
  {
    name: "a dangling symlink",
    make: (f) => symlink(`${f}.nowhere`, f),
    error: /^D\/p.yaml: file: path: no such file or directory$/,
  },
  {
    name: "a directory",
    make: (f) => Deno.mkdir(f),
    error: /^D\/p.yaml: file: path: is a directory$/,
  },
];

for (const u of UNREADABLE) {
  Deno.test(
    `source: a file replaced by ${u.name} keeps its objects and reports the path`,
    withSource({ "p.yaml": POLICY("p1"), "q.yaml": POLICY("q1") }, async (h) => {
      h.events();
      const file = `${h.dir}/p.yaml`;
      await Deno.remove(file);
      await u.make(file);
      await h.changed();
      await h.advance(ALL_DONE);
      assert.deepEqual(h.events(), []);
      assert.equal(h.errors().length, 1, h.errors().join("\n"));
      assert.match(h.errors()[0]!, u.error);
      assert.ok(
        h.logs.some((l) => /keeping last good version .*why="its file cannot be read"/.test(l)),
      );
      await Deno.remove(file);
      await h.write("p.yaml", POLICY("p1"));
      await h.advance(ALL_DONE);
      assert.deepEqual(h.events(), []);
      assert.deepEqual(h.errors(), []);
    }),
  );
}

Deno.test({
  name: "source: files and directories without read permission keep their objects",
  // Root reads everything; this needs an ordinary user.
  ignore: await readsWithoutPermission(),
  fn: withSource({ "p.yaml": POLICY("p1"), "sub/q.yaml": POLICY("q1") }, async (h) => {
    h.events();
    await Deno.chmod(`${h.dir}/p.yaml`, 0o000);
    await Deno.chmod(`${h.dir}/sub`, 0o000);
    try {
      await h.changed();
      await h.advance(ALL_DONE);
      assert.deepEqual(h.events(), []);
      assert.equal(h.errors().length, 2);
      assert.ok(h.errors().every((e) => /permission denied/.test(e)));
    } finally {
      await Deno.chmod(`${h.dir}/p.yaml`, 0o644);
      await Deno.chmod(`${h.dir}/sub`, 0o755);
    }
  }),
});

Deno.test(
  "source: a policy renamed is added before the old name is deleted",
  withSource({ "p.yaml": POLICY("old-name") }, async (h) => {
    h.events();
    await h.write("p.yaml", POLICY("new-name"));
    await h.advance(ALL_DONE);
    assert.deepEqual(h.events(), [
      "+NetworkPolicy app/new-name",
      "-NetworkPolicy app/old-name",
    ]);
  }),
);

Deno.test(
  "source: a burst of events is one rescan after the quiet time, at most 1 s after the first",
  withSource({}, async (h) => {
    await Deno.writeTextFile(`${h.dir}/a.yaml`, NS("a"));
    await h.changed();
    await h.advance(DEBOUNCE - 1);
    await h.changed(); // restarts the quiet time
    await h.advance(DEBOUNCE - 1);
    assert.deepEqual(h.events(), []);
    await h.advance(1);
    assert.deepEqual(h.events(), ["+Namespace a"]);

    await Deno.writeTextFile(`${h.dir}/b.yaml`, NS("b"));
    const first = h.clock.now();
    for (let i = 0; i < 30; i++) {
      await h.changed(); // every 40 ms: never quiet for 50
      await h.advance(40);
      const seen = h.events();
      if (h.clock.now() - first < 1000) assert.deepEqual(seen, [], `at ${h.clock.now() - first}`);
      else if (seen.length) {
        assert.deepEqual(seen, ["+Namespace b"]);
        assert.equal(h.clock.now() - first, 1000);
        return;
      }
    }
    assert.fail("no rescan within 1 s of continuous events");
  }, { settleMs: 0, removalSettleMs: 0 }),
);

Deno.test(
  "source: a directory created after start is found by the periodic rescan",
  withSource({}, async (h) => {
    assert.equal(h.source.synced(), true);
    assert.deepEqual(h.errors(), ["D/later: file: path: no such file or directory"]);
    await Deno.mkdir(`${h.dir}/later`);
    await Deno.writeTextFile(`${h.dir}/later/ns.yaml`, NS("late"));
    await h.advance(100); // a poll: the file is new, so it settles first
    assert.deepEqual(h.events(), []);
    await h.advance(100);
    assert.deepEqual(h.events(), ["+Namespace late"]);
    assert.deepEqual(h.errors(), []);
  }, { pollMs: 100, watchSubdir: "later" }),
);

Deno.test("source: start twice is refused; a throwing consumer does not stop the stream", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kn7-source-" });
  const clock = new ManualClock(0);
  const watch = new FakeWatch();
  const source = createManifestSource([dir], nullLogger, {
    clock,
    watchFs: () => watch,
    pollMs: 0,
  });
  try {
    await Deno.writeTextFile(`${dir}/a.yaml`, NS("a"));
    const seen: string[] = [];
    await source.start((ev) => {
      seen.push(brief(ev));
      throw new Error("consumer bug");
    });
    await assert.rejects(() => source.start(() => {}), /already started/);
    await Deno.writeTextFile(`${dir}/b.yaml`, NS("b"));
    await watch.emit();
    await clock.advance(ALL_DONE);
    assert.deepEqual(seen, ["+Namespace a", "+Namespace b"]);
  } finally {
    await source.stop();
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(source.health().ok, false);
});
