/**
 * The architecture the README promises, checked on every import: the pure folders import nothing
 * outside themselves and `src/net`, `ffi/` binds C and imports nothing of ours, product code never
 * imports tests, labs or benchmarks, and nothing outside tests/ imports test code.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;

/** folder -> folders it may import from (besides itself). */
const PURE: Record<string, string[]> = {
  "src/net/": [],
  "src/packet/": ["src/net/"],
  "src/policy/": ["src/net/"],
  "src/netlink/": ["src/net/"],
  "ffi/": [],
};

async function* tsFiles(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(ROOT + dir)) {
    const path = `${dir}${e.name}`;
    if (e.isDirectory) yield* tsFiles(`${path}/`);
    else if (e.name.endsWith(".ts")) yield path;
  }
}

const IMPORT =
  /(?:^|\n)\s*(?:import|export)\s[^"';]*?from\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)|new URL\(\s*["'](\.[^"']+\.ts)["']|(?:^|\n)\s*import\s*["']([^"']+)["']/g;

/** Every relative module a file imports (or loads as a Worker), as repository paths. */
async function importsOf(file: string): Promise<string[]> {
  const text = await Deno.readTextFile(ROOT + file);
  const dir = file.slice(0, file.lastIndexOf("/") + 1);
  const out: string[] = [];
  for (const m of text.matchAll(IMPORT)) {
    const spec = m[1] ?? m[2] ?? m[3] ?? m[4];
    if (!spec?.startsWith(".")) continue;
    out.push(new URL(spec, `file:///${dir}`).pathname.slice(1));
  }
  return out;
}

async function allImports(dirs: string[]): Promise<[string, string][]> {
  const edges: [string, string][] = [];
  for (const d of dirs) {
    for await (const f of tsFiles(d)) for (const i of await importsOf(f)) edges.push([f, i]);
  }
  return edges;
}

Deno.test("layering: pure folders and ffi/ import only themselves (and src/net)", async () => {
  const bad: string[] = [];
  for (const [folder, allowed] of Object.entries(PURE)) {
    for (const [from, to] of await allImports([folder])) {
      if (to.startsWith(folder) || allowed.some((a) => to.startsWith(a))) continue;
      bad.push(`${from} -> ${to}`);
    }
  }
  assert.deepEqual(bad, [], "imports that break the layering");
});

Deno.test("layering: product code imports no tests, labs or benchmarks; only tests import tests", async () => {
  const bad: string[] = [];
  for (const [from, to] of await allImports(["src/", "ffi/", "e2e/", "bench/"])) {
    const product = from.startsWith("src/") || from.startsWith("ffi/");
    if (product && /^(tests|e2e|bench)\//.test(to)) bad.push(`${from} -> ${to}`);
    if (!product && to.startsWith("tests/") && to.endsWith(".ts")) bad.push(`${from} -> ${to}`);
  }
  assert.deepEqual(bad, [], "imports in the wrong direction");
});

/** Every module reachable from `entry` through relative imports, and the other specifiers seen. */
async function moduleGraph(entry: string): Promise<{ modules: string[]; external: string[] }> {
  const seen = new Set<string>();
  const external = new Set<string>();
  const todo = [entry];
  while (todo.length) {
    const file = todo.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const text = await Deno.readTextFile(ROOT + file);
    const dir = file.slice(0, file.lastIndexOf("/") + 1);
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2] ?? m[3] ?? m[4];
      // Type-only imports are erased: nothing is loaded at run time.
      if (!spec || /^\s*(import|export)\s+type\s/.test(m[0])) continue;
      if (spec.startsWith(".")) todo.push(new URL(spec, `file:///${dir}`).pathname.slice(1));
      else external.add(`${file} -> ${spec}`);
    }
  }
  return { modules: [...seen], external: [...external] };
}

Deno.test("layering: only our own code runs where FFI is held (the verdict Worker)", async () => {
  // The Worker holds FFI, which reaches all of libc: no npm package may run there. The module
  // that starts it runs before any npm package is loaded (main.ts), so it imports none either.
  for (const entry of ["src/verdict/verdict_worker.ts", "src/verdict/worker_spawn.ts"]) {
    const { modules, external } = await moduleGraph(entry);
    assert.ok(modules.length > (entry.endsWith("worker.ts") ? 10 : 1), `${entry}: graph scanned`);
    assert.deepEqual(external, [], `${entry} reaches modules that are not ours`);
  }
  const main = await moduleGraph("main.ts");
  assert.ok(main.external.some((e) => e.endsWith("-> yaml")), "the scanner sees npm imports");
});

Deno.test("layering: the import scanner sees every kind of import it is meant to", async () => {
  // Guards the checks above against a regex that silently matches nothing.
  assert.ok(
    (await importsOf("src/verdict/worker_spawn.ts")).includes("src/verdict/verdict_worker.ts"),
    "Worker URL",
  );
  const imports = await importsOf("src/verdict/verdict_loop.ts");
  assert.ok(imports.includes("src/verdict/verdict_protocol.ts"), "multi-line import");
  const run = await importsOf("src/cli/run.ts");
  assert.ok(run.some((i) => i.startsWith("src/manifests/")), "dynamic import()");
});
