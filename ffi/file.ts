/**
 * Reads a small file through libc into a JS-owned buffer. Deno's file API asks for --allow-all
 * to read /proc/net/netfilter/nfnetlink_queue; libc, already loaded for the queue socket, needs
 * no more than the scoped --allow-ffi the agent has anyway.
 */
import { check, loadLibraries } from "./library.ts";

const O_RDONLY = 0;
const O_CLOEXEC = 0o2000000;

/** The whole file as text (at most `maxBytes`); throws FfiError with errno on failure. */
export function readFileViaLibc(path: string, maxBytes = 1 << 20): string {
  const libs = loadLibraries();
  const cpath = new TextEncoder().encode(`${path}\0`);
  const fd = libs.libc.open(cpath, O_RDONLY | O_CLOEXEC);
  check(libs, fd >= 0, `open ${path}`);
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
