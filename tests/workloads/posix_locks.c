/* POSIX record locks (fcntl F_SETLK), owned by processes:
 *   file P  root  F_WRLCK bytes 10..29, F_RDLCK 50..EOF (l_len 0)
 *           child F_RDLCK 50..99 (shared with the root's read lock)
 *   file Q  child F_WRLCK 0..4
 * The child sends its getpid() through the readiness pipe. On request a fresh process (forked
 * at check time, its own description) sees each lock with F_GETLK: type, exact range and l_pid
 * = the holder's getpid() (F_GETLK answers in the caller's pid namespace); conflicting F_SETLK
 * fail with EAGAIN/EACCES, compatible ones and the gaps between the locks succeed. The root
 * itself sees the child's lock on 50..99 (its own locks never conflict with it). After each
 * holder releases with F_UNLCK, the contender gets the range. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

struct lk_result {
  int rc;
  int err;
  struct flock fl;
};

static struct flock mkfl(short type, off_t start, off_t len) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  return fl;
}

/* fcntl(cmd) on a new description of `name` in a new process (whose locks die with it). */
static struct lk_result fresh(const char* name, int cmd, short type, off_t start, off_t len) {
  struct lk_result res = {.rc = -1, .err = EIO};
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    wl_expect(false, "pipe: %m");
    return res;
  }
  pid_t pid = wl_fork("contender");
  if (pid == 0) {
    struct lk_result r = {.rc = -1, .err = 0, .fl = mkfl(type, start, len)};
    int fd = open(wl_path(name), O_RDWR | O_CLOEXEC);
    if (fd >= 0) r.rc = fcntl(fd, cmd, &r.fl);
    r.err = r.rc < 0 ? errno : 0;
    _exit(wl_write_full(p[1], &r, sizeof r) ? 0 : 1);
  }
  close(p[1]);
  if (!wl_read_full(p[0], &res, sizeof res)) res.rc = -2;
  close(p[0]);
  wl_reap(pid, "contender");
  return res;
}

static const char* type_name(int t) {
  return t == F_RDLCK ? "F_RDLCK" : t == F_WRLCK ? "F_WRLCK" : t == F_UNLCK ? "F_UNLCK" : "?";
}

/* F_GETLK for (type, start, len) must report `want` (F_UNLCK: no conflicting lock). */
static void expect_getlk(const struct lk_result* r, const char* what, short want, off_t start,
                         off_t len, pid_t pid) {
  if (!wl_expect(r->rc == 0, "%s: F_GETLK failed (rc %d): %s", what, r->rc, strerror(r->err))) {
    return;
  }
  const struct flock* f = &r->fl;
  if (want == F_UNLCK) {
    wl_expect(f->l_type == F_UNLCK, "%s: F_GETLK reports %s %lld+%lld pid %d, expected no lock",
              what, type_name(f->l_type), (long long)f->l_start, (long long)f->l_len,
              (int)f->l_pid);
    return;
  }
  wl_expect(f->l_type == want && f->l_start == start && f->l_len == len && f->l_pid == pid,
            "%s: F_GETLK reports %s %lld+%lld pid %d, expected %s %lld+%lld pid %d", what,
            type_name(f->l_type), (long long)f->l_start, (long long)f->l_len, (int)f->l_pid,
            type_name(want), (long long)start, (long long)len, (int)pid);
}

static void expect_getlk_fresh(const char* name, short type, off_t start, off_t len,
                               const char* what, short want, off_t wstart, off_t wlen, pid_t pid) {
  struct lk_result r = fresh(name, F_GETLK, type, start, len);
  expect_getlk(&r, what, want, wstart, wlen, pid);
}

static void expect_setlk(const char* name, short type, off_t start, off_t len, bool granted,
                         const char* what) {
  struct lk_result r = fresh(name, F_SETLK, type, start, len);
  if (granted) {
    wl_expect(r.rc == 0, "%s: a fresh %s on %s %lld+%lld was refused (rc %d): %s", what,
              type_name(type), name, (long long)start, (long long)len, r.rc, strerror(r.err));
  } else {
    wl_expect(r.rc == -1 && (r.err == EAGAIN || r.err == EACCES),
              "%s: a fresh %s on %s %lld+%lld: rc %d (%s), expected EAGAIN/EACCES", what,
              type_name(type), name, (long long)start, (long long)len, r.rc,
              r.rc == 0 ? "granted" : strerror(r.err));
  }
}

static bool setlk(int fd, short type, off_t start, off_t len) {
  struct flock fl = mkfl(type, start, len);
  return fcntl(fd, F_SETLK, &fl) == 0;
}

static int create_file(const char* name) {
  int fd = open(wl_path(name), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) wl_die("open %s: %m", name);
  char buf[200];
  wl_fill(buf, sizeof buf, 71);
  if (!wl_write_full(fd, buf, sizeof buf)) wl_die("write %s: %m", name);
  return fd;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  /* Never open and close P or Q again in a holder: any close drops its POSIX locks. */
  int fp = create_file("P");
  int fq = create_file("Q");
  close(fq);
  if (!setlk(fp, F_WRLCK, 10, 20) || !setlk(fp, F_RDLCK, 50, 0)) wl_die("root F_SETLK: %m");
  pid_t root = getpid();

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("holder");
  if (child == 0) {
    close(fp); /* held no locks of ours: the root's are its own */
    int cp = open(wl_path("P"), O_RDWR | O_CLOEXEC);
    int cq = open(wl_path("Q"), O_RDWR | O_CLOEXEC);
    if (cp < 0 || cq < 0) wl_die("child open: %m");
    if (!setlk(cp, F_RDLCK, 50, 50) || !setlk(cq, F_WRLCK, 0, 5)) wl_die("child F_SETLK: %m");
    pid_t me = getpid();
    wl_sync_post(&sync, &me, sizeof me);
    wl_wait_term();
    /* The root released its own locks on P before asking us. */
    pid_t now = getpid();
    expect_getlk_fresh("P", F_WRLCK, 0, 0, "P, child's lock alone", F_RDLCK, 50, 50, now);
    expect_getlk_fresh("Q", F_WRLCK, 0, 0, "Q, child's lock", F_WRLCK, 0, 5, now);
    wl_expect(setlk(cp, F_UNLCK, 50, 50), "child F_UNLCK P: %m");
    wl_expect(setlk(cq, F_UNLCK, 0, 5), "child F_UNLCK Q: %m");
    expect_getlk_fresh("P", F_WRLCK, 0, 0, "P after all released", F_UNLCK, 0, 0, 0);
    expect_setlk("P", F_WRLCK, 0, 0, true, "P after all released");
    expect_setlk("Q", F_WRLCK, 0, 0, true, "Q after the child released");
    wl_finish();
  }
  pid_t holder;
  if (!wl_sync_wait(&sync, 1, &holder, sizeof holder)) wl_die("child died during setup");
  if (holder != child) wl_die("child says its pid is %d, fork said %d", (int)holder, (int)child);

  wl_ready();
  wl_wait_term();

  /* What a fresh process sees, range by range. */
  expect_getlk_fresh("P", F_RDLCK, 0, 10, "P 0..9", F_UNLCK, 0, 0, 0);
  expect_getlk_fresh("P", F_RDLCK, 0, 11, "P 0..10", F_WRLCK, 10, 20, root);
  expect_getlk_fresh("P", F_RDLCK, 29, 1, "P 29", F_WRLCK, 10, 20, root);
  expect_getlk_fresh("P", F_WRLCK, 30, 20, "P 30..49", F_UNLCK, 0, 0, 0);
  expect_getlk_fresh("P", F_RDLCK, 50, 100, "P 50..149 read", F_UNLCK, 0, 0, 0);
  expect_getlk_fresh("P", F_WRLCK, 100, 1, "P 100 write", F_RDLCK, 50, 0, root);
  expect_getlk_fresh("P", F_WRLCK, 1000000, 1, "P 1000000 write", F_RDLCK, 50, 0, root);
  expect_getlk_fresh("Q", F_RDLCK, 0, 0, "Q whole file", F_WRLCK, 0, 5, holder);
  expect_getlk_fresh("Q", F_RDLCK, 5, 0, "Q 5..EOF", F_UNLCK, 0, 0, 0);
  /* The root does not conflict with itself: it sees the child's read lock only. */
  struct lk_result own = {.rc = -1, .fl = mkfl(F_WRLCK, 0, 0)};
  own.rc = fcntl(fp, F_GETLK, &own.fl);
  own.err = errno;
  expect_getlk(&own, "P from the root", F_RDLCK, 50, 50, holder);

  /* Contention. */
  expect_setlk("P", F_WRLCK, 10, 20, false, "P 10..29 held WR");
  expect_setlk("P", F_RDLCK, 29, 1, false, "P 29 held WR");
  expect_setlk("P", F_WRLCK, 0, 10, true, "P 0..9 free");
  expect_setlk("P", F_WRLCK, 30, 20, true, "P 30..49 free");
  expect_setlk("P", F_RDLCK, 50, 100, true, "P 50..149 held RD");
  expect_setlk("P", F_WRLCK, 150, 10, false, "P 150.. held RD by the root");
  expect_setlk("Q", F_RDLCK, 4, 1, false, "Q 4 held WR");
  expect_setlk("Q", F_WRLCK, 5, 100, true, "Q 5.. free");

  /* The root releases; then the child's lock is the only one left on P. */
  wl_expect(setlk(fp, F_UNLCK, 10, 20), "root F_UNLCK 10..29: %m");
  expect_setlk("P", F_WRLCK, 10, 20, true, "P 10..29 released");
  wl_expect(setlk(fp, F_UNLCK, 50, 0), "root F_UNLCK 50..EOF: %m");
  expect_setlk("P", F_WRLCK, 100, 0, true, "P 100.. released");
  expect_setlk("P", F_WRLCK, 99, 1, false, "P 99 still held RD by the child");

  kill(child, SIGTERM);
  wl_reap(child, "holder");
  wl_finish();
}
