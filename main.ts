/**
 * kube-netpol: a Kubernetes NetworkPolicy agent that judges the first packet of each new
 * connection in user space (NFQUEUE). This file only dispatches subcommands.
 */
import { UsageError } from "./src/cli/args.ts";

export const VERSION = "0.1.0";

const USAGE = `kube-netpol ${VERSION}: Kubernetes NetworkPolicy enforcement on NFQUEUE

Usage:
  kube-netpol run [flags]        run the node agent (informers, or --manifests without a cluster)
  kube-netpol simulate [flags]   judge probes against manifests with the agent's engine
  kube-netpol cleanup            remove every rule, chain and set kube-netpol created
  kube-netpol --version | --help

Run 'kube-netpol <command> --help' for a command's flags.`;

/** Commands other than `run` never need FFI (the compiled binary grants it to every command). */
function revokeFfi(): void {
  Deno.permissions.revokeSync({ name: "ffi" });
}

async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  switch (command) {
    case undefined:
    case "-h":
    case "--help":
    case "help":
      console.log(USAGE);
      return 0;
    case "--version":
    case "version":
      console.log(VERSION);
      return 0;
    case "simulate":
      revokeFfi();
      return (await import("./src/cli/simulate_command.ts")).simulateCommand(rest);
    case "run": {
      // First, before any module that loads an npm package: the verdict Worker takes FFI with a
      // permission set of its own, and this thread gives FFI up (src/verdict/worker_spawn.ts).
      const { spawnVerdictWorker } = await import("./src/verdict/worker_spawn.ts");
      let verdictWorker;
      try {
        verdictWorker = spawnVerdictWorker();
      } catch (e) {
        console.error(`kube-netpol: cannot start the verdict worker: ${(e as Error).message}`);
        return 1;
      }
      return (await import("./src/cli/run.ts")).runCommand(rest, VERSION, verdictWorker);
    }
    case "cleanup":
      revokeFfi();
      return (await import("./src/cli/cleanup.ts")).cleanupCommand(rest);
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}; try --help`);
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`kube-netpol: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}
