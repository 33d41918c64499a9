/**
 * `deno task e2e`: every connectivity case on a real kind cluster (needs Docker, kind, kubectl).
 *   deno task e2e [--ip-family ipv4|ipv6|dual] [--case NAME]... [--keep] [--dry-run]
 *                 [--e2e-test-binary PATH] [--name CLUSTER]
 * `--dry-run` prints every command and manifest of the run without executing anything.
 */
import { parseArgs } from "node:util";
import { loadCases } from "../cases/format.ts";
import { dryRunExecutor, realExecutor } from "./exec.ts";
import { KindDriver, KindError } from "./driver.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    "ip-family": { type: "string", default: "ipv4" },
    case: { type: "string", multiple: true },
    keep: { type: "boolean", default: false },
    "dry-run": { type: "boolean", default: false },
    "e2e-test-binary": { type: "string" },
    name: { type: "string", default: "knp-e2e" },
  },
});
const ipFamily = values["ip-family"];
if (ipFamily !== "ipv4" && ipFamily !== "ipv6" && ipFamily !== "dual") {
  console.error(`--ip-family must be ipv4, ipv6 or dual, not ${ipFamily}`);
  Deno.exit(2);
}
const repoRoot = new URL("../../", import.meta.url).pathname;
let cases = await loadCases(`${repoRoot}e2e/cases`);
if (values.case?.length) cases = cases.filter((c) => values.case!.includes(c.name));
const dry = values["dry-run"];
const driver = new KindDriver(dry ? dryRunExecutor(console.log) : realExecutor, {
  clusterName: values.name!,
  ipFamily,
  repoRoot,
  keep: values.keep!,
  e2eTestBinary: values["e2e-test-binary"],
  probeTimeoutSeconds: 1,
  parallel: 12,
  settleRounds: 4,
  dryRun: dry,
  sleep: (ms) => new Promise((r) => setTimeout(r, dry ? 0 : ms)),
}, console.log);
try {
  const results = await driver.runAll(cases, await Deno.readTextFile(`${repoRoot}install.yaml`));
  if (dry) Deno.exit(0);
  const failed = results.filter((r) => !r.pass);
  console.log(`\n${results.length - failed.length}/${results.length} cases passed`);
  for (const f of failed) console.log(`  FAIL ${f.name}`);
  Deno.exit(failed.length ? 1 : 0);
} catch (e) {
  if (e instanceof KindError) {
    console.error(`e2e: ${e.message}`);
    Deno.exit(2);
  }
  throw e;
}
