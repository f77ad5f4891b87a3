/* Timestamps of files a restore has no business writing to, all in the directory DIR/t:
 *   plain    opened O_RDWR, written before setup only, offset 1000
 *   shared   mapped MAP_SHARED, 3 pages written through the mapping, then msync(MS_SYNC)
 *   private  mapped MAP_PRIVATE and written through the mapping (copy-on-write: the file keeps
 *            its bytes)
 * st_mtim and st_ctim (to the nanosecond) of the three files and of DIR/t are recorded at setup
 * (DIR itself is not used: the harness creates files in it). On request they must be exactly
 * the same: restoring the fds and mappings (including the shared mapping's pages and the private
 * mapping's modified pages) must not write to, truncate, chmod or re-create any of them, nor
 * add or remove entries in DIR/t. Contents are checked too: the files hold what was written,
 * the shared mapping shows the file, the private mapping its own modified bytes. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define PG WL_PAGE
#define LEN (3 * PG)

struct times {
  struct timespec m, c;
  ino_t ino;
  off_t size;
};

static struct times times_of(const struct stat* st) {
  struct times t = {st->st_mtim, st->st_ctim, st->st_ino, st->st_size};
  return t;
}

static bool same_ts(struct timespec a, struct timespec b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

static void expect_same(const struct times* was, const struct stat* st, const char* name) {
  struct times now = times_of(st);
  wl_expect(same_ts(was->m, now.m), "%s: mtime %lld.%09ld, was %lld.%09ld", name,
            (long long)now.m.tv_sec, now.m.tv_nsec, (long long)was->m.tv_sec, was->m.tv_nsec);
  wl_expect(same_ts(was->c, now.c), "%s: ctime %lld.%09ld, was %lld.%09ld", name,
            (long long)now.c.tv_sec, now.c.tv_nsec, (long long)was->c.tv_sec, was->c.tv_nsec);
  wl_expect(was->ino == now.ino && was->size == now.size,
            "%s: inode %llu size %lld, was inode %llu size %lld", name, (unsigned long long)now.ino,
            (long long)now.size, (unsigned long long)was->ino, (long long)was->size);
}

static void fstat_same(int fd, const struct times* was, const char* name) {
  struct stat st;
  if (wl_expect(fstat(fd, &st) == 0, "fstat %s: %m", name)) expect_same(was, &st, name);
}

static int create(const char* name, uint64_t seed) {
  int fd = open(wl_path(name), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) wl_die("open %s: %m", name);
  static char buf[LEN];
  wl_fill(buf, LEN, seed);
  if (!wl_write_full(fd, buf, LEN)) wl_die("write %s: %m", name);
  return fd;
}

static void check_file(int fd, uint64_t seed, const char* name) {
  static char buf[LEN];
  if (wl_expect(pread(fd, buf, LEN, 0) == LEN, "pread %s: %m", name)) {
    long bad = wl_check(buf, LEN, seed);
    wl_expect(bad < 0, "%s: byte %ld differs", name, bad);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (mkdir(wl_path("t"), 0755) != 0) wl_die("mkdir t: %m");
  int plain = create("t/plain", 111);
  lseek(plain, 1000, SEEK_SET);

  int shared = open(wl_path("t/shared"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (shared < 0 || ftruncate(shared, LEN) != 0) wl_die("create shared: %m");
  char* sm = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, shared, 0);
  if (sm == MAP_FAILED) wl_die("mmap shared: %m");
  wl_fill(sm, LEN, 112);
  if (msync(sm, LEN, MS_SYNC) != 0) wl_die("msync: %m");
  close(shared); /* the mapping keeps the file */

  int priv = create("t/private", 113);
  char* pm = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE, priv, 0);
  if (pm == MAP_FAILED) wl_die("mmap private: %m");
  wl_fill(pm + PG, PG, 114); /* the middle page becomes an anonymous copy */

  /* Let the clock move on, so that any later change shows in the timestamps. */
  struct timespec ts = {0, 20000000};
  nanosleep(&ts, NULL);
  struct stat st;
  struct times t_plain, t_shared, t_priv, t_dir;
  if (fstat(plain, &st) != 0) wl_die("fstat plain: %m");
  t_plain = times_of(&st);
  if (stat(wl_path("t/shared"), &st) != 0) wl_die("stat shared: %m");
  t_shared = times_of(&st);
  if (fstat(priv, &st) != 0) wl_die("fstat private: %m");
  t_priv = times_of(&st);
  if (stat(wl_path("t"), &st) != 0) wl_die("stat t: %m");
  t_dir = times_of(&st);

  wl_ready();
  wl_wait_term();

  fstat_same(plain, &t_plain, "plain");
  fstat_same(priv, &t_priv, "private");
  if (wl_expect(stat(wl_path("t/shared"), &st) == 0, "stat shared: %m")) {
    expect_same(&t_shared, &st, "shared");
  }
  if (wl_expect(stat(wl_path("t"), &st) == 0, "stat t: %m")) expect_same(&t_dir, &st, "DIR/t");

  /* Contents, read without writing anything. */
  wl_expect(lseek(plain, 0, SEEK_CUR) == 1000, "plain offset %lld",
            (long long)lseek(plain, 0, SEEK_CUR));
  check_file(plain, 111, "plain");
  int sr = open(wl_path("t/shared"), O_RDONLY | O_CLOEXEC);
  if (wl_expect(sr >= 0, "open shared: %m")) {
    check_file(sr, 112, "shared (file)");
    close(sr);
  }
  wl_expect(wl_check(sm, LEN, 112) < 0, "shared mapping differs");
  check_file(priv, 113, "private (file)");
  static char ref[LEN];
  wl_fill(ref, LEN, 113);
  wl_fill(ref + PG, PG, 114);
  wl_expect(memcmp(pm, ref, LEN) == 0, "private mapping differs");
  wl_finish();
}
