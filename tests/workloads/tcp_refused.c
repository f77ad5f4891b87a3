/* Refusal workload: TCP state crest must refuse to dump, leaving the job running intact. The root
 * holds every socket of the tree, all on 127.0.0.1:
 *   (a) Lq listens (backlog 2, O_NONBLOCK); q connected to it and sent "queued" (6 bytes) into
 *       the connection before anyone accepted it: Lq's accept queue holds that one connection.
 *   (b) b1 connected to a setup listener and b0 accepted from it (the listener was closed
 *       afterwards). b0 sent "b0-data" and shutdown(SHUT_WR); once that FIN had reached b1, b1
 *       sent "b1-data" and shutdown(SHUT_WR). Nothing read. Both FINs acknowledged, both sockets
 *       are TCP_CLOSE (the kernel moved b0's connection to a time-wait socket), each still
 *       holding the peer's data and FIN; getpeername gives ENOTCONN on both.
 *   (c) A connection to a process outside the tree. The root forks D, D forks G and exits; the
 *       root reaps D, so G is reparented out of the tree. G leaves the root's session (setsid),
 *       names itself "wl-tcp-outside", listens on a port chosen by the kernel (which it reports
 *       to the root), accepts the root's connection o (SO_REUSEADDR set), sends "hello from
 *       outside" (left unread by the root) and then echoes whatever arrives. G exits on EOF, on SIGTERM, or 60 s after
 *       it started, so it never outlives the test for long.
 * Setup waits until every handshake, byte and FIN is acknowledged (nothing unacknowledged in any
 * send queue), records each socket's getsockname/getpeername and requires: Lq LISTEN, poll
 * POLLIN, tcpi_sacked (backlog) 2, tcpi_unacked (accept queue) 1; q ESTABLISHED, POLLOUT, 0 bytes
 * readable (SIOCINQ); b0 and b1 CLOSE, POLLIN|POLLOUT|POLLHUP|POLLRDHUP, 7 each; o ESTABLISHED,
 * POLLIN|POLLOUT, 18, its peer G's listener. All with SO_ERROR 0.
 * On request, every socket is found exactly so again (state, revents, SIOCINQ, backlog and queue,
 * names), then: (a) one accept from Lq gives a connection whose peer is q, with 6 bytes queued,
 * exactly "queued" and then nothing (EAGAIN); a second accept gives EAGAIN; "reply" sent on it
 * reaches q and "more" sent on q reaches it. (b) b1 reads "b0-data", b0 reads "b1-data", each
 * then EOF twice, and a send on either fails EPIPE. (c) o still has SO_REUSEADDR (a dump reads
 * connections in repair mode, whose end clears it), "hello from outside" is there on o, and
 * "echo?" sent now comes back. Then the root closes o and makes sure G is gone: it waits for G to
 * exit on the EOF and sends it SIGTERM (by pid, only while that pid is still G: comm and own
 * session) if it has not. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
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

#define G_NAME "wl-tcp-outside"
#define G_LIFETIME 60.0
#define HELLO "hello from outside"

/* What G reports once it listens. */
struct g_rec {
  pid_t pid;
  struct addr listening;
};

/* Waits until fd is readable, SIGTERM arrived or the deadline passed. */
static bool readable_before(int fd, double deadline) {
  while (!wl_term && wl_now() < deadline) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 1000) == 1) return true;
  }
  return false;
}

static void outside_g(struct wl_sync* sync) {
  double deadline = wl_now() + G_LIFETIME;
  setsid();
  prctl(PR_SET_NAME, G_NAME, 0, 0, 0);
  struct addr a = loopback(AF_INET);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  if (l < 0 || bind(l, &a.u.sa, a.len) != 0 || listen(l, 1) != 0) _exit(1);
  struct g_rec rec = {.pid = getpid(), .listening = get_name(l, false)};
  wl_sync_post(sync, &rec, sizeof rec);
  int c = readable_before(l, deadline) ? accept(l, NULL, NULL) : -1;
  close(l);
  if (c < 0 || !wl_write_full(c, HELLO, strlen(HELLO))) _exit(1);
  char buf[256];
  while (readable_before(c, deadline)) {
    ssize_t n = recv(c, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0 || send(c, buf, (size_t)n, MSG_NOSIGNAL) != n) break;
  }
  _exit(0);
}

/* Whether pid is still our G: its comm, and its own session. */
static bool is_g(pid_t g) {
  char path[64], comm[32] = {0};
  snprintf(path, sizeof path, "/proc/%d/comm", (int)g);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, comm, sizeof comm - 1);
  close(fd);
  comm[n > 0 ? n : 0] = 0;
  comm[strcspn(comm, "\n")] = 0;
  return strcmp(comm, G_NAME) == 0 && getsid(g) == g;
}

/* Alive and not a zombie (G is not ours to reap: its new parent does). */
static bool running(pid_t g) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)g);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  char* rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

static bool wait_gone(pid_t g, double seconds) {
  double t0 = wl_now();
  while (running(g)) {
    if (wl_now() - t0 > seconds) return false;
    usleep(2000);
  }
  return true;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  /* (c) G, outside the tree, before anything else exists that it could inherit. */
  struct wl_sync gsync;
  wl_sync_init(&gsync);
  pid_t d = wl_fork("D");
  if (d == 0) {
    if (wl_fork("outside") == 0) outside_g(&gsync);
    _exit(0);
  }
  wl_reap(d, "D");
  struct g_rec g;
  if (!wl_sync_wait(&gsync, 1, &g, sizeof g)) wl_die("G died before listening");
  siginfo_t si;
  if (waitid(P_PID, (id_t)g.pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0) wl_die("G is our child");
  int o = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  if (o < 0 || setsockopt(o, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      connect(o, &g.listening.u.sa, g.listening.len) != 0) {
    wl_die("connect to G: %m");
  }
  if (!wait_for(o, POLLIN) || !settle(o, TCP_ESTABLISHED, 0) ||
      sock_queue(o, SIOCINQ) != (int)strlen(HELLO)) {
    wl_die("G's hello did not arrive");
  }

  /* (a) One connection in Lq's accept queue, with data. */
  int lq = listener(AF_INET, 2, SOCK_NONBLOCK);
  int q = connect_to(lq);
  if (q < 0) wl_die("connect q: %m");
  send_text(q, "queued", "q");
  if (!settle(lq, TCP_LISTEN, 1) || !settle(q, TCP_ESTABLISHED, 0)) {
    wl_die("(a) did not settle: %u waiting", get_info(lq).tcpi_unacked);
  }

  /* (b) Both directions closed, one after the other. */
  int lc = listener(AF_INET, 1, 0);
  int b1 = connect_to(lc), b0 = accept_one(lc);
  if (b1 < 0 || b0 < 0) wl_die("setup connection: %m");
  close(lc);
  send_text(b0, "b0-data", "b0");
  if (shutdown(b0, SHUT_WR) != 0) wl_die("shutdown b0: %m");
  if (!wait_for(b1, POLLRDHUP)) wl_die("b1 did not see b0's FIN");
  send_text(b1, "b1-data", "b1");
  if (shutdown(b1, SHUT_WR) != 0) wl_die("shutdown b1: %m");
  if (!settle(b0, TCP_CLOSE, 0) || !settle(b1, TCP_CLOSE, 0)) {
    wl_die("(b) did not settle: b0 state %d, b1 state %d", get_info(b0).tcpi_state,
           get_info(b1).tcpi_state);
  }

  struct sk sks[] = {
      describe("Lq", lq, TCP_LISTEN, POLLIN, -1, 2, 1),
      describe("q", q, TCP_ESTABLISHED, POLLOUT, 0, -1, -1),
      describe("b0", b0, TCP_CLOSE, POLLIN | POLLOUT | POLLHUP | POLLRDHUP, 7, -1, -1),
      describe("b1", b1, TCP_CLOSE, POLLIN | POLLOUT | POLLHUP | POLLRDHUP, 7, -1, -1),
      describe("o", o, TCP_ESTABLISHED, POLLIN | POLLOUT, (int)strlen(HELLO), -1, -1),
  };
  const size_t n_sks = sizeof sks / sizeof sks[0];
  bool ok = true;
  for (size_t i = 0; i < n_sks; i++) ok &= check_sk(&sks[i]);
  char a[64], b[64];
  if (!same_addr(&sks[4].peer, &g.listening)) {
    wl_die("o: connected to %s, G listens on %s", fmt_addr(&sks[4].peer, a, sizeof a),
           fmt_addr(&g.listening, b, sizeof b));
  }
  if (!ok) wl_die("the sockets are not in the states this workload sets up");

  wl_ready();
  wl_wait_term();

  for (size_t i = 0; i < n_sks; i++) check_sk(&sks[i]);

  /* (a) */
  int s = accept4(lq, NULL, NULL, SOCK_CLOEXEC);
  if (wl_expect(s >= 0, "Lq: accepting the waiting connection: %m")) {
    struct addr p = get_name(s, true);
    wl_expect(same_addr(&p, &sks[1].name), "Lq: accepted peer %s, expected q %s",
              fmt_addr(&p, a, sizeof a), fmt_addr(&sks[1].name, b, sizeof b));
    int n = sock_queue(s, SIOCINQ);
    wl_expect(n == 6, "accepted: SIOCINQ %d, expected 6", n);
    expect_text(s, "queued", "accepted");
    expect_nothing(s, "accepted");
  }
  int s2 = accept(lq, NULL, NULL);
  wl_expect(s2 < 0 && errno == EAGAIN, "Lq: a second accept gave %d (%s), expected EAGAIN", s2,
            outcome(s2));
  if (s >= 0) {
    send_text(s, "reply", "accepted");
    expect_text(q, "reply", "q");
    send_text(q, "more", "q");
    expect_text(s, "more", "accepted");
    close(s);
  }

  /* (b) */
  expect_text(b1, "b0-data", "b1");
  expect_eof(b1, "b1");
  expect_eof(b1, "b1 (again)");
  expect_epipe(b1, "b1");
  expect_text(b0, "b1-data", "b0");
  expect_eof(b0, "b0");
  expect_eof(b0, "b0 (again)");
  expect_epipe(b0, "b0");

  /* (c) */
  /* crest reads a connection in repair mode, whose end clears SO_REUSEADDR: it must set it back. */
  int reuse = 0;
  socklen_t rlen = sizeof reuse;
  wl_expect(getsockopt(o, SOL_SOCKET, SO_REUSEADDR, &reuse, &rlen) == 0 && reuse == 1,
            "o: SO_REUSEADDR is %d after the refused dump, was 1", reuse);
  expect_text(o, HELLO, "o");
  send_text(o, "echo?", "o");
  expect_text(o, "echo?", "o (G's echo)");
  close(o);
  if (!wait_gone(g.pid, 2) && is_g(g.pid)) {
    wl_expect(kill(g.pid, SIGTERM) == 0, "kill(G %d): %m", (int)g.pid);
    wl_expect(wait_gone(g.pid, 2), "G (%d) did not exit", (int)g.pid);
  }
  wl_finish();
}
