/**
 * setsockopt through libc for our netlink sockets (the queue's and the plain ones): the two
 * options both set, in one place. Scratch buffers are the caller's, so a socket that changes its
 * timeout per turn allocates nothing.
 */
import { check, type Libraries } from "./library.ts";

const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_RCVTIMEO = 20;
const SO_RCVBUFFORCE = 33;

/** Buffers one socket reuses for its options: an int and a struct timeval. */
export class OptionScratch {
  readonly int = new Int32Array(1);
  readonly timeval = new BigInt64Array(2);
}

/** setsockopt with an int value; true when the kernel took it. */
export function trySetIntOption(
  libs: Libraries,
  fd: number,
  scratch: OptionScratch,
  level: number,
  name: number,
  value: number,
): boolean {
  scratch.int[0] = value;
  return libs.libc.setsockopt(fd, level, name, new Uint8Array(scratch.int.buffer), 4) === 0;
}

/**
 * The receive buffer: SO_RCVBUFFORCE first (past net.core.rmem_max, needs CAP_NET_ADMIN), else
 * SO_RCVBUF (capped by rmem_max). Throws FfiError when neither is taken.
 */
export function setReceiveBuffer(
  libs: Libraries,
  fd: number,
  scratch: OptionScratch,
  bytes: number,
): void {
  if (trySetIntOption(libs, fd, scratch, SOL_SOCKET, SO_RCVBUFFORCE, bytes)) return;
  check(
    libs,
    trySetIntOption(libs, fd, scratch, SOL_SOCKET, SO_RCVBUF, bytes),
    "setsockopt SO_RCVBUF",
  );
}

/** SO_RCVTIMEO: the longest a blocking recv waits (at least 1 µs: 0 would mean forever). */
export function setReceiveTimeout(
  libs: Libraries,
  fd: number,
  scratch: OptionScratch,
  ms: number,
): void {
  const us = Math.max(1, Math.round(ms * 1000));
  scratch.timeval[0] = BigInt(Math.floor(us / 1e6));
  scratch.timeval[1] = BigInt(us % 1e6);
  const ok = libs.libc.setsockopt(
    fd,
    SOL_SOCKET,
    SO_RCVTIMEO,
    new Uint8Array(scratch.timeval.buffer),
    16,
  ) === 0;
  check(libs, ok, "setsockopt SO_RCVTIMEO");
}
