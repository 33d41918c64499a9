/** The `simulate` subcommand's flags and output; the logic lives in simulate.ts. */
import { flagHelp, type FlagSpec, parseFlags, UsageError } from "./args.ts";
import {
  allPairs,
  loadSimulation,
  parseProbesFile,
  parseProbeShorthand,
  type Probe,
  renderTable,
  runProbes,
} from "./simulate.ts";
import { formatObjectError } from "../policy/types.ts";

const FLAGS: FlagSpec = {
  manifests: { type: "string", multiple: true },
  probes: { type: "string" },
  probe: { type: "string", multiple: true },
  matrix: { type: "string", multiple: true },
  output: { type: "string" },
  explain: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
};

const HELP: Record<string, string> = {
  manifests:
    "file or directory of Namespace, Pod, NetworkPolicy, Node, ClusterNetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy manifests (repeatable)",
  probes: "JSON file: [{from, to, protocol, port}], from/to = ns/pod or an IP",
  probe: 'one probe, e.g. "x/a -> y/b tcp/80" (repeatable)',
  matrix: "probe every pod to every pod on e.g. tcp/80 (repeatable)",
  output: "json or table (default: table on a terminal, else json)",
  explain: "table output: add one line per probe naming the deciding policy and rule",
  help: "show this help",
};

export async function simulateCommand(args: string[]): Promise<number> {
  const { values } = parseFlags(args, FLAGS);
  if (values.help) {
    console.log(
      `Usage: kube-netpol simulate --manifests <path> [--probes <file>] ...\n\n${
        flagHelp(FLAGS, HELP)
      }`,
    );
    return 0;
  }
  const manifests = (values.manifests as string[] | undefined) ?? [];
  if (manifests.length === 0) throw new UsageError("simulate needs --manifests <file-or-dir>");
  const output = (values.output as string | undefined) ??
    (Deno.stdout.isTerminal() ? "table" : "json");
  if (output !== "json" && output !== "table") {
    throw new UsageError(`--output must be json or table, not ${JSON.stringify(output)}`);
  }
  const sim = await loadSimulation(manifests);
  for (const n of sim.notices) console.error(`notice: ${n}`);
  for (const w of sim.warnings) console.error(`warning: ${formatObjectError(w)}`);
  if (sim.errors.length) {
    for (const e of sim.errors) console.error(`error: ${formatObjectError(e)}`);
    console.error(`${sim.errors.length} invalid object(s); fix them and run again`);
    return 1;
  }
  const probes: Probe[] = [];
  if (values.probes) {
    const file = values.probes as string;
    probes.push(...parseProbesFile(await Deno.readTextFile(file), file));
  }
  for (const p of (values.probe as string[] | undefined) ?? []) probes.push(parseProbeShorthand(p));
  for (const m of (values.matrix as string[] | undefined) ?? []) {
    probes.push(...allPairs(sim.engine.podKeys(), m));
  }
  if (probes.length === 0) {
    throw new UsageError("nothing to judge: give --probes, --probe or --matrix");
  }
  const results = runProbes(sim.engine, probes);
  console.log(
    output === "json"
      ? JSON.stringify(results, null, 2)
      : renderTable(results, values.explain as boolean),
  );
  return 0;
}
