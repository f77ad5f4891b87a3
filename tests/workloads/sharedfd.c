/* Open file descriptions shared across fork:
 *   "log"  root and child write through the same description; every write moves the one
 *          shared offset, so each sees the other's writes in its own offset.
 *   "pair" opened by the root, inherited by two children, closed by the root: shared by the
 *          children only.
 *   the root also holds a dup of "log" with FD_CLOEXEC set (one description, two fd flags).
 * Sharing is checked both by behaviour (offsets) and by kcmp(KCMP_FILE). */
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define REC 16

static int kcmp_file(pid_t a, pid_t b, int fda, int fdb) {
  return (int)syscall(SYS_kcmp, a, b, KCMP_FILE, fda, fdb);
}

static void write_record(int fd, const char* tag) {
  char rec[REC];
  memset(rec, '.', REC);
  memcpy(rec, tag, strnlen(tag, REC));
  rec[REC - 1] = '\n';
  if (!wl_write_full(fd, rec, REC)) wl_die("write %s: %s", tag, strerror(errno));
}

static void expect_pos(int fd, off_t want, const char* what) {
  off_t pos = lseek(fd, 0, SEEK_CUR);
  wl_expect(pos == want, "%s: offset %lld, expected %lld", what, (long long)pos, (long long)want);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int log = open(wl_path("log"), O_RDWR | O_CREAT | O_TRUNC, 0644);
  int pair = open(wl_path("pair"), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (log < 0 || pair < 0) wl_die("open: %m");
  write_record(log, "R1");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t writer = wl_fork("writer");
  if (writer == 0) {
    close(pair);
    write_record(log, "C1"); /* lands after R1: one offset */
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    /* The root wrote R2 before asking us. */
    expect_pos(log, 3 * REC, "log in the writer");
    write_record(log, "C2");
    wl_finish();
  }
  pid_t p1 = wl_fork("pair1");
  if (p1 == 0) {
    close(log);
    write_record(pair, "P1");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    expect_pos(pair, 2 * REC, "pair in pair1");
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 2, NULL, 0)) wl_die("child died during setup");
  /* pair1 wrote first (we waited for it); pair2 appends at the shared offset. */
  struct wl_sync sync2;
  wl_sync_init(&sync2);
  pid_t p2 = wl_fork("pair2");
  if (p2 == 0) {
    close(log);
    write_record(pair, "P2");
    wl_sync_post(&sync2, NULL, 0);
    wl_wait_term();
    expect_pos(pair, 2 * REC, "pair in pair2");
    wl_finish();
  }
  if (!wl_sync_wait(&sync2, 1, NULL, 0)) wl_die("pair2 died during setup");
  close(pair);
  int log_dup = fcntl(log, F_DUPFD_CLOEXEC, 20);
  if (log_dup < 0) wl_die("F_DUPFD_CLOEXEC: %m");

  wl_ready();
  wl_wait_term();

  pid_t me = getpid();
  wl_expect(kcmp_file(me, writer, log, log) == 0, "log: root and writer hold different files");
  wl_expect(kcmp_file(me, me, log, log_dup) == 0, "log and its dup are different files");
  wl_expect(kcmp_file(p1, p2, pair, pair) == 0, "pair: the two children hold different files");
  wl_expect(fcntl(log, F_GETFD) == 0 && fcntl(log_dup, F_GETFD) == FD_CLOEXEC,
            "fd flags of log/dup are %d/%d", fcntl(log, F_GETFD), fcntl(log_dup, F_GETFD));
  wl_expect(fcntl(pair, F_GETFD) < 0, "the root's closed fd %d is open again", pair);

  expect_pos(log, 2 * REC, "log in the root");
  write_record(log, "R2");
  expect_pos(log_dup, 3 * REC, "dup of log in the root");
  kill(writer, SIGTERM);
  kill(p1, SIGTERM);
  kill(p2, SIGTERM);
  wl_reap(writer, "writer");
  wl_reap(p1, "pair1");
  wl_reap(p2, "pair2");
  expect_pos(log, 4 * REC, "log in the root after the writer's write");

  char content[4 * REC + 1] = {0};
  if (wl_expect(pread(log, content, 4 * REC, 0) == 4 * REC, "pread log: %m")) {
    wl_expect(strncmp(content, "R1", 2) == 0 && strncmp(content + REC, "C1", 2) == 0 &&
                  strncmp(content + 2 * REC, "R2", 2) == 0 &&
                  strncmp(content + 3 * REC, "C2", 2) == 0,
              "log holds records in the wrong order");
  }
  int pr = open(wl_path("pair"), O_RDONLY | O_CLOEXEC);
  char pc[2 * REC];
  wl_expect(pr >= 0 && pread(pr, pc, 2 * REC, 0) == 2 * REC && strncmp(pc, "P1", 2) == 0 &&
                strncmp(pc + REC, "P2", 2) == 0,
            "pair holds the wrong records");
  if (pr >= 0) close(pr);
  wl_finish();
}
