/**
 * Picks the rule backend at start-up (removing every backend's own `cleanup` lives in cleanup.ts).
 *
 * Order of preference:
 *   1. nftables, when the kernel runs an nft `queue` rule: probed by loading a throwaway table
 *      `inet kube-netpol-probe` with one queue rule in the agent's own netns, deleted right after.
 *   2. iptables `-j NFQUEUE`, in the flavour the node already uses, decided like kube-proxy's
 *      iptables wrapper: the flavour holding kubelet's hint chain (KUBE-IPTABLES-HINT or
 *      KUBE-KUBELET-CANARY in the mangle table) wins; otherwise the one with more rules; a tie
 *      (e.g. an empty node) goes to iptables-nft. Mixing flavours works in the kernel but makes
 *      the node's rules hard to read for its operators, so we follow theirs.
 * Leftovers of another backend (e.g. kept by a fail-closed exit before an upgrade) are removed
 * once a backend is chosen, so no packet is queued twice.
 */
import type { Logger } from "../log.ts";
import type { RuleBackend, RuleOptions } from "./backend.ts";
import { type CommandRunner, denoCommandRunner, runChecked } from "./command.ts";
import {
  IPTABLES_CHAIN,
  IPTABLES_FLAVOURS,
  IptablesBackend,
  iptablesBinary,
  type IptablesFlavour,
  removeIptablesRules,
} from "./iptables.ts";
import { NFT_UNINSTALL, NftablesBackend, nftTableExists, renderNftQueue } from "./nftables.ts";

const PROBE_TABLE = "inet kube-netpol-probe";
const HINT_CHAINS = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

export function renderNftQueueProbe(opts: RuleOptions): string {
  return [
    `add table ${PROBE_TABLE}`,
    `add chain ${PROBE_TABLE} probe`,
    `add rule ${PROBE_TABLE} probe ${renderNftQueue(opts)}`,
    "",
  ].join("\n");
}
const PROBE_CLEANUP = `add table ${PROBE_TABLE}\ndelete table ${PROBE_TABLE}\n`;

/** Whether nft native `queue` works here; `why` is for the log. */
export async function probeNftQueue(
  opts: RuleOptions,
  run: CommandRunner,
): Promise<{ ok: boolean; why: string }> {
  try {
    const res = await run.run("nft", ["-f", "-"], renderNftQueueProbe(opts));
    if (res.code === 0) return { ok: true, why: "kernel accepts nft queue rules" };
    if (res.code === 127) return { ok: false, why: "nft is not installed" };
    const detail = res.stderr.split("\n").find((l) => l.includes("Error")) ?? res.stderr.trim();
    return { ok: false, why: `nft queue unavailable (${detail.trim()})` };
  } finally {
    await run.run("nft", ["-f", "-"], PROBE_CLEANUP);
  }
}

interface FlavourState {
  flavour: IptablesFlavour;
  installed: boolean;
  hint: boolean;
  /** Rule lines (`-A`) in all tables of both families, ours excluded. */
  rules: number;
}

async function inspectFlavour(flavour: IptablesFlavour, run: CommandRunner): Promise<FlavourState> {
  const state: FlavourState = { flavour, installed: false, hint: false, rules: 0 };
  for (const family of [4, 6] as const) {
    const res = await run.run(iptablesBinary(flavour, family, "save"), []);
    if (res.code === 127) continue;
    state.installed = true;
    if (res.code !== 0) continue;
    for (const line of res.stdout.split("\n")) {
      if (HINT_CHAINS.some((h) => line.startsWith(`:${h} `))) state.hint = true;
      if (line.startsWith("-A ") && !line.includes(IPTABLES_CHAIN)) state.rules++;
    }
  }
  return state;
}

/** The iptables flavour the node uses (see the module comment), with the reason. */
export function pickIptablesFlavour(
  states: FlavourState[],
): { flavour: IptablesFlavour; why: string } | undefined {
  const present = states.filter((s) => s.installed);
  const [a, b] = present;
  if (!a) return undefined;
  if (!b) return { flavour: a.flavour, why: `only iptables-${a.flavour} is installed` };
  const hinted = present.filter((s) => s.hint);
  if (hinted.length === 1 && hinted[0]) {
    return {
      flavour: hinted[0].flavour,
      why: `kubelet's hint chain is in iptables-${hinted[0].flavour}`,
    };
  }
  const nft = present.find((s) => s.flavour === "nft");
  const legacy = present.find((s) => s.flavour === "legacy");
  if (nft && legacy && legacy.rules > nft.rules) {
    return {
      flavour: "legacy",
      why: `iptables-legacy has more rules (${legacy.rules} vs ${nft.rules})`,
    };
  }
  return {
    flavour: "nft",
    why: `iptables-nft has as many rules or more (${nft?.rules} vs ${legacy?.rules})`,
  };
}

export async function chooseBackend(
  opts: RuleOptions,
  log: Logger,
  run: CommandRunner = denoCommandRunner,
): Promise<RuleBackend> {
  const nft = await probeNftQueue(opts, run);
  let backend: RuleBackend;
  let why: string;
  if (nft.ok) {
    backend = new NftablesBackend(opts, run, log);
    why = nft.why;
  } else {
    const states = await Promise.all(IPTABLES_FLAVOURS.map((f) => inspectFlavour(f, run)));
    const pick = pickIptablesFlavour(states);
    if (!pick) throw new Error(`no rule backend: ${nft.why}, and no iptables binaries found`);
    backend = new IptablesBackend(pick.flavour, opts, run, log);
    why = `${nft.why}; ${pick.why}`;
  }
  log.info("rule backend chosen", { backend: backend.name, reason: why });
  await removeOtherBackends(backend.name, run, log);
  return backend;
}

async function removeOtherBackends(keep: RuleBackend["name"], run: CommandRunner, log: Logger) {
  if (keep !== "nftables" && await nftTableExists(run)) {
    await runChecked(run, "nft", ["-f", "-"], NFT_UNINSTALL);
    log.warn("removed leftover rules of another backend", { backend: "nftables" });
  }
  for (const flavour of IPTABLES_FLAVOURS) {
    if (keep === `iptables-${flavour}`) continue;
    if (await removeIptablesRules(flavour, run)) {
      log.warn("removed leftover rules of another backend", { backend: `iptables-${flavour}` });
    }
  }
}
