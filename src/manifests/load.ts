/**
 * Reads Kubernetes manifests from files and directories, the way `kubectl apply -f` takes them:
 * YAML with several documents, JSON, `kind: List` (and `PodList`-style lists as the API returns
 * them), directories recursively. Only the kinds in READ_KINDS (kinds.ts) are kept.
 *
 * Three steps, each usable alone: `listManifestFiles` (which files, and which paths could not be
 * listed), `readManifestFile` / `parseManifestText` (one file's objects, errors and notices), and
 * `mergeObjects` (duplicates across files). The live source (source.ts) runs them per file to
 * decide per file what may change; `loadManifests` runs them once for `simulate`.
 *
 * Checked here: what it takes to know *which* object a document is (syntax, kind, apiVersion,
 * metadata.name, namespace defaulting). Field-level validation is the engine's (upsertPolicy and
 * upsertPod return ObjectErrors), so both the agent and `simulate` report the same problems.
 */
import { parseAllDocuments } from "yaml";
import type { ObjectError, StateObjectKind } from "../policy/types.ts";
import type { StateEvent } from "../state/events.ts";
import { isNamespaced, type KindSpec, recognise } from "./kinds.ts";

/** Every object a StateEvent can carry. */
export type ManifestObject = Extract<StateEvent, { op: "upsert" }>["object"];

export interface LoadedObject {
  kind: StateObjectKind;
  object: ManifestObject;
  /** File path, plus `#doc N` (1-based) in a multi-document file and `#items[i]` in a list. */
  source: string;
  /** The file it was read from (what a watcher compares against). */
  file: string;
  /** Field prefix of the object inside its document: `items[2].` in a list, else "". */
  path: string;
}

/** One file, read. */
export interface FileRead {
  file: string;
  /**
   * `read`: the text was decoded (documents may still have errors); `missing`: the file is not
   * there (deleted); `unreadable`: it is there but cannot be read (permissions, a symlink loop, a
   * directory, an I/O error), so what it holds is unknown.
   */
  status: "read" | "missing" | "unreadable";
  /** The text read (status `read` only): an unchanged text needs no second look. */
  text?: string;
  objects: LoadedObject[];
  errors: ObjectError[];
  /** Skipped documents, e.g. a Deployment next to the policies: worth a line, not an error. */
  notices: string[];
  /**
   * Skipped documents with their kind and name: an object of ours whose kind and name a skipped
   * document now carries (another API's NetworkPolicy of the same name) is kept, not removed.
   */
  skipped: SkippedDocument[];
  /**
   * Some document could not be identified at all (syntax error, wrong kind or apiVersion, no
   * name): an object missing from this file may only be hidden by that error.
   */
  incomplete: boolean;
}

export interface SkippedDocument {
  source: string;
  kind: string;
  /** e.g. `crd.projectcalico.org/v1 NetworkPolicy`. */
  what: string;
  name: string;
}

/** The manifest files under some paths, and what could not be listed. */
export interface Listing {
  /** Manifest files, sorted per directory, each real file once. */
  files: string[];
  errors: ObjectError[];
  /**
   * Paths that exist but could not be listed or looked at (a directory without permission, an
   * entry that is a symlink loop or dangling): whatever was known under them is unknown now.
   */
  unreadable: string[];
}

export interface LoadResult {
  objects: LoadedObject[];
  errors: ObjectError[];
  notices: string[];
  /** Every manifest file read (or tried), in load order. */
  files: string[];
  /** Files that exist but could not be read completely (see FileRead.incomplete). */
  incompleteFiles: string[];
}

/** File name endings read from directories; a file named explicitly is read whatever its name. */
export const MANIFEST_EXTENSIONS = [".yaml", ".yml", ".json"];

const MAX_LIST_NESTING = 4;

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A short reason for a failed file system call, e.g. "permission denied (...)". */
export function errno(e: unknown): string {
  if (e instanceof Deno.errors.NotFound) return "no such file or directory";
  if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable) {
    return `permission denied (${(e as Error).message})`;
  }
  return (e as Error)?.message ?? String(e);
}

function fileError(source: string, object: string, e: unknown): ObjectError {
  return { source, object, field: "path", message: errno(e) };
}

/** True when `file` is `path` or lies under it. */
export function isUnder(file: string, path: string): boolean {
  const dir = path.replace(/\/+$/, "");
  return file === dir || file.startsWith(`${dir}/`);
}

/** Collects manifest files under paths: sorted, hidden entries skipped, symlinks followed. */
class Lister {
  readonly listing: Listing = { files: [], errors: [], unreadable: [] };
  /** Real paths of files and directories already walked. */
  readonly #seen = new Set<string>();

  /** `root`: a path the user named, which may simply not exist (yet). */
  async walk(path: string, root: boolean): Promise<void> {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(path);
    } catch (e) {
      await this.#cannotStat(path, root, e);
      return;
    }
    if (info.isFile) await this.#addFile(path, root);
    else if (info.isDirectory) await this.#walkDirectory(path);
  }

  async #cannotStat(path: string, root: boolean, e: unknown): Promise<void> {
    if (!(e instanceof Deno.errors.NotFound)) {
      this.#unreadable(path, e); // e.g. ELOOP, EACCES
      return;
    }
    if (root) {
      this.listing.errors.push(fileError(path, "file", e));
      return;
    }
    // Listed by its directory but not found: either deleted since (nothing to say), or a
    // dangling symlink, which stands where a file stood and cannot be read.
    try {
      await Deno.lstat(path);
      this.#unreadable(path, e);
    } catch { /* deleted since the listing */ }
  }

  #unreadable(path: string, e: unknown): void {
    this.listing.unreadable.push(path);
    this.listing.errors.push(fileError(path, "file", e));
  }

  async #addFile(path: string, explicit: boolean): Promise<void> {
    const lower = path.toLowerCase();
    if (!explicit && !MANIFEST_EXTENSIONS.some((ext) => lower.endsWith(ext))) return;
    // The same file reached twice (`-f dir -f dir/a.yaml`, a symlink) is read once.
    const real = await realPathOr(path);
    if (this.#seen.has(real)) return;
    this.#seen.add(real);
    this.listing.files.push(path);
  }

  async #walkDirectory(path: string): Promise<void> {
    // Symlinked directories are followed, but each real directory only once (no cycles).
    const real = await realPathOr(path);
    if (this.#seen.has(real)) return;
    this.#seen.add(real);
    const names: string[] = [];
    try {
      for await (const entry of Deno.readDir(path)) {
        // Hidden entries are skipped: a ConfigMap volume holds every file twice, once under a
        // hidden `..2024_01_01_...` directory, once as a visible symlink.
        if (!entry.name.startsWith(".")) names.push(entry.name);
      }
    } catch (e) {
      this.listing.unreadable.push(path);
      this.listing.errors.push(fileError(path, "directory", e));
      return;
    }
    names.sort();
    for (const name of names) {
      await this.walk(path.endsWith("/") ? path + name : `${path}/${name}`, false);
    }
  }
}

async function realPathOr(path: string): Promise<string> {
  try {
    return await Deno.realPath(path);
  } catch {
    return path;
  }
}

/** Lists the manifest files under `paths` (files and directories, recursively). */
export async function listManifestFiles(paths: string[]): Promise<Listing> {
  const lister = new Lister();
  for (const p of paths) await lister.walk(p, true);
  return lister.listing;
}

/** What a document says it is, before it is checked. */
interface Header {
  kind: unknown;
  apiVersion: unknown;
  meta: unknown;
  /** metadata.name when it is a non-empty string. */
  name: string | undefined;
  /** The name for messages: `<unnamed>` when there is none. */
  label: string;
}

/** The kind and apiVersion a `PodList`-style list implies for items that omit them. */
type Implied = { kind: string; apiVersion: unknown } | undefined;

/** Turns one file's decoded documents into objects, errors and notices. */
class FileReader {
  readonly result: FileRead;

  constructor(readonly file: string, text: string) {
    this.result = {
      file,
      status: "read",
      text,
      objects: [],
      errors: [],
      notices: [],
      skipped: [],
      incomplete: false,
    };
  }

  readDocuments(docs: unknown[], syntaxErrors: (string | undefined)[]): void {
    const multi = docs.length > 1;
    docs.forEach((doc, i) => {
      const source = multi ? `${this.file}#doc ${i + 1}` : this.file;
      const syntax = syntaxErrors[i];
      if (syntax !== undefined) this.#fail(source, "document", "yaml", syntax);
      else if (doc !== null && doc !== undefined) this.#read(source, "", doc, undefined, 0);
      // else: an empty document, e.g. a trailing `---`
    });
  }

  #fail(source: string, object: string, field: string, message: string): void {
    this.result.errors.push({ source, object, field, message });
    this.result.incomplete = true;
  }

  /** `path`: the field prefix inside the document (`items[2].` for a list item). */
  #read(source: string, path: string, doc: unknown, implied: Implied, depth: number): void {
    if (!isObject(doc)) {
      const what = Array.isArray(doc) ? "an array" : `a ${typeof doc}`;
      this.#fail(source, "document", path || ".", `must be an object, not ${what}`);
      return;
    }
    const h = header(doc, implied);
    if (typeof h.kind !== "string" || h.kind === "") {
      this.#fail(source, `object ${h.label}`, `${path}kind`, "is required");
    } else if (h.kind === "List" || (h.kind.endsWith("List") && Array.isArray(doc.items))) {
      this.#readList(source, path, doc, h.kind, h.apiVersion, depth);
    } else if (h.apiVersion !== undefined && typeof h.apiVersion !== "string") {
      this.#fail(source, `${h.kind} ${h.label}`, `${path}apiVersion`, "must be a string");
    } else {
      this.#readTyped(source, path, doc, { ...h, kind: h.kind, apiVersion: h.apiVersion });
    }
  }

  /** A document with a string kind and apiVersion: ours, a mistake, or someone else's. */
  #readTyped(
    source: string,
    path: string,
    doc: Json,
    h: Header & { kind: string; apiVersion: string | undefined },
  ): void {
    const r = recognise(h.kind, h.apiVersion);
    if ("error" in r) {
      this.#fail(source, `${h.kind} ${h.label}`, `${path}${r.error.field}`, r.error.message);
    } else if ("skip" in r) {
      this.#skip(source, path, h, r.skip);
    } else {
      this.#readObject(source, path, doc, h, r.read);
    }
  }

  #skip(source: string, path: string, h: Header & { kind: string }, reason: string): void {
    const what = h.apiVersion === undefined ? h.kind : `${h.apiVersion} ${h.kind}`;
    if (h.name === undefined) {
      // Every Kubernetes object has a name; one without cannot be told apart from a broken one.
      this.#fail(source, `${what} <unnamed>`, `${path}metadata.name`, "is required");
      return;
    }
    this.result.notices.push(`${source}: skipped ${what} ${h.label} (${reason})`);
    this.result.skipped.push({ source, kind: h.kind, what, name: h.name });
  }

  #readObject(source: string, path: string, doc: Json, h: Header, spec: KindSpec): void {
    const { kind } = spec;
    if (!isObject(h.meta) || h.name === undefined) {
      this.#fail(source, `${kind} ${h.label}`, `${path}metadata.name`, "is required");
      return;
    }
    let namespace: string | undefined;
    if (spec.namespaced) {
      const ns = h.meta.namespace;
      if (ns !== undefined && ns !== null && typeof ns !== "string") {
        this.#fail(source, `${kind} ?/${h.name}`, `${path}metadata.namespace`, "must be a string");
        return;
      }
      // As kubectl does without -n: a namespaced object with no namespace lands in "default".
      namespace = ns || "default";
    }
    const object = {
      ...doc,
      kind,
      ...(h.apiVersion !== undefined ? { apiVersion: h.apiVersion } : {}),
      metadata: namespace === undefined ? h.meta : { ...h.meta, namespace },
    } as unknown as ManifestObject;
    this.result.objects.push({ kind, object, source, file: this.file, path });
  }

  #readList(
    source: string,
    path: string,
    doc: Json,
    kind: string,
    apiVersion: unknown,
    depth: number,
  ): void {
    if (depth >= MAX_LIST_NESTING) {
      this.#fail(source, kind, `${path}items`, `lists nested deeper than ${MAX_LIST_NESTING}`);
      return;
    }
    const items = doc.items ?? [];
    if (!Array.isArray(items)) {
      this.#fail(source, kind, `${path}items`, "must be an array");
      return;
    }
    // `PodList` items come without kind/apiVersion; a plain `List` names them on each item.
    const implied = kind === "List"
      ? undefined
      : { kind: kind.slice(0, -"List".length), apiVersion };
    items.forEach((item, i) => {
      this.#read(`${source}#items[${i}]`, `${path}items[${i}].`, item, implied, depth + 1);
    });
  }
}

function header(doc: Json, implied: Implied): Header {
  const meta = doc.metadata;
  const rawName = isObject(meta) ? meta.name : undefined;
  const name = typeof rawName === "string" && rawName !== "" ? rawName : undefined;
  return {
    kind: doc.kind ?? implied?.kind,
    apiVersion: doc.apiVersion ?? implied?.apiVersion,
    meta,
    name,
    label: name ?? "<unnamed>",
  };
}

/** Decodes a file into documents; `syntax[i]` is set for documents that failed to parse. */
function decode(file: string, text: string): { docs: unknown[]; syntax: (string | undefined)[] } {
  if (file.toLowerCase().endsWith(".json")) {
    // JSON.parse, not the YAML parser: `kubectl get pods -A -o json` dumps reach tens of MB.
    try {
      return { docs: [JSON.parse(text)], syntax: [] };
    } catch (e) {
      return { docs: [undefined], syntax: [`invalid JSON: ${(e as Error).message}`] };
    }
  }
  const docs: unknown[] = [];
  const syntax: (string | undefined)[] = [];
  for (const doc of parseAllDocuments(text)) {
    const first = doc.errors[0];
    if (first) {
      // The library's message ends with a code excerpt; its first line has the text and position.
      syntax[docs.length] = first.message.split("\n")[0]!.replace(/:$/, "");
      docs.push(undefined);
      continue;
    }
    try {
      docs.push(doc.toJS({ maxAliasCount: 100 }));
    } catch (e) {
      syntax[docs.length] = (e as Error).message; // e.g. an alias bomb
      docs.push(undefined);
    }
  }
  return { docs, syntax };
}

/** One file's text, parsed: never throws, every problem is an ObjectError. */
export function parseManifestText(file: string, text: string): FileRead {
  const reader = new FileReader(file, text);
  const { docs, syntax } = decode(file, text);
  reader.readDocuments(docs, syntax);
  return reader.result;
}

/** A file that is missing or cannot be read. */
export function unreadFile(file: string, status: "missing" | "unreadable", error?: ObjectError) {
  const read: FileRead = {
    file,
    status,
    objects: [],
    errors: error ? [error] : [],
    notices: [],
    skipped: [],
    incomplete: status === "unreadable",
  };
  return read;
}

/** Reads and parses one file. */
export async function readManifestFile(file: string): Promise<FileRead> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    const status = e instanceof Deno.errors.NotFound ? "missing" : "unreadable";
    return unreadFile(file, status, fileError(file, "file", e));
  }
  return parseManifestText(file, text);
}

/**
 * Keeps the first definition of each object (in file order) and reports later copies, which
 * would otherwise silently replace it.
 */
export function mergeObjects(
  all: LoadedObject[],
): { objects: LoadedObject[]; errors: ObjectError[] } {
  const first = new Map<string, LoadedObject>();
  const errors: ObjectError[] = [];
  for (const o of all) {
    const key = objectKey(o);
    const was = first.get(key);
    if (was === undefined) {
      first.set(key, o);
      continue;
    }
    errors.push({
      source: o.source,
      object: key,
      field: `${o.path}metadata.name`,
      message: `duplicate of ${was.source}; this copy is ignored`,
    });
  }
  return { objects: [...first.values()], errors };
}

/**
 * Loads every manifest under `paths` (files and directories, recursively). Never throws for bad
 * input: every problem becomes an ObjectError naming the file, object and field.
 */
export async function loadManifests(paths: string[]): Promise<LoadResult> {
  const listing = await listManifestFiles(paths);
  const reads: FileRead[] = [];
  for (const file of listing.files) reads.push(await readManifestFile(file));
  const merged = mergeObjects(reads.flatMap((r) => r.objects));
  return {
    objects: merged.objects,
    errors: [...listing.errors, ...reads.flatMap((r) => r.errors), ...merged.errors],
    notices: reads.flatMap((r) => r.notices),
    files: listing.files,
    // A file deleted between listing and reading is simply gone, not incomplete.
    incompleteFiles: reads.filter((r) => r.incomplete).map((r) => r.file),
  };
}

/** `Kind namespace/name` (or `Namespace name` for cluster-scoped kinds): what sources diff on. */
export function objectKey(o: { kind: StateObjectKind; object: ManifestObject }): string {
  const m = o.object.metadata;
  return isNamespaced(o.kind) ? `${o.kind} ${m.namespace}/${m.name}` : `${o.kind} ${m.name}`;
}
