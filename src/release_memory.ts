/**
 * Hands memory back after a burst that left a lot of garbage behind: the initial lists of a
 * big cluster pass through each thread once (parsed, slimmed, applied), and V8 would otherwise
 * keep the heap it grew for them. A full collection now lets it release those pages. Needs
 * `--v8-flags=--expose-gc` (AGENT_RUNTIME_FLAGS); without it (tests, tools) it does nothing.
 */
export function releaseMemory(): void {
  (globalThis as { gc?: () => void }).gc?.();
}
