/* Descriptors whose close-on-exec flags alternate, in processes that are not the root: a
 * restore hands them over and sets the flags with one batch of injected calls per process,
 * which ends on an int3 whose SIGTRAP crest must take and never deliver (core/inject.h,
 * SyscallBatch). Two children, each holding fds 20..79 (a file of DIR each, opened anew per
 * number) close-on-exec on every even number:
 *   - "handler" has a SIGTRAP handler that counts: it must never run, the handler must stay
 *     installed, and no SIGTRAP may be left pending;
 *   - "ignorer" ignores SIGTRAP: it must still be ignored (the kernel would reset an ignored
 *     signal to its default if it forced one on the process).
 * On request each checks every descriptor: open, reading its own file, its flag as set. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

#define FIRST 20
#define LAST 79

static volatile sig_atomic_t traps;

static void on_trap(int sig) {
  (void)sig;
  traps++;
}

static void open_all(const char* role) {
  char name[64];
  for (int fd = FIRST; fd <= LAST; ++fd) {
    snprintf(name, sizeof name, "%s.%d", role, fd);
    int f = open(wl_path(name), O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (f < 0) wl_die("open %s: %m", name);
    if (!wl_write_full(f, name, strlen(name))) wl_die("write %s: %m", name);
    if (dup3(f, fd, (fd % 2 == 0) ? O_CLOEXEC : 0) != fd) wl_die("dup3 to %d: %m", fd);
    close(f);
  }
}

static void check_all(const char* role) {
  char name[64], got[64];
  for (int fd = FIRST; fd <= LAST; ++fd) {
    snprintf(name, sizeof name, "%s.%d", role, fd);
    int flags = fcntl(fd, F_GETFD);
    if (!wl_expect(flags >= 0, "fd %d is not open", fd)) continue;
    wl_expect(((flags & FD_CLOEXEC) != 0) == (fd % 2 == 0), "fd %d: close-on-exec is %s", fd,
              (flags & FD_CLOEXEC) ? "on" : "off");
    memset(got, 0, sizeof got);
    ssize_t n = pread(fd, got, strlen(name), 0);
    wl_expect(n == (ssize_t)strlen(name) && memcmp(got, name, strlen(name)) == 0,
              "fd %d does not read %s", fd, name);
  }
}

static void child(const char* role, bool ignore, struct wl_sync* sync) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = ignore ? SIG_IGN : on_trap;
  if (sigaction(SIGTRAP, &sa, NULL) != 0) wl_die("sigaction: %m");
  open_all(role);
  wl_sync_post(sync, NULL, 0);
  wl_wait_term();
  check_all(role);
  struct sigaction now;
  sigaction(SIGTRAP, NULL, &now);
  if (ignore)
    wl_expect(now.sa_handler == SIG_IGN, "SIGTRAP is no longer ignored");
  else
    wl_expect(now.sa_handler == on_trap, "the SIGTRAP handler is gone");
  wl_expect(traps == 0, "the SIGTRAP handler ran %d times", (int)traps);
  sigset_t pending;
  sigpending(&pending);
  wl_expect(!sigismember(&pending, SIGTRAP), "a SIGTRAP is pending");
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t handler = wl_fork("handler");
  if (handler == 0) child("handler", false, &sync);
  pid_t ignorer = wl_fork("ignorer");
  if (ignorer == 0) child("ignorer", true, &sync);
  if (!wl_sync_wait(&sync, 2, NULL, 0)) wl_die("a child died during setup");
  wl_ready();
  wl_wait_term();
  kill(handler, SIGTERM);
  kill(ignorer, SIGTERM);
  wl_reap(handler, "handler");
  wl_reap(ignorer, "ignorer");
  wl_finish();
}
