/*
 * The smallest useful NFQUEUE verdict loop in C: the yardstick bench/packet_path.ts holds
 * kube-netpol's VerdictLoop against. It binds one queue with a 128-byte copy range, reads with
 * recv() + nfq_handle_packet() and accepts every packet with one nfq_set_verdict() each, the
 * way most C and Go NFQUEUE programs do. No policy, no parsing: pure packet-path cost.
 *
 *   gcc -O2 -o nfq_reference nfq_reference.c -lnetfilter_queue
 *   nfq_reference <queue-id>        (prints "ready" once bound; stops on SIGTERM/SIGINT)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int accept_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                         void *data) {
  (void)msg;
  (void)data;
  struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
  if (!ph) return 0;
  return nfq_set_verdict(qh, ntohl(ph->packet_id), NF_ACCEPT, 0, NULL);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s <queue-id>\n", argv[0]);
    return 2;
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  struct nfq_handle *h = nfq_open();
  if (!h) { perror("nfq_open"); return 1; }
  struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)atoi(argv[1]), accept_packet, NULL);
  if (!qh) { perror("nfq_create_queue"); return 1; }
  if (nfq_set_mode(qh, NFQNL_COPY_PACKET, 128) < 0) { perror("nfq_set_mode"); return 1; }
  nfq_set_queue_maxlen(qh, 4096);
  int fd = nfq_fd(h);
  int one = 1, rcvbuf = 8 << 20;
  setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
  /* A receive timeout only so SIGTERM is noticed promptly. */
  struct timeval tv = {0, 100000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  printf("ready\n");
  fflush(stdout);
  char buf[65536] __attribute__((aligned));
  while (!stop) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ENOBUFS) continue;
      perror("recv");
      break;
    }
    nfq_handle_packet(h, buf, (int)n);
  }
  nfq_destroy_queue(qh);
  nfq_close(h);
  return 0;
}
