/* Refusal workload: connections waiting in TCP listeners' queues that crest must refuse to dump,
 * leaving the job running intact. The root holds every socket of the tree, all on 127.0.0.1:
 *   (a) La listens (backlog 5); q connected to it and sent "queued" (6 bytes) into the
 *       connection before anyone accepted it: only accept() could read them.
 *   (b) Lo listens (backlog 5); a process outside the tree connected to it, and its connection
 *       waits there. The root forks D, D forks G and exits; the root reaps D, so G is reparented
 *       out of the tree. G leaves the root's session (setsid), names itself "wl-tcp-waiting",
 *       closes what it inherited, connects to Lo, reports its end's name to the root, echoes
 *       whatever arrives, and exits on EOF, on SIGTERM, or 60 s after it started.
 *   (c) Lf listens with backlog 0 and c1's connection waits in it: its queue is full, so the
 *       SYNs of c2 (a non-blocking connect) are dropped and c2 stays SYN_SENT.
 *   (d) Ld listens (backlog 5); d1, with TCP_FASTOPEN_CONNECT set (no cookie known: a plain
 *       handshake), connected to it and waits there.
 *   (e) Le listens (backlog 5); e1, with TCP_MAXSEG 1000 set before it connected (its MSS below
 *       the route's), waits there.
 * Setup requires La and Lo with 1 waiting, Lf with 1 waiting, q and c1 ESTABLISHED with nothing
 * unacknowledged, c2 SYN_SENT.
 * On request (after the refused dump): (a) accept from La gives q, with exactly "queued" to read,
 * and "reply" reaches q; (b) accept from Lo gives G's end, "echo?" sent comes back, then G is made
 * to exit (EOF; SIGTERM by pid only while that pid is still G); (c) accept from Lf gives c1, then
 * c2's connection completes (its SYN retransmitted, within 10 s) and is accepted; (d) accept
 * from Ld gives d1, and data goes both ways; (e) e1's TCP_MAXSEG reads as at setup, accept
 * from Le gives e1, and data goes both ways. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define G_NAME "wl-tcp-waiting"

struct addr {
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
  } u;
  socklen_t len;
};

static struct tcp_info get_info(int fd) {
  struct tcp_info ti;
  memset(&ti, 0, sizeof ti);
  socklen_t len = sizeof ti;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) memset(&ti, 0xff, sizeof ti);
  return ti;
}

static struct addr get_name(int fd, bool peer) {
  struct addr a;
  memset(&a, 0, sizeof a);
  a.len = sizeof a.u;
  int r = peer ? getpeername(fd, &a.u.sa, &a.len) : getsockname(fd, &a.u.sa, &a.len);
  if (r != 0) a.len = 0;
  return a;
}

static bool same_addr(const struct addr* a, const struct addr* b) {
  return a->len == b->len && a->len > 0 && memcmp(&a->u, &b->u, a->len) == 0;
}

static bool wait_for(int fd, short events, int ms) {
  struct pollfd p = {.fd = fd, .events = events};
  int n;
  do {
    n = poll(&p, 1, ms);
  } while (n < 0 && errno == EINTR);
  return n == 1 && (p.revents & events);
}

/* Setup only: until fd is in `state` (listeners: with `n` waiting; others: nothing
 * unacknowledged), for up to 5 s. */
static bool settle(int fd, int state, unsigned n) {
  for (int i = 0; i < 5000; i++) {
    struct tcp_info ti = get_info(fd);
    int outq = -1;
    if (ti.tcpi_state == state &&
        (state == TCP_LISTEN ? ti.tcpi_unacked == n
                             : state != TCP_ESTABLISHED || (ioctl(fd, SIOCOUTQ, &outq) == 0 && outq == 0)))
      return true;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return false;
}

static void send_text(int fd, const char* text, const char* what) {
  ssize_t n = send(fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT);
  wl_expect(n == (ssize_t)strlen(text), "%s: send \"%s\" gave %zd: %m", what, text, n);
}

static void expect_text(int fd, const char* text, const char* what) {
  size_t len = strlen(text), got = 0;
  char buf[64];
  while (got < len && wait_for(fd, POLLIN, 5000)) {
    ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  wl_expect(got == len && memcmp(buf, text, len) == 0, "%s: received %zu bytes \"%.*s\", expected \"%s\"",
            what, got, (int)got, buf, text);
}

static int listener(int backlog) {
  struct addr a;
  memset(&a, 0, sizeof a);
  a.u.in.sin_family = AF_INET;
  a.u.in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0 || bind(fd, &a.u.sa, sizeof a.u.in) != 0 || listen(fd, backlog) != 0) wl_die("listener: %m");
  return fd;
}

static int connect_to(int l, int flags) {
  struct addr a = get_name(l, false);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
  if (fd < 0) return -1;
  if (connect(fd, &a.u.sa, a.len) != 0 && errno != EINPROGRESS) return -1;
  return fd;
}

static int accept_one(int l, int ms) {
  if (!wait_for(l, POLLIN, ms)) return -1;
  int fd;
  do {
    fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

static void outside_g(struct wl_sync* sync, int lo) {
  double deadline = wl_now() + 60.0;
  setsid();
  prctl(PR_SET_NAME, G_NAME, 0, 0, 0);
  struct addr to = get_name(lo, false);
  for (int fd = 3; fd < 1024; fd++)
    if (fd != sync->wr) close(fd);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (c < 0 || connect(c, &to.u.sa, to.len) != 0) _exit(1);
  struct addr me = get_name(c, false);
  wl_sync_post(sync, &me, sizeof me);
  char buf[256];
  while (!wl_term && wl_now() < deadline) {
    if (!wait_for(c, POLLIN, 1000)) continue;
    ssize_t n = recv(c, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0 || send(c, buf, (size_t)n, MSG_NOSIGNAL) != n) break;
  }
  _exit(0);
}

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

int main(int argc, char** argv) {
  wl_init(argc, argv);

  /* (b) first, so that G inherits nothing else; G reports its pid, then its end's name. */
  int lo = listener(5);
  struct wl_sync gsync;
  wl_sync_init(&gsync);
  pid_t d = wl_fork("D");
  if (d == 0) {
    pid_t g = wl_fork("outside");
    if (g == 0) outside_g(&gsync, lo);
    _exit(wl_write_full(gsync.wr, &g, sizeof g) ? 0 : 1);
  }
  pid_t g = -1;
  if (!wl_read_full(gsync.rd, &g, sizeof g)) wl_die("D did not report G");
  wl_reap(d, "D");
  struct addr gname;
  if (!wl_sync_wait(&gsync, 1, &gname, sizeof gname)) wl_die("G died before connecting");
  if (!settle(lo, TCP_LISTEN, 1)) wl_die("(b) G's connection is not waiting in Lo");

  /* (a) */
  int la = listener(5);
  int q = connect_to(la, 0);
  if (q < 0) wl_die("connect q: %m");
  send_text(q, "queued", "q");
  if (!settle(la, TCP_LISTEN, 1) || !settle(q, TCP_ESTABLISHED, 0)) wl_die("(a) did not settle");

  /* (c) */
  int lf = listener(0);
  int c1 = connect_to(lf, 0);
  if (c1 < 0 || !settle(lf, TCP_LISTEN, 1) || !settle(c1, TCP_ESTABLISHED, 0)) wl_die("(c) c1: %m");
  int c2 = connect_to(lf, SOCK_NONBLOCK);
  if (c2 < 0) wl_die("(c) c2: %m");
  usleep(100000);
  if (get_info(c2).tcpi_state != TCP_SYN_SENT) wl_die("(c) c2 is in state %u, not SYN_SENT", get_info(c2).tcpi_state);
  /* (d) */
  int ld = listener(5);
  struct addr ldname = get_name(ld, false);
  int d1 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  if (d1 < 0 || setsockopt(d1, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &one, sizeof one) != 0 ||
      connect(d1, &ldname.u.sa, ldname.len) != 0 || !settle(ld, TCP_LISTEN, 1) || !settle(d1, TCP_ESTABLISHED, 0))
    wl_die("(d) d1: %m");
  /* (e) */
  int le = listener(5);
  struct addr lename = get_name(le, false);
  int e1 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), mss = 1000;
  if (e1 < 0 || setsockopt(e1, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof mss) != 0 ||
      connect(e1, &lename.u.sa, lename.len) != 0 || !settle(le, TCP_LISTEN, 1) || !settle(e1, TCP_ESTABLISHED, 0))
    wl_die("(e) e1: %m");
  int e1_mss = -1;
  socklen_t mlen = sizeof e1_mss;
  if (getsockopt(e1, IPPROTO_TCP, TCP_MAXSEG, &e1_mss, &mlen) != 0 || e1_mss > 1000) wl_die("(e) e1's MSS is %d", e1_mss);
  struct addr qname = get_name(q, false), c1name = get_name(c1, false), c2name = get_name(c2, false),
              d1name = get_name(d1, false), e1name = get_name(e1, false);

  wl_ready();
  wl_wait_term();

  /* (a) */
  int s = accept_one(la, 5000);
  if (wl_expect(s >= 0, "La: accept: %m")) {
    struct addr p = get_name(s, true);
    wl_expect(same_addr(&p, &qname), "La: accepted another peer than q");
    expect_text(s, "queued", "La's connection");
    send_text(s, "reply", "La's connection");
    expect_text(q, "reply", "q");
    close(s);
  }
  /* (b) */
  s = accept_one(lo, 5000);
  if (wl_expect(s >= 0, "Lo: accept: %m")) {
    struct addr p = get_name(s, true);
    wl_expect(same_addr(&p, &gname), "Lo: accepted another peer than G's end");
    send_text(s, "echo?", "Lo's connection");
    expect_text(s, "echo?", "Lo's connection (G's echo)");
    close(s);
  }
  for (int i = 0; i < 2000 && is_g(g); i++) usleep(1000);
  if (is_g(g)) wl_expect(kill(g, SIGTERM) == 0, "kill(G %d): %m", (int)g);
  /* (c) */
  s = accept_one(lf, 5000);
  if (wl_expect(s >= 0, "Lf: accept c1: %m")) {
    struct addr p = get_name(s, true);
    wl_expect(same_addr(&p, &c1name), "Lf: the first accept is not c1");
    close(s);
  }
  wl_expect(wait_for(c2, POLLOUT, 10000), "c2: not connected 10 s after Lf's queue had room");
  s = accept_one(lf, 5000);
  if (wl_expect(s >= 0, "Lf: accept c2: %m")) {
    struct addr p = get_name(s, true);
    wl_expect(same_addr(&p, &c2name), "Lf: the second accept is not c2");
    close(s);
  }
  /* (d) */
  s = accept_one(ld, 5000);
  if (wl_expect(s >= 0, "Ld: accept: %m")) {
    struct addr p = get_name(s, true);
    wl_expect(same_addr(&p, &d1name), "Ld: accepted another peer than d1");
    send_text(s, "to-d1", "Ld's connection");
    expect_text(d1, "to-d1", "d1");
    send_text(d1, "from-d1", "d1");
    expect_text(s, "from-d1", "Ld's connection");
    close(s);
  }
  /* (e) */
  int now_mss = -1;
  mlen = sizeof now_mss;
  getsockopt(e1, IPPROTO_TCP, TCP_MAXSEG, &now_mss, &mlen);
  wl_expect(now_mss == e1_mss, "e1: TCP_MAXSEG %d, was %d", now_mss, e1_mss);
  s = accept_one(le, 5000);
  if (wl_expect(s >= 0, "Le: accept: %m")) {
    struct addr p = get_name(s, true);
    wl_expect(same_addr(&p, &e1name), "Le: accepted another peer than e1");
    send_text(s, "to-e1", "Le's connection");
    expect_text(e1, "to-e1", "e1");
    send_text(e1, "from-e1", "e1");
    expect_text(s, "from-e1", "Le's connection");
    close(s);
  }
  wl_finish();
}
