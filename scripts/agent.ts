/**
 * `deno task agent <run flags>`: `kube-netpol run` under `deno run`, with the narrowest
 * permissions these flags allow (src/cli/run_permissions.ts): read only the kubeconfig and the
 * files it names (or the manifests, or the service account), the network only to the bind address
 * and the API server. The command is printed first; signals are passed on to the agent.
 */
import { parseRunFlags } from "../src/cli/run.ts";
import { UsageError } from "../src/cli/args.ts";
import { agentDenoFlags, type AgentPermissions } from "../src/cli/permissions.ts";
import { runPermissionsHere } from "../src/cli/run_permissions.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const MAIN_TS = `${ROOT}main.ts`;

/** `deno` arguments running the agent with `perms` and the run flags `runArgs`. */
export function agentArgs(runArgs: string[], perms: AgentPermissions): string[] {
  return ["run", "--frozen", ...agentDenoFlags(perms), MAIN_TS, "run", ...runArgs];
}

if (import.meta.main) {
  let args: string[];
  try {
    const run = parseRunFlags(Deno.args);
    // --help needs no permissions worth computing; the agent prints it.
    const perms = run === "help"
      ? runPermissionsHere({ manifests: [], metricsAddress: ":9080" }, ROOT)
      : runPermissionsHere(run, ROOT);
    args = agentArgs(Deno.args, perms);
  } catch (e) {
    console.error(`kube-netpol: ${(e as Error).message}`);
    Deno.exit(e instanceof UsageError ? 2 : 1);
  }
  console.error(`+ deno ${args.join(" ")}`);
  const child = new Deno.Command(Deno.execPath(), { args }).spawn();
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => {
      try {
        child.kill(sig);
      } catch { /* already gone */ }
    });
  }
  Deno.exit((await child.status).code);
}
