/**
 * Time as the agent's timing logic sees it (rule sync coalescing and retries, the dataplane check,
 * informer restart backoff, the watch stall watchdog). Production uses the real clock; tests pass
 * a manual one (tests/support/manual_clock.ts) and move time forward themselves, so backoffs and
 * stall thresholds of a minute are tested in microseconds and without wall-time margins.
 */

/** An opaque timer handle from `Clock.setTimeout`. */
export type TimerHandle = { readonly timer: unknown };

export interface Clock {
  /** Milliseconds since the epoch (wall time: also used for exported timestamps). */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  /** Accepts undefined and handles that already fired. */
  clearTimeout(handle: TimerHandle | undefined): void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => ({ timer: setTimeout(fn, ms) }),
  clearTimeout: (h) => {
    if (h) clearTimeout(h.timer as ReturnType<typeof setTimeout>);
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
