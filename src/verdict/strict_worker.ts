/**
 * Strict mode inside the verdict Worker: the conntrack socket, StrictCuts, and when its reports
 * go to the main thread. The worker calls `changed()` after each burst of state events and
 * `turn()` between its packet turns; nothing else of strict mode touches the packet loop.
 */
import type { PolicyEngine } from "../policy/engine.ts";
import { KernelConntrack } from "./conntrack_kernel.ts";
import { StrictCuts } from "./strict_cuts.ts";
import type { FromWorker, VerdictLoopOptions } from "./verdict_protocol.ts";

/** Reports (counts, cut records) go out at most this often, like the deny records. */
const REPORT_EVERY_MS = 50;

export class StrictMode {
  private lastReport = 0;

  constructor(private readonly cuts: StrictCuts, private readonly post: (m: FromWorker) => void) {}

  changed(): void {
    this.cuts.changed();
  }

  /** Some work (bounded by StrictCuts' budget), and the report when one is due. */
  turn(now: number): void {
    this.cuts.work();
    if (now - this.lastReport >= REPORT_EVERY_MS) {
      this.lastReport = now;
      this.flush();
    }
  }

  private flush(): void {
    const report = this.cuts.takeReport();
    if (report) this.post({ type: "strict", report });
  }

  close(): void {
    this.flush();
    this.cuts.close();
  }
}

/**
 * Strict mode when the options ask for it and the conntrack socket opens; otherwise undefined,
 * with a warning saying why (the agent keeps judging new connections either way).
 */
export function openStrictMode(
  engine: PolicyEngine,
  opts: VerdictLoopOptions,
  post: (m: FromWorker) => void,
): StrictMode | undefined {
  if (opts.strictCutMark === undefined) return undefined;
  let port: KernelConntrack;
  try {
    port = KernelConntrack.open();
  } catch (e) {
    post({
      type: "warning",
      message: `strict mode is off: cannot open the conntrack netlink socket (${
        e instanceof Error ? e.message : String(e)
      }); existing connections are not cut when a change denies them`,
    });
    return undefined;
  }
  const cuts = new StrictCuts(engine, port, {
    nodeName: opts.nodeName,
    cutMark: opts.strictCutMark,
  });
  return new StrictMode(cuts, post);
}
