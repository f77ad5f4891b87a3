/* Two processes sharing one fd table: the root clone()s a child with CLONE_FILES|SIGCHLD (raw
 * clone, fork-like otherwise: own memory, own pid). Before the clone the root opens "before"
 * (fd B); after it the child opens "childfile", dup2()s it to fd 50 and marks it FD_CLOEXEC,
 * all in the shared table. The root learns the child is ready through a pipe (then closed by
 * the root: closing it anywhere closes it for both).
 * On request: kcmp(KCMP_FILES) says the two processes have one fd table, kcmp(KCMP_FILE) that
 * fd B and fd 50 are the same files in both; fd 50's FD_CLOEXEC is seen by the root; then a file
 * the root opens now is usable by the child at the same number, a file the child opens now is
 * usable by the root, and when the child closes the root's new fd it is closed in the root.
 * The child cannot use wl_fork's bookkeeping (that closes pipe ends in the shared table), so it
 * reports through its exit status with wl_expect notes ("child: ..."). */
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define CHILD_FD 50
#define TO_CHILD 60   /* root -> child pipe, created at check time */
#define FROM_CHILD 62 /* child -> root pipe, created at check time */

static int kcmp(pid_t a, pid_t b, int type, unsigned long x, unsigned long y) {
  return (int)syscall(SYS_kcmp, a, b, type, x, y);
}

static bool fd_open(int fd) { return fcntl(fd, F_GETFD) >= 0; }

static bool reads_back(int fd, const char* want) {
  char buf[64] = {0};
  size_t n = strlen(want);
  return pread(fd, buf, n, 0) == (ssize_t)n && memcmp(buf, want, n) == 0;
}

static int create(const char* name, const char* text) {
  int fd = open(wl_path(name), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0 && !wl_write_full(fd, text, strlen(text))) {
    close(fd);
    fd = -1;
  }
  return fd;
}

/* Both processes hold both ends of every pipe (one table): a dead peer gives no EOF, so reads
 * time out instead. */
static bool read_int(int fd, int* v) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  double end = wl_now() + 10;
  for (;;) {
    int r = poll(&p, 1, 100);
    if (r > 0) return wl_read_full(fd, v, sizeof *v);
    if (r < 0 && errno != EINTR) return false;
    if (wl_now() > end) return false;
  }
}
static bool write_int(int fd, int v) { return wl_write_full(fd, &v, sizeof v); }

static void child_main(int before, int ready_wr) {
  int fd = create("childfile", "from the child");
  if (fd < 0 || dup3(fd, CHILD_FD, O_CLOEXEC) != CHILD_FD) _exit(10);
  close(fd);
  if (!write_int(ready_wr, CHILD_FD)) _exit(11);

  wl_wait_term();
  pid_t me = getpid(), parent = getppid();
  wl_expect(kcmp(me, parent, KCMP_FILES, 0, 0) == 0, "child: fd table not shared with the root");
  wl_expect(kcmp(me, parent, KCMP_FILE, (unsigned long)before, (unsigned long)before) == 0,
            "child: fd %d is another file in the root", before);
  wl_expect(reads_back(before, "opened before the clone"), "child: fd %d reads wrong", before);
  /* The root opened a file for us and sent its number. */
  int theirs = -1;
  if (wl_expect(read_int(TO_CHILD, &theirs), "child: reading the root's fd number")) {
    wl_expect(fd_open(theirs) && reads_back(theirs, "from the root, now"),
              "child: the root's new fd %d is not usable here", theirs);
  }
  int mine = create("childnow", "from the child, now");
  wl_expect(mine >= 0, "child: open childnow: %m");
  write_int(FROM_CHILD + 1, mine);
  int ack;
  wl_expect(read_int(TO_CHILD, &ack), "child: waiting for the root's ack");
  /* Closing the root's fd here closes it in the root too. */
  wl_expect(close(theirs) == 0, "child: close(%d): %m", theirs);
  write_int(FROM_CHILD + 1, theirs);
  _exit(wl_failed() ? 1 : 0);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int before = create("before", "opened before the clone");
  if (before < 0) wl_die("open before: %m");
  int ready[2];
  if (pipe(ready) != 0) wl_die("pipe: %m");

  /* Raw clone without CLONE_VM and a NULL stack: returns twice like fork. */
  pid_t child = (pid_t)syscall(SYS_clone, CLONE_FILES | SIGCHLD, NULL, NULL, NULL, NULL);
  if (child < 0) wl_die("clone(CLONE_FILES): %m");
  if (child == 0) child_main(before, ready[1]);
  int got = -1;
  if (!read_int(ready[0], &got) || got != CHILD_FD) wl_die("child failed during setup");
  close(ready[0]);
  close(ready[1]);

  wl_ready();
  wl_wait_term();

  pid_t me = getpid();
  wl_expect(kcmp(me, child, KCMP_FILES, 0, 0) == 0, "fd table not shared with the child");
  wl_expect(kcmp(me, child, KCMP_FILE, (unsigned long)before, (unsigned long)before) == 0,
            "fd %d is another file in the child", before);
  wl_expect(kcmp(me, child, KCMP_FILE, CHILD_FD, CHILD_FD) == 0,
            "fd %d is another file in the child", CHILD_FD);
  wl_expect(fcntl(CHILD_FD, F_GETFD) == FD_CLOEXEC, "fd %d (opened by the child): F_GETFD %d",
            CHILD_FD, fcntl(CHILD_FD, F_GETFD));
  wl_expect(reads_back(CHILD_FD, "from the child"), "fd %d reads wrong", CHILD_FD);
  wl_expect(!fd_open(ready[0]) && !fd_open(ready[1]), "the closed ready pipe is open again");

  int to[2], from[2];
  if (!wl_expect(pipe(to) == 0 && pipe(from) == 0, "pipe: %m")) wl_finish();
  if (dup2(to[0], TO_CHILD) != TO_CHILD || dup2(to[1], TO_CHILD + 1) != TO_CHILD + 1 ||
      dup2(from[0], FROM_CHILD) != FROM_CHILD || dup2(from[1], FROM_CHILD + 1) != FROM_CHILD + 1) {
    wl_die("dup2: %m");
  }
  close(to[0]);
  close(to[1]);
  close(from[0]);
  close(from[1]);
  int mine = create("rootnow", "from the root, now");
  wl_expect(mine >= 0, "open rootnow: %m");
  write_int(TO_CHILD + 1, mine);
  kill(child, SIGTERM);

  int theirs = -1;
  if (wl_expect(read_int(FROM_CHILD, &theirs), "reading the child's fd number")) {
    wl_expect(fd_open(theirs) && reads_back(theirs, "from the child, now"),
              "the child's new fd %d is not usable here", theirs);
  }
  write_int(TO_CHILD + 1, 1);
  int closed = -1;
  if (wl_expect(read_int(FROM_CHILD, &closed), "reading the child's close report")) {
    wl_expect(closed == mine && !fd_open(mine), "fd %d, closed by the child, is still open here",
              mine);
  }
  wl_reap(child, "child");
  wl_finish();
}
