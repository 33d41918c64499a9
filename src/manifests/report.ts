/**
 * Logs what changed in the manifests' problems since the last scan: each error, notice and held
 * object once when it appears, and errors again when they are resolved.
 */
import type { Logger } from "../log.ts";
import { formatObjectError, type ObjectError } from "../policy/types.ts";
import type { HeldObject } from "./settle.ts";

export class ManifestReporter {
  #errors = new Set<string>();
  #notices = new Set<string>();
  #held = new Set<string>();

  constructor(private readonly log: Logger) {}

  report(errors: ObjectError[], notices: string[], held: HeldObject[]): void {
    this.#reportErrors(errors);
    const noticesNow = new Set(notices);
    for (const n of noticesNow) if (!this.#notices.has(n)) this.log.info(n);
    this.#notices = noticesNow;
    this.#reportHeld(held);
  }

  #reportErrors(errors: ObjectError[]): void {
    const now = new Set<string>();
    for (const e of errors) {
      const line = formatObjectError(e);
      now.add(line);
      if (this.#errors.has(line)) continue;
      this.log.warn("invalid manifest", {
        source: e.source,
        object: e.object,
        field: e.field,
        error: e.message,
      });
    }
    for (const line of this.#errors) {
      if (!now.has(line)) this.log.v(2).info("manifest error resolved", { was: line });
    }
    this.#errors = now;
  }

  #reportHeld(held: HeldObject[]): void {
    const now = new Set<string>();
    for (const h of held) {
      const line = `${h.key} (${h.reason})`;
      now.add(line);
      if (this.#held.has(line)) continue;
      this.log.warn("keeping last good version", {
        object: h.key,
        source: h.loaded.source,
        why: h.reason,
      });
    }
    this.#held = now;
  }
}
