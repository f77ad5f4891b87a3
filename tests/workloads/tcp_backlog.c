/* TCP listeners with connections waiting in their queue (not accepted), IPv4 and IPv6, all on
 * loopback:
 *   L4 listens on 127.0.0.1 (backlog 5, O_NONBLOCK, TCP_NODELAY and SO_KEEPALIVE, which its
 *   connections inherit, SO_REUSEADDR, TCP_FASTOPEN queue length 7), L6 on ::1 (backlog 5,
 *   IPV6_V6ONLY, TCP_DEFER_ACCEPT set once its clients are queued), Lm on ::ffff:127.0.0.1
 *   (backlog 5, SO_REUSEPORT, dual-stack: its connections from IPv4 clients show mapped names).
 *   Three clients of the root connect to each (to Lm an IPv4, an IPv6 and an IPv4 one), one after
 *   the other (each in the queue before the next connects). Lc listens on 127.0.0.1 (backlog 5);
 *   its two clients are held by a child process C, which connects them one after the other.
 *   Nothing is accepted.
 * Setup requires L4, L6, Lm LISTEN with backlog 5 and 3 waiting (tcpi_sacked, tcpi_unacked),
 * every client ESTABLISHED with nothing queued either way, and records every name.
 * On request, everything is found so again (states, backlog and queue, names, SO_ERROR 0, the
 * listeners' SO_REUSEADDR, SO_REUSEPORT, TCP_FASTOPEN and L6's TCP_DEFER_ACCEPT as set), then
 * for each of L4, L6, Lm: its third client sends "early" (into the connection still waiting);
 * three accepts give the clients in the order they connected (the accepted end's peer is the
 * client's name and its name the client's peer), L4's with TCP_NODELAY and SO_KEEPALIVE
 * inherited; the third one reads "early"; each pair exchanges data both ways; a fourth accept
 * gives EAGAIN; a new client connects (to L6 it sends its first bytes before the accept, as
 * TCP_DEFER_ACCEPT wants), is accepted with its own name as peer, and exchanges data both ways.
 * Lc: backlog 5 with 2 waiting, two accepts give C's clients in order, and data goes both ways
 * (C checks its side: names unchanged, the root's bytes, then its answer). */
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
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define CLIENTS 3
#define BACKLOG 5
#define FASTOPEN_QLEN 7

struct addr {
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
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

/* The same end, an IPv4 one and its IPv4-mapped IPv6 form alike (a dual-stack listener's
 * connections from IPv4 clients show mapped names). */
static bool same_end(const struct addr* a, const struct addr* b) {
  if (a->len == 0 || b->len == 0) return false;
  if (a->u.sa.sa_family == b->u.sa.sa_family) return same_addr(a, b);
  const struct addr* v4 = a->u.sa.sa_family == AF_INET ? a : b;
  const struct addr* v6 = a->u.sa.sa_family == AF_INET ? b : a;
  return v6->u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&v6->u.in6.sin6_addr) &&
         memcmp(&v6->u.in6.sin6_addr.s6_addr[12], &v4->u.in.sin_addr, 4) == 0 &&
         v6->u.in6.sin6_port == v4->u.in.sin_port;
}

static const char* fmt(const struct addr* a, char* buf, size_t len) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (a->len == 0) {
    snprintf(buf, len, "(none)");
  } else if (a->u.sa.sa_family == AF_INET) {
    inet_ntop(AF_INET, &a->u.in.sin_addr, host, sizeof host);
    snprintf(buf, len, "%s:%u", host, ntohs(a->u.in.sin_port));
  } else {
    inet_ntop(AF_INET6, &a->u.in6.sin6_addr, host, sizeof host);
    snprintf(buf, len, "[%s]:%u", host, ntohs(a->u.in6.sin6_port));
  }
  return buf;
}

static bool wait_for(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  int n;
  do {
    n = poll(&p, 1, 5000);
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

/* Setup only: until `n` connections wait in listener l's queue (the handshake's last ACK has
 * reached it), for up to 5 s. */
static bool queued(int l, unsigned n) {
  for (int i = 0; i < 5000; i++) {
    if (get_info(l).tcpi_unacked == n) return true;
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
  while (got < len && wait_for(fd, POLLIN)) {
    ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  wl_expect(got == len && memcmp(buf, text, len) == 0, "%s: received %zu bytes \"%.*s\", expected \"%s\"",
            what, got, (int)got, buf, text);
}

struct side {
  const char* name; /* "IPv4" / "IPv6" / "mapped" */
  int family;
  bool mapped; /* an IPv6 listener on ::ffff:127.0.0.1; its clients IPv4 and IPv6 by turns */
  int l;
  int c[CLIENTS];
  struct addr lname, cname[CLIENTS], cpeer[CLIENTS];
  int defer; /* TCP_DEFER_ACCEPT as read back after setting it, 0 if not set */
};

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

/* Listener l's name as a client of `family` reaches it (IPv4 for a mapped listener). */
static struct addr to_listener(const struct addr* l, int family) {
  struct addr a = *l;
  if (family == AF_INET && l->u.sa.sa_family == AF_INET6) {
    memset(&a, 0, sizeof a);
    a.u.in.sin_family = AF_INET;
    a.u.in.sin_port = l->u.in6.sin6_port;
    memcpy(&a.u.in.sin_addr, &l->u.in6.sin6_addr.s6_addr[12], 4);
    a.len = sizeof a.u.in;
  }
  return a;
}

static int connect_to(const struct addr* a) {
  int fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, &a->u.sa, a->len) != 0) return -1;
  return fd;
}

static void set_up(struct side* s) {
  struct addr a = loopback(s->family);
  int one = 1;
  s->l = socket(s->family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s->l < 0) wl_die("%s: socket: %m", s->name);
  int zero = 0;
  if (s->family == AF_INET6 && setsockopt(s->l, IPPROTO_IPV6, IPV6_V6ONLY, s->mapped ? &zero : &one, sizeof one) != 0)
    wl_die("IPV6_V6ONLY: %m");
  if (s->mapped) inet_pton(AF_INET6, "::ffff:127.0.0.1", &a.u.in6.sin6_addr);
  int qlen = FASTOPEN_QLEN;
  if (s->family == AF_INET && (setsockopt(s->l, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
                               setsockopt(s->l, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0 ||
                               setsockopt(s->l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
                               setsockopt(s->l, IPPROTO_TCP, TCP_FASTOPEN, &qlen, sizeof qlen) != 0))
    wl_die("TCP_NODELAY/SO_KEEPALIVE/SO_REUSEADDR/TCP_FASTOPEN: %m");
  if (s->mapped && setsockopt(s->l, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) wl_die("SO_REUSEPORT: %m");
  if (bind(s->l, &a.u.sa, a.len) != 0 || listen(s->l, BACKLOG) != 0) wl_die("%s: bind/listen: %m", s->name);
  s->lname = get_name(s->l, false);
  for (int i = 0; i < CLIENTS; i++) {
    struct addr to = to_listener(&s->lname, s->mapped && i % 2 == 0 ? AF_INET : s->family);
    s->c[i] = connect_to(&to);
    if (s->c[i] < 0) wl_die("%s: connect client %d: %m", s->name, i);
    if (!queued(s->l, (unsigned)i + 1)) wl_die("%s: client %d is not in the queue", s->name, i);
    s->cname[i] = get_name(s->c[i], false);
    s->cpeer[i] = get_name(s->c[i], true);
  }
  if (s->family == AF_INET6 && !s->mapped) {
    int secs = 5;
    if (setsockopt(s->l, IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof secs) != 0) wl_die("TCP_DEFER_ACCEPT: %m");
    s->defer = get_int(s->l, IPPROTO_TCP, TCP_DEFER_ACCEPT);
    if (s->defer <= 0) wl_die("TCP_DEFER_ACCEPT reads %d", s->defer);
  }
}

/* Whether everything is as set up; each difference is a failure. */
static bool check(const struct side* s) {
  bool ok = true;
  char a[80], b[80];
  struct tcp_info ti = get_info(s->l);
  ok &= wl_expect(ti.tcpi_state == TCP_LISTEN && ti.tcpi_sacked == BACKLOG && ti.tcpi_unacked == CLIENTS,
                  "%s listener: state %u, backlog %u with %u waiting; expected LISTEN, %d with %d", s->name,
                  ti.tcpi_state, ti.tcpi_sacked, ti.tcpi_unacked, BACKLOG, CLIENTS);
  struct addr ln = get_name(s->l, false);
  ok &= wl_expect(same_addr(&ln, &s->lname), "%s listener: name %s, was %s", s->name, fmt(&ln, a, sizeof a),
                  fmt(&s->lname, b, sizeof b));
  int fl = fcntl(s->l, F_GETFL);
  ok &= wl_expect(fl >= 0 && (fl & O_NONBLOCK), "%s listener: O_NONBLOCK lost (flags 0x%x)", s->name, fl);
  int reuse = get_int(s->l, SOL_SOCKET, SO_REUSEADDR), reuseport = get_int(s->l, SOL_SOCKET, SO_REUSEPORT),
      fastopen = get_int(s->l, IPPROTO_TCP, TCP_FASTOPEN);
  ok &= wl_expect(reuse == (s->family == AF_INET) && reuseport == s->mapped &&
                      fastopen == (s->family == AF_INET ? FASTOPEN_QLEN : 0),
                  "%s listener: SO_REUSEADDR %d, SO_REUSEPORT %d, TCP_FASTOPEN %d; expected %d, %d, %d", s->name,
                  reuse, reuseport, fastopen, s->family == AF_INET, s->mapped,
                  s->family == AF_INET ? FASTOPEN_QLEN : 0);
  if (s->defer) {
    int d = get_int(s->l, IPPROTO_TCP, TCP_DEFER_ACCEPT);
    ok &= wl_expect(d == s->defer, "%s listener: TCP_DEFER_ACCEPT %d, was %d", s->name, d, s->defer);
  }
  for (int i = 0; i < CLIENTS; i++) {
    int c = s->c[i];
    struct tcp_info ci = get_info(c);
    ok &= wl_expect(ci.tcpi_state == TCP_ESTABLISHED, "%s client %d: state %u", s->name, i, ci.tcpi_state);
    int in = sock_queue(c, SIOCINQ), out = sock_queue(c, SIOCOUTQ), err = get_int(c, SOL_SOCKET, SO_ERROR);
    ok &= wl_expect(in == 0 && out == 0 && err == 0, "%s client %d: SIOCINQ %d SIOCOUTQ %d SO_ERROR %d",
                    s->name, i, in, out, err);
    struct addr n = get_name(c, false), p = get_name(c, true);
    ok &= wl_expect(same_addr(&n, &s->cname[i]), "%s client %d: name %s, was %s", s->name, i,
                    fmt(&n, a, sizeof a), fmt(&s->cname[i], b, sizeof b));
    ok &= wl_expect(same_addr(&p, &s->cpeer[i]), "%s client %d: peer %s, was %s", s->name, i,
                    fmt(&p, a, sizeof a), fmt(&s->cpeer[i], b, sizeof b));
  }
  return ok;
}

static int accept_one(int l) {
  if (!wait_for(l, POLLIN)) return -1;
  int fd;
  do {
    fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

/* Both ways on an accepted connection `srv` and its client `cli`. */
static void exchange(int srv, int cli, const char* what) {
  char text[64], label[96];
  snprintf(text, sizeof text, "to-client %s", what);
  snprintf(label, sizeof label, "%s (client reading)", what);
  send_text(srv, text, label);
  expect_text(cli, text, label);
  snprintf(text, sizeof text, "to-server %s", what);
  snprintf(label, sizeof label, "%s (server reading)", what);
  send_text(cli, text, label);
  expect_text(srv, text, label);
}

static void verify(struct side* s) {
  char a[80], b[80], what[64];
  send_text(s->c[CLIENTS - 1], "early", "last client, before it is accepted");
  for (int i = 0; i < CLIENTS; i++) {
    snprintf(what, sizeof what, "%s connection %d", s->name, i);
    int srv = accept_one(s->l);
    if (!wl_expect(srv >= 0, "%s: accept: %m", what)) return;
    struct addr p = get_name(srv, true), n = get_name(srv, false);
    wl_expect(same_end(&p, &s->cname[i]), "%s: accepted peer %s, expected client %d's name %s (accept order)",
              what, fmt(&p, a, sizeof a), i, fmt(&s->cname[i], b, sizeof b));
    wl_expect(same_end(&n, &s->cpeer[i]), "%s: accepted name %s, expected the client's peer %s", what,
              fmt(&n, a, sizeof a), fmt(&s->cpeer[i], b, sizeof b));
    if (s->family == AF_INET) {
      int nd = get_int(srv, IPPROTO_TCP, TCP_NODELAY), ka = get_int(srv, SOL_SOCKET, SO_KEEPALIVE);
      wl_expect(nd == 1 && ka == 1, "%s: TCP_NODELAY %d and SO_KEEPALIVE %d, inherited 1 and 1 expected", what,
                nd, ka);
    }
    if (i == CLIENTS - 1) expect_text(srv, "early", what);
    exchange(srv, s->c[i], what);
    close(srv);
  }
  int extra = accept4(s->l, NULL, NULL, SOCK_CLOEXEC);
  wl_expect(extra < 0 && errno == EAGAIN, "%s: a fourth accept gave %d (%m), expected EAGAIN", s->name, extra);
  if (extra >= 0) close(extra);

  snprintf(what, sizeof what, "%s new connection", s->name);
  struct addr to = to_listener(&s->lname, s->mapped ? AF_INET : s->family);
  int nc = connect_to(&to);
  if (!wl_expect(nc >= 0, "%s: connect: %m", what)) return;
  if (s->defer) send_text(nc, "first", what); /* TCP_DEFER_ACCEPT queues it once data came */
  int srv = accept_one(s->l);
  if (wl_expect(srv >= 0, "%s: accept: %m", what)) {
    struct addr p = get_name(srv, true), n = get_name(nc, false);
    wl_expect(same_end(&p, &n), "%s: accepted peer %s, expected %s", what, fmt(&p, a, sizeof a),
              fmt(&n, b, sizeof b));
    if (s->defer) expect_text(srv, "first", what);
    exchange(srv, nc, what);
    close(srv);
  }
  close(nc);
}

/* The child C: two clients of Lc, held by another process than the listener's. It connects
 * them one after the other (the second once the root has seen the first in Lc's queue), reports
 * their names, and on SIGTERM finds them unchanged, reads what the root's accepted ends sent
 * and answers. */
static void child_clients(const struct addr* lc, int names_wr, int go_rd) {
  int c[2];
  struct addr name[2], peer[2];
  char byte;
  for (int i = 0; i < 2; i++) {
    if (i > 0 && read(go_rd, &byte, 1) != 1) wl_die("C: no go from the root");
    c[i] = connect_to(lc);
    if (c[i] < 0) wl_die("C: connect client %d: %m", i);
    name[i] = get_name(c[i], false);
    peer[i] = get_name(c[i], true);
    if (!wl_write_full(names_wr, &name[i], sizeof name[i])) wl_die("C: reporting: %m");
  }
  close(names_wr);
  close(go_rd);
  wl_wait_term();
  char a[80], b[80], what[64], text[64];
  for (int i = 0; i < 2; i++) {
    snprintf(what, sizeof what, "C's client %d", i);
    struct addr n = get_name(c[i], false), p = get_name(c[i], true);
    wl_expect(same_addr(&n, &name[i]) && same_addr(&p, &peer[i]), "%s: now %s to %s, was %s to ...", what,
              fmt(&n, a, sizeof a), fmt(&p, b, sizeof b), fmt(&name[i], b, sizeof b));
    snprintf(text, sizeof text, "to-C %d", i);
    expect_text(c[i], text, what);
    snprintf(text, sizeof text, "from-C %d", i);
    send_text(c[i], text, what);
  }
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  /* Lc and C's clients first, so that C inherits nothing else. */
  struct addr lo4 = loopback(AF_INET);
  int lc = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lc < 0 || bind(lc, &lo4.u.sa, lo4.len) != 0 || listen(lc, BACKLOG) != 0) wl_die("Lc: %m");
  struct addr lcname = get_name(lc, false);
  int names[2], go[2];
  if (pipe2(names, O_CLOEXEC) != 0 || pipe2(go, O_CLOEXEC) != 0) wl_die("pipe: %m");
  pid_t child = wl_fork("C");
  if (child == 0) {
    close(lc);
    close(names[0]);
    close(go[1]);
    child_clients(&lcname, names[1], go[0]);
  }
  close(names[1]);
  close(go[0]);
  struct addr cname[2];
  for (int i = 0; i < 2; i++) {
    if (!wl_read_full(names[0], &cname[i], sizeof cname[i]) || !queued(lc, (unsigned)i + 1))
      wl_die("C's client %d is not in Lc's queue", i);
    if (i == 0 && write(go[1], "g", 1) != 1) wl_die("go: %m");
  }
  close(names[0]);
  close(go[1]);

  struct side sides[3] = {{.name = "IPv4", .family = AF_INET},
                          {.name = "IPv6", .family = AF_INET6},
                          {.name = "mapped", .family = AF_INET6, .mapped = true}};
  bool ok = true;
  for (int i = 0; i < 3; i++) set_up(&sides[i]);
  for (int i = 0; i < 3; i++) ok &= check(&sides[i]);
  if (!ok) wl_die("the sockets are not in the states this workload sets up");

  wl_ready();
  wl_wait_term();

  for (int i = 0; i < 3; i++) check(&sides[i]);
  for (int i = 0; i < 3; i++) verify(&sides[i]);

  /* Lc: C's two clients, in order; the data both ways, C's side checked by C. */
  struct tcp_info ti = get_info(lc);
  wl_expect(ti.tcpi_sacked == BACKLOG && ti.tcpi_unacked == 2, "Lc: backlog %u with %u waiting, expected %d with 2",
            ti.tcpi_sacked, ti.tcpi_unacked, BACKLOG);
  int xs[2] = {-1, -1};
  char a[80], b[80], text[64];
  for (int i = 0; i < 2; i++) {
    xs[i] = accept_one(lc);
    if (!wl_expect(xs[i] >= 0, "Lc: accept %d: %m", i)) continue;
    struct addr p = get_name(xs[i], true);
    wl_expect(same_addr(&p, &cname[i]), "Lc: accepted peer %s, expected C's client %d %s (accept order)",
              fmt(&p, a, sizeof a), i, fmt(&cname[i], b, sizeof b));
    snprintf(text, sizeof text, "to-C %d", i);
    send_text(xs[i], text, "Lc's connection");
  }
  kill(child, SIGTERM); /* C reads and answers now */
  for (int i = 0; i < 2; i++) {
    if (xs[i] < 0) continue;
    snprintf(text, sizeof text, "from-C %d", i);
    expect_text(xs[i], text, "Lc's connection");
  }
  wl_reap(child, "C");
  for (int i = 0; i < 2; i++)
    if (xs[i] >= 0) close(xs[i]);
  wl_finish();
}
