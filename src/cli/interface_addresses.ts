/**
 * This node's own addresses, read from its interfaces (the agent runs with hostNetwork). They
 * count as known local addresses for the pod-start race (src/policy/local_pods.ts): on
 * flannel-like CNIs the bridge's address lies inside the node's pod CIDR and is on no Node
 * object, and it appears only when the first pod starts, so the list is read again periodically.
 * Needs `--allow-sys=networkInterfaces`; without it the agent goes on with Node addresses only.
 */
import type { Clock, TimerHandle } from "../clock.ts";
import { realClock } from "../clock.ts";
import type { Logger } from "../log.ts";

export const INTERFACE_POLL_MS = 5000;

/** Addresses of every interface, sorted and without duplicates; throws when not permitted. */
export function readInterfaceAddresses(): string[] {
  const ips = new Set(Deno.networkInterfaces().map((i) => i.address.split("%")[0]!));
  return [...ips].sort();
}

export class InterfaceAddressWatch {
  private timer?: TimerHandle;
  private last = "";
  private stopped = false;

  constructor(
    private readonly onChange: (ips: string[]) => void,
    private readonly log: Logger,
    private readonly read: () => string[] = readInterfaceAddresses,
    private readonly clock: Clock = realClock,
    private readonly periodMs = INTERFACE_POLL_MS,
  ) {}

  /** Reads at once (so the first rule sync already has them), then every period. */
  start(): void {
    this.poll();
  }

  stop(): void {
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
  }

  private poll(): void {
    if (this.stopped) return;
    let ips: string[];
    try {
      ips = this.read();
    } catch (e) {
      // Not permitted (or not supported): say so once and rely on the Node object's addresses.
      this.log.warn(
        "cannot read this node's interface addresses; only Node addresses count as the node's",
        { error: e instanceof Error ? e.message : String(e) },
      );
      return;
    }
    const key = ips.join(",");
    if (key !== this.last) {
      this.last = key;
      this.log.v(4).info("node interface addresses", { ips });
      this.onChange(ips);
    }
    this.timer = this.clock.setTimeout(() => this.poll(), this.periodMs);
  }
}
