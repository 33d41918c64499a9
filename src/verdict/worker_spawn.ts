/**
 * Starting the verdict Worker, the only thread of the agent that ever holds FFI.
 *
 * FFI cannot be narrowed by library path (a library handle reaches every libc function, see
 * ffi/library.ts), so it is contained by thread: the Worker gets a permission set of its own (FFI
 * to our libraries, nothing else: no files, network, programs, environment), and the thread that
 * started it then revokes FFI from itself. Only our own code runs in the Worker (no npm package;
 * tests/layering_test.ts checks its module graph), and the main thread, which runs
 * the npm package yaml (manifests, kubeconfig files), can load no library afterwards. `main.ts` does
 * this before it imports any module that imports an npm package, so not even their import-time
 * code runs with FFI.
 *
 * Needs `--unstable-worker-options` (a Worker's own permissions are an unstable Deno option).
 * Under `deno run` the Worker's modules are read with the starting thread's read permission, so
 * that thread needs --allow-read for them (src/cli/permissions.ts adds it); a compiled binary
 * loads them from its embedded module store without a permission check.
 */
import { ffiPaths } from "../../ffi/library.ts";

export const VERDICT_WORKER_URL = new URL("./verdict_worker.ts", import.meta.url);

export interface SpawnedVerdictWorker {
  readonly worker: Worker;
  /** Set when the Worker failed (e.g. could not load its modules) before a VerdictLoop took it. */
  earlyError?: string;
}

/**
 * The Worker's own permissions: FFI to the library paths this process may open (a subset of the
 * caller's, as Deno requires) and nothing else.
 */
export function verdictWorkerPermissions(
  ffiGranted: (path: string) => boolean = (path) =>
    Deno.permissions.querySync({ name: "ffi", path }).state === "granted",
): Deno.PermissionOptionsObject {
  const ffi = ffiPaths().filter(ffiGranted);
  if (ffi.length === 0) {
    throw new Error(
      `the verdict worker needs --allow-ffi for its libraries (any of ${ffiPaths().join(",")})`,
    );
  }
  return {
    ffi,
    read: false,
    write: false,
    net: false,
    run: false,
    env: false,
    sys: false,
    import: false,
  };
}

/**
 * Starts the Worker (idle until a VerdictLoop sends it `init`), then revokes FFI on the calling
 * thread for good.
 */
export function spawnVerdictWorker(): SpawnedVerdictWorker {
  const worker = new Worker(VERDICT_WORKER_URL.href, {
    type: "module",
    deno: { permissions: verdictWorkerPermissions() },
  });
  const spawned: SpawnedVerdictWorker = { worker };
  worker.onerror = (e: ErrorEvent) => {
    e.preventDefault();
    spawned.earlyError ??= e.message;
  };
  revokeFfi();
  return spawned;
}

/** Removes FFI from the calling thread (every path: Deno cannot revoke a single one). */
export function revokeFfi(): void {
  Deno.permissions.revokeSync({ name: "ffi" });
}
