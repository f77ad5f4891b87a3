/* Open file description locks (F_OFD_SETLK) on one file F, owned by descriptions, not
 * processes:
 *   d1  opened by the root only: F_WRLCK bytes 0..9
 *   d2  opened by the root, then inherited by the child "sharer" (both keep it):
 *       F_RDLCK bytes 100..199
 * On request: F_OFD_GETLK from a fresh description reports each lock's type and exact range
 * (l_pid -1) and nothing in the gaps; from a fresh description, conflicting F_OFD_SETLK fail
 * with EAGAIN and compatible ones succeed; d1 and d2 conflict with each other although one
 * process holds both (separate owners). The sharer converts d2's lock to F_WRLCK through its
 * inherited fd (possible only for the owner) and exits; the conversion is then seen through
 * the root's d2 (one description). After each F_UNLCK a fresh description gets the range. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

static const char* type_name(int t) {
  return t == F_RDLCK ? "F_RDLCK" : t == F_WRLCK ? "F_WRLCK" : t == F_UNLCK ? "F_UNLCK" : "?";
}

static struct flock mkfl(short type, off_t start, off_t len) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  return fl;
}

static bool ofd_setlk(int fd, short type, off_t start, off_t len) {
  struct flock fl = mkfl(type, start, len);
  return fcntl(fd, F_OFD_SETLK, &fl) == 0;
}

static int fresh_desc(void) {
  int fd = open(wl_path("F"), O_RDWR | O_CLOEXEC);
  wl_expect(fd >= 0, "open F: %m");
  return fd;
}

/* F_OFD_GETLK through `fd` (a fresh description when fd < 0). */
static void expect_getlk(int fd, short type, off_t start, off_t len, const char* what, short want,
                         off_t wstart, off_t wlen) {
  int own = fd < 0 ? fresh_desc() : -1;
  struct flock fl = mkfl(type, start, len);
  int rc = fcntl(fd < 0 ? own : fd, F_OFD_GETLK, &fl);
  if (own >= 0) close(own);
  if (!wl_expect(rc == 0, "%s: F_OFD_GETLK: %m", what)) return;
  if (want == F_UNLCK) {
    wl_expect(fl.l_type == F_UNLCK, "%s: F_OFD_GETLK reports %s %lld+%lld, expected no lock", what,
              type_name(fl.l_type), (long long)fl.l_start, (long long)fl.l_len);
    return;
  }
  wl_expect(fl.l_type == want && fl.l_start == wstart && fl.l_len == wlen && fl.l_pid == -1,
            "%s: F_OFD_GETLK reports %s %lld+%lld pid %d, expected %s %lld+%lld pid -1", what,
            type_name(fl.l_type), (long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid,
            type_name(want), (long long)wstart, (long long)wlen);
}

/* F_OFD_SETLK through `fd` (a fresh description, closed afterwards, when fd < 0). */
static void expect_setlk(int fd, short type, off_t start, off_t len, bool granted,
                         const char* what) {
  int own = fd < 0 ? fresh_desc() : -1;
  struct flock fl = mkfl(type, start, len);
  int rc = fcntl(fd < 0 ? own : fd, F_OFD_SETLK, &fl);
  int err = errno;
  if (own >= 0) close(own);
  if (granted) {
    wl_expect(rc == 0, "%s: %s %lld+%lld refused: %s", what, type_name(type), (long long)start,
              (long long)len, strerror(err));
  } else {
    wl_expect(rc < 0 && (err == EAGAIN || err == EACCES), "%s: %s %lld+%lld: %s, expected EAGAIN",
              what, type_name(type), (long long)start, (long long)len,
              rc == 0 ? "granted" : strerror(err));
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int d1 = open(wl_path("F"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (d1 < 0) wl_die("open F: %m");
  char buf[300];
  wl_fill(buf, sizeof buf, 81);
  if (!wl_write_full(d1, buf, sizeof buf)) wl_die("write F: %m");
  int d2 = open(wl_path("F"), O_RDWR | O_CLOEXEC);
  if (d2 < 0) wl_die("open F again: %m");
  if (!ofd_setlk(d1, F_WRLCK, 0, 10)) wl_die("F_OFD_SETLK d1: %m");
  if (!ofd_setlk(d2, F_RDLCK, 100, 100)) wl_die("F_OFD_SETLK d2: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t sharer = wl_fork("sharer");
  if (sharer == 0) {
    close(d1); /* not the last reference: d1's lock stays with the root's fd */
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    expect_setlk(d2, F_WRLCK, 100, 100, true, "sharer converting d2's lock through its fd");
    expect_getlk(-1, F_RDLCK, 150, 1, "after the sharer's conversion", F_WRLCK, 100, 100);
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("sharer died during setup");

  wl_ready();
  wl_wait_term();

  expect_getlk(-1, F_RDLCK, 0, 1, "fresh: byte 0", F_WRLCK, 0, 10);
  expect_getlk(-1, F_RDLCK, 9, 91, "fresh: 9..99", F_WRLCK, 0, 10);
  expect_getlk(-1, F_WRLCK, 10, 90, "fresh: 10..99", F_UNLCK, 0, 0);
  expect_getlk(-1, F_RDLCK, 0, 0, "fresh: read 0..EOF", F_WRLCK, 0, 10);
  expect_getlk(-1, F_RDLCK, 100, 100, "fresh: read 100..199", F_UNLCK, 0, 0);
  expect_getlk(-1, F_WRLCK, 199, 1, "fresh: write 199", F_RDLCK, 100, 100);
  expect_getlk(-1, F_WRLCK, 200, 0, "fresh: 200..EOF", F_UNLCK, 0, 0);

  expect_setlk(-1, F_RDLCK, 5, 1, false, "fresh: read 5 (held WR by d1)");
  expect_setlk(-1, F_WRLCK, 10, 90, true, "fresh: write 10..99 (free)");
  expect_setlk(-1, F_RDLCK, 150, 10, true, "fresh: read 150..159 (held RD by d2)");
  expect_setlk(-1, F_WRLCK, 150, 1, false, "fresh: write 150 (held RD by d2)");

  /* One process, two owners. */
  expect_getlk(d1, F_WRLCK, 100, 1, "d1 looking at d2's range", F_RDLCK, 100, 100);
  expect_getlk(d2, F_WRLCK, 0, 1, "d2 looking at d1's range", F_WRLCK, 0, 10);
  expect_setlk(d1, F_WRLCK, 150, 1, false, "d1 writing into d2's read lock");
  expect_setlk(d2, F_RDLCK, 5, 1, false, "d2 reading into d1's write lock");

  kill(sharer, SIGTERM);
  wl_reap(sharer, "sharer");
  /* The sharer's conversion is the root's d2 lock now (the sharer's fd is gone). */
  expect_getlk(-1, F_RDLCK, 150, 1, "after the sharer exited", F_WRLCK, 100, 100);
  expect_setlk(d2, F_UNLCK, 100, 100, true, "d2 F_UNLCK");
  expect_setlk(-1, F_WRLCK, 100, 100, true, "fresh: write 100..199 after d2's release");
  expect_setlk(-1, F_WRLCK, 0, 10, false, "fresh: write 0..9 before d1's release");
  expect_setlk(d1, F_UNLCK, 0, 10, true, "d1 F_UNLCK");
  expect_setlk(-1, F_WRLCK, 0, 0, true, "fresh: write whole file after both released");
  wl_finish();
}
