/* A 3-level process tree with its own session and several process groups:
 *
 *   R  (session leader, group R)
 *   ├── A   group A (own)          ├── A1  group A      └── A2  group A2 (own)
 *   └── B   group R (shared)       └── B1  group A (joins a group from the other branch)
 *
 * Every process records (pid, ppid, pgid, sid) at setup and checks them on request; the root
 * also checks everyone's group and session from outside. The request is spread with group
 * signals (killpg), so a group membership that changed in the restore shows as a failure or a
 * process that never hears it. */
#include <errno.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

enum { ROLE_A, ROLE_B, ROLE_A1, ROLE_A2, ROLE_B1, NROLES };
static const char* const kRoleNames[NROLES] = {"A", "B", "A1", "A2", "B1"};

struct ident {
  int role;
  pid_t pid, ppid, pgid, sid;
};

static struct ident self_ident(int role) {
  struct ident id = {role, getpid(), getppid(), getpgid(0), getsid(0)};
  return id;
}

static void check_self(const struct ident* id) {
  wl_expect(getpid() == id->pid, "pid %d, expected %d", (int)getpid(), (int)id->pid);
  wl_expect(getppid() == id->ppid, "ppid %d, expected %d", (int)getppid(), (int)id->ppid);
  wl_expect(getpgid(0) == id->pgid, "pgid %d, expected %d", (int)getpgid(0), (int)id->pgid);
  wl_expect(getsid(0) == id->sid, "sid %d, expected %d", (int)getsid(0), (int)id->sid);
}

/* A leaf: post its identity, wait for the request, check itself, exit. */
static void leaf(struct wl_sync* sync, int role) {
  struct ident id = self_ident(role);
  wl_sync_post(sync, &id, sizeof id);
  wl_wait_term();
  check_self(&id);
  wl_finish();
}

static void join_group(pid_t pid, pid_t pgid, const char* who) {
  /* Called by both parent and child (the classic job-control idiom): whoever runs first sets
   * the group, the second call is a no-op, so the group is in place before either relies on
   * it. ESRCH: the child already exited (it then fails on its own). */
  if (setpgid(pid, pgid) != 0 && errno != EACCES && errno != ESRCH) {
    wl_die("setpgid(%s): %s", who, strerror(errno));
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  /* wl_init made us a session leader (the harness starts us as a non-leader). */
  pid_t r = getpid();
  if (getsid(0) != r) wl_die("not a session leader (sid %d)", (int)getsid(0));

  struct wl_sync sync;
  wl_sync_init(&sync);

  pid_t a = wl_fork("A");
  if (a == 0) {
    join_group(0, 0, "A");
    pid_t a1 = wl_fork("A1");
    if (a1 == 0) leaf(&sync, ROLE_A1); /* stays in A's group */
    pid_t a2 = wl_fork("A2");
    if (a2 == 0) {
      join_group(0, 0, "A2");
      leaf(&sync, ROLE_A2);
    }
    join_group(a2, a2, "A2");
    struct ident id = self_ident(ROLE_A);
    wl_sync_post(&sync, &id, sizeof id);
    wl_wait_term();
    check_self(&id);
    /* A1 is in our group and heard the group signal; A2 is alone and hears it from us. */
    wl_expect(getpgid(a1) == id.pid, "A1 pgid %d", (int)getpgid(a1));
    wl_expect(getpgid(a2) == a2, "A2 pgid %d", (int)getpgid(a2));
    kill(a2, SIGTERM);
    wl_reap(a1, "A1");
    wl_reap(a2, "A2");
    wl_finish();
  }
  join_group(a, a, "A");

  pid_t b = wl_fork("B");
  if (b == 0) {
    pid_t b1 = wl_fork("B1");
    if (b1 == 0) {
      join_group(0, a, "B1");
      leaf(&sync, ROLE_B1);
    }
    join_group(b1, a, "B1");
    struct ident id = self_ident(ROLE_B);
    wl_sync_post(&sync, &id, sizeof id);
    wl_wait_term();
    check_self(&id);
    wl_reap(b1, "B1");
    wl_finish();
  }

  struct ident ids[NROLES];
  if (!wl_sync_wait(&sync, NROLES, ids, sizeof ids[0])) wl_die("a child died during setup");

  /* Sanity of the setup itself (so a native run proves the workload is right). */
  for (int i = 0; i < NROLES; i++) {
    const struct ident* id = &ids[i];
    wl_expect(id->sid == r, "%s: sid %d at setup", kRoleNames[id->role], (int)id->sid);
  }

  wl_ready();
  wl_wait_term();

  wl_expect(getsid(0) == r && getpgid(0) == r, "root sid/pgid %d/%d", (int)getsid(0),
            (int)getpgid(0));
  for (int i = 0; i < NROLES; i++) {
    const struct ident* id = &ids[i];
    const char* name = kRoleNames[id->role];
    wl_expect(getpgid(id->pid) == id->pgid, "%s (pid %d): pgid %d, expected %d", name, (int)id->pid,
              (int)getpgid(id->pid), (int)id->pgid);
    wl_expect(getsid(id->pid) == r, "%s (pid %d): sid %d, expected %d", name, (int)id->pid,
              (int)getsid(id->pid), (int)r);
  }
  if (wl_failed()) {
    /* Group signals would not reach everyone: end the tree instead of hanging. */
    for (int i = 0; i < NROLES; i++) kill(ids[i].pid, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
    }
    wl_finish();
  }

  /* Group A: A, A1, B1. Group R: ourselves (harmless) and B. A2 hears it from A. */
  if (killpg(a, SIGTERM) != 0) wl_expect(false, "killpg(A): %m");
  if (killpg(r, SIGTERM) != 0) wl_expect(false, "killpg(R): %m");
  wl_reap(a, "A");
  wl_reap(b, "B");
  wl_finish();
}
