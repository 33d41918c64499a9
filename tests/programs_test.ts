/**
 * Every program a test, lab, benchmark or task starts is installed by ./dev (or is on a bare
 * Debian 12 machine of ours): deno.json's --allow-run lists may only name programs listed in
 * e2e/programs.ts, whose packages must be in ./dev's PKGS, and the lab refuses unlisted programs.
 */
import assert from "node:assert/strict";
import { PROGRAMS } from "../e2e/programs.ts";
import { run } from "../e2e/lab/topology.ts";

const ROOT = new URL("../", import.meta.url).pathname;

async function devPackages(): Promise<Set<string>> {
  const dev = await Deno.readTextFile(`${ROOT}dev`);
  const m = /^PKGS=\(([^)]*)\)/m.exec(dev);
  assert.ok(m, "./dev has a PKGS=(...) line");
  return new Set(m[1]!.trim().split(/\s+/));
}

async function tasks(): Promise<Record<string, string>> {
  const json = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  return json.tasks as Record<string, string>;
}

Deno.test("programs: every listed program's package is installed by ./dev", async () => {
  const pkgs = await devPackages();
  const missing = Object.entries(PROGRAMS)
    .filter(([, pkg]) => pkg !== "base" && !pkg.startsWith("docker") && !pkgs.has(pkg))
    .map(([prog, pkg]) => `${prog} (${pkg})`);
  assert.deepEqual(missing, [], "add these packages to PKGS in ./dev");
});

Deno.test("programs: tasks run only listed programs (no unscoped --allow-run or -A)", async () => {
  const problems: string[] = [];
  for (const [name, cmd] of Object.entries(await tasks())) {
    if (/\s(-A|--allow-all)(\s|$)/.test(cmd)) problems.push(`${name}: --allow-all`);
    for (const word of cmd.split(/\s+/)) {
      if (word === "--allow-run") problems.push(`${name}: unscoped --allow-run`);
      const m = /^--allow-run=(.*)$/.exec(word);
      if (!m) continue;
      for (const prog of m[1]!.split(",")) {
        if (prog !== "deno" && !Object.hasOwn(PROGRAMS, prog)) {
          problems.push(`${name}: ${prog} is not in e2e/programs.ts`);
        }
      }
    }
  }
  assert.deepEqual(problems, []);
});

Deno.test("programs: the lab refuses a program ./dev does not install", async () => {
  await assert.rejects(
    () => run(["not-a-kube-netpol-tool", "--version"]),
    /not-a-kube-netpol-tool is not in e2e\/programs\.ts/,
  );
});
