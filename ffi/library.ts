/**
 * Loading the two C libraries, the one place that knows where they live on each architecture,
 * and the one place where C failures become exceptions.
 *
 * Where: `candidatePaths` is the whole truth about library locations. The loader tries exactly
 * that list, and the permission list (`--allow-ffi=`, src/cli/permissions.ts), the verdict
 * Worker's own FFI grant (src/verdict/worker_spawn.ts), the Dockerfile and `deno task compile`
 * all derive from it, so an arm64 node and an amd64 node are configured by the same code.
 *
 * What FFI grants: `Deno.dlopen` resolves symbols through the library's whole dependency tree,
 * and both libraries depend on libc. Any FFI permission, however narrowly scoped by path,
 * therefore reaches every libc function (system(), execve(), open() for writing). Scoping the
 * path is no containment; only the thread that holds FFI is. Only the verdict Worker holds it,
 * and that Worker runs only our own code (no npm package); see the README's security section.
 */
import { LIBC_SYMBOLS, NFQ_SYMBOLS } from "./symbols.ts";

export type NfqLibrary = Deno.DynamicLibrary<typeof NFQ_SYMBOLS>;
export type LibcLibrary = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>;

export interface Libraries {
  nfq: NfqLibrary["symbols"];
  libc: LibcLibrary["symbols"];
  /** Reads the calling thread's errno (valid right after a failed call). */
  errno(): number;
}

export const NFQ_SONAME = "libnetfilter_queue.so.1";
export const LIBC_SONAME = "libc.so.6";
/** Every library the agent binds. */
export const SONAMES = [NFQ_SONAME, LIBC_SONAME] as const;

/** The CPU architectures the agent supports (Deno's names; Docker calls them amd64 and arm64). */
export type Arch = "x86_64" | "aarch64";
export const ARCHES: readonly Arch[] = ["x86_64", "aarch64"];

/** GNU multiarch triplets: the directory Debian and Ubuntu keep each architecture's libraries in. */
const MULTIARCH: Record<Arch, string> = {
  x86_64: "x86_64-linux-gnu",
  aarch64: "aarch64-linux-gnu",
};

/** The architecture this process runs on; throws on one the agent has no library paths for. */
export function hostArch(): Arch {
  const arch = Deno.build.arch as string;
  if (arch === "x86_64" || arch === "aarch64") return arch;
  throw new Error(`unsupported CPU architecture ${arch} (supported: ${ARCHES.join(", ")})`);
}

/** Multiarch directories first (Debian, Ubuntu: the image), then the classic ones (Fedora...). */
function libraryDirs(arch: Arch): string[] {
  const triplet = MULTIARCH[arch];
  return [`/usr/lib/${triplet}`, `/lib/${triplet}`, "/usr/lib64", "/lib64", "/usr/lib", "/lib"];
}

/** The absolute paths tried for a soname on `arch`, in order. */
export function candidatePaths(soname: string, arch: Arch = hostArch()): string[] {
  return libraryDirs(arch).map((d) => `${d}/${soname}`);
}

/** Every absolute path the loader may open on `arch`: what `--allow-ffi=` must name. */
export function ffiPaths(arch: Arch = hostArch()): string[] {
  return SONAMES.flatMap((soname) => candidatePaths(soname, arch));
}

/** Errno values the agent reacts to or explains (Linux numbering, same on x86_64 and arm64). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  EPROTONOSUPPORT: 93,
  EOPNOTSUPP: 95,
  ENOBUFS: 105,
} as const;

const ERRNO_NAMES = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));

export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/** A failed C call: what was attempted, errno, and what an operator can do about it. */
export class FfiError extends Error {
  constructor(readonly operation: string, readonly errno: number, hint?: string) {
    super(`${operation} failed: ${errnoName(errno)}${hint ? ` (${hint})` : ""}`);
    this.name = "FfiError";
  }
}

/** The remedy for the errno values an operator can fix. */
export function hintFor(errno: number): string | undefined {
  switch (errno) {
    case Errno.EPERM:
    case Errno.EACCES:
      return "needs CAP_NET_ADMIN: run as root or grant the capability";
    case Errno.EBUSY:
    case Errno.EEXIST:
      return "the queue is bound by another process (another kube-netpol?); pick another --nfqueue-id";
    case Errno.EPROTONOSUPPORT:
    case Errno.EOPNOTSUPP:
      return "the kernel lacks nfnetlink_queue: modprobe nfnetlink_queue";
    default:
      return undefined;
  }
}

function openFirst<S extends Deno.ForeignLibraryInterface>(
  soname: string,
  symbols: S,
  install: string,
): Deno.DynamicLibrary<S> {
  const tried: string[] = [];
  // Absolute candidates only, never the bare soname (the dynamic loader's own search): the verdict
  // Worker's FFI grant names exactly these paths, so anything else would be refused anyway.
  for (const path of candidatePaths(soname)) {
    try {
      return Deno.dlopen(path, symbols);
    } catch (e) {
      const notPermitted = e instanceof Deno.errors.NotCapable ||
        e instanceof Deno.errors.PermissionDenied;
      tried.push(notPermitted ? `${path} (not permitted)` : path);
    }
  }
  throw new Error(
    `could not load ${soname} (tried ${tried.join(", ")}); install it: ${install}`,
  );
}

let loaded: { libs: Libraries; close: () => void } | undefined;

/** Opens both libraries once per thread (each Worker has its own). */
export function loadLibraries(): Libraries {
  if (loaded) return loaded.libs;
  const nfq = openFirst(NFQ_SONAME, NFQ_SYMBOLS, "apt-get install libnetfilter-queue1");
  let libc: LibcLibrary;
  try {
    libc = openFirst(LIBC_SONAME, LIBC_SYMBOLS, "a glibc-based system is required");
  } catch (e) {
    nfq.close();
    throw e;
  }
  const errnoCell = new Int32Array(1);
  const errnoBytes = new Uint8Array(errnoCell.buffer);
  const s = libc.symbols;
  const libs: Libraries = {
    nfq: nfq.symbols,
    libc: s,
    errno(): number {
      s.memcpy(errnoBytes, s.__errno_location(), 4n);
      return errnoCell[0]!;
    },
  };
  loaded = {
    libs,
    close: () => {
      nfq.close();
      libc.close();
    },
  };
  return libs;
}

/** Throws FfiError (with errno and a hint) unless `ok`; call right after the C call. */
export function check(libs: Libraries, ok: boolean, operation: string): void {
  if (ok) return;
  const errno = libs.errno();
  throw new FfiError(operation, errno, hintFor(errno));
}
