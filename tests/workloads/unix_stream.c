/* AF_UNIX SOCK_STREAM socketpairs with queued bytes, half-closed ends, a peek offset and options:
 *   A  a0 (root) <-> a1 (child "peer", forked after the pair was made).
 *      a0 -> a1: "alpha", "beta", "gamma" written separately, unread (one 14-byte stream).
 *      a1 -> a0: 100 KiB of pattern, unread.
 *      a0 carries the program's settings: SO_SNDBUF 65536, SO_RCVBUF 50000, SO_RCVTIMEO 2.5 s,
 *      SO_SNDTIMEO 3.25 s, SO_PASSCRED 1, SO_RCVLOWAT 16, O_NONBLOCK, FD_CLOEXEC. a1 has none of
 *      them. Each end's getsockopt/fcntl values are recorded at setup (the kernel doubles the
 *      buffer sizes and rounds the timeouts to jiffies) and must read the same afterwards.
 *   B  b0, b1 (root): b0 wrote "last words" and then did shutdown(SHUT_WR).
 *   C  c0, c1 (root): c0 wrote "0123456789"; c1 set SO_PEEK_OFF 0 and peeked 2 bytes, so its
 *      peek offset is 2.
 * On request, root: a0's settings as recorded, SO_TYPE SOCK_STREAM, SO_DOMAIN AF_UNIX, name and
 * peer name both unnamed (length sizeof(sa_family_t)); exactly 100 KiB queued (FIONREAD), the
 * pattern intact, then EAGAIN. b1 reads "last words" then EOF (0) and polls POLLRDHUP; b0's send
 * fails EPIPE (MSG_NOSIGNAL) while b1 -> b0 still carries a reply. c1's SO_PEEK_OFF is 2, the
 * next MSG_PEEK gives "234" (offset 5 after), a plain read gives all 10 bytes from "0" and resets
 * the offset to 0. The child, told to check, finds a1's defaults as recorded, exactly the 14
 * bytes "alphabetagamma" and nothing more, then sends "ping" which the root answers with "pong"
 * (the pair is still connected both ways). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

#define BIG_LEN (100 * 1024)
#define BIG_SEED 77

struct opts {
  int sndbuf, rcvbuf, passcred, rcvlowat, fl, fdfl;
  struct timeval rcvtimeo, sndtimeo;
};

static int get_int(int fd, int opt) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, opt, &v, &len) != 0) return -errno;
  return v;
}

static void set_int(int fd, int opt, int v) {
  if (setsockopt(fd, SOL_SOCKET, opt, &v, sizeof v) != 0) wl_die("setsockopt %d: %m", opt);
}

static struct timeval get_tv(int fd, int opt) {
  struct timeval tv = {-1, -1};
  socklen_t len = sizeof tv;
  getsockopt(fd, SOL_SOCKET, opt, &tv, &len);
  return tv;
}

static void get_opts(int fd, struct opts* o) {
  o->sndbuf = get_int(fd, SO_SNDBUF);
  o->rcvbuf = get_int(fd, SO_RCVBUF);
  o->passcred = get_int(fd, SO_PASSCRED);
  o->rcvlowat = get_int(fd, SO_RCVLOWAT);
  o->fl = fcntl(fd, F_GETFL) & (O_NONBLOCK | O_ACCMODE);
  o->fdfl = fcntl(fd, F_GETFD);
  o->rcvtimeo = get_tv(fd, SO_RCVTIMEO);
  o->sndtimeo = get_tv(fd, SO_SNDTIMEO);
}

static void expect_opts(int fd, const struct opts* want, const char* what) {
  struct opts got;
  get_opts(fd, &got);
  wl_expect(got.sndbuf == want->sndbuf, "%s: SO_SNDBUF %d, was %d", what, got.sndbuf, want->sndbuf);
  wl_expect(got.rcvbuf == want->rcvbuf, "%s: SO_RCVBUF %d, was %d", what, got.rcvbuf, want->rcvbuf);
  wl_expect(got.passcred == want->passcred, "%s: SO_PASSCRED %d, was %d", what, got.passcred,
            want->passcred);
  wl_expect(got.rcvlowat == want->rcvlowat, "%s: SO_RCVLOWAT %d, was %d", what, got.rcvlowat,
            want->rcvlowat);
  wl_expect(got.fl == want->fl, "%s: F_GETFL 0x%x, was 0x%x", what, got.fl, want->fl);
  wl_expect(got.fdfl == want->fdfl, "%s: F_GETFD 0x%x, was 0x%x", what, got.fdfl, want->fdfl);
  wl_expect(got.rcvtimeo.tv_sec == want->rcvtimeo.tv_sec &&
                got.rcvtimeo.tv_usec == want->rcvtimeo.tv_usec,
            "%s: SO_RCVTIMEO %ld.%06ld, was %ld.%06ld", what, (long)got.rcvtimeo.tv_sec,
            (long)got.rcvtimeo.tv_usec, (long)want->rcvtimeo.tv_sec, (long)want->rcvtimeo.tv_usec);
  wl_expect(got.sndtimeo.tv_sec == want->sndtimeo.tv_sec &&
                got.sndtimeo.tv_usec == want->sndtimeo.tv_usec,
            "%s: SO_SNDTIMEO %ld.%06ld, was %ld.%06ld", what, (long)got.sndtimeo.tv_sec,
            (long)got.sndtimeo.tv_usec, (long)want->sndtimeo.tv_sec, (long)want->sndtimeo.tv_usec);
}

/* Type, domain, and both addresses unnamed (a socketpair's ends have no name). */
static void expect_unnamed_stream(int fd, const char* what) {
  wl_expect(get_int(fd, SO_TYPE) == SOCK_STREAM, "%s: SO_TYPE %d", what, get_int(fd, SO_TYPE));
  wl_expect(get_int(fd, SO_DOMAIN) == AF_UNIX, "%s: SO_DOMAIN %d", what, get_int(fd, SO_DOMAIN));
  struct sockaddr_un sa;
  socklen_t len = sizeof sa;
  wl_expect(getsockname(fd, (struct sockaddr*)&sa, &len) == 0 && len == sizeof(sa_family_t) &&
                sa.sun_family == AF_UNIX,
            "%s: getsockname length %u, expected unnamed", what, (unsigned)len);
  len = sizeof sa;
  wl_expect(getpeername(fd, (struct sockaddr*)&sa, &len) == 0 && len == sizeof(sa_family_t) &&
                sa.sun_family == AF_UNIX,
            "%s: getpeername length %u (%m), expected unnamed", what, (unsigned)len);
}

static int inq(int fd) {
  int n = -1;
  return ioctl(fd, FIONREAD, &n) == 0 ? n : -errno;
}

/* Receives up to len bytes, waiting at most 5 s for each piece; returns the count. */
static size_t recv_upto(int fd, void* buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, 5000);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    ssize_t n = recv(fd, (char*)buf + got, len - got, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  return got;
}

/* Nothing queued: a non-blocking receive gives EAGAIN. */
static void expect_drained(int fd, const char* what) {
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EAGAIN, "%s: extra data or error after the queued bytes (%zd, %m)",
            what, n);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int a[2], b[2], c[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, a) != 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, b) != 0 ||
      socketpair(AF_UNIX, SOCK_STREAM, 0, c) != 0) {
    wl_die("socketpair: %m");
  }

  /* A: a0's settings; a1 stays default. */
  set_int(a[0], SO_SNDBUF, 65536);
  set_int(a[0], SO_RCVBUF, 50000);
  set_int(a[0], SO_PASSCRED, 1);
  set_int(a[0], SO_RCVLOWAT, 16);
  struct timeval rt = {2, 500000}, st = {3, 250000};
  if (setsockopt(a[0], SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt) != 0 ||
      setsockopt(a[0], SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st) != 0) {
    wl_die("SO_RCVTIMEO/SO_SNDTIMEO: %m");
  }
  if (fcntl(a[0], F_SETFL, O_NONBLOCK) != 0 || fcntl(a[0], F_SETFD, FD_CLOEXEC) != 0) {
    wl_die("fcntl: %m");
  }
  struct opts a0_opts, a1_opts;
  get_opts(a[0], &a0_opts);
  get_opts(a[1], &a1_opts);
  wl_note("a0: SO_SNDBUF %d SO_RCVBUF %d SO_RCVTIMEO %ld.%06ld; a1: SO_SNDBUF %d SO_RCVBUF %d",
          a0_opts.sndbuf, a0_opts.rcvbuf, (long)a0_opts.rcvtimeo.tv_sec,
          (long)a0_opts.rcvtimeo.tv_usec, a1_opts.sndbuf, a1_opts.rcvbuf);
  if (!wl_write_full(a[0], "alpha", 5) || !wl_write_full(a[0], "beta", 4) ||
      !wl_write_full(a[0], "gamma", 5)) {
    wl_die("write a0: %m");
  }

  /* B: half-closed. */
  if (!wl_write_full(b[0], "last words", 10) || shutdown(b[0], SHUT_WR) != 0) wl_die("B: %m");

  /* C: peek offset 2. */
  char peek[16];
  if (!wl_write_full(c[0], "0123456789", 10)) wl_die("write c0: %m");
  set_int(c[1], SO_PEEK_OFF, 0);
  if (recv(c[1], peek, 2, MSG_PEEK) != 2 || memcmp(peek, "01", 2) != 0) wl_die("peek: %m");
  if (get_int(c[1], SO_PEEK_OFF) != 2) {
    wl_die("SO_PEEK_OFF %d after peeking 2", get_int(c[1], SO_PEEK_OFF));
  }

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("peer");
  if (child == 0) {
    close(a[0]);
    close(b[0]), close(b[1]), close(c[0]), close(c[1]);
    char* big = malloc(BIG_LEN);
    wl_fill(big, BIG_LEN, BIG_SEED);
    if (!wl_write_full(a[1], big, BIG_LEN)) wl_die("write a1: %m");
    free(big);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();

    expect_opts(a[1], &a1_opts, "a1");
    expect_unnamed_stream(a[1], "a1");
    wl_expect(inq(a[1]) == 14, "a1: %d bytes queued, expected 14", inq(a[1]));
    char buf[32] = {0};
    size_t n = recv_upto(a[1], buf, 14);
    wl_expect(n == 14 && memcmp(buf, "alphabetagamma", 14) == 0, "a1: read %zu bytes \"%.*s\"", n,
              (int)n, buf);
    expect_drained(a[1], "a1");
    wl_expect(wl_write_full(a[1], "ping", 4), "a1: send ping: %m");
    n = recv_upto(a[1], buf, 4);
    wl_expect(n == 4 && memcmp(buf, "pong", 4) == 0, "a1: no pong after the ping (%zu bytes)", n);
    wl_finish();
  }
  close(a[1]);
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("peer died during setup");

  wl_ready();
  wl_wait_term();

  /* A, root's end. */
  expect_opts(a[0], &a0_opts, "a0");
  expect_unnamed_stream(a[0], "a0");
  wl_expect(inq(a[0]) == BIG_LEN, "a0: %d bytes queued, expected %d", inq(a[0]), BIG_LEN);
  char* big = malloc(BIG_LEN);
  size_t got = recv_upto(a[0], big, BIG_LEN);
  if (wl_expect(got == BIG_LEN, "a0: received %zu of %d bytes", got, BIG_LEN)) {
    long bad = wl_check(big, BIG_LEN, BIG_SEED);
    wl_expect(bad < 0, "a0: byte %ld of the 100 KiB differs", bad);
  }
  free(big);
  expect_drained(a[0], "a0");

  /* B: the queued bytes, then EOF; the shut end cannot send, the other still can. */
  char buf[32] = {0};
  wl_expect(inq(b[1]) == 10, "b1: %d bytes queued, expected 10", inq(b[1]));
  ssize_t n = recv(b[1], buf, sizeof buf, MSG_DONTWAIT);
  wl_expect(n == 10 && memcmp(buf, "last words", 10) == 0, "b1: read %zd (%m)", n);
  n = recv(b[1], buf, sizeof buf, MSG_DONTWAIT);
  wl_expect(n == 0, "b1: %zd (%m) after the queued bytes, expected EOF", n);
  struct pollfd p = {.fd = b[1], .events = POLLIN | POLLRDHUP};
  wl_expect(poll(&p, 1, 0) == 1 && (p.revents & POLLRDHUP), "b1: revents 0x%x, no POLLRDHUP",
            p.revents);
  n = send(b[0], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EPIPE, "b0 (SHUT_WR): send gave %zd (%m), expected EPIPE", n);
  wl_expect(send(b[1], "reply", 5, MSG_NOSIGNAL) == 5, "b1: send: %m");
  n = recv(b[0], buf, sizeof buf, MSG_DONTWAIT);
  wl_expect(n == 5 && memcmp(buf, "reply", 5) == 0, "b0: the reply: %zd (%m)", n);

  /* C: the peek offset. */
  int off = get_int(c[1], SO_PEEK_OFF);
  wl_expect(off == 2, "c1: SO_PEEK_OFF %d, expected 2", off);
  memset(buf, 0, sizeof buf);
  n = recv(c[1], buf, 3, MSG_PEEK | MSG_DONTWAIT);
  wl_expect(n == 3 && memcmp(buf, "234", 3) == 0, "c1: MSG_PEEK gave %zd \"%.3s\", expected 234", n,
            buf);
  off = get_int(c[1], SO_PEEK_OFF);
  wl_expect(off == 5, "c1: SO_PEEK_OFF %d after peeking 3, expected 5", off);
  n = recv(c[1], buf, sizeof buf, MSG_DONTWAIT);
  wl_expect(n == 10 && memcmp(buf, "0123456789", 10) == 0, "c1: read %zd \"%.*s\"", n,
            n > 0 ? (int)n : 0, buf);
  off = get_int(c[1], SO_PEEK_OFF);
  wl_expect(off == 0, "c1: SO_PEEK_OFF %d after reading it all, expected 0", off);

  /* A still connects the two processes both ways. */
  kill(child, SIGTERM);
  size_t m = recv_upto(a[0], buf, 4);
  wl_expect(m == 4 && memcmp(buf, "ping", 4) == 0, "a0: no ping from the peer (%zu bytes)", m);
  wl_expect(send(a[0], "pong", 4, MSG_NOSIGNAL) == 4, "a0: send pong: %m");
  wl_reap(child, "peer");
  wl_finish();
}
