/* A process group and a session whose leaders are zombies:
 *
 *   R  (session leader, child subreaper)
 *   ├── L1  zombie (exit 11), leader of group L1   ── M1 in group L1, reparented to R
 *   └── L2  zombie (exit 12), leader of session L2 ── M2 in session/group L2, reparented to R
 *
 * L1 does setpgid(0,0) and forks M1; L2 does setsid() and forks M2; then both leaders exit and
 * R leaves them unreaped. Their pids stay in use as the ids of a live group and session.
 * On request: M1's pgid is L1 and its sid R's; M2's sid and pgid are L2; both have R as parent
 * (checked by the M's themselves and by R); kill(-L1, 0) and kill(-L2, 0) find the groups; both
 * leaders are still zombies; R reaps L1 and L2 with exit codes 11 and 12, then M1 and M2. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define L1_CODE 11
#define L2_CODE 12

struct ident {
  pid_t pid, pgid, sid;
};

/* The member: posts its ids, waits for the request, checks them again (its parent is R by
 * then: its leader exited at setup). */
static void member(struct wl_sync* sync, pid_t root, pid_t leader, bool own_session) {
  struct ident id = {getpid(), getpgid(0), getsid(0)};
  wl_sync_post(sync, &id, sizeof id);
  wl_wait_term();
  wl_expect(getpgid(0) == leader, "pgid %d, expected the zombie leader %d", (int)getpgid(0),
            (int)leader);
  pid_t want_sid = own_session ? leader : root;
  wl_expect(getsid(0) == want_sid, "sid %d, expected %d", (int)getsid(0), (int)want_sid);
  wl_expect(getppid() == root, "ppid %d, expected the subreaper %d", (int)getppid(), (int)root);
  wl_expect(kill(-leader, 0) == 0, "kill(-%d, 0) from inside the group: %m", (int)leader);
  wl_finish();
}

static bool is_zombie_now(pid_t pid) {
  /* waitid(WNOWAIT) on an exited child returns at once without reaping it. */
  siginfo_t si;
  memset(&si, 0, sizeof si);
  int r;
  while ((r = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT)) < 0 && errno == EINTR) {
  }
  return r == 0 && si.si_pid == pid && si.si_code == CLD_EXITED;
}

static void reap_code(pid_t pid, int code, const char* what) {
  int st = 0;
  pid_t r;
  while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR) {
  }
  if (!wl_expect(r == pid, "waitpid(%s %d) returned %d (%s)", what, (int)pid, (int)r,
                 r < 0 ? strerror(errno) : "")) {
    return;
  }
  wl_expect(WIFEXITED(st) && WEXITSTATUS(st) == code, "%s: status 0x%x, expected exit %d", what, st,
            code);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t root = getpid();
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) wl_die("PR_SET_CHILD_SUBREAPER: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);

  pid_t l1 = wl_fork("L1");
  if (l1 == 0) {
    pid_t me = getpid();
    if (setpgid(0, 0) != 0) wl_die("setpgid: %m");
    pid_t m1 = wl_fork("M1");
    if (m1 == 0) member(&sync, root, me, false);
    close(sync.rd);
    close(sync.wr);
    _exit(L1_CODE);
  }
  /* The group exists before anyone relies on it, whichever of us runs first. */
  if (setpgid(l1, l1) != 0 && errno != EACCES && errno != ESRCH) wl_die("setpgid(L1): %m");

  pid_t l2 = wl_fork("L2");
  if (l2 == 0) {
    pid_t me = getpid();
    if (setsid() != me) wl_die("setsid: %m");
    pid_t m2 = wl_fork("M2");
    if (m2 == 0) member(&sync, root, me, true);
    close(sync.rd);
    close(sync.wr);
    _exit(L2_CODE);
  }

  struct ident ids[2];
  if (!wl_sync_wait(&sync, 2, ids, sizeof ids[0])) wl_die("a member died during setup");
  /* Records arrive in either order: sort them out by session. */
  struct ident m1 = ids[0], m2 = ids[1];
  if (m1.sid != root) {
    m1 = ids[1];
    m2 = ids[0];
  }
  if (m1.pgid != l1 || m1.sid != root) wl_die("M1 pgid/sid %d/%d at setup", m1.pgid, m1.sid);
  if (m2.pgid != l2 || m2.sid != l2) wl_die("M2 pgid/sid %d/%d at setup", m2.pgid, m2.sid);

  /* Both leaders must be zombies (and both M's ours) before the checkpoint. */
  siginfo_t si;
  if (waitid(P_PID, (id_t)l1, &si, WEXITED | WNOWAIT) != 0) wl_die("waitid(L1): %m");
  if (waitid(P_PID, (id_t)l2, &si, WEXITED | WNOWAIT) != 0) wl_die("waitid(L2): %m");

  wl_ready();
  wl_wait_term();

  wl_expect(is_zombie_now(l1), "L1 (%d) is not an unreaped exited child", (int)l1);
  wl_expect(is_zombie_now(l2), "L2 (%d) is not an unreaped exited child", (int)l2);
  wl_expect(getpgid(m1.pid) == l1, "M1 (%d): pgid %d, expected %d", (int)m1.pid,
            (int)getpgid(m1.pid), (int)l1);
  wl_expect(getsid(m1.pid) == root, "M1 (%d): sid %d, expected %d", (int)m1.pid,
            (int)getsid(m1.pid), (int)root);
  wl_expect(getpgid(m2.pid) == l2, "M2 (%d): pgid %d, expected %d", (int)m2.pid,
            (int)getpgid(m2.pid), (int)l2);
  wl_expect(getsid(m2.pid) == l2, "M2 (%d): sid %d, expected %d", (int)m2.pid, (int)getsid(m2.pid),
            (int)l2);
  /* The zombies themselves still carry their group/session. */
  wl_expect(getpgid(l1) == l1, "zombie L1: pgid %d", (int)getpgid(l1));
  wl_expect(getsid(l2) == l2, "zombie L2: sid %d", (int)getsid(l2));
  wl_expect(kill(-l1, 0) == 0, "kill(-L1 %d, 0): %m", (int)l1);
  wl_expect(kill(-l2, 0) == 0, "kill(-L2 %d, 0): %m", (int)l2);

  /* The request reaches the M's through their groups (the zombie leader is not signalled); if
   * the groups are wrong, directly, so that the M's report instead of hanging. */
  if (killpg(l1, SIGTERM) != 0) wl_expect(false, "killpg(L1): %m");
  if (killpg(l2, SIGTERM) != 0) wl_expect(false, "killpg(L2): %m");
  if (wl_failed()) {
    kill(m1.pid, SIGTERM);
    kill(m2.pid, SIGTERM);
  }
  reap_code(l1, L1_CODE, "L1");
  reap_code(l2, L2_CODE, "L2");
  wl_reap(m1.pid, "M1");
  wl_reap(m2.pid, "M2");
  wl_expect(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD, "something else is left to reap");
  wl_finish();
}
