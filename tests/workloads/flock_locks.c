/* flock(2) locks held across the checkpoint, each owned by an open file description:
 *   A  the root holds LOCK_EX
 *   B  the root takes LOCK_SH, then forks "bshare", which inherits the description: both keep
 *      an fd to it, one lock, owned by the shared description
 *   C  the child "cholder" opens C itself and holds LOCK_EX on its own description
 * On request, for each lock: a fresh process forked at check time (not part of the checkpoint)
 * opening the file anew gets EWOULDBLOCK for a conflicting flock(LOCK_NB) and succeeds with a
 * compatible one; the holder converts its lock (EX->SH->EX, or SH->EX) without blocking, which
 * works only if the lock is still owned by that very description; after the holder's LOCK_UN
 * the contender gets the lock. For B the child's SH->EX conversion through its inherited fd
 * shows up through the root's fd (one description, one lock). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

enum { GOT = 0, BLOCKED = 1, ERROR = 2 };

static const char* result_name(int r) {
  return r == GOT ? "got it" : r == BLOCKED ? "EWOULDBLOCK" : "error";
}

/* flock(op|LOCK_NB) on a new description of `name` in a new process; the lock (if taken) dies
 * with that process. */
static int fresh_flock(const char* name, int op) {
  pid_t pid = wl_fork("contender");
  if (pid == 0) {
    int fd = open(wl_path(name), O_RDWR | O_CLOEXEC);
    if (fd < 0) _exit(ERROR);
    if (flock(fd, op | LOCK_NB) == 0) _exit(GOT);
    _exit(errno == EWOULDBLOCK ? BLOCKED : ERROR);
  }
  int st;
  pid_t r;
  while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR) {
  }
  if (r != pid || !WIFEXITED(st)) return ERROR;
  return WEXITSTATUS(st);
}

static void expect_fresh(const char* name, int op, int want, const char* when) {
  int got = fresh_flock(name, op);
  wl_expect(got == want, "%s: a fresh %s on %s: %s, expected %s", when,
            op == LOCK_EX ? "LOCK_EX" : "LOCK_SH", name, result_name(got), result_name(want));
}

static int open_file(const char* name) {
  int fd = open(wl_path(name), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) wl_die("open %s: %m", name);
  if (!wl_write_full(fd, name, strlen(name))) wl_die("write %s: %m", name);
  return fd;
}

static bool convert(int fd, int op) { return flock(fd, op | LOCK_NB) == 0; }

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int fa = open_file("A");
  int fb = open_file("B");
  int fc = open_file("C");
  close(fc);
  if (flock(fa, LOCK_EX | LOCK_NB) != 0) wl_die("flock A: %m");
  if (flock(fb, LOCK_SH | LOCK_NB) != 0) wl_die("flock B: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t bshare = wl_fork("bshare");
  if (bshare == 0) {
    close(fa);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    /* Only this description holds a lock on B: converting to EX must not conflict. */
    wl_expect(convert(fb, LOCK_EX), "SH->EX conversion on the inherited B description: %m");
    expect_fresh("B", LOCK_SH, BLOCKED, "B converted to EX by bshare");
    wl_finish(); /* exiting closes our fd, but the root's keeps the description and its lock */
  }
  pid_t cholder = wl_fork("cholder");
  if (cholder == 0) {
    close(fa);
    close(fb);
    int fd = open(wl_path("C"), O_RDWR | O_CLOEXEC);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) wl_die("flock C: %m");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    wl_expect(convert(fd, LOCK_SH), "EX->SH conversion on C: %m");
    expect_fresh("C", LOCK_SH, GOT, "C converted to SH");
    expect_fresh("C", LOCK_EX, BLOCKED, "C converted to SH");
    wl_expect(convert(fd, LOCK_EX), "SH->EX conversion on C: %m");
    expect_fresh("C", LOCK_SH, BLOCKED, "C converted back to EX");
    wl_expect(flock(fd, LOCK_UN) == 0, "LOCK_UN on C: %m");
    expect_fresh("C", LOCK_EX, GOT, "C unlocked");
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 2, NULL, 0)) wl_die("a child died during setup");

  wl_ready();
  wl_wait_term();

  /* A: EX held by the root. */
  expect_fresh("A", LOCK_SH, BLOCKED, "A held EX");
  expect_fresh("A", LOCK_EX, BLOCKED, "A held EX");
  wl_expect(convert(fa, LOCK_SH), "EX->SH conversion on A: %m");
  expect_fresh("A", LOCK_SH, GOT, "A converted to SH");
  expect_fresh("A", LOCK_EX, BLOCKED, "A converted to SH");
  wl_expect(convert(fa, LOCK_EX), "SH->EX conversion on A: %m");
  expect_fresh("A", LOCK_SH, BLOCKED, "A converted back to EX");
  wl_expect(flock(fa, LOCK_UN) == 0, "LOCK_UN on A: %m");
  expect_fresh("A", LOCK_EX, GOT, "A unlocked");

  /* C: EX held by cholder, which then converts and unlocks it itself. */
  expect_fresh("C", LOCK_SH, BLOCKED, "C held EX by cholder");
  expect_fresh("C", LOCK_EX, BLOCKED, "C held EX by cholder");
  kill(cholder, SIGTERM);
  wl_reap(cholder, "cholder");

  /* B: SH held through the description the root shares with bshare. */
  expect_fresh("B", LOCK_SH, GOT, "B held SH");
  expect_fresh("B", LOCK_EX, BLOCKED, "B held SH");
  kill(bshare, SIGTERM);
  wl_reap(bshare, "bshare");
  /* bshare converted the shared description's lock to EX and exited: the root's fd still
   * holds it, as EX. */
  expect_fresh("B", LOCK_SH, BLOCKED, "B after bshare's conversion and exit");
  wl_expect(convert(fb, LOCK_EX), "EX re-lock on the root's B description: %m");
  wl_expect(flock(fb, LOCK_UN) == 0, "LOCK_UN on B: %m");
  expect_fresh("B", LOCK_EX, GOT, "B unlocked");
  wl_finish();
}
