/**
 * The C functions kube-netpol calls, and nothing else: symbol tables for `Deno.dlopen`, each
 * parameter annotated with its C type. Loading lives in library.ts; the typed wrapper in queue.ts.
 *
 * Only JS-owned buffers and opaque handles cross this boundary: no callbacks and no pointer reads
 * (`UnsafePointerView`), so `--allow-ffi` can be scoped to the library paths. That scoping is not
 * a sandbox: a library handle resolves any libc symbol (see library.ts), so whoever holds FFI can
 * call all of libc. This table is what our own code calls; only the verdict Worker calls it.
 */

/** libnetfilter_queue.so.1 (Debian 12: 1.0.5). Used only to bind and configure the queue. */
export const NFQ_SYMBOLS = {
  /** struct nfq_handle *nfq_open(void) */
  nfq_open: { parameters: [], result: "pointer" },
  /** int nfq_close(struct nfq_handle *h) */
  nfq_close: { parameters: ["pointer"], result: "i32" },
  /** int nfq_fd(struct nfq_handle *h) */
  nfq_fd: { parameters: ["pointer"], result: "i32" },
  /**
   * struct nfq_q_handle *nfq_create_queue(struct nfq_handle *h, uint16_t num,
   *                                       nfq_callback *cb, void *data)
   * `cb` is always NULL: packets are read and decoded in TypeScript (netlink.ts), never through
   * nfq_handle_packet, so the callback is never called.
   */
  nfq_create_queue: { parameters: ["pointer", "u16", "pointer", "pointer"], result: "pointer" },
  /** int nfq_destroy_queue(struct nfq_q_handle *qh) — sends the UNBIND command. */
  nfq_destroy_queue: { parameters: ["pointer"], result: "i32" },
  /** int nfq_set_mode(struct nfq_q_handle *qh, uint8_t mode, uint32_t range) */
  nfq_set_mode: { parameters: ["pointer", "u8", "u32"], result: "i32" },
  /** int nfq_set_queue_maxlen(struct nfq_q_handle *qh, uint32_t queuelen) */
  nfq_set_queue_maxlen: { parameters: ["pointer", "u32"], result: "i32" },
  /** int nfq_set_queue_flags(struct nfq_q_handle *qh, uint32_t mask, uint32_t flags) */
  nfq_set_queue_flags: { parameters: ["pointer", "u32", "u32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * libc.so.6: socket I/O on the queue's netlink socket, errno, and reading /proc (the queue's
 * kernel counters and the process metrics), which Deno's own file API only reads with --allow-all.
 */
export const LIBC_SYMBOLS = {
  /** int open(const char *pathname, int flags) — pathname NUL-terminated in a JS buffer. */
  open: { parameters: ["buffer", "i32"], result: "i32" },
  /** ssize_t read(int fd, void *buf, size_t count) */
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  /** int close(int fd) */
  close: { parameters: ["i32"], result: "i32" },
  /**
   * ssize_t getdents64(int fd, void *dirp, size_t count) — directory entries (struct
   * linux_dirent64) into a JS buffer; counts /proc/self/fd without Deno's file API.
   */
  getdents64: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  /** long sysconf(int name) — clock ticks per second for /proc CPU times. */
  sysconf: { parameters: ["i32"], result: "i64" },
  /**
   * int socket(int domain, int type, int protocol) — the verdict cache's own NETLINK_NETFILTER
   * socket, on which the worker empties the cache sets (src/netlink/set_flush.ts).
   */
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  /** ssize_t recv(int sockfd, void *buf, size_t len, int flags) — blocks up to SO_RCVTIMEO. */
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  /** ssize_t send(int sockfd, const void *buf, size_t len, int flags) */
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  /**
   * int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen)
   */
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  /** int *__errno_location(void) — the calling thread's errno. */
  __errno_location: { parameters: [], result: "pointer" },
  /**
   * void *memcpy(void *dest, const void *src, size_t n) — copies errno into a JS-owned buffer,
   * which keeps pointer reads (and so unscoped --allow-ffi) out of the agent.
   */
  memcpy: { parameters: ["buffer", "pointer", "usize"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;
