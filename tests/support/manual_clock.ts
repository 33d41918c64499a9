/**
 * A Clock whose time moves only when a test says so. `advance(ms)` runs every timer that falls due
 * in order, each at its own due time (a timer set by a callback runs too if it falls due within
 * the advance; ties run in the order they were set), awaits what the timer returns, then lets
 * pending promise jobs run, so async work a timer started has gone on when `advance` returns.
 */
import type { Clock, TimerHandle } from "../../src/clock.ts";

interface Pending {
  at: number;
  seq: number;
  fn: () => unknown;
}

export class ManualClock implements Clock {
  private t: number;
  private seq = 0;
  private readonly pendingTimers = new Map<number, Pending>();

  /** `start`: the first now(); wall-time-like by default, 0 where tests read offsets. */
  constructor(start = 1_700_000_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => unknown, ms: number): TimerHandle {
    const seq = ++this.seq;
    this.pendingTimers.set(seq, { at: this.t + Math.max(0, ms), seq, fn });
    return seq;
  }

  clearTimeout(handle: TimerHandle | undefined): void {
    if (typeof handle === "number") this.pendingTimers.delete(handle);
  }

  /** Timers not yet fired. */
  get timers(): number {
    return this.pendingTimers.size;
  }

  /** Timers waiting to fire, as delays from now, shortest first. */
  pending(): number[] {
    return [...this.pendingTimers.values()].map((p) => p.at - this.t).sort((a, b) => a - b);
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
      this.pendingTimers.delete(next.seq);
      this.t = next.at;
      await next.fn();
      await flushJobs();
    }
    this.t = target;
    await flushJobs();
  }

  private earliest(): Pending | undefined {
    let best: Pending | undefined;
    for (const p of this.pendingTimers.values()) {
      if (!best || p.at < best.at || (p.at === best.at && p.seq < best.seq)) best = p;
    }
    return best;
  }
}

/** Let queued promise jobs (and the jobs they queue) run: a few macrotask turns. */
export async function flushJobs(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setTimeout(r, 0));
}
