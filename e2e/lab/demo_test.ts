/**
 * The README's first command on a fresh machine (`./dev demo`, i.e. `deno task demo`), run as a
 * user runs it, once: the real agent on examples/ in a namespace lab. Checks that it succeeds,
 * that the matrix it prints is the one the README shows (so the first screen never promises what
 * the product does not do), that every deny comes with the agent's reason, and that the lab is
 * gone afterwards.
 *
 *   deno task test:lab e2e/lab/demo_test.ts (or its flags on this one file)
 */
import assert from "node:assert/strict";
import { labTest } from "./harness.ts";
import { listNetns } from "./topology.ts";

const REPO = new URL("../../", import.meta.url).pathname;

/** The matrix lines of the README's demo sample: the header and one row per pod. */
async function readmeMatrix(): Promise<string[]> {
  const readme = await Deno.readTextFile(`${REPO}README.md`);
  const at = readme.indexOf("What the demo prints");
  assert.ok(at >= 0, "README.md: no 'What the demo prints' section");
  const block = readme.slice(readme.indexOf("```\n", at) + 4);
  const lines = block.slice(0, block.indexOf("```")).split("\n");
  const end = lines.findIndex((l) => l.trim() === "");
  return lines.slice(0, end).map(normalise);
}

/** Column padding differs between the README and a terminal: compare words only. */
const normalise = (line: string) => line.trim().split(/\s+/).join(" ");

Deno.test(
  "demo: the README's first command judges real connections as the README shows",
  labTest,
  async () => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "demo", "--once"],
      cwd: REPO,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(120_000),
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    const log = `${text}\n${new TextDecoder().decode(out.stderr)}`;
    assert.equal(out.code, 0, `deno task demo --once failed:\n${log}`);

    const printed = text.split("\n").map(normalise);
    const want = await readmeMatrix();
    assert.ok(want.length >= 3, "README.md: the demo sample has no matrix");
    for (const line of want) {
      assert.ok(printed.includes(line), `README's matrix line not printed: ${line}\n${log}`);
    }

    // Every DENY cell has its reason, from the agent's own deny log.
    const denies = want.slice(1).reduce((n, l) => n + (l.match(/DENY/g)?.length ?? 0), 0);
    const why = text.slice(text.indexOf("Why each deny"));
    const reasons = why.split("\n").filter((l) => / -> .*(isolated by|denied by)/.test(l));
    assert.equal(reasons.length, denies, `one reason per denied cell:\n${why}`);
    assert.ok(
      reasons.some((l) =>
        l.includes("shop/frontend -> shop/db:5432") && l.includes("no rule matched")
      ),
      `the README's example reason is printed:\n${why}`,
    );

    assert.deepEqual(await listNetns("knpdemo"), [], "the demo removes its lab");
  },
);
