/**
 * `kube-netpol cleanup`: remove everything kube-netpol created, in every backend flavour, whatever
 * backend the last run chose (a fail-closed exit keeps its rules on purpose; this removes them).
 */
import type { Logger } from "../log.ts";
import { type CommandRunner, denoCommandRunner, runChecked } from "./command.ts";
import { IpsetSets } from "./ipset.ts";
import { IPTABLES_CHAIN, IPTABLES_FLAVOURS, removeIptablesRules } from "./iptables.ts";
import { NFT_UNINSTALL, nftTableExists } from "./nftables.ts";

/**
 * Remove kube-netpol's table, chains, jump rules and sets from every backend flavour (the
 * `cleanup` subcommand). Goes on after a failed step and throws at the end if any failed.
 */
export async function cleanupAll(
  log: Logger,
  run: CommandRunner = denoCommandRunner,
): Promise<void> {
  const failures: unknown[] = [];
  const step = async (what: string, fn: () => Promise<boolean>) => {
    try {
      if (await fn()) log.info("removed", { what });
    } catch (e) {
      failures.push(e);
      log.error("cleanup step failed", { what, error: e instanceof Error ? e.message : String(e) });
    }
  };
  await step("nftables table inet kube-netpol", async () => {
    if (!(await nftTableExists(run))) return false;
    await runChecked(run, "nft", ["-f", "-"], NFT_UNINSTALL);
    return true;
  });
  for (const flavour of IPTABLES_FLAVOURS) {
    await step(
      `iptables-${flavour} chain ${IPTABLES_CHAIN} and jumps`,
      () => removeIptablesRules(flavour, run),
    );
  }
  // Sets last: the kernel refuses to destroy a set while any rule still references it.
  const sets = new IpsetSets(run);
  await step("ipsets kube-netpol-*", async () => {
    if ((await sets.existing()).length === 0) return false;
    await sets.destroy();
    return true;
  });
  if (failures.length) throw new AggregateError(failures, "cleanup incomplete");
  log.info("cleanup done");
}
