/**
 * Time as the agent's timing logic sees it: rule sync coalescing and retries, the dataplane check,
 * informer restart backoff, the watch stall watchdog, the manifest debounce and settle periods.
 * Production uses the real clock; tests pass a manual one (tests/support/manual_clock.ts) and move
 * time forward themselves, so a minute of backoff is tested in microseconds, without wall-time
 * margins.
 */

/** Whatever a Clock's setTimeout returns; only its clearTimeout understands it. */
export type TimerHandle = unknown;

export interface Clock {
  /** Milliseconds since the epoch (wall time: also used for exported timestamps). */
  now(): number;
  /** Run `fn` once after `ms`. What `fn` returns is ignored by real timers (a test clock awaits it). */
  setTimeout(fn: () => unknown, ms: number): TimerHandle;
  /** Accepts undefined and handles that already fired. */
  clearTimeout(handle: TimerHandle | undefined): void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => {
    if (h !== undefined) clearTimeout(h as ReturnType<typeof setTimeout>);
  },
};

/** Resolves after `ms` on `clock`, or at once when `signal` aborts. */
export function sleepOn(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const handle = clock.setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clock.clearTimeout(handle);
      resolve();
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
