/**
 * Reading /proc through libc into JS-owned buffers: whole small files, directory entry names, and
 * the clock-tick unit /proc reports CPU times in. Deno's own file API reads /proc only with
 * --allow-all; libc needs nothing beyond the FFI grant the verdict Worker holds anyway.
 */
import { check, loadLibraries } from "./library.ts";

const O_RDONLY = 0;
// Same value on x86_64 and arm64 (O_DIRECTORY is not, so it is not used: getdents64 on anything
// but a directory fails with ENOTDIR anyway).
const O_CLOEXEC = 0o2000000;
/** sysconf name for clock ticks per second (glibc, every architecture). */
const SC_CLK_TCK = 2;
/**
 * struct linux_dirent64: u64 d_ino, s64 d_off, u16 d_reclen, u8 d_type, char d_name[] (NUL
 * terminated), in the CPU's byte order: little-endian on both architectures we support.
 */
const DIRENT_RECLEN_OFFSET = 16;
const DIRENT_NAME_OFFSET = 19;

function openPath(path: string): number {
  const libs = loadLibraries();
  const fd = libs.libc.open(new TextEncoder().encode(`${path}\0`), O_RDONLY | O_CLOEXEC);
  check(libs, fd >= 0, `open ${path}`);
  return fd;
}

/** The whole file as text (at most `maxBytes`); throws FfiError with errno on failure. */
export function readTextFile(path: string, maxBytes = 1 << 20): string {
  const libs = loadLibraries();
  const fd = openPath(path);
  try {
    const chunks: Uint8Array[] = [];
    let total = 0;
    const buf = new Uint8Array(16384);
    while (total < maxBytes) {
      const n = Number(libs.libc.read(fd, buf, BigInt(buf.length)));
      check(libs, n >= 0, `read ${path}`);
      if (n === 0) break;
      chunks.push(buf.slice(0, n));
      total += n;
    }
    const all = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.length;
    }
    return new TextDecoder().decode(all);
  } finally {
    libs.libc.close(fd);
  }
}

/**
 * The names in a directory, without "." and "..". The descriptor used to read it is open
 * meanwhile: reading /proc/self/fd lists that descriptor too.
 */
export function readDirNames(path: string): string[] {
  const libs = loadLibraries();
  const fd = openPath(path);
  try {
    const names: string[] = [];
    const buf = new Uint8Array(32768);
    const view = new DataView(buf.buffer);
    const decoder = new TextDecoder();
    while (true) {
      const n = Number(libs.libc.getdents64(fd, buf, BigInt(buf.length)));
      check(libs, n >= 0, `getdents64 ${path}`);
      if (n === 0) return names;
      for (let at = 0; at < n;) {
        const reclen = view.getUint16(at + DIRENT_RECLEN_OFFSET, true);
        if (reclen === 0) break; // never from the kernel; guards against looping forever
        let end = at + DIRENT_NAME_OFFSET;
        while (end < at + reclen && buf[end] !== 0) end++;
        const name = decoder.decode(buf.subarray(at + DIRENT_NAME_OFFSET, end));
        if (name !== "." && name !== "..") names.push(name);
        at += reclen;
      }
    }
  } finally {
    libs.libc.close(fd);
  }
}

/** sysconf(_SC_CLK_TCK): the unit of the CPU and start times in /proc/<pid>/stat. */
export function clockTicksPerSecond(): number {
  const libs = loadLibraries();
  const ticks = Number(libs.libc.sysconf(SC_CLK_TCK));
  check(libs, ticks > 0, "sysconf(_SC_CLK_TCK)");
  return ticks;
}
