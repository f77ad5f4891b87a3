/* Unix sockets connected to the outside: peers of the harness (tests/e2e/unix_peer.h), dumped
 * with `crest dump --ext-unix-sk`.
 *   A  unbound datagram socket connect()ed to DIR/log.sock (the harness's tiny /dev/log), as a
 *      syslog client is; sent "hello-A <root pid>" before the dump.
 *   B  datagram socket bound to DIR/me.sock, connect()ed to DIR/log.sock; sent "ping 1", whose
 *      answer "pong 1" (sent by the harness to DIR/me.sock) waits unread in B's queue.
 *   S  stream socket connect()ed to the harness's listener DIR/srv.sock; one round trip
 *      ("req 1" -> "ans 1") read whole before the dump, so nothing is left unread.
 * With DIR/mode holding "unread", S also asks "push" and leaves the answer "pushed" unread
 * (crest must refuse that: a new connection cannot hold it); the check then reads it first.
 * On request: B reads "pong 1" exactly once (then EAGAIN); A sends "after-A <root pid>"; B sends
 * "ping 2" and gets "pong 2" (the receiver outside answers our name); S asks "seen? after-A ..."
 * (the listener answers whether the receiver got it: yes) and "req 2" (-> "ans 2"): the stream
 * socket talks to the listener outside (a new connection after a restore). A's and S's peer
 * names are the harness's paths, B keeps its name. */
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

static socklen_t path_addr(struct sockaddr_un* sa, const char* path) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  snprintf(sa->sun_path, sizeof sa->sun_path, "%s", path);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sa->sun_path) + 1);
}

static int connected(int type, const char* path) {
  struct sockaddr_un sa;
  socklen_t len = path_addr(&sa, path);
  int fd = socket(AF_UNIX, type, 0);
  if (fd < 0 || connect(fd, (struct sockaddr*)&sa, len) != 0) wl_die("connect %s: %s", path, strerror(errno));
  return fd;
}

/* Waits up to 10 s for fd to be readable (EINTR from the check request is retried). */
static bool readable(int fd) {
  double until = wl_now() + 10;
  while (wl_now() < until) {
    struct pollfd p = {fd, POLLIN, 0};
    int n = poll(&p, 1, 100);
    if (n == 1) return true;
  }
  return false;
}

/* One line from the stream (up to '\n', without it); false on EOF, error or time out. */
static bool read_line(int fd, char* out, size_t cap) {
  size_t n = 0;
  while (n + 1 < cap) {
    if (!readable(fd)) return false;
    char c;
    ssize_t r = read(fd, &c, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r != 1) return false;
    if (c == '\n') break;
    out[n++] = c;
  }
  out[n] = 0;
  return true;
}

/* Sends a line and expects the answer. */
static bool ask(int s, const char* line, const char* want) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s\n", line);
  if (!wl_write_full(s, buf, strlen(buf))) return wl_expect(false, "S: cannot send '%s': %s", line, strerror(errno));
  if (!read_line(s, buf, sizeof buf)) return wl_expect(false, "S: no answer to '%s': %s", line, strerror(errno));
  return wl_expect(strcmp(buf, want) == 0, "S: '%s' answered '%s', expected '%s'", line, buf, want);
}

static bool recv_is(int fd, const char* want, int flags) {
  char buf[256];
  ssize_t n;
  do n = recv(fd, buf, sizeof buf - 1, flags);
  while (n < 0 && errno == EINTR);
  if (n < 0) return wl_expect(false, "B: no '%s' to read: %s", want, strerror(errno));
  buf[n] = 0;
  return wl_expect(strcmp(buf, want) == 0, "B: read '%s', expected '%s'", buf, want);
}

static bool peer_is(int fd, const char* what, const char* path) {
  struct sockaddr_un sa;
  socklen_t len = sizeof sa;
  if (getpeername(fd, (struct sockaddr*)&sa, &len) != 0)
    return wl_expect(false, "%s: getpeername: %s", what, strerror(errno));
  return wl_expect(strcmp(sa.sun_path, path) == 0, "%s: connected to '%s', expected '%s'", what, sa.sun_path, path);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const char* log = strdup(wl_path("log.sock"));
  const char* srv = strdup(wl_path("srv.sock"));
  const char* me = strdup(wl_path("me.sock"));
  bool unread = false;
  FILE* mode = fopen(wl_path("mode"), "r");
  if (mode) {
    char m[32] = "";
    unread = fgets(m, sizeof m, mode) && strncmp(m, "unread", 6) == 0;
    fclose(mode);
  }
  char text[128];

  int a = connected(SOCK_DGRAM, log);
  snprintf(text, sizeof text, "hello-A %d", (int)getpid());
  if (send(a, text, strlen(text), 0) < 0) wl_die("A: send: %s", strerror(errno));

  struct sockaddr_un sa;
  socklen_t len = path_addr(&sa, me);
  unlink(me);
  int b = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (b < 0 || bind(b, (struct sockaddr*)&sa, len) != 0) wl_die("bind %s: %s", me, strerror(errno));
  len = path_addr(&sa, log);
  if (connect(b, (struct sockaddr*)&sa, len) != 0) wl_die("B: connect: %s", strerror(errno));
  if (send(b, "ping 1", 6, 0) != 6) wl_die("B: send: %s", strerror(errno));
  if (!readable(b)) wl_die("B: no answer to ping 1");  /* there, left unread */

  int s = connected(SOCK_STREAM, srv);
  if (!ask(s, "req 1", "ans 1")) wl_die("S: first round trip failed");
  snprintf(text, sizeof text, "seen? hello-A %d", (int)getpid());
  if (!ask(s, text, "yes")) wl_die("the receiver did not get A's first message");
  if (unread) {
    if (!wl_write_full(s, "push\n", 5) || !readable(s)) wl_die("S: nothing pushed");
    int q = 0;
    while (ioctl(s, FIONREAD, &q) == 0 && q < 7) usleep(1000);
  }

  wl_ready();
  wl_wait_term();

  if (unread) {
    char buf[64];
    wl_expect(read_line(s, buf, sizeof buf) && strcmp(buf, "pushed") == 0, "S: the pushed line is not first");
  }
  /* What the outside sent before the checkpoint, once. */
  recv_is(b, "pong 1", MSG_DONTWAIT);
  char more;
  errno = 0;
  wl_expect(recv(b, &more, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "B: more than the one pong queued (%s)",
            strerror(errno));
  /* A datagram after the restore reaches the receiver outside. */
  snprintf(text, sizeof text, "after-A %d", (int)getpid());
  wl_expect(send(a, text, strlen(text), 0) == (ssize_t)strlen(text), "A: send after: %s", strerror(errno));
  /* B's round trip through the receiver outside. */
  wl_expect(send(b, "ping 2", 6, 0) == 6, "B: send ping 2: %s", strerror(errno));
  wl_expect(readable(b), "B: no answer to ping 2");
  recv_is(b, "pong 2", MSG_DONTWAIT);
  /* The stream talks to the listener outside. */
  snprintf(text, sizeof text, "seen? after-A %d", (int)getpid());
  ask(s, text, "yes");
  ask(s, "req 2", "ans 2");
  peer_is(a, "A", log);
  peer_is(s, "S", srv);
  struct sockaddr_un own;
  socklen_t olen = sizeof own;
  wl_expect(getsockname(b, (struct sockaddr*)&own, &olen) == 0 && strcmp(own.sun_path, me) == 0,
            "B: lost its name %s", me);
  peer_is(b, "B", log);
  wl_finish();
}
