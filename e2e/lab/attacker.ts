/**
 * The attacker's tools for the evasion lab tests: `craft_packets.py` run inside a pod netns (an
 * ordinary socket with extension headers, or raw packets), and a per-source arrival counter inside
 * the destination pod's netns (an iptables rule with no target, read back), which sees a packet
 * even when nothing listens for it.
 */
import { pollUntil } from "./harness.ts";
import type { Lab, LabPod } from "./topology.ts";

const CRAFT = new URL("./craft_packets.py", import.meta.url).pathname;

/** Run one craft_packets.py command in `pod`'s netns; its JSON answer. */
export async function craft(
  lab: Lab,
  pod: LabPod,
  args: string[],
): Promise<Record<string, unknown>> {
  const r = await lab.exec(pod.netns, ["python3", CRAFT, ...args], { timeoutMs: 10_000 });
  if (r.code !== 0 || r.timedOut) {
    throw new Error(`craft_packets.py ${args.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
  }
  const answer = JSON.parse(r.stdout) as Record<string, unknown>;
  if (answer.error) throw new Error(`craft_packets.py ${args.join(" ")}: ${answer.error}`);
  return answer;
}

/**
 * Counts packets from `from` arriving in `at` (INPUT of its netns). A test reads it before and
 * after sending; absence is only ever concluded after a witness packet that left later arrived.
 */
export class ArrivalCounter {
  private constructor(
    private readonly lab: Lab,
    private readonly at: LabPod,
    private readonly bin: "iptables" | "ip6tables",
    /** Names this counter's rule: one per source address. */
    private readonly comment: string,
  ) {}

  static async install(
    lab: Lab,
    at: LabPod,
    from: string,
    family: 4 | 6,
  ): Promise<ArrivalCounter> {
    const bin = family === 4 ? "iptables" : "ip6tables";
    const c = new ArrivalCounter(lab, at, bin, `knp-from-${from}`);
    const args = ["-w", "5", "-I", "INPUT", "-s", from, "-m", "comment", "--comment", c.comment];
    const r = await lab.exec(at.netns, [c.bin, ...args]);
    if (r.code !== 0) throw new Error(`${c.bin} ${args.join(" ")} in ${at.netns}: ${r.stderr}`);
    return c;
  }

  /** Packets counted so far. */
  async count(): Promise<number> {
    const r = await this.lab.exec(this.at.netns, [this.bin, "-w", "5", "-nvxL", "INPUT"]);
    const line = r.stdout.split("\n").find((l) => l.includes(`/* ${this.comment} */`));
    if (r.code !== 0 || !line) {
      throw new Error(`no arrival counter in ${this.at.netns}: ${r.stderr}`);
    }
    return Number(line.trim().split(/\s+/)[0]);
  }

  /** Reads until at least `atLeast` packets are counted, for at most `timeoutMs`; the last count. */
  waitCount(atLeast: number, timeoutMs = 5_000): Promise<number> {
    return pollUntil(() => this.count(), (n) => n >= atLeast, timeoutMs, 50);
  }
}
