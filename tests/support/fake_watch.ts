/**
 * A file watcher for tests: events happen when the test emits them, and `emit` returns once the
 * consumer has handled the event and asked for the next one, so what the event started (e.g. a
 * debounce timer on a ManualClock) is in place when the test goes on.
 */
import type { FsWatch } from "../../src/manifests/watch.ts";

type Next = (r: IteratorResult<{ kind: string }>) => void;

export class FakeWatch implements FsWatch {
  #next?: Next;
  #ready!: Promise<void>;
  #signalReady!: () => void;
  closed = false;

  constructor() {
    this.#arm();
  }

  #arm(): void {
    this.#ready = new Promise((r) => this.#signalReady = r);
  }

  [Symbol.asyncIterator](): AsyncIterator<{ kind: string }> {
    return {
      next: () =>
        new Promise<IteratorResult<{ kind: string }>>((resolve) => {
          if (this.closed) {
            resolve({ value: undefined, done: true });
            return;
          }
          this.#next = resolve;
          this.#signalReady();
        }),
    };
  }

  async emit(kind = "modify"): Promise<void> {
    await this.#ready;
    const next = this.#next!;
    this.#next = undefined;
    this.#arm();
    next({ value: { kind }, done: false });
    await this.#ready;
  }

  close(): void {
    this.closed = true;
    this.#next?.({ value: undefined, done: true });
    this.#next = undefined;
  }
}
