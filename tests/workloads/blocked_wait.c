/* A process blocked in waitpid(2) at checkpoint time:
 *   root ── waiter (blocked in waitpid(child)) ── child (blocked in read on a pipe from root)
 * After the request the root writes the exit code into the pipe; the child exits with it; the
 * waiter's waitpid must return that child's pid with that status, and nothing else may be left
 * to reap. */
#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define CODE 42

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int p[2];
  if (pipe(p) != 0) wl_die("pipe: %m");
  struct wl_sync sync;
  wl_sync_init(&sync);

  pid_t waiter = wl_fork("waiter");
  if (waiter == 0) {
    pid_t child = wl_fork("child");
    if (child == 0) {
      close(p[1]);
      pid_t me = getpid();
      wl_sync_post(&sync, &me, sizeof me);
      unsigned char code = 0;
      ssize_t n;
      while ((n = read(p[0], &code, 1)) < 0 && errno == EINTR) {
      }
      _exit(n == 1 ? code : 99);
    }
    close(p[0]);
    close(p[1]);
    pid_t child_rec = child;
    wl_sync_post(&sync, &child_rec, sizeof child_rec);
    int st = 0;
    pid_t r;
    while ((r = waitpid(child, &st, 0)) < 0 && errno == EINTR) {
    }
    if (wl_expect(r == child, "waitpid returned %d (%s), expected %d", (int)r,
                  r < 0 ? strerror(errno) : "", (int)child)) {
      wl_expect(WIFEXITED(st) && WEXITSTATUS(st) == CODE, "child status 0x%x, expected exit %d", st,
                CODE);
    }
    wl_expect(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD, "another child to reap");
    wl_finish();
  }
  close(p[0]);
  /* Both the waiter and the child post the child's pid (one fixed-size record each). */
  pid_t recs[2];
  if (!wl_sync_wait(&sync, 2, recs, sizeof recs[0])) wl_die("a child died during setup");
  if (recs[0] != recs[1]) wl_die("inconsistent child pids %d/%d", (int)recs[0], (int)recs[1]);
  pid_t child = recs[0];
  if (!wl_wait_in_syscall(waiter, SYS_wait4, SYS_waitid)) wl_die("the waiter never blocked");
  if (!wl_wait_in_syscall(child, SYS_read, SYS_read)) wl_die("the child never blocked in read");

  wl_ready();
  wl_wait_term();

  unsigned char code = CODE;
  wl_expect(wl_write_full(p[1], &code, 1), "write: %m");
  wl_reap(waiter, "waiter");
  wl_finish();
}
