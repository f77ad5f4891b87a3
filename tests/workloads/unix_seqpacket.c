/* AF_UNIX SOCK_SEQPACKET: queued records on an accepted connection and on a socketpair.
 *   L  (root) listener bound to DIR/sp, listen(4), O_NONBLOCK.
 *   c  (child "client", unbound) connected to DIR/sp; s (root) is its accepted end.
 *        c -> s: "rec-one" (7 bytes, MSG_EOR), 300 bytes of pattern; unread.
 *        s -> c: 5000 bytes of pattern (MSG_EOR), "tail"; unread.
 *   q0 (root) <-> q1 (child): socketpair(SOCK_SEQPACKET).
 *        q0 -> q1: "x", 2000 bytes of pattern; q1 -> q0: "abc", 64 bytes of pattern; unread.
 * On request, each side first checks what it holds: FIONREAD gives the total bytes of the queued
 * records (s 307, c 5004, q1 2001, q0 67); then one recvmsg per record, with buffers chosen so
 * that some records are cut: a record that fits comes whole with msg_flags 0 (the kernel never
 * reports MSG_EOR for AF_UNIX), a larger one gives the buffer's worth of its first bytes with
 * MSG_TRUNC and the rest of it is gone (the next read starts at the next record); with MSG_TRUNC
 * passed to recv the full record length (2000) is returned. After the records: EAGAIN.
 * Root also checks L (SO_ACCEPTCONN 1, SO_TYPE SOCK_SEQPACKET, name DIR/sp, nothing to accept),
 * s's name DIR/sp and unnamed peer, and that a new client connecting to DIR/sp after the request
 * is accepted and exchanges records both ways. The child checks c's peer name DIR/sp, then both
 * connections carry a ping record from the child and a pong record back. */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

struct rec {
  const char* text; /* NULL: len bytes of pattern `seed` */
  size_t len;
  uint64_t seed;
};

static const struct rec S_IN[2] = {{"rec-one", 7, 0}, {NULL, 300, 11}};
static const struct rec C_IN[2] = {{NULL, 5000, 12}, {"tail", 4, 0}};
static const struct rec Q1_IN[2] = {{"x", 1, 0}, {NULL, 2000, 13}};
static const struct rec Q0_IN[2] = {{"abc", 3, 0}, {NULL, 64, 14}};

static struct sockaddr_un g_addr;
static socklen_t g_addrlen;

static void fill_rec(const struct rec* r, char* buf) {
  if (r->text) {
    memcpy(buf, r->text, r->len);
  } else {
    wl_fill(buf, r->len, r->seed);
  }
}

static void send_rec(int fd, const struct rec* r, int flags) {
  char* buf = malloc(r->len);
  fill_rec(r, buf);
  if (send(fd, buf, r->len, flags | MSG_NOSIGNAL) != (ssize_t)r->len) wl_die("send record: %m");
  free(buf);
}

static bool wait_readable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&p, 1, 5000);
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

/* The next record, read into a buffer of cap bytes: min(len, cap) of its bytes, MSG_TRUNC iff it
 * did not fit; with MSG_TRUNC in rflags the return value is its full length. */
static void expect_rec(int fd, const struct rec* r, size_t cap, int rflags, const char* what) {
  char* want = malloc(r->len);
  char* buf = malloc(cap);
  fill_rec(r, want);
  wait_readable(fd);
  struct iovec iov = {.iov_base = buf, .iov_len = cap};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  ssize_t n = recvmsg(fd, &m, rflags | MSG_DONTWAIT);
  size_t copied = r->len < cap ? r->len : cap;
  ssize_t want_n = (rflags & MSG_TRUNC) ? (ssize_t)r->len : (ssize_t)copied;
  int want_flags = r->len > cap ? MSG_TRUNC : 0;
  if (wl_expect(n == want_n && m.msg_flags == want_flags,
                "%s: record of %zu with a %zu-byte buffer: got %zd (%m) flags 0x%x, expected %zd "
                "flags 0x%x",
                what, r->len, cap, n, m.msg_flags, want_n, want_flags)) {
    wl_expect(memcmp(buf, want, copied) == 0, "%s: record of %zu bytes differs", what, r->len);
  }
  free(want);
  free(buf);
}

static void expect_queue(int fd, const struct rec in[2], size_t cap0, size_t cap1, int rflags1,
                         const char* what) {
  int pending = -1;
  int total = (int)(in[0].len + in[1].len);
  wl_expect(ioctl(fd, FIONREAD, &pending) == 0 && pending == total, "%s: FIONREAD %d, expected %d",
            what, pending, total);
  expect_rec(fd, &in[0], cap0, 0, what);
  expect_rec(fd, &in[1], cap1, rflags1, what);
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EAGAIN, "%s: %zd (%m) after the queued records", what, n);
}

static void expect_addr(int fd, bool peer, bool named, const char* what) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  socklen_t len = sizeof sa - 1;
  int r = peer ? getpeername(fd, (struct sockaddr*)&sa, &len)
               : getsockname(fd, (struct sockaddr*)&sa, &len);
  bool ok = named ? len == g_addrlen && memcmp(&sa, &g_addr, len) == 0
                  : len == sizeof(sa_family_t) && sa.sun_family == AF_UNIX;
  wl_expect(r == 0 && ok, "%s: %s length %u \"%s\", expected %s", what,
            peer ? "getpeername" : "getsockname", (unsigned)len, sa.sun_path,
            named ? g_addr.sun_path : "unnamed");
}

static int get_int(int fd, int opt) {
  int v = -1;
  socklen_t len = sizeof v;
  return getsockopt(fd, SOL_SOCKET, opt, &v, &len) == 0 ? v : -errno;
}

static void ping_pong(int fd, const char* ping, const char* pong, bool first, const char* what) {
  const struct rec pi = {ping, strlen(ping), 0}, po = {pong, strlen(pong), 0};
  if (first) {
    send_rec(fd, &pi, MSG_EOR);
    expect_rec(fd, &po, 64, 0, what);
  } else {
    expect_rec(fd, &pi, 64, 0, what);
    send_rec(fd, &po, 0);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  memset(&g_addr, 0, sizeof g_addr);
  g_addr.sun_family = AF_UNIX;
  snprintf(g_addr.sun_path, sizeof g_addr.sun_path, "%s", wl_path("sp"));
  g_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(g_addr.sun_path) + 1);

  int l = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
  if (l < 0 || bind(l, (struct sockaddr*)&g_addr, g_addrlen) != 0 || listen(l, 4) != 0) {
    wl_die("listener: %m");
  }
  int q[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) != 0) wl_die("socketpair: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("client");
  if (child == 0) {
    close(l);
    close(q[0]);
    int c = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (c < 0 || connect(c, (struct sockaddr*)&g_addr, g_addrlen) != 0) wl_die("connect: %m");
    send_rec(c, &S_IN[0], MSG_EOR);
    send_rec(c, &S_IN[1], 0);
    send_rec(q[1], &Q0_IN[0], 0);
    send_rec(q[1], &Q0_IN[1], MSG_EOR);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();

    expect_addr(c, true, true, "c");
    expect_addr(c, false, false, "c");
    expect_queue(c, C_IN, 1000, 64, 0, "c");
    expect_queue(q[1], Q1_IN, 64, 10, MSG_TRUNC, "q1");
    ping_pong(c, "c-ping", "s-pong", true, "c");
    ping_pong(q[1], "q1-ping", "q0-pong", true, "q1");
    wl_finish();
  }
  close(q[1]);
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("client died during setup");
  int s = accept(l, NULL, NULL);
  if (s < 0) wl_die("accept: %m");
  send_rec(s, &C_IN[0], MSG_EOR);
  send_rec(s, &C_IN[1], 0);
  send_rec(q[0], &Q1_IN[0], 0);
  send_rec(q[0], &Q1_IN[1], 0);

  wl_ready();
  wl_wait_term();

  wl_expect(get_int(l, SO_ACCEPTCONN) == 1, "L: SO_ACCEPTCONN %d", get_int(l, SO_ACCEPTCONN));
  wl_expect(get_int(l, SO_TYPE) == SOCK_SEQPACKET, "L: SO_TYPE %d", get_int(l, SO_TYPE));
  wl_expect(get_int(s, SO_TYPE) == SOCK_SEQPACKET, "s: SO_TYPE %d", get_int(s, SO_TYPE));
  wl_expect(get_int(s, SO_ACCEPTCONN) == 0, "s: SO_ACCEPTCONN %d", get_int(s, SO_ACCEPTCONN));
  expect_addr(l, false, true, "L");
  expect_addr(s, false, true, "s");
  expect_addr(s, true, false, "s");
  int extra = accept(l, NULL, NULL);
  wl_expect(extra < 0 && errno == EAGAIN, "L: accept gave %d (%m), expected EAGAIN", extra);
  expect_queue(s, S_IN, 64, 100, 0, "s");
  expect_queue(q[0], Q0_IN, 64, 64, 0, "q0");

  /* A connection made now. */
  int n = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  if (wl_expect(n >= 0 && connect(n, (struct sockaddr*)&g_addr, g_addrlen) == 0,
                "new client: connect: %m")) {
    wait_readable(l);
    int ns = accept(l, NULL, NULL);
    if (wl_expect(ns >= 0, "accepting the new client: %m")) {
      const struct rec r1 = {"new-1", 5, 0}, r2 = {NULL, 700, 21};
      send_rec(n, &r1, 0);
      send_rec(n, &r2, MSG_EOR);
      expect_rec(ns, &r1, 64, 0, "new connection");
      expect_rec(ns, &r2, 100, 0, "new connection");
      const struct rec back = {"back", 4, 0};
      send_rec(ns, &back, 0);
      expect_rec(n, &back, 64, 0, "new connection, client end");
      close(ns);
    }
    close(n);
  }

  kill(child, SIGTERM);
  ping_pong(s, "c-ping", "s-pong", false, "s");
  ping_pong(q[0], "q1-ping", "q0-pong", false, "q0");
  wl_reap(child, "client");
  wl_finish();
}
