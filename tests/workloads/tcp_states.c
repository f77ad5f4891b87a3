/* TCP sockets in less common states, all on loopback, all made by the root before it forks the
 * child "peer", which keeps h1 and r1 (the root keeps the rest):
 *   H  h1 connected to a setup listener on 127.0.0.1 and h0 accepted from it (the listener was
 *      closed afterwards). h0 sent "request-1" and "request-2", then shutdown(SHUT_WR); once the
 *      FIN had reached h1, h1 sent "reply-1". Nothing read: h0 is FIN_WAIT2 with "reply-1"
 *      queued, h1 CLOSE_WAIT with the 18 request bytes and the FIN queued.
 *   R  r1 and r0, made the same way: r0 sent "r0-data" and r1 sent "r1-before"; once both were
 *      acknowledged, r0 did shutdown(SHUT_RD) (which sends nothing: r1 cannot tell), then r1
 *      sent "r1-after", which the kernel still queues on r0. Nothing read: both ESTABLISHED, r0
 *      with the 17 bytes from r1 queued, r1 with "r0-data".
 *   U  U6 listens on ::1 (backlog 3, O_NONBLOCK) and was never connected to.
 *   N  nb, bound to 127.0.0.1 (port chosen by the kernel), neither listening nor connected.
 * Setup waits until every handshake, byte and FIN is acknowledged (nothing unacknowledged in any
 * send queue), then records each socket's getsockname/getpeername and requires: h0 FIN_WAIT2,
 * poll POLLIN|POLLOUT, 7 bytes readable (SIOCINQ); h1 CLOSE_WAIT, POLLIN|POLLOUT|POLLRDHUP, 18;
 * r0 ESTABLISHED, POLLIN|POLLOUT|POLLRDHUP, 17; r1 ESTABLISHED, POLLIN|POLLOUT, 7; U6 LISTEN, no
 * events, tcpi_sacked (backlog) 3, tcpi_unacked (accept queue) 0; nb CLOSE, POLLOUT|POLLHUP. All
 * with SO_ERROR 0.
 * On request, every socket is found exactly so again (state, revents, SIOCINQ, backlog and queue,
 * names), then the root reads on r0 "r1-beforer1-after" and then EOF twice (after SHUT_RD a read
 * with nothing queued gives 0 at once). Only then is the child told: it reads on h1
 * "request-1request-2", then EOF twice, and sends "reply-2"; reads on r1 "r0-data" and then
 * nothing (EAGAIN, no EOF), sends "r1-late" and receives "r0-late". The root reads
 * "reply-1reply-2" on h0 (its send fails EPIPE) and, once the child has exited, EOF; on r0, once
 * 7 bytes are queued again (SIOCINQ), "r1-late" and then EOF, and it sends "r0-late" (SHUT_RD
 * leaves sending alone). U6 accepts a new client and carries a message each way; nb can listen()
 * on its port and does the same. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define EVENTS (POLLIN | POLLPRI | POLLOUT | POLLRDHUP)

struct addr {
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    struct sockaddr_storage ss;
  } u;
  socklen_t len; /* 0: the call failed (err says why) */
  int err;
};

/* One socket's state as the program sees it. */
struct sk {
  const char* what;
  int fd;
  int state;
  short revents;
  int inq;     /* SIOCINQ; -1 for listeners */
  int backlog; /* listeners: tcpi_sacked and tcpi_unacked; -1 otherwise */
  int acceptq;
  struct addr name, peer; /* recorded at setup */
};

static struct tcp_info get_info(int fd) {
  struct tcp_info ti;
  memset(&ti, 0, sizeof ti);
  socklen_t len = sizeof ti;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) memset(&ti, 0xff, sizeof ti);
  return ti;
}

/* What a call that returned n reports: errno's text if it failed. */
static const char* outcome(ssize_t n) { return n < 0 ? strerror(errno) : "no error"; }

static int get_int(int fd, int level, int opt) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, opt, &v, &len) != 0) return -errno;
  return v;
}

static int sock_queue(int fd, unsigned long req) {
  int n = -1;
  return ioctl(fd, req, &n) == 0 ? n : -errno;
}

static short revents(int fd) {
  struct pollfd p = {.fd = fd, .events = EVENTS};
  return poll(&p, 1, 0) < 0 ? -1 : p.revents;
}

static struct addr get_name(int fd, bool peer) {
  struct addr a;
  memset(&a, 0, sizeof a);
  a.len = sizeof a.u;
  int r = peer ? getpeername(fd, &a.u.sa, &a.len) : getsockname(fd, &a.u.sa, &a.len);
  if (r != 0) {
    a.err = errno;
    a.len = 0;
  }
  return a;
}

static bool same_addr(const struct addr* a, const struct addr* b) {
  return a->len == b->len && a->err == b->err && memcmp(&a->u, &b->u, a->len) == 0;
}

static const char* fmt_addr(const struct addr* a, char* buf, size_t len) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (a->len == 0) {
    snprintf(buf, len, "(%s)", strerror(a->err));
  } else if (a->u.sa.sa_family == AF_INET) {
    inet_ntop(AF_INET, &a->u.in.sin_addr, host, sizeof host);
    snprintf(buf, len, "%s:%u", host, ntohs(a->u.in.sin_port));
  } else if (a->u.sa.sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &a->u.in6.sin6_addr, host, sizeof host);
    snprintf(buf, len, "[%s]:%u", host, ntohs(a->u.in6.sin6_port));
  } else {
    snprintf(buf, len, "family %d length %u", a->u.sa.sa_family, (unsigned)a->len);
  }
  return buf;
}

/* Whether the socket is as described; each difference is a failure. */
static bool check_sk(const struct sk* s) {
  bool ok = true;
  struct tcp_info ti = get_info(s->fd);
  ok &= wl_expect(ti.tcpi_state == s->state, "%s: TCP state %d, expected %d", s->what,
                  ti.tcpi_state, s->state);
  short ev = revents(s->fd);
  ok &= wl_expect(ev == s->revents, "%s: poll revents 0x%x, expected 0x%x", s->what,
                  (unsigned short)ev, (unsigned short)s->revents);
  if (s->inq >= 0) {
    int n = sock_queue(s->fd, SIOCINQ);
    ok &= wl_expect(n == s->inq, "%s: SIOCINQ %d, expected %d", s->what, n, s->inq);
  }
  if (s->backlog >= 0) {
    ok &= wl_expect((int)ti.tcpi_sacked == s->backlog && (int)ti.tcpi_unacked == s->acceptq,
                    "%s: backlog %u with %u waiting, expected %d with %d", s->what, ti.tcpi_sacked,
                    ti.tcpi_unacked, s->backlog, s->acceptq);
  }
  int err = get_int(s->fd, SOL_SOCKET, SO_ERROR);
  ok &= wl_expect(err == 0, "%s: SO_ERROR %d", s->what, err);
  struct addr name = get_name(s->fd, false), peer = get_name(s->fd, true);
  char a[64], b[64];
  ok &= wl_expect(same_addr(&name, &s->name), "%s: getsockname %s, was %s", s->what,
                  fmt_addr(&name, a, sizeof a), fmt_addr(&s->name, b, sizeof b));
  ok &= wl_expect(same_addr(&peer, &s->peer), "%s: getpeername %s, was %s", s->what,
                  fmt_addr(&peer, a, sizeof a), fmt_addr(&s->peer, b, sizeof b));
  return ok;
}

static struct sk describe(const char* what, int fd, int state, short ev, int inq, int backlog,
                          int acceptq) {
  struct sk s = {.what = what,
                 .fd = fd,
                 .state = state,
                 .revents = ev,
                 .inq = inq,
                 .backlog = backlog,
                 .acceptq = acceptq};
  s.name = get_name(fd, false);
  s.peer = get_name(fd, true);
  return s;
}

/* Setup only: a handshake's last ACK and a FIN's ACK are handled by the kernel without any
 * event the program could wait for, so this looks (for up to 5 s) until the socket is in
 * `state` with nothing unacknowledged in its send queue (listeners: `acceptq` waiting). */
static bool settle(int fd, int state, int acceptq) {
  for (int i = 0; i < 5000; i++) {
    struct tcp_info ti = get_info(fd);
    if (ti.tcpi_state == state &&
        (state == TCP_LISTEN ? (int)ti.tcpi_unacked == acceptq : sock_queue(fd, SIOCOUTQ) == 0)) {
      return true;
    }
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return false;
}

/* Polls (for up to 5 s) until at least `len` bytes are queued to be read; returns SIOCINQ. */
static int wait_inq(int fd, int len) {
  int n = sock_queue(fd, SIOCINQ);
  for (int i = 0; i < 5000 && n >= 0 && n < len; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    n = sock_queue(fd, SIOCINQ);
  }
  return n;
}

static bool wait_for(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  int n;
  do {
    n = poll(&p, 1, 5000);
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

static size_t recv_upto(int fd, void* buf, size_t len) {
  size_t got = 0;
  while (got < len && wait_for(fd, POLLIN)) {
    ssize_t n = recv(fd, (char*)buf + got, len - got, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  return got;
}

static void expect_text(int fd, const char* text, const char* what) {
  size_t len = strlen(text);
  char buf[64];
  size_t got = recv_upto(fd, buf, len);
  wl_expect(got == len && memcmp(buf, text, len) == 0,
            "%s: received %zu bytes \"%.*s\", expected \"%s\"", what, got, (int)got, buf, text);
}

static void expect_eof(int fd, const char* what) {
  char c;
  ssize_t n = -1;
  if (wait_for(fd, POLLIN)) n = recv(fd, &c, 1, MSG_DONTWAIT);
  wl_expect(n == 0, "%s: read gave %zd (%s), expected EOF", what, n, outcome(n));
}

static void expect_nothing(int fd, const char* what) {
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EAGAIN, "%s: read gave %zd (%s), expected EAGAIN", what, n,
            outcome(n));
}

static void send_text(int fd, const char* text, const char* what) {
  ssize_t n = send(fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT);
  wl_expect(n == (ssize_t)strlen(text), "%s: send \"%s\" gave %zd: %m", what, text, n);
}

static void expect_epipe(int fd, const char* what) {
  ssize_t n = send(fd, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EPIPE, "%s: send gave %zd (%s), expected EPIPE", what, n, outcome(n));
}

static struct addr loopback(int family) {
  struct addr a;
  memset(&a, 0, sizeof a);
  if (family == AF_INET) {
    a.u.in.sin_family = AF_INET;
    a.u.in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.len = sizeof a.u.in;
  } else {
    a.u.in6.sin6_family = AF_INET6;
    a.u.in6.sin6_addr = in6addr_loopback;
    a.len = sizeof a.u.in6;
  }
  return a;
}

static int bound(int family, int flags) {
  struct addr a = loopback(family);
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
  if (fd < 0 || bind(fd, &a.u.sa, a.len) != 0) wl_die("socket/bind: %m");
  return fd;
}

static int listener(int family, int backlog, int flags) {
  int fd = bound(family, flags);
  if (listen(fd, backlog) != 0) wl_die("listen: %m");
  return fd;
}

static int connect_to(int l) {
  struct addr a = get_name(l, false);
  int fd = socket(a.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, &a.u.sa, a.len) != 0) return -1;
  return fd;
}

static int accept_one(int l) {
  if (!wait_for(l, POLLIN)) return -1;
  int fd;
  do {
    fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

/* A new client of listener `l` is accepted and a message goes each way. */
static void check_serves(int l, const char* what) {
  int c = connect_to(l);
  if (!wl_expect(c >= 0, "%s: connect: %m", what)) return;
  int s = accept_one(l);
  if (wl_expect(s >= 0, "%s: the new client was not accepted: %m", what)) {
    struct addr cn = get_name(c, false), sp = get_name(s, true);
    wl_expect(same_addr(&cn, &sp), "%s: the accepted end's peer is not the client", what);
    send_text(c, "hello", what);
    expect_text(s, "hello", what);
    send_text(s, "welcome", what);
    expect_text(c, "welcome", what);
    close(s);
  }
  close(c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  int lc = listener(AF_INET, 4, 0);
  int h1 = connect_to(lc), h0 = accept_one(lc);
  int r1 = connect_to(lc), r0 = accept_one(lc);
  if (h1 < 0 || h0 < 0 || r1 < 0 || r0 < 0) wl_die("setup connections: %m");
  close(lc);

  /* H: h0 half-closed after its requests; h1 answered once. */
  send_text(h0, "request-1", "h0");
  send_text(h0, "request-2", "h0");
  if (shutdown(h0, SHUT_WR) != 0) wl_die("shutdown h0: %m");
  if (!wait_for(h1, POLLRDHUP)) wl_die("h1 did not see h0's FIN");
  send_text(h1, "reply-1", "h1");
  if (!settle(h0, TCP_FIN_WAIT2, 0) || !settle(h1, TCP_CLOSE_WAIT, 0)) {
    wl_die("H did not settle: h0 state %d, h1 state %d", get_info(h0).tcpi_state,
           get_info(h1).tcpi_state);
  }

  /* R: r0 stopped reading, with data queued both ways and more arriving after. */
  send_text(r0, "r0-data", "r0");
  send_text(r1, "r1-before", "r1");
  if (!settle(r0, TCP_ESTABLISHED, 0) || !settle(r1, TCP_ESTABLISHED, 0)) {
    wl_die("R did not settle before SHUT_RD");
  }
  if (shutdown(r0, SHUT_RD) != 0) wl_die("shutdown r0: %m");
  send_text(r1, "r1-after", "r1");
  if (!settle(r0, TCP_ESTABLISHED, 0) || !settle(r1, TCP_ESTABLISHED, 0)) {
    wl_die("R did not settle: r0 state %d, r1 state %d", get_info(r0).tcpi_state,
           get_info(r1).tcpi_state);
  }

  int u6 = listener(AF_INET6, 3, SOCK_NONBLOCK);
  int nb = bound(AF_INET, 0);

  struct sk root_sks[] = {
      describe("h0", h0, TCP_FIN_WAIT2, POLLIN | POLLOUT, 7, -1, -1),
      describe("r0", r0, TCP_ESTABLISHED, POLLIN | POLLOUT | POLLRDHUP, 17, -1, -1),
      describe("U6", u6, TCP_LISTEN, 0, -1, 3, 0),
      describe("nb", nb, TCP_CLOSE, POLLOUT | POLLHUP, 0, -1, -1),
  };
  struct sk child_sks[] = {
      describe("h1", h1, TCP_CLOSE_WAIT, POLLIN | POLLOUT | POLLRDHUP, 18, -1, -1),
      describe("r1", r1, TCP_ESTABLISHED, POLLIN | POLLOUT, 7, -1, -1),
  };
  const size_t n_root = sizeof root_sks / sizeof root_sks[0];
  const size_t n_child = sizeof child_sks / sizeof child_sks[0];
  bool ok = true;
  for (size_t i = 0; i < n_root; i++) ok &= check_sk(&root_sks[i]);
  for (size_t i = 0; i < n_child; i++) ok &= check_sk(&child_sks[i]);
  if (!ok) wl_die("the sockets are not in the states this workload sets up");
  struct addr nb_name = root_sks[3].name;

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("peer");
  if (child == 0) {
    close(h0), close(r0), close(u6), close(nb);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    for (size_t i = 0; i < n_child; i++) check_sk(&child_sks[i]);

    expect_text(h1, "request-1request-2", "h1");
    expect_eof(h1, "h1");
    expect_eof(h1, "h1 (again)");
    send_text(h1, "reply-2", "h1");

    expect_text(r1, "r0-data", "r1");
    expect_nothing(r1, "r1");
    send_text(r1, "r1-late", "r1");
    expect_text(r1, "r0-late", "r1");
    wl_finish();
  }
  close(h1), close(r1);
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("peer died during setup");

  wl_ready();
  wl_wait_term();

  for (size_t i = 0; i < n_root; i++) check_sk(&root_sks[i]);

  /* R, before the child sends anything more: the queue as it was, then EOF at once. */
  expect_text(r0, "r1-beforer1-after", "r0");
  expect_eof(r0, "r0");
  expect_eof(r0, "r0 (again)");

  kill(child, SIGTERM);

  expect_text(h0, "reply-1reply-2", "h0");
  expect_epipe(h0, "h0");

  /* r0 always polls readable (EOF), so wait for the bytes themselves. */
  int n = wait_inq(r0, 7);
  if (wl_expect(n == 7, "r0: SIOCINQ %d, expected the 7 bytes of \"r1-late\"", n)) {
    expect_text(r0, "r1-late", "r0");
    expect_eof(r0, "r0 after r1-late");
  }
  send_text(r0, "r0-late", "r0");

  char a[64], b[64];
  check_serves(u6, "U6");
  int a3 = accept(u6, NULL, NULL);
  wl_expect(a3 < 0 && errno == EAGAIN, "U6: accept gave %d (%s), expected EAGAIN", a3, outcome(a3));
  if (wl_expect(listen(nb, 2) == 0, "nb: listen: %m")) {
    struct addr name = get_name(nb, false);
    wl_expect(same_addr(&name, &nb_name), "nb: listening on %s, bound to %s",
              fmt_addr(&name, a, sizeof a), fmt_addr(&nb_name, b, sizeof b));
    check_serves(nb, "nb");
  }

  wl_reap(child, "peer");
  expect_eof(h0, "h0 after the peer exited");
  wl_finish();
}
