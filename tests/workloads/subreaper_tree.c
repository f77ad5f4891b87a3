/* A subtree reparented to a child subreaper:
 *
 *   R (PR_SET_CHILD_SUBREAPER) ── A (exited, reaped by R at setup)
 *   R ── B (group B, own; parent was A, now R) ── C (group B)
 *
 * A forked B, B made its own group and forked C; then A exited and R reaped it, so B was
 * reparented to R (not to init): B's parent is not the process that forked it.
 * On request: B's parent is R, its group is its own, its session R's; C's parent is B and it is
 * in B's group (checked by B and C themselves and from R); R is still a subreaper; the request
 * goes to B's group (killpg), B reaps C (exit 0), R reaps B (exit 0), and R has nothing else. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

struct ident {
  pid_t pid, ppid, pgid;
};

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t root = getpid();
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) wl_die("PR_SET_CHILD_SUBREAPER: %m");
  struct wl_sync sync;
  wl_sync_init(&sync);

  pid_t a = wl_fork("A");
  if (a == 0) {
    /* A exits only once B and C are set up (EOF on `hold`: B closes its end after posting). */
    int hold[2];
    if (pipe2(hold, O_CLOEXEC) != 0) wl_die("pipe: %m");
    pid_t b = wl_fork("B");
    if (b == 0) {
      close(hold[0]);
      pid_t me = getpid();
      if (setpgid(0, 0) != 0) wl_die("setpgid: %m");
      pid_t c = wl_fork("C");
      if (c == 0) {
        close(hold[1]);
        struct ident id = {getpid(), getppid(), getpgid(0)};
        wl_sync_post(&sync, &id, sizeof id);
        wl_wait_term();
        wl_expect(getppid() == me, "C: ppid %d, expected B %d", (int)getppid(), (int)me);
        wl_expect(getpgid(0) == me, "C: pgid %d, expected B's group %d", (int)getpgid(0), (int)me);
        wl_expect(getsid(0) == root, "C: sid %d, expected %d", (int)getsid(0), (int)root);
        wl_finish();
      }
      struct ident id = {me, getppid(), getpgid(0)};
      wl_sync_post(&sync, &id, sizeof id);
      close(hold[1]);
      wl_wait_term();
      wl_expect(getppid() == root, "B: ppid %d, expected the subreaper %d", (int)getppid(),
                (int)root);
      wl_expect(getpgid(0) == me, "B: pgid %d, expected its own %d", (int)getpgid(0), (int)me);
      wl_expect(getsid(0) == root, "B: sid %d, expected %d", (int)getsid(0), (int)root);
      wl_expect(getpgid(c) == me, "B: C's pgid %d", (int)getpgid(c));
      wl_reap(c, "C"); /* C heard the group signal too */
      wl_expect(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD, "B has more children");
      wl_finish();
    }
    close(sync.rd);
    close(sync.wr);
    close(hold[1]);
    char c;
    while (read(hold[0], &c, 1) < 0 && errno == EINTR) {
    }
    _exit(0);
  }

  struct ident ids[2];
  if (!wl_sync_wait(&sync, 2, ids, sizeof ids[0])) wl_die("B or C died during setup");
  wl_reap(a, "A");
  /* Records arrive in either order: B is the one whose parent was A. */
  struct ident b = ids[0], c = ids[1];
  if (b.ppid != a) {
    b = ids[1];
    c = ids[0];
  }
  if (b.ppid != a || b.pgid != b.pid || c.ppid != b.pid || c.pgid != b.pid) {
    wl_die("unexpected setup: B %d/%d/%d C %d/%d/%d", b.pid, b.ppid, b.pgid, c.pid, c.ppid, c.pgid);
  }
  /* A is gone: B is ours now. */
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)b.pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
    wl_die("B was not reparented to the root: %m");
  }

  wl_ready();
  wl_wait_term();

  int sub = 0;
  prctl(PR_GET_CHILD_SUBREAPER, &sub, 0, 0, 0);
  wl_expect(sub == 1, "PR_GET_CHILD_SUBREAPER %d, expected 1", sub);
  wl_expect(getpgid(b.pid) == b.pid, "B (%d): pgid %d", (int)b.pid, (int)getpgid(b.pid));
  wl_expect(getpgid(c.pid) == b.pid, "C (%d): pgid %d, expected B's %d", (int)c.pid,
            (int)getpgid(c.pid), (int)b.pid);
  wl_expect(getsid(b.pid) == root && getsid(c.pid) == root, "B/C sid %d/%d, expected %d",
            (int)getsid(b.pid), (int)getsid(c.pid), (int)root);
  /* B is our child (waitid finds it without reaping); C is not. */
  memset(&si, 0, sizeof si);
  wl_expect(waitid(P_PID, (id_t)b.pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0,
            "B is not the root's child: %m");
  wl_expect(waitid(P_PID, (id_t)c.pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0 && errno == ECHILD,
            "C is the root's child");

  if (killpg(b.pid, SIGTERM) != 0) wl_expect(false, "killpg(B): %m");
  if (wl_failed()) {
    kill(b.pid, SIGTERM);
    kill(c.pid, SIGTERM);
  }
  wl_reap(b.pid, "B");
  wl_expect(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD, "something else is left to reap");
  wl_finish();
}
