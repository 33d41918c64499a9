/**
 * Loading the two C libraries, and the one place where C failures become exceptions.
 *
 * Libraries are opened by absolute path first, because `--allow-ffi=<paths>` (the narrowest
 * permission) only admits the paths it names; the bare soname is tried last for distributions
 * with other layouts (that needs unscoped --allow-ffi).
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

/** Multiarch directories first (Debian/Ubuntu), then the classic ones. */
function libraryDirs(): string[] {
  const triplet = Deno.build.arch === "aarch64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
  return [`/usr/lib/${triplet}`, `/lib/${triplet}`, "/usr/lib64", "/lib64", "/usr/lib", "/lib"];
}

/** The absolute paths tried for a soname, in order; for `--allow-ffi=` and error messages. */
export function candidatePaths(soname: string): string[] {
  return libraryDirs().map((d) => `${d}/${soname}`);
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
  for (const path of [...candidatePaths(soname), soname]) {
    try {
      return Deno.dlopen(path, symbols);
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) throw e;
      tried.push(path);
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
