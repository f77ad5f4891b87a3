/* AF_UNIX SOCK_STREAM listeners: a backlog of unaccepted connections, an abstract listener with
 * an accepted connection, listeners whose path was unlinked or replaced.
 *   L1  (root) bound to DIR/l, listen(8). Child "clients" connected c1 then c2 to it; neither
 *       connection is accepted (a waiting connection holding data is refused by crest: it cannot
 *       be read before it is accepted). After the check starts the child sends "first" on c1 and
 *       "second" on c2.
 *   L2  (root) bound to "\0crest-wl-unix_listen.<root pid>", listen(4), O_NONBLOCK. a2 (root)
 *       connected to it and b2 (root) is the accepted end; "hello" / "hi" were exchanged and read,
 *       then a2 sent "queued-a" and b2 sent "queued-b", both unread.
 *   L3  (root) bound to DIR/gone, listen(4), O_NONBLOCK; DIR/gone then unlinked.
 *   L4  (root) bound to DIR/replaced, listen(4), O_NONBLOCK; DIR/replaced then unlinked and
 *       created again as a regular file holding "not a socket\n".
 * On request, root: SO_ACCEPTCONN is 1 on the four listeners and 0 on accepted sockets, each
 * listener's getsockname is its address. L1 (DIR/l still a socket) accepts exactly two
 * connections, the first carrying "first", the second "second" (names DIR/l); the root answers
 * "ack-first"/"ack-second", which the child receives on c1/c2 (whose peer name is DIR/l). A new
 * client connecting to DIR/l is accepted and the connection works both ways; then with L1's
 * queue empty, exactly 9 non-blocking connects succeed and the 10th fails EAGAIN (the kernel
 * admits backlog + 1 pending connections: the backlog of 8 is kept). L2: accept gives EAGAIN;
 * b2 reads "queued-a", a2 "queued-b", then a message each way; a2's peer and b2's name are the
 * abstract name, b2's peer is unnamed. L3: DIR/gone does not exist (nothing was recreated),
 * connect to it fails ENOENT, accept EAGAIN. L4: DIR/replaced is still the regular file with its
 * content, connect to it fails ECONNREFUSED, accept EAGAIN. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

#define FILE_TEXT "not a socket\n"

struct addr {
  struct sockaddr_un sa;
  socklen_t len;
};

static struct addr path_addr(const char* path) {
  struct addr a;
  memset(&a, 0, sizeof a);
  a.sa.sun_family = AF_UNIX;
  snprintf(a.sa.sun_path, sizeof a.sa.sun_path, "%s", path);
  a.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(a.sa.sun_path) + 1);
  return a;
}

static int listener(const struct addr* a, int backlog, int flags) {
  int fd = socket(AF_UNIX, SOCK_STREAM | flags, 0);
  if (fd < 0 || bind(fd, (const struct sockaddr*)&a->sa, a->len) != 0 || listen(fd, backlog) != 0) {
    wl_die("listener %s: %m", a->sa.sun_path[0] ? a->sa.sun_path : a->sa.sun_path + 1);
  }
  return fd;
}

static int connect_to(const struct addr* a, int flags) {
  int fd = socket(AF_UNIX, SOCK_STREAM | flags, 0);
  if (fd < 0) return -1;
  if (connect(fd, (const struct sockaddr*)&a->sa, a->len) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

static bool wait_in(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&p, 1, 5000);
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

/* Expects exactly `text` to arrive (within 5 s) and nothing after it. */
static void expect_text(int fd, const char* text, const char* what) {
  size_t len = strlen(text), got = 0;
  char buf[64];
  while (got < len && wait_in(fd)) {
    ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
    if (n <= 0) break;
    got += (size_t)n;
  }
  wl_expect(got == len && memcmp(buf, text, len) == 0,
            "%s: received %zu bytes \"%.*s\", expected "
            "\"%s\"",
            what, got, (int)got, buf, text);
  ssize_t n = recv(fd, buf, 1, MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EAGAIN, "%s: %zd (%m) after \"%s\"", what, n, text);
}

static void send_text(int fd, const char* text, const char* what) {
  ssize_t n = send(fd, text, strlen(text), MSG_NOSIGNAL);
  wl_expect(n == (ssize_t)strlen(text), "%s: send \"%s\": %m", what, text);
}

static void expect_name(int fd, bool peer, const struct addr* want, const char* what) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  socklen_t len = sizeof sa - 1;
  int r = peer ? getpeername(fd, (struct sockaddr*)&sa, &len)
               : getsockname(fd, (struct sockaddr*)&sa, &len);
  wl_expect(r == 0 && len == want->len && memcmp(&sa, &want->sa, len) == 0,
            "%s: %s length %u \"%s\" (%s)", what, peer ? "getpeername" : "getsockname",
            (unsigned)len, sa.sun_path, r == 0 ? "not the expected address" : strerror(errno));
}

static void expect_acceptconn(int fd, int want, const char* what) {
  int v = -1;
  socklen_t len = sizeof v;
  wl_expect(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v == want,
            "%s: SO_ACCEPTCONN %d, expected %d", what, v, want);
}

static void expect_no_pending(int l, const char* what) {
  int fd = accept(l, NULL, NULL);
  wl_expect(fd < 0 && errno == EAGAIN, "%s: accept gave %d (%m), expected EAGAIN", what, fd);
  if (fd >= 0) close(fd);
}

static void expect_connect_fails(const struct addr* a, int err, const char* what) {
  int fd = connect_to(a, 0);
  wl_expect(fd < 0 && errno == err, "%s: connect gave %d (%m), expected %s", what, fd,
            strerror(err));
  if (fd >= 0) close(fd);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct addr a1 = path_addr(wl_path("l")), a3 = path_addr(wl_path("gone"));
  struct addr a4 = path_addr(wl_path("replaced")), a2, unnamed = {.len = sizeof(sa_family_t)};
  unnamed.sa.sun_family = AF_UNIX;
  memset(&a2, 0, sizeof a2);
  a2.sa.sun_family = AF_UNIX;
  int nlen = snprintf(a2.sa.sun_path + 1, sizeof a2.sa.sun_path - 1, "crest-wl-unix_listen.%d",
                      (int)getpid());
  a2.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)nlen);

  int l1 = listener(&a1, 8, 0);
  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("clients");
  if (child == 0) {
    close(l1);
    int c1 = connect_to(&a1, 0), c2 = connect_to(&a1, 0);
    if (c1 < 0 || c2 < 0) wl_die("connect to DIR/l: %m");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    wl_expect(wl_write_full(c1, "first", 5) && wl_write_full(c2, "second", 6),
              "clients: send on a waiting connection: %m");
    expect_name(c1, true, &a1, "c1");
    expect_name(c2, true, &a1, "c2");
    expect_text(c1, "ack-first", "c1");
    expect_text(c2, "ack-second", "c2");
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("clients died during setup");

  int l2 = listener(&a2, 4, SOCK_NONBLOCK);
  int a2c = connect_to(&a2, 0);
  int b2 = accept(l2, NULL, NULL);
  if (a2c < 0 || b2 < 0) wl_die("abstract connection: %m");
  char buf[8];
  if (!wl_write_full(a2c, "hello", 5) || !wl_read_full(b2, buf, 5) || !wl_write_full(b2, "hi", 2) ||
      !wl_read_full(a2c, buf, 2) || !wl_write_full(a2c, "queued-a", 8) ||
      !wl_write_full(b2, "queued-b", 8)) {
    wl_die("abstract connection traffic: %m");
  }

  int l3 = listener(&a3, 4, SOCK_NONBLOCK);
  if (unlink(a3.sa.sun_path) != 0) wl_die("unlink DIR/gone: %m");
  int l4 = listener(&a4, 4, SOCK_NONBLOCK);
  int fd = -1;
  if (unlink(a4.sa.sun_path) != 0 ||
      (fd = open(a4.sa.sun_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0 ||
      !wl_write_full(fd, FILE_TEXT, strlen(FILE_TEXT)) || close(fd) != 0) {
    wl_die("replacing DIR/replaced: %m");
  }

  wl_ready();
  wl_wait_term();
  kill(child, SIGTERM); /* the clients send on their connections now */

  /* L1: the two waiting connections, in order, with their data. */
  expect_acceptconn(l1, 1, "L1");
  expect_name(l1, false, &a1, "L1");
  struct stat st;
  wl_expect(lstat(a1.sa.sun_path, &st) == 0 && S_ISSOCK(st.st_mode), "DIR/l is not a socket: %m");
  const char* data[2] = {"first", "second"};
  const char* acks[2] = {"ack-first", "ack-second"};
  int xs[2] = {-1, -1}; /* kept open until the child has read the acks */
  for (int i = 0; i < 2; i++) {
    int x = xs[i] = wait_in(l1) ? accept(l1, NULL, NULL) : -1;
    if (!wl_expect(x >= 0, "L1: connection %d not accepted: %m", i + 1)) continue;
    expect_acceptconn(x, 0, "accepted from L1");
    expect_name(x, false, &a1, "accepted from L1");
    expect_name(x, true, &unnamed, "accepted from L1");
    expect_text(x, data[i], "accepted from L1");
    send_text(x, acks[i], "accepted from L1");
  }
  struct pollfd p = {.fd = l1, .events = POLLIN};
  wl_expect(poll(&p, 1, 0) == 0, "L1: a third connection is pending (revents 0x%x)", p.revents);

  /* L1: a connection made now. */
  int n = connect_to(&a1, 0);
  if (wl_expect(n >= 0, "connect to DIR/l: %m")) {
    send_text(n, "new", "new client");
    int y = wait_in(l1) ? accept(l1, NULL, NULL) : -1;
    if (wl_expect(y >= 0, "L1: the new client was not accepted: %m")) {
      expect_text(y, "new", "new connection");
      send_text(y, "welcome", "new connection");
      expect_text(n, "welcome", "new client");
      close(y);
    }
    close(n);
  }
  /* L1's backlog: 8 + 1 pending connections fit, the next is refused. */
  int probes[10], ok = 0;
  for (int i = 0; i < 10; i++) {
    probes[i] = connect_to(&a1, SOCK_NONBLOCK);
    if (probes[i] >= 0) ok++;
    if (probes[i] < 0 && errno != EAGAIN) wl_expect(false, "backlog probe %d: %m", i);
  }
  wl_expect(ok == 9, "L1 admitted %d pending connections, expected 9 (backlog 8)", ok);
  for (int i = 0; i < 10; i++) {
    if (probes[i] >= 0) close(probes[i]);
  }

  /* L2 and its accepted connection. */
  expect_acceptconn(l2, 1, "L2");
  expect_name(l2, false, &a2, "L2");
  expect_no_pending(l2, "L2");
  expect_acceptconn(b2, 0, "b2");
  expect_name(b2, false, &a2, "b2");
  expect_name(b2, true, &unnamed, "b2");
  expect_name(a2c, true, &a2, "a2");
  expect_text(b2, "queued-a", "b2");
  expect_text(a2c, "queued-b", "a2");
  send_text(a2c, "again-a", "a2");
  expect_text(b2, "again-a", "b2");
  send_text(b2, "again-b", "b2");
  expect_text(a2c, "again-b", "a2");

  /* L3: unreachable by path, the path stays gone. */
  expect_acceptconn(l3, 1, "L3");
  expect_name(l3, false, &a3, "L3");
  wl_expect(lstat(a3.sa.sun_path, &st) != 0 && errno == ENOENT, "DIR/gone exists again");
  expect_connect_fails(&a3, ENOENT, "DIR/gone");
  expect_no_pending(l3, "L3");

  /* L4: the path is somebody else's file now. */
  expect_acceptconn(l4, 1, "L4");
  expect_name(l4, false, &a4, "L4");
  char text[64] = {0};
  fd = open(a4.sa.sun_path, O_RDONLY | O_CLOEXEC);
  wl_expect(fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                read(fd, text, sizeof text - 1) == (ssize_t)strlen(FILE_TEXT) &&
                strcmp(text, FILE_TEXT) == 0,
            "DIR/replaced is no longer the regular file \"%s\" (\"%s\", %m)", FILE_TEXT, text);
  if (fd >= 0) close(fd);
  expect_connect_fails(&a4, ECONNREFUSED, "DIR/replaced");
  expect_no_pending(l4, "L4");

  wl_reap(child, "clients");
  for (int i = 0; i < 2; i++) {
    if (xs[i] >= 0) close(xs[i]);
  }
  wl_finish();
}
