/**
 * Time as the timing logic sees it: a monotonic "now" in milliseconds and one-shot timers. Code
 * that waits (debounce, settle periods, backoff) takes a Clock so unit tests can drive time by hand
 * (tests/support/fake_clock.ts) instead of sleeping and hoping.
 */
/** Whatever a Clock's setTimeout returns; only its clearTimeout understands it. */
export type TimerHandle = unknown;

export interface Clock {
  /** Milliseconds from an arbitrary origin; never goes backwards. */
  now(): number;
  /** Run `fn` once after `ms`. What `fn` returns is ignored by real timers (a fake may await it). */
  setTimeout(fn: () => unknown, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export const realClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};
