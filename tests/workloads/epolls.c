/* epoll registrations, nested epoll and an epoll shared with a child:
 *   outer epoll watching, each under the number it was registered with:
 *     pipe1 read end   EPOLLIN, level-triggered, data 0xAAAA; 5 bytes buffered at setup
 *     eventfd          EPOLLIN | EPOLLET, data 0xBBBB; counter 0 at setup
 *     timerfd          EPOLLIN | EPOLLONESHOT, data 0xCCCC; a 10 ms one-shot that fired and was
 *                      reported once at setup (so disarmed in the epoll), its expiration unread
 *     inner epoll      EPOLLIN, data 0xEEEE; it watches pipe2's read end (EPOLLIN, data 0xDDDD),
 *                      pipe2 empty at setup
 *   child "sharer", forked after all that: shares the outer epoll (and the fds) with the root
 * On request, root: fdinfo of the outer epoll lists exactly those four fds with their data, the
 * inner one pipe2's. epoll_wait (timeout 0) gives exactly {0xAAAA}: the timerfd, readable
 * itself, is not reported (one-shot, disarmed). One write to the eventfd: {0xAAAA, 0xBBBB},
 * then {0xAAAA} (edge-triggered: once). EPOLL_CTL_MOD re-arms the timerfd with data 0xCCCD:
 * reported once. One byte into pipe2: the outer epoll reports 0xEEEE and the inner 0xDDDD. The
 * sharer then checks, through the same epoll: {0xAAAA, 0xEEEE} (the eventfd edge and the
 * timerfd were consumed by the root: one epoll, not a copy); after its own eventfd write
 * {0xAAAA, 0xBBBB, 0xEEEE} then {0xAAAA, 0xEEEE}; its EPOLL_CTL_MOD of the timerfd (data 0xCCCE)
 * is reported once. Back in the root, after the sharer exited: {0xAAAA, 0xEEEE} again (the
 * sharer's edge and one-shot were consumed for both), and the bytes are all there (5 + 1). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "workload.h"

#define D_PIPE1 0xAAAAULL
#define D_EVENT 0xBBBBULL
#define D_TIMER 0xCCCCULL
#define D_TIMER_ROOT 0xCCCDULL
#define D_TIMER_CHILD 0xCCCEULL
#define D_PIPE2 0xDDDDULL
#define D_INNER 0xEEEEULL

static int g_outer, g_inner, g_pipe1[2], g_pipe2[2], g_event, g_timer;

/* The set of data values epoll_wait reports, as a sorted, comma-separated string; each with
 * EPOLLIN. */
static int wait_set(int ep, int timeout_ms, char* out, size_t len) {
  struct epoll_event ev[16];
  int n;
  do {
    n = epoll_wait(ep, ev, 16, timeout_ms);
  } while (n < 0 && errno == EINTR);
  out[0] = 0;
  if (n < 0) {
    snprintf(out, len, "error: %s", strerror(errno));
    return n;
  }
  /* sort by data */
  for (int i = 1; i < n; i++) {
    for (int j = i; j > 0 && ev[j].data.u64 < ev[j - 1].data.u64; j--) {
      struct epoll_event t = ev[j];
      ev[j] = ev[j - 1];
      ev[j - 1] = t;
    }
  }
  size_t pos = 0;
  for (int i = 0; i < n; i++) {
    pos += (size_t)snprintf(out + pos, len - pos, "%s%llx%s", i ? "," : "",
                            (unsigned long long)ev[i].data.u64,
                            (ev[i].events & EPOLLIN) ? "" : "(no EPOLLIN)");
    if (pos >= len) break;
  }
  return n;
}

static void expect_set(int ep, const char* what, const char* want) {
  char got[256];
  wait_set(ep, 0, got, sizeof got);
  wl_expect(strcmp(got, want) == 0, "%s: epoll_wait reported {%s}, expected {%s}", what, got, want);
}

static void add(int ep, int fd, uint32_t events, uint64_t data) {
  struct epoll_event ev = {.events = events, .data.u64 = data};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) wl_die("EPOLL_CTL_ADD %d: %m", fd);
}

static bool rearm_timer(uint64_t data) {
  struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = data};
  return epoll_ctl(g_outer, EPOLL_CTL_MOD, g_timer, &ev) == 0;
}

static bool bump_event(void) {
  uint64_t one = 1;
  return write(g_event, &one, sizeof one) == (ssize_t)sizeof one;
}

/* "tfd: %d events: %x data: %llx ..." lines of an epoll's fdinfo, as "fd=data" sorted by fd. */
static void fdinfo_set(int ep, char* out, size_t len) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ep);
  out[0] = 0;
  FILE* f = fopen(path, "re");
  if (!f) {
    snprintf(out, len, "error: %s", strerror(errno));
    return;
  }
  int fds[16];
  unsigned long long data[16];
  int n = 0;
  char line[512];
  while (fgets(line, sizeof line, f) && n < 16) {
    unsigned ev;
    if (sscanf(line, "tfd: %d events: %x data: %llx", &fds[n], &ev, &data[n]) == 3) n++;
  }
  fclose(f);
  for (int i = 1; i < n; i++) {
    for (int j = i; j > 0 && fds[j] < fds[j - 1]; j--) {
      int t = fds[j];
      fds[j] = fds[j - 1];
      fds[j - 1] = t;
      unsigned long long d = data[j];
      data[j] = data[j - 1];
      data[j - 1] = d;
    }
  }
  size_t pos = 0;
  for (int i = 0; i < n && pos < len; i++) {
    pos += (size_t)snprintf(out + pos, len - pos, "%s%d=%llx", i ? "," : "", fds[i], data[i]);
  }
}

static void check_fdinfo(void) {
  /* registered in fd order: pipe1 < eventfd < timerfd < inner */
  char want[256], got[256];
  snprintf(want, sizeof want, "%d=%llx,%d=%llx,%d=%llx,%d=%llx", g_pipe1[0], D_PIPE1, g_event,
           D_EVENT, g_timer, D_TIMER, g_inner, D_INNER);
  fdinfo_set(g_outer, got, sizeof got);
  wl_expect(strcmp(got, want) == 0, "outer epoll fdinfo {%s}, expected {%s}", got, want);
  snprintf(want, sizeof want, "%d=%llx", g_pipe2[0], D_PIPE2);
  fdinfo_set(g_inner, got, sizeof got);
  wl_expect(strcmp(got, want) == 0, "inner epoll fdinfo {%s}, expected {%s}", got, want);
}

static void sharer_checks(void) {
  expect_set(g_outer, "sharer, first look", "aaaa,eeee");
  wl_expect(bump_event(), "sharer: eventfd write: %m");
  expect_set(g_outer, "sharer, after its eventfd write", "aaaa,bbbb,eeee");
  expect_set(g_outer, "sharer, eventfd edge again", "aaaa,eeee");
  wl_expect(rearm_timer(D_TIMER_CHILD), "sharer: EPOLL_CTL_MOD timerfd: %m");
  expect_set(g_outer, "sharer, timerfd re-armed", "aaaa,ccce,eeee");
  expect_set(g_outer, "sharer, timerfd after its one shot", "aaaa,eeee");
  expect_set(g_inner, "sharer, inner epoll", "dddd");
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  if (pipe2(g_pipe1, O_CLOEXEC) != 0 || pipe2(g_pipe2, O_CLOEXEC) != 0) wl_die("pipe: %m");
  g_event = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  g_timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  g_inner = epoll_create1(EPOLL_CLOEXEC);
  g_outer = epoll_create1(EPOLL_CLOEXEC);
  if (g_event < 0 || g_timer < 0 || g_inner < 0 || g_outer < 0) wl_die("setup: %m");
  if (!(g_pipe1[0] < g_event && g_event < g_timer && g_timer < g_inner)) {
    wl_die("unexpected fd order %d %d %d %d", g_pipe1[0], g_event, g_timer, g_inner);
  }

  add(g_inner, g_pipe2[0], EPOLLIN, D_PIPE2);
  add(g_outer, g_pipe1[0], EPOLLIN, D_PIPE1);
  add(g_outer, g_event, EPOLLIN | EPOLLET, D_EVENT);
  add(g_outer, g_timer, EPOLLIN | EPOLLONESHOT, D_TIMER);
  add(g_outer, g_inner, EPOLLIN, D_INNER);

  char got[256];
  wait_set(g_outer, 0, got, sizeof got);
  if (strcmp(got, "") != 0) wl_die("setup: fresh epoll reports {%s}", got);
  if (!wl_write_full(g_pipe1[1], "hello", 5)) wl_die("write pipe1: %m");
  struct itimerspec its = {.it_value = {0, 10 * 1000000L}};
  if (timerfd_settime(g_timer, 0, &its, NULL) != 0) wl_die("timerfd_settime: %m");
  /* Wait for the timer to expire (poll does not consume the epoll event), then it is reported
   * once, with the pipe (level-triggered, reported each time). */
  struct pollfd p = {.fd = g_timer, .events = POLLIN};
  while (poll(&p, 1, 5000) < 0 && errno == EINTR) {
  }
  if (!(p.revents & POLLIN)) wl_die("setup: the 10 ms timerfd did not expire");
  wait_set(g_outer, 0, got, sizeof got);
  if (strcmp(got, "aaaa,cccc") != 0) wl_die("setup: the timerfd was not reported ({%s})", got);
  wait_set(g_outer, 0, got, sizeof got);
  if (strcmp(got, "aaaa") != 0) wl_die("setup: after the one shot {%s}", got);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t sharer = wl_fork("sharer");
  if (sharer == 0) {
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    sharer_checks();
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("sharer died during setup");

  wl_ready();
  wl_wait_term();

  check_fdinfo();
  expect_set(g_outer, "first look", "aaaa");
  /* The timerfd itself is readable: only the one-shot keeps it out of the set. */
  struct pollfd tp = {.fd = g_timer, .events = POLLIN};
  wl_expect(poll(&tp, 1, 0) == 1 && (tp.revents & POLLIN),
            "the timerfd's expiration is gone (poll revents 0x%x)", tp.revents);

  wl_expect(bump_event(), "eventfd write: %m");
  expect_set(g_outer, "after an eventfd write", "aaaa,bbbb");
  expect_set(g_outer, "eventfd edge again", "aaaa");

  wl_expect(rearm_timer(D_TIMER_ROOT), "EPOLL_CTL_MOD timerfd: %m");
  expect_set(g_outer, "timerfd re-armed", "aaaa,cccd");
  expect_set(g_outer, "timerfd after its one shot", "aaaa");

  expect_set(g_inner, "inner, pipe2 empty", "");
  wl_expect(write(g_pipe2[1], "x", 1) == 1, "write pipe2: %m");
  expect_set(g_outer, "after a write to pipe2", "aaaa,eeee");
  expect_set(g_inner, "inner, after a write to pipe2", "dddd");

  kill(sharer, SIGTERM);
  wl_reap(sharer, "sharer");

  expect_set(g_outer, "after the sharer", "aaaa,eeee");
  wl_expect(wl_pipe_pending(g_pipe1[0]) == 5, "pipe1 holds %d bytes, expected 5",
            wl_pipe_pending(g_pipe1[0]));
  wl_expect(wl_pipe_pending(g_pipe2[0]) == 1, "pipe2 holds %d bytes, expected 1",
            wl_pipe_pending(g_pipe2[0]));
  uint64_t ticks = 0;
  wl_expect(read(g_timer, &ticks, sizeof ticks) == (ssize_t)sizeof ticks && ticks == 1,
            "timerfd: %llu expirations, expected 1", (unsigned long long)ticks);
  uint64_t count = 0;
  wl_expect(read(g_event, &count, sizeof count) == (ssize_t)sizeof count && count == 2,
            "eventfd counter %llu, expected 2", (unsigned long long)count);
  /* Drained: nothing but the inner epoll (pipe2) is left. */
  char buf[8];
  wl_expect(read(g_pipe1[0], buf, sizeof buf) == 5, "read pipe1: %m");
  expect_set(g_outer, "after draining pipe1, the timerfd and the eventfd", "eeee");
  wl_finish();
}
