/** `cleanup`: remove every table, chain, rule and set kube-netpol created, in every backend. */
import { createLogger } from "../log.ts";
import { cleanupAll } from "../rules/cleanup.ts";
import { flagHelp, type FlagSpec, parseFlags } from "./args.ts";

const FLAGS: FlagSpec = { help: { type: "boolean", short: "h", default: false } };

export async function cleanupCommand(args: string[]): Promise<number> {
  const { values } = parseFlags(args, FLAGS);
  if (values.help) {
    console.log(
      "Usage: kube-netpol cleanup\n\nRemoves kube-netpol's own netfilter objects (after a " +
        `fail-closed shutdown, or to uninstall).\n\n${flagHelp(FLAGS, { help: "show this help" })}`,
    );
    return 0;
  }
  await cleanupAll(createLogger({ verbosity: 2 }));
  return 0;
}
