/**
 * A Clock for tests: time moves only when the test calls `advance`, and every timer that falls due
 * runs to completion (its returned promise is awaited) before the next one, so what timers start
 * (a scan, a re-check) has finished when `advance` returns.
 */
import type { Clock, TimerHandle } from "../../src/clock.ts";

interface Timer {
  due: number;
  fn: () => unknown;
}

export class FakeClock implements Clock {
  #now = 0;
  #nextId = 1;
  readonly #timers = new Map<number, Timer>();

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => unknown, ms: number): number {
    const id = this.#nextId++;
    this.#timers.set(id, { due: this.#now + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(handle: TimerHandle): void {
    this.#timers.delete(handle as number);
  }

  /** Timers waiting to fire, as delays from now (for assertions about what is scheduled). */
  pending(): number[] {
    return [...this.#timers.values()].map((t) => t.due - this.#now).sort((a, b) => a - b);
  }

  /** Move time forward by `ms`, running every timer due on the way in order (ties: first set). */
  async advance(ms: number): Promise<void> {
    const target = this.#now + ms;
    for (;;) {
      let nextId: number | undefined;
      let next: Timer | undefined;
      for (const [id, t] of this.#timers) {
        if (t.due <= target && (next === undefined || t.due < next.due)) {
          nextId = id;
          next = t;
        }
      }
      if (next === undefined || nextId === undefined) break;
      this.#timers.delete(nextId);
      this.#now = next.due;
      await next.fn();
    }
    this.#now = target;
  }
}
