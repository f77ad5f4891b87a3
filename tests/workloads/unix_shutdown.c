/* Shut-down AF_UNIX connections: six socketpairs, end 0 held by the root, end 1 by the child
 * "peer" (forked after the setup):
 *   pair  type            end 0 did
 *   0     SOCK_STREAM     shutdown(SHUT_RD)
 *   1     SOCK_STREAM     shutdown(SHUT_WR)
 *   2     SOCK_STREAM     shutdown(SHUT_RDWR)
 *   3..5  SOCK_SEQPACKET  the same three
 * Before the shutdown each end sent two messages to the other ("<pair>:<end>:first" and
 * "<pair>:<end>:second record"), all unread. A unix shutdown also marks the peer: end 1 is shut
 * for sending where end 0 is shut for reading and vice versa. At setup, poll() revents
 * (POLLIN|POLLPRI|POLLOUT|POLLRDHUP asked) of every end are recorded.
 * On request each process checks its ends: revents as recorded (POLLRDHUP iff the end is shut
 * for reading, POLLHUP iff shut both ways); the two queued messages, still there after the
 * shutdown (stream: FIONREAD gives their total and one read returns both; seqpacket: one record
 * per read); then EOF (0) on an end shut for reading, EAGAIN on the others. Once the child has
 * done that (it says so through a pipe), both send "late" on every end: EPIPE (MSG_NOSIGNAL) on
 * an end shut for sending, delivered otherwise; each end whose peer can still send receives its
 * "late" message. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

#define NPAIRS 6
#define POLL_ASKED (POLLIN | POLLPRI | POLLOUT | POLLRDHUP)

static const struct {
  int type, how;
} PAIRS[NPAIRS] = {{SOCK_STREAM, SHUT_RD},    {SOCK_STREAM, SHUT_WR},
                   {SOCK_STREAM, SHUT_RDWR},  {SOCK_SEQPACKET, SHUT_RD},
                   {SOCK_SEQPACKET, SHUT_WR}, {SOCK_SEQPACKET, SHUT_RDWR}};

static int g_fd[NPAIRS][2];
static short g_revents[NPAIRS][2];

static bool rcv_shut(int i, int end) {
  int how = PAIRS[i].how;
  return end == 0 ? how != SHUT_WR : how != SHUT_RD;
}
static bool send_shut(int i, int end) { return rcv_shut(i, 1 - end); }

static void msg_text(int i, int from_end, int k, char* buf, size_t len) {
  snprintf(buf, len, "%d:%d:%s", i, from_end, k ? "second record" : "first");
}

static short revents(int fd) {
  struct pollfd p = {.fd = fd, .events = POLL_ASKED};
  return poll(&p, 1, 0) < 0 ? -1 : p.revents;
}

static bool wait_in(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&p, 1, 5000);
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

/* Before any late traffic: poll state, the queued messages, then EOF or EAGAIN. */
static void check_queued(int i, int end) {
  int fd = g_fd[i][end];
  char what[48], m0[64], m1[64], want[128], buf[256];
  snprintf(what, sizeof what, "pair %d end %d", i, end);
  short rev = revents(fd);
  wl_expect(rev == g_revents[i][end], "%s: revents 0x%x, 0x%x at setup", what, rev,
            g_revents[i][end]);
  wl_expect(!!(rev & POLLRDHUP) == rcv_shut(i, end), "%s: POLLRDHUP %s", what,
            rcv_shut(i, end) ? "missing" : "set");
  wl_expect(!!(rev & POLLHUP) == (rcv_shut(i, end) && send_shut(i, end)),
            "%s: POLLHUP wrong (0x%x)", what, rev);

  msg_text(i, 1 - end, 0, m0, sizeof m0);
  msg_text(i, 1 - end, 1, m1, sizeof m1);
  if (PAIRS[i].type == SOCK_STREAM) {
    snprintf(want, sizeof want, "%s%s", m0, m1);
    int pending = -1;
    wl_expect(ioctl(fd, FIONREAD, &pending) == 0 && pending == (int)strlen(want),
              "%s: FIONREAD %d, expected %zu", what, pending, strlen(want));
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    wl_expect(n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0,
              "%s: read %zd (%m), expected \"%s\"", what, n, want);
  } else {
    const char* recs[2] = {m0, m1};
    for (int k = 0; k < 2; k++) {
      ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      wl_expect(n == (ssize_t)strlen(recs[k]) && memcmp(buf, recs[k], (size_t)n) == 0,
                "%s: record %d: %zd (%m), expected \"%s\"", what, k, n, recs[k]);
    }
  }
  ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  if (rcv_shut(i, end)) {
    wl_expect(n == 0, "%s: %zd (%m) after the queued data, expected EOF", what, n);
  } else {
    wl_expect(n < 0 && errno == EAGAIN, "%s: %zd (%m) after the queued data, expected EAGAIN", what,
              n);
  }
}

static void send_late(int i, int end) {
  ssize_t n = send(g_fd[i][end], "late", 4, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (send_shut(i, end)) {
    wl_expect(n < 0 && errno == EPIPE, "pair %d end %d: send gave %zd (%m), expected EPIPE", i, end,
              n);
  } else {
    wl_expect(n == 4, "pair %d end %d: send: %m", i, end);
  }
}

static void recv_late(int i, int end) {
  if (rcv_shut(i, end)) return;
  char buf[16];
  int fd = g_fd[i][end];
  ssize_t n = wait_in(fd) ? recv(fd, buf, sizeof buf, MSG_DONTWAIT) : -1;
  wl_expect(n == 4 && memcmp(buf, "late", 4) == 0, "pair %d end %d: no late message (%zd, %m)", i,
            end, n);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char buf[64];
  for (int i = 0; i < NPAIRS; i++) {
    if (socketpair(AF_UNIX, PAIRS[i].type, 0, g_fd[i]) != 0) wl_die("socketpair: %m");
    for (int k = 0; k < 2; k++) {
      for (int end = 0; end < 2; end++) {
        msg_text(i, end, k, buf, sizeof buf);
        if (send(g_fd[i][end], buf, strlen(buf), 0) != (ssize_t)strlen(buf)) wl_die("send: %m");
      }
    }
    if (shutdown(g_fd[i][0], PAIRS[i].how) != 0) wl_die("shutdown: %m");
    for (int end = 0; end < 2; end++) g_revents[i][end] = revents(g_fd[i][end]);
  }

  struct wl_sync sync, checked;
  wl_sync_init(&sync);
  wl_sync_init(&checked);
  pid_t child = wl_fork("peer");
  if (child == 0) {
    for (int i = 0; i < NPAIRS; i++) close(g_fd[i][0]);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    for (int i = 0; i < NPAIRS; i++) check_queued(i, 1);
    wl_sync_post(&checked, NULL, 0); /* the root may send now */
    for (int i = 0; i < NPAIRS; i++) send_late(i, 1);
    for (int i = 0; i < NPAIRS; i++) recv_late(i, 1);
    wl_finish();
  }
  for (int i = 0; i < NPAIRS; i++) close(g_fd[i][1]);
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("peer died during setup");

  wl_ready();
  wl_wait_term();

  for (int i = 0; i < NPAIRS; i++) check_queued(i, 0);
  kill(child, SIGTERM);
  wl_expect(wl_sync_wait(&checked, 1, NULL, 0), "the peer died before checking its ends");
  for (int i = 0; i < NPAIRS; i++) send_late(i, 0);
  for (int i = 0; i < NPAIRS; i++) recv_late(i, 0);
  wl_reap(child, "peer");
  wl_finish();
}
