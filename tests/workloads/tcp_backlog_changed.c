/* Refusal workload: a TCP listener whose options changed while connections waited in its queue.
 * All on 127.0.0.1, held by the root: Ln listens (backlog 5, O_NONBLOCK); n1 connects; Ln gets
 * TCP_KEEPIDLE 77; n2 connects; Ln gets TCP_NODELAY 1 and SO_LINGER 5 s. Nothing is accepted.
 * A connection inherits its listener's options when the kernel makes it, so n1's waiting end
 * has the default TCP_KEEPIDLE and TCP_NODELAY 0, n2's TCP_KEEPIDLE 77 and TCP_NODELAY 0, both
 * SO_LINGER off: connections made again would inherit Ln's options as they are now, so crest
 * must refuse (a dump learns that only by accepting them, and must leave the queue as it was).
 * Setup records every name and the options.
 * On request (after the refused dump): Ln still has TCP_KEEPIDLE 77, TCP_NODELAY 1, SO_LINGER
 * 5 s, backlog 5 with 2 waiting; n1 and n2 ESTABLISHED with their names, SO_ERROR 0; accept
 * gives n1 then n2, each with the options it had (n1: TCP_KEEPIDLE as a new socket's,
 * TCP_NODELAY 0; n2: 77 and 0; both SO_LINGER off), each pair exchanges data both ways, and a
 * third accept gives EAGAIN. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

struct addr {
  struct sockaddr_in in;
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

static struct addr get_name(int fd, bool peer) {
  struct addr a;
  memset(&a, 0, sizeof a);
  a.len = sizeof a.in;
  int r = peer ? getpeername(fd, (struct sockaddr*)&a.in, &a.len) : getsockname(fd, (struct sockaddr*)&a.in, &a.len);
  if (r != 0) a.len = 0;
  return a;
}

static bool same_addr(const struct addr* a, const struct addr* b) {
  return a->len == b->len && a->len > 0 && memcmp(&a->in, &b->in, a->len) == 0;
}

static bool wait_for(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  int n;
  do {
    n = poll(&p, 1, 5000);
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

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

static int connect_to(const struct addr* a) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (const struct sockaddr*)&a->in, a->len) != 0) return -1;
  return fd;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct addr lo;
  memset(&lo, 0, sizeof lo);
  lo.in.sin_family = AF_INET;
  lo.in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ln = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (ln < 0 || bind(ln, (struct sockaddr*)&lo.in, sizeof lo.in) != 0 || listen(ln, 5) != 0) wl_die("Ln: %m");
  int default_idle = get_int(ln, IPPROTO_TCP, TCP_KEEPIDLE);
  struct addr lname = get_name(ln, false);
  int n[2];
  n[0] = connect_to(&lname);
  if (n[0] < 0 || !queued(ln, 1)) wl_die("n1: %m");
  int idle = 77, one = 1;
  if (setsockopt(ln, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0) wl_die("TCP_KEEPIDLE: %m");
  n[1] = connect_to(&lname);
  if (n[1] < 0 || !queued(ln, 2)) wl_die("n2: %m");
  struct linger lg = {.l_onoff = 1, .l_linger = 5};
  if (setsockopt(ln, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
      setsockopt(ln, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0)
    wl_die("TCP_NODELAY/SO_LINGER: %m");
  struct addr name[2] = {get_name(n[0], false), get_name(n[1], false)};
  const int want_idle[2] = {default_idle, 77};

  wl_ready();
  wl_wait_term();

  struct tcp_info ti = get_info(ln);
  wl_expect(ti.tcpi_state == TCP_LISTEN && ti.tcpi_sacked == 5 && ti.tcpi_unacked == 2,
            "Ln: state %u, backlog %u with %u waiting; expected LISTEN, 5 with 2", ti.tcpi_state, ti.tcpi_sacked,
            ti.tcpi_unacked);
  wl_expect(get_int(ln, IPPROTO_TCP, TCP_KEEPIDLE) == 77 && get_int(ln, IPPROTO_TCP, TCP_NODELAY) == 1,
            "Ln: TCP_KEEPIDLE %d and TCP_NODELAY %d, expected 77 and 1", get_int(ln, IPPROTO_TCP, TCP_KEEPIDLE),
            get_int(ln, IPPROTO_TCP, TCP_NODELAY));
  struct linger got = {0, 0};
  socklen_t glen = sizeof got;
  wl_expect(getsockopt(ln, SOL_SOCKET, SO_LINGER, &got, &glen) == 0 && got.l_onoff == 1 && got.l_linger == 5,
            "Ln: SO_LINGER %d/%d, expected 1/5", got.l_onoff, got.l_linger);
  for (int i = 0; i < 2; i++) {
    struct addr now = get_name(n[i], false);
    wl_expect(get_info(n[i]).tcpi_state == TCP_ESTABLISHED && same_addr(&now, &name[i]) &&
                  get_int(n[i], SOL_SOCKET, SO_ERROR) == 0,
              "n%d: state %u, name or SO_ERROR changed", i + 1, get_info(n[i]).tcpi_state);
  }
  for (int i = 0; i < 2; i++) {
    int s = wait_for(ln, POLLIN) ? accept4(ln, NULL, NULL, SOCK_CLOEXEC) : -1;
    if (!wl_expect(s >= 0, "accept %d: %m", i + 1)) continue;
    struct addr p = get_name(s, true);
    wl_expect(same_addr(&p, &name[i]), "accept %d: not n%d (accept order)", i + 1, i + 1);
    int idle_now = get_int(s, IPPROTO_TCP, TCP_KEEPIDLE), nodelay = get_int(s, IPPROTO_TCP, TCP_NODELAY);
    struct linger sl = {-1, -1};
    socklen_t sllen = sizeof sl;
    getsockopt(s, SOL_SOCKET, SO_LINGER, &sl, &sllen);
    wl_expect(idle_now == want_idle[i] && nodelay == 0 && sl.l_onoff == 0,
              "accepted n%d: TCP_KEEPIDLE %d, TCP_NODELAY %d, SO_LINGER on %d; expected %d, 0, 0 (what it inherited)",
              i + 1, idle_now, nodelay, sl.l_onoff, want_idle[i]);
    send_text(s, "to-client", "server");
    expect_text(n[i], "to-client", "client");
    send_text(n[i], "to-server", "client");
    expect_text(s, "to-server", "server");
    close(s);
  }
  int extra = accept4(ln, NULL, NULL, SOCK_CLOEXEC);
  wl_expect(extra < 0 && errno == EAGAIN, "a third accept gave %d (%m), expected EAGAIN", extra);
  wl_finish();
}
