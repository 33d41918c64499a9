/**
 * Reads Kubernetes manifests from files and directories, the way `kubectl apply -f` takes them:
 * YAML with several documents, JSON, `kind: List` (and `PodList`-style lists as the API returns
 * them), directories recursively. Only what the policy engine consumes is kept (Namespace, Pod,
 * networking.k8s.io NetworkPolicy); other kinds are skipped with a notice.
 *
 * Checked here: what it takes to know *which* object a document is (syntax, kind, apiVersion,
 * metadata.name, namespace defaulting). Field-level validation is the engine's (upsertPolicy and
 * upsertPod return ObjectErrors), so both the agent and `simulate` report the same problems.
 */
import { parseAllDocuments } from "yaml";
import type {
  ClusterPolicyObject,
  Namespace,
  NetworkPolicy,
  Node,
  ObjectError,
  Pod,
  StateObjectKind,
} from "../policy/types.ts";

export type ManifestObject = Pod | Namespace | NetworkPolicy | Node | ClusterPolicyObject;

export interface LoadedObject {
  kind: StateObjectKind;
  object: ManifestObject;
  /** File path, plus `#doc N` (1-based) in a multi-document file and `#items[i]` in a list. */
  source: string;
  /** The file it was read from (what a watcher compares against). */
  file: string;
}

export interface LoadResult {
  objects: LoadedObject[];
  errors: ObjectError[];
  /** Skipped documents, e.g. a Deployment next to the policies: worth a line, not an error. */
  notices: string[];
  /** Every manifest file read (or tried), in load order. */
  files: string[];
  /**
   * Files that exist but could not be read completely (syntax error, unreadable, a document that
   * cannot be identified). Objects that vanished from such a file may only be hidden by the error,
   * so a watcher keeps their last good version instead of deleting them.
   */
  incompleteFiles: string[];
}

/** File name endings read from directories; a file named explicitly is read whatever its name. */
export const MANIFEST_EXTENSIONS = [".yaml", ".yml", ".json"];

/** apiVersion group each kind must come from ("" is the core group, written plain "v1"). */
const KINDS: Record<StateObjectKind, { group: string; version: string }> = {
  Namespace: { group: "", version: "v1" },
  Pod: { group: "", version: "v1" },
  NetworkPolicy: { group: "networking.k8s.io", version: "v1" },
  Node: { group: "", version: "v1" },
  ClusterNetworkPolicy: { group: "policy.networking.k8s.io", version: "v1alpha2" },
  AdminNetworkPolicy: { group: "policy.networking.k8s.io", version: "v1alpha1" },
  BaselineAdminNetworkPolicy: { group: "policy.networking.k8s.io", version: "v1alpha1" },
};
const NAMESPACED: Record<StateObjectKind, boolean> = {
  Namespace: false,
  Pod: true,
  NetworkPolicy: true,
  Node: false,
  ClusterNetworkPolicy: false,
  AdminNetworkPolicy: false,
  BaselineAdminNetworkPolicy: false,
};
const MAX_LIST_NESTING = 4;

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isKind(k: string): k is StateObjectKind {
  return Object.hasOwn(KINDS, k);
}

function splitApiVersion(apiVersion: string): { group: string; version: string } {
  const slash = apiVersion.lastIndexOf("/");
  return slash < 0
    ? { group: "", version: apiVersion }
    : { group: apiVersion.slice(0, slash), version: apiVersion.slice(slash + 1) };
}

function errno(e: unknown): string {
  if (e instanceof Deno.errors.NotFound) return "no such file or directory";
  if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable) {
    return `permission denied (${(e as Error).message})`;
  }
  return (e as Error)?.message ?? String(e);
}

/** Collects manifest files under one path: sorted, hidden entries skipped, symlinks followed. */
async function walk(
  path: string,
  explicit: boolean,
  out: string[],
  seen: Set<string>,
  errors: ObjectError[],
): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    errors.push({ source: path, object: "file", field: "path", message: errno(e) });
    return;
  }
  if (info.isFile) {
    const lower = path.toLowerCase();
    if (!explicit && !MANIFEST_EXTENSIONS.some((ext) => lower.endsWith(ext))) return;
    // The same file reached twice (`-f dir -f dir/a.yaml`, a symlink) is read once.
    let real = path;
    try {
      real = await Deno.realPath(path);
    } catch { /* keep the given path */ }
    if (!seen.has(real)) {
      seen.add(real);
      out.push(path);
    }
    return;
  }
  if (!info.isDirectory) return;
  // Symlinked directories are followed, but each real directory only once (no cycles).
  let real = path;
  try {
    real = await Deno.realPath(path);
  } catch { /* keep the given path */ }
  if (seen.has(real)) return;
  seen.add(real);
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(path)) {
      // Hidden entries are skipped: a ConfigMap volume holds every file twice, once under a
      // hidden `..2024_01_01_...` directory, once as a visible symlink.
      if (!entry.name.startsWith(".")) names.push(entry.name);
    }
  } catch (e) {
    errors.push({ source: path, object: "directory", field: "path", message: errno(e) });
    return;
  }
  names.sort();
  for (const name of names) {
    await walk(path.endsWith("/") ? path + name : `${path}/${name}`, false, out, seen, errors);
  }
}

/** Checks one decoded document (or list item) and turns it into a LoadedObject, an error or a notice. */
class DocumentReader {
  readonly objects: LoadedObject[] = [];
  readonly errors: ObjectError[] = [];
  readonly notices: string[] = [];
  /** Where each kind/namespace/name was first defined, to report duplicates. */
  readonly #defined = new Map<string, string>();
  #incomplete = false;

  /** Reads documents of one file; returns whether all of them could be identified. */
  readFile(file: string, docs: unknown[], syntaxErrors: (string | undefined)[]): boolean {
    this.#incomplete = false;
    const multi = docs.length > 1;
    docs.forEach((doc, i) => {
      const source = multi ? `${file}#doc ${i + 1}` : file;
      const syntax = syntaxErrors[i];
      if (syntax !== undefined) {
        this.#fail(source, "document", "yaml", syntax);
        return;
      }
      if (doc === null || doc === undefined) return; // empty document, e.g. a trailing `---`
      this.#read(file, source, "", doc, undefined, 0);
    });
    return !this.#incomplete;
  }

  #fail(source: string, object: string, field: string, message: string, hides = true): void {
    this.errors.push({ source, object, field, message });
    if (hides) this.#incomplete = true;
  }

  /**
   * `path` is the field prefix inside the document (`items[2].` for a list item); `listKind` the
   * kind a `PodList`-style list implies for items that omit it (the API server omits it).
   */
  #read(
    file: string,
    source: string,
    path: string,
    doc: unknown,
    implied: { kind: string; apiVersion: unknown } | undefined,
    depth: number,
  ): void {
    if (!isObject(doc)) {
      const what = Array.isArray(doc) ? "an array" : `a ${typeof doc}`;
      this.#fail(source, "document", path || ".", `must be an object, not ${what}`);
      return;
    }
    const kind = doc.kind ?? implied?.kind;
    const apiVersion = doc.apiVersion ?? implied?.apiVersion;
    const meta = doc.metadata;
    const rawName = isObject(meta) ? meta.name : undefined;
    const label = typeof rawName === "string" && rawName !== "" ? rawName : "<unnamed>";
    if (typeof kind !== "string" || kind === "") {
      this.#fail(source, `object ${label}`, `${path}kind`, "is required");
      return;
    }
    if (kind === "List" || (kind.endsWith("List") && Array.isArray(doc.items))) {
      this.#readList(file, source, path, doc, kind, apiVersion, depth);
      return;
    }
    if (apiVersion !== undefined && typeof apiVersion !== "string") {
      this.#fail(source, `${kind} ${label}`, `${path}apiVersion`, "must be a string");
      return;
    }
    if (!isKind(kind)) {
      this.notices.push(
        `${source}: skipped ${kind} ${label} (only Namespace, Pod and NetworkPolicy are read)`,
      );
      return;
    }
    const want = KINDS[kind];
    if (apiVersion !== undefined) {
      const { group, version } = splitApiVersion(apiVersion);
      if (group !== want.group) {
        // e.g. Calico's crd.projectcalico.org/v1 NetworkPolicy: same kind name, other API.
        this.notices.push(
          `${source}: skipped ${apiVersion} ${kind} ${label} (not the Kubernetes ${kind})`,
        );
        return;
      }
      if (version !== want.version) {
        const expected = want.group ? `${want.group}/${want.version}` : want.version;
        this.#fail(
          source,
          `${kind} ${label}`,
          `${path}apiVersion`,
          `${apiVersion} is not supported, use ${expected}`,
        );
        return;
      }
    }
    if (!isObject(meta)) {
      this.#fail(source, `${kind} ${label}`, `${path}metadata.name`, "is required");
      return;
    }
    if (typeof rawName !== "string" || rawName === "") {
      this.#fail(source, `${kind} ${label}`, `${path}metadata.name`, "is required");
      return;
    }
    let namespace: string | undefined;
    if (NAMESPACED[kind]) {
      const ns = meta.namespace;
      if (ns !== undefined && ns !== null && typeof ns !== "string") {
        this.#fail(source, `${kind} ?/${rawName}`, `${path}metadata.namespace`, "must be a string");
        return;
      }
      // As kubectl does without -n: a namespaced object with no namespace lands in "default".
      namespace = ns || "default";
    }
    const id = namespace === undefined ? `${kind} ${rawName}` : `${kind} ${namespace}/${rawName}`;
    const key = `${kind}/${namespace ?? ""}/${rawName}`;
    const first = this.#defined.get(key);
    if (first !== undefined) {
      this.#fail(
        source,
        id,
        `${path}metadata.name`,
        `duplicate of ${first}; this copy is ignored`,
        false,
      );
      return;
    }
    this.#defined.set(key, source);
    const object = {
      ...doc,
      kind,
      ...(apiVersion !== undefined ? { apiVersion } : {}),
      metadata: namespace === undefined ? meta : { ...meta, namespace },
    } as unknown as ManifestObject;
    this.objects.push({ kind, object, source, file });
  }

  #readList(
    file: string,
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
      this.#read(file, `${source}#items[${i}]`, `${path}items[${i}].`, item, implied, depth + 1);
    });
  }
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

/**
 * Loads every manifest under `paths` (files and directories, recursively). Never throws for bad
 * input: every problem becomes an ObjectError naming the file, object and field.
 */
export async function loadManifests(paths: string[]): Promise<LoadResult> {
  const errors: ObjectError[] = [];
  const files: string[] = [];
  const seen = new Set<string>(); // real paths of files and directories already walked
  for (const p of paths) await walk(p, true, files, seen, errors);
  const reader = new DocumentReader();
  const incompleteFiles: string[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (e) {
      // Vanished between listing and reading: the next scan sees it gone; anything else hides
      // objects, so the file counts as incomplete.
      if (!(e instanceof Deno.errors.NotFound)) incompleteFiles.push(file);
      errors.push({ source: file, object: "file", field: "path", message: errno(e) });
      continue;
    }
    const { docs, syntax } = decode(file, text);
    if (!reader.readFile(file, docs, syntax)) incompleteFiles.push(file);
  }
  return {
    objects: reader.objects,
    errors: [...errors, ...reader.errors],
    notices: reader.notices,
    files,
    incompleteFiles,
  };
}

/** `Kind namespace/name` (or `Kind name` when cluster-scoped): the identity sources diff on. */
export function objectKey(o: LoadedObject): string {
  const m = o.object.metadata;
  return NAMESPACED[o.kind] ? `${o.kind} ${m.namespace}/${m.name}` : `${o.kind} ${m.name}`;
}
