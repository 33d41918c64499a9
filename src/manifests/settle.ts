/**
 * Per manifest file: which version of its objects is in force, and when a new look at the file may
 * replace it. Pure (time comes in as numbers), so every rule below is unit-tested without a disk.
 *
 * Two rules keep a bad moment on disk from opening traffic:
 *
 * - **Nothing unreadable is a deletion.** An object that its file no longer yields stays in force
 *   (held) when the file cannot be read (permissions, a symlink loop, a directory in its place),
 *   when the file has a document that cannot be identified (syntax error, mistyped kind or
 *   apiVersion, no name: any of them may be the object), or when a document that kube-netpol
 *   skips now carries its kind and name (e.g. `apiVersion: crd.projectcalico.org/v1` put on it). Only a file that reads cleanly without it, or a file that is gone,
 *   removes it.
 * - **A changed file is taken only once it has settled.** Its fingerprint (size, mtime, ctime,
 *   inode) must have been seen unchanged for `settleMs`, and again right after the read; when the
 *   new version would remove objects (an emptied or shortened file, a deleted file), for
 *   `removalSettleMs`. Writers that truncate, pause and write again are seen whole.
 *
 * Taken at once, with no settle period: the first load, an unreadable file (it changes nothing in
 * force, it only reports), a text identical to the version in force, and a vanished file that had
 * nothing in force.
 */
import type { ObjectError } from "../policy/types.ts";
import { type FileRead, type LoadedObject, objectKey } from "./load.ts";

/** One look at a file. */
export interface Observation {
  /** How the file looked before the read: `size/mtime/ctime/inode`, or `missing`/`unreadable`. */
  fingerprint: string;
  /** It looked the same right after the read (not written to while we read it). */
  steady: boolean;
  read: FileRead;
}

export interface SettlePeriods {
  /** How long a changed file must look the same before its content is taken. */
  settleMs: number;
  /** The same, when taking it would remove objects that are in force. */
  removalSettleMs: number;
}

export type Decision = { accepted: true } | { accepted: false; recheckAt: number };

/** An object kept in force although its file no longer yields it. */
export interface HeldObject {
  key: string;
  loaded: LoadedObject;
  /** Why, for the log: "its file cannot be read", ... */
  reason: string;
}

/** What a read would put in force for a file, given what is in force now. */
export interface CarryOver {
  inForce: LoadedObject[];
  held: HeldObject[];
  /** Errors for objects held through a skipped document (no document error explains them). */
  errors: ObjectError[];
  /** Some object in force now would be removed. */
  removes: boolean;
}

/** The objects a read puts in force, keeping those it cannot vouch for (see the module comment). */
export function carryOver(inForce: LoadedObject[], read: FileRead): CarryOver {
  if (read.status === "unreadable") {
    const held = inForce.map((loaded) => hold(loaded, "its file cannot be read"));
    return { inForce, held, errors: [], removes: false };
  }
  const present = new Set(read.objects.map(objectKey));
  const out: CarryOver = { inForce: [...read.objects], held: [], errors: [], removes: false };
  for (const old of inForce) {
    if (present.has(objectKey(old))) continue;
    const skipped = read.skipped.find((s) =>
      s.kind === old.kind && s.name === old.object.metadata.name
    );
    if (read.status === "read" && read.incomplete) {
      out.held.push(hold(old, "its file has documents that cannot be read"));
    } else if (skipped !== undefined) {
      out.held.push(hold(old, `${skipped.source} is now ${skipped.what}`));
      out.errors.push({
        source: skipped.source,
        object: objectKey(old),
        field: "kind",
        message: `is now ${skipped.what}, which kube-netpol does not read; ` +
          "the last good version stays in force until the document is fixed or removed",
      });
    } else {
      out.removes = true;
      continue;
    }
    out.inForce.push(old);
  }
  return out;
}

function hold(loaded: LoadedObject, reason: string): HeldObject {
  return { key: objectKey(loaded), loaded, reason };
}

/** One manifest file as the live source tracks it. */
export class TrackedFile {
  /** Its objects in force: the last accepted read plus the objects held through it. */
  inForce: LoadedObject[] = [];
  held: HeldObject[] = [];
  /** Problems of the version in force (what errors() reports for this file). */
  errors: ObjectError[] = [];
  notices: string[] = [];
  /** The file is gone and nothing of it is in force: the source may forget it. */
  forgettable = false;
  /** Text of the last readable version accepted: the same text again needs no settle period. */
  #acceptedText?: string;
  /** The fingerprint last seen, and when it was first seen (what settle periods count from). */
  #seen?: { fingerprint: string; since: number };

  constructor(readonly file: string) {}

  /** Accept `obs` as the version in force now, or say when to look again. */
  offer(obs: Observation, now: number, periods: SettlePeriods, initial: boolean): Decision {
    if (this.#seen?.fingerprint !== obs.fingerprint) {
      this.#seen = { fingerprint: obs.fingerprint, since: now };
    }
    const next = carryOver(this.inForce, obs.read);
    if (!initial && !this.#takenAtOnce(obs.read)) {
      const need = next.removes ? periods.removalSettleMs : periods.settleMs;
      if (!obs.steady) return { accepted: false, recheckAt: now + need };
      const settledAt = this.#seen.since + need;
      if (now < settledAt) return { accepted: false, recheckAt: settledAt };
    }
    this.#accept(obs.read, next);
    return { accepted: true };
  }

  #takenAtOnce(read: FileRead): boolean {
    if (read.status === "unreadable") return true;
    if (read.status === "missing") return this.inForce.length === 0;
    return read.text === this.#acceptedText;
  }

  #accept(read: FileRead, next: CarryOver): void {
    this.inForce = next.inForce;
    this.held = next.held;
    this.errors = [...read.errors, ...next.errors];
    this.notices = read.notices;
    if (read.status === "read") this.#acceptedText = read.text;
    this.forgettable = read.status === "missing" && next.inForce.length === 0;
  }
}
