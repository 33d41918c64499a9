/**
 * A Clock whose time moves only when a test says so. `advance(ms)` runs every timer that falls due
 * in order, each at its own due time (a timer set by a callback runs too if it falls due within
 * the advance), then yields to pending promise jobs so async work started by a timer can go on.
 */
import type { Clock, TimerHandle } from "../../src/clock.ts";

interface Pending {
  at: number;
  seq: number;
  fn: () => void;
  handle: TimerHandle;
}

export class ManualClock implements Clock {
  private t: number;
  private seq = 0;
  private pending: Pending[] = [];

  constructor(start = 1_700_000_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const handle: TimerHandle = { timer: ++this.seq };
    this.pending.push({ at: this.t + Math.max(0, ms), seq: this.seq, fn, handle });
    return handle;
  }

  clearTimeout(handle: TimerHandle | undefined): void {
    if (handle) this.pending = this.pending.filter((p) => p.handle !== handle);
  }

  /** Timers not yet fired. */
  get timers(): number {
    return this.pending.length;
  }

  /** Milliseconds until the next timer, or undefined when none is set. */
  nextIn(): number | undefined {
    const next = this.earliest();
    return next ? next.at - this.t : undefined;
  }

  /** Move time forward by `ms`, firing what falls due (and letting promise jobs run after each). */
  async advance(ms: number): Promise<void> {
    const target = this.t + ms;
    for (;;) {
      const next = this.earliest();
      if (!next || next.at > target) break;
      this.pending = this.pending.filter((p) => p !== next);
      this.t = next.at;
      next.fn();
      await flushJobs();
    }
    this.t = target;
    await flushJobs();
  }

  private earliest(): Pending | undefined {
    let best: Pending | undefined;
    for (const p of this.pending) {
      if (!best || p.at < best.at || (p.at === best.at && p.seq < best.seq)) best = p;
    }
    return best;
  }
}

/** Let queued promise jobs (and the jobs they queue) run: a few macrotask turns. */
export async function flushJobs(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setTimeout(r, 0));
}
