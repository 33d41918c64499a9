/**
 * One look at a manifest file for the live source: its fingerprint, its content, and whether it
 * changed while being read (settle.ts decides what to make of it).
 */
import { errno, type FileRead, isUnder, readManifestFile, unreadFile } from "./load.ts";
import type { Observation } from "./settle.ts";

type Stat =
  | { fingerprint: string; isDirectory: boolean }
  | { fingerprint: "missing" }
  | { fingerprint: "unreadable"; error: unknown };

async function statOf(file: string): Promise<Stat> {
  try {
    const i = await Deno.stat(file);
    return {
      // Deno gives times in milliseconds; size and inode catch most rewrites within one.
      fingerprint: `${i.size}/${i.mtime?.getTime()}/${i.ctime?.getTime()}/${i.ino}`,
      isDirectory: i.isDirectory,
    };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { fingerprint: "missing" };
    return { fingerprint: "unreadable", error: e };
  }
}

function unreadable(file: string, message: string): FileRead {
  return unreadFile(file, "unreadable", { source: file, object: "file", field: "path", message });
}

/** A file the listing found: stat, read, stat again. */
export async function observeListed(file: string): Promise<Observation> {
  const before = await statOf(file);
  if (before.fingerprint === "missing") {
    return { fingerprint: "missing", steady: true, read: unreadFile(file, "missing") };
  }
  if ("error" in before) {
    return { fingerprint: "unreadable", steady: true, read: unreadable(file, errno(before.error)) };
  }
  if ("isDirectory" in before && before.isDirectory) {
    return { fingerprint: "directory", steady: true, read: unreadable(file, "is a directory") };
  }
  const read = await readManifestFile(file);
  const after = await statOf(file);
  return {
    fingerprint: before.fingerprint,
    steady: after.fingerprint === before.fingerprint,
    read,
  };
}

/**
 * A file that had objects but that the listing no longer finds: under a path that could not be
 * listed (unknown, so unreadable), replaced by a directory (unreadable), or gone.
 */
export async function observeUnlisted(file: string, unlistable: string[]): Promise<Observation> {
  if (unlistable.some((p) => isUnder(file, p))) {
    // The listing already reported the path; this file's objects are simply unknown now.
    return { fingerprint: "unreadable", steady: true, read: unreadFile(file, "unreadable") };
  }
  const s = await statOf(file);
  if ("isDirectory" in s && s.isDirectory) {
    return { fingerprint: "directory", steady: true, read: unreadable(file, "is a directory") };
  }
  // Deleted, renamed away, or (still a file) now reached through another listed path.
  return { fingerprint: "missing", steady: true, read: unreadFile(file, "missing") };
}
