/* A TCP connection to a peer outside the tree, streaming both ways across the checkpoint. The
 * peer is a thread of the e2e harness (TcpPeer in tests/e2e/harness.h), listening on 127.0.0.1
 * at the port written in DIR/peer.port; crest dumps this tree with --tcp-established.
 *
 * Both ends send an endless known byte sequence (byte i of a direction is tx_byte(i, dir)) as fast
 * as the connection takes it, and read the other's slowly (4 KiB a millisecond at most), checking
 * every byte: both ends' send and receive queues are full when the tree is frozen. Ready once
 * 256 KiB went each way. On the check request the root stops sending and ends its side
 * (shutdown SHUT_WR); the peer answers with its own FIN once it has read everything; the root
 * reads on to EOF. PASS when every byte received was the next of the sequence, EOF came, no
 * error (SO_ERROR 0, no reset), and the connection's names are as before. The root writes
 * "SENT RECEIVED" to DIR/tcp_external.totals; the harness checks them against what its peer
 * received and sent: equal both ways, so no byte was lost or doubled across the checkpoint. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

/* The sequence of one direction (0: root to peer, 1: peer to root). Same formula as the peer's. */
static unsigned char tx_byte(uint64_t i, int dir) {
  return (unsigned char)(((i >> 16) * 151 + (i >> 8) * 31 + i * 7 + (uint64_t)dir * 89) & 0xff);
}

static uint64_t sent, received;
static long bad_at = -1; /* offset of the first byte received that was not the next */

static void pump_out(int fd) {
  unsigned char buf[16384];
  for (size_t k = 0; k < sizeof buf; k++) buf[k] = tx_byte(sent + k, 0);
  ssize_t n = send(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n > 0) sent += (uint64_t)n;
  else if (n < 0 && errno != EAGAIN && errno != EINTR) wl_die("send: %m (after %llu bytes)", (unsigned long long)sent);
}

/* Reads at most 4 KiB; false on EOF. */
static bool pump_in(int fd) {
  unsigned char buf[4096];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  if (n == 0) return false;
  if (n < 0) {
    if (errno != EAGAIN && errno != EINTR) wl_die("recv: %m (after %llu bytes)", (unsigned long long)received);
    return true;
  }
  for (ssize_t k = 0; k < n; k++)
    if (bad_at < 0 && buf[k] != tx_byte(received + (uint64_t)k, 1)) bad_at = (long)(received + (uint64_t)k);
  received += (uint64_t)n;
  return true;
}

static void nap_ms(long ms) {
  struct timespec ts = {0, ms * 1000000};
  nanosleep(&ts, NULL);
}

static void names(int fd, struct sockaddr_in* me, struct sockaddr_in* peer) {
  socklen_t a = sizeof *me, b = sizeof *peer;
  memset(me, 0, sizeof *me);
  memset(peer, 0, sizeof *peer);
  getsockname(fd, (struct sockaddr*)me, &a);
  getpeername(fd, (struct sockaddr*)peer, &b);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  FILE* f = fopen(wl_path("peer.port"), "r");
  unsigned port = 0;
  if (!f || fscanf(f, "%u", &port) != 1 || port == 0 || port > 65535) wl_die("no peer port in peer.port");
  fclose(f);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr*)&to, sizeof to) != 0) wl_die("connect to the peer: %m");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

  const double setup_end = wl_now() + 30;
  while (sent < 256 * 1024 || received < 256 * 1024) {
    if (wl_now() > setup_end) wl_die("setup: only %llu bytes sent, %llu received", (unsigned long long)sent, (unsigned long long)received);
    pump_out(fd);
    pump_in(fd);
    nap_ms(1);
  }
  struct sockaddr_in me0, peer0;
  names(fd, &me0, &peer0);
  wl_ready();

  /* Dumps, kills and restores happen in here. */
  while (!wl_term) {
    pump_out(fd);
    if (!pump_in(fd)) break;
    nap_ms(1);
  }
  wl_expect(wl_term, "the peer ended the connection before the check (%llu bytes received)", (unsigned long long)received);
  const uint64_t before_end = received;
  struct sockaddr_in me1, peer1; /* before the end: a closed connection has no peer */
  names(fd, &me1, &peer1);
  if (shutdown(fd, SHUT_WR) != 0) wl_expect(false, "shutdown(SHUT_WR): %m");
  bool eof = false;
  const double end = wl_now() + 30;
  while (!eof && wl_now() < end) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 100) < 0 && errno != EINTR) break;
    while (pump_in(fd)) {
      struct pollfd q = {.fd = fd, .events = POLLIN};
      if (poll(&q, 1, 0) != 1) break;
    }
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) eof = true;
  }
  int err = -1;
  socklen_t elen = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
  wl_expect(eof, "no EOF from the peer within 30 s of ending our side (%llu bytes received, %llu at the request)",
            (unsigned long long)received, (unsigned long long)before_end);
  wl_expect(bad_at < 0, "byte %ld of the peer's stream is not the one it sent", bad_at);
  wl_expect(err == 0, "SO_ERROR %d (%s)", err, strerror(err));
  wl_expect(memcmp(&me0, &me1, sizeof me0) == 0 && memcmp(&peer0, &peer1, sizeof peer0) == 0,
            "the connection's names changed");
  wl_note("sent %llu, received %llu (%llu after the check request)", (unsigned long long)sent,
          (unsigned long long)received, (unsigned long long)(received - before_end));
  FILE* t = fopen(wl_path("tcp_external.totals"), "w");
  if (!t || fprintf(t, "%llu %llu\n", (unsigned long long)sent, (unsigned long long)received) < 0 || fclose(t) != 0)
    wl_expect(false, "cannot write tcp_external.totals: %m");
  close(fd);
  wl_finish();
}
