/**
 * `deno task e2e`: every connectivity case (e2e/cases, then the cluster-tier cases of
 * e2e/cases/tiers) on a real kind cluster, then the uninstall (args.ts has the flags). `--dry-run` prints every command and manifest of the run without executing
 * anything. Exit 0: every check passed; 1: a check failed; 2: usage or set-up error.
 */
import { loadCases } from "../cases/format.ts";
import { ArgsError, parseKindArgs, USAGE } from "./args.ts";
import { dryRunExecutor, realExecutor } from "./exec.ts";
import { KindDriver, KindError } from "./driver.ts";
import { PlanError, selectCases } from "./plan.ts";
import { ginkgoPath } from "./upstream.ts";

/** Where the task's --allow-run lets e2e.test and ginkgo start from (deno.json, task e2e). */
const UPSTREAM_DIR = ".tools/k8s-test";

async function upstreamBinariesUsable(e2eTest: string, dryRun: boolean): Promise<string | null> {
  for (const bin of [e2eTest, ginkgoPath(e2eTest)]) {
    if ((await Deno.permissions.query({ name: "run", command: bin })).state !== "granted") {
      return `${bin} may not be started: \`deno task e2e\` only allows e2e.test and ginkgo from ` +
        `${UPSTREAM_DIR}/ (relative to the repository). Put both there (see the README, ` +
        `"The kind e2e") and pass --e2e-test-binary ${UPSTREAM_DIR}/e2e.test.`;
    }
    if (!dryRun) {
      const info = await Deno.stat(bin).catch(() => null);
      if (!info?.isFile) return `${bin} does not exist`;
    }
  }
  return null;
}

async function main(): Promise<number> {
  const args = parseKindArgs(Deno.args);
  if (args.help) {
    console.log(USAGE);
    return 0;
  }
  const repoRoot = new URL("../../", import.meta.url).pathname;
  const cases = selectCases([
    ...await loadCases(`${repoRoot}e2e/cases`),
    ...await loadCases(`${repoRoot}e2e/cases/tiers`),
  ], args.cases);
  if (args.e2eTestBinary) {
    const problem = await upstreamBinariesUsable(args.e2eTestBinary, args.dryRun);
    if (problem) throw new KindError(problem);
  }
  const artifactsDir = `/tmp/kube-netpol-e2e/${args.name}`;
  if (!args.dryRun) await Deno.mkdir(artifactsDir, { recursive: true });
  const driver = new KindDriver(args.dryRun ? dryRunExecutor(console.log) : realExecutor, {
    clusterName: args.name,
    ipFamily: args.ipFamily,
    repoRoot,
    keep: args.keep,
    image: args.image,
    upstream: args.e2eTestBinary
      ? { e2eTest: args.e2eTestBinary, nodes: args.ginkgoNodes, skip: args.ginkgoSkip }
      : undefined,
    artifactsDir,
    probeTimeoutSeconds: 1,
    parallel: 12,
    settleRounds: 4,
    dryRun: args.dryRun,
    sleep: (ms) => new Promise((r) => setTimeout(r, args.dryRun ? 0 : ms)),
  }, console.log);
  const results = await driver.runAll(cases, {
    install: await Deno.readTextFile(`${repoRoot}install.yaml`),
    uninstall: await Deno.readTextFile(`${repoRoot}uninstall.yaml`),
  });
  if (args.dryRun) return 0;
  const failed = results.filter((r) => !r.pass);
  const skipped = results.filter((r) => r.skipped?.length);
  console.log(`\n${results.length - failed.length}/${results.length} checks passed`);
  for (const s of skipped) console.log(`  skipped in part: ${s.name} (${s.skipped!.join("; ")})`);
  for (const f of failed) console.log(`  FAIL ${f.name}`);
  return failed.length ? 1 : 0;
}

try {
  Deno.exit(await main());
} catch (e) {
  if (e instanceof ArgsError || e instanceof PlanError) {
    console.error(`e2e: ${e.message}\n\n${e instanceof ArgsError ? USAGE : ""}`.trimEnd());
    Deno.exit(2);
  }
  if (e instanceof KindError) {
    console.error(`e2e: ${e.message}`);
    Deno.exit(2);
  }
  throw e;
}
