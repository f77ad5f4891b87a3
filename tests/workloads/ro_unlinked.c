/* An unlinked file on a read-only mount: a tmpfs is mounted at DIR/ro, DIR/ro/f is created
 * with 10000 known bytes, opened O_RDONLY and unlinked, then the mount is made read-only.
 * The superblock cannot go read-only while it has an open unlinked inode (the kernel answers
 * EBUSY), so it is the mount that is read-only (MS_REMOUNT|MS_BIND|MS_RDONLY): a restore cannot
 * simply create the file again at its path. DIR/ro/stay (linked, 100 bytes) shows the mount is
 * still the same tmpfs.
 * On request: the fd is O_RDONLY, reads the 10000 bytes, fstat says nlink 0 and the size, and
 * its device is DIR/ro's (the file lives on that tmpfs; fstatfs says tmpfs); /proc/self/fd/N is
 * "DIR/ro/f (deleted)"; DIR/ro is still read-only (statvfs ST_RDONLY, creating a file fails
 * with EROFS) and holds stay; the name f does not exist again.
 * The tmpfs is mounted in the caller's mount namespace, so the workload unmounts it (lazily)
 * after the checks and on setup errors, so the harness can remove DIR. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "workload.h"

#define LEN 10000
#define STAY_LEN 100

static const char* g_mnt;
static bool g_mounted;

static void unmount(void) {
  int saved = errno;
  if (g_mounted && umount2(g_mnt, MNT_DETACH) == 0) g_mounted = false;
  errno = saved;
}

#define SETUP_DIE(...)   \
  do {                   \
    unmount();           \
    wl_die(__VA_ARGS__); \
  } while (0)

static void write_file(const char* name, size_t len, uint64_t seed) {
  char buf[LEN];
  wl_fill(buf, len, seed);
  int fd = open(wl_path(name), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0 || !wl_write_full(fd, buf, len)) SETUP_DIE("create %s: %m", name);
  close(fd);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char dir[PATH_MAX];
  if (!realpath(wl_dir(), dir)) wl_die("realpath: %m");
  static char mnt[PATH_MAX + 8];
  snprintf(mnt, sizeof mnt, "%s/ro", dir);
  g_mnt = mnt;
  if (mkdir(mnt, 0755) != 0) wl_die("mkdir ro: %m");
  if (mount("crest-wl-ro", mnt, "tmpfs", 0, "size=1m,mode=0755") != 0) wl_die("mount: %m");
  g_mounted = true;
  write_file("ro/f", LEN, 151);
  write_file("ro/stay", STAY_LEN, 152);
  int fd = open(wl_path("ro/f"), O_RDONLY | O_CLOEXEC);
  if (fd < 0) SETUP_DIE("open ro/f: %m");
  if (unlink(wl_path("ro/f")) != 0) SETUP_DIE("unlink ro/f: %m");
  if (mount(NULL, mnt, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0) {
    SETUP_DIE("remount read-only: %m");
  }
  char want_link[PATH_MAX + 32];
  snprintf(want_link, sizeof want_link, "%s/f (deleted)", mnt);

  wl_ready();
  wl_wait_term();

  int fl = fcntl(fd, F_GETFL);
  wl_expect(fl >= 0 && (fl & O_ACCMODE) == O_RDONLY, "access mode 0%o, expected O_RDONLY",
            fl & O_ACCMODE);
  struct stat st, mst;
  if (wl_expect(fstat(fd, &st) == 0, "fstat: %m")) {
    wl_expect(st.st_nlink == 0, "%lu links, expected 0", (unsigned long)st.st_nlink);
    wl_expect(st.st_size == LEN, "size %lld, expected %d", (long long)st.st_size, LEN);
    if (wl_expect(stat(mnt, &mst) == 0, "stat %s: %m", mnt)) {
      wl_expect(st.st_dev == mst.st_dev, "the file is on device %#llx, DIR/ro is %#llx",
                (unsigned long long)st.st_dev, (unsigned long long)mst.st_dev);
    }
  }
  struct statfs sf;
  wl_expect(fstatfs(fd, &sf) == 0 && sf.f_type == TMPFS_MAGIC, "the file is not on a tmpfs");
  char buf[LEN];
  if (wl_expect(pread(fd, buf, LEN, 0) == LEN, "pread: %m")) {
    long bad = wl_check(buf, LEN, 151);
    wl_expect(bad < 0, "byte %ld differs", bad);
  }
  char proc[64], link[PATH_MAX];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(proc, link, sizeof link - 1);
  link[n > 0 ? n : 0] = 0;
  wl_expect(n > 0 && strcmp(link, want_link) == 0, "%s is \"%s\", expected \"%s\"", proc, link,
            want_link);
  wl_expect(access(wl_path("ro/f"), F_OK) != 0 && errno == ENOENT, "the name ro/f exists again");

  struct statvfs sv;
  wl_expect(statvfs(mnt, &sv) == 0 && (sv.f_flag & ST_RDONLY), "DIR/ro is not read-only");
  int x = open(wl_path("ro/x"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  wl_expect(x < 0 && errno == EROFS, "creating DIR/ro/x: %s, expected EROFS",
            x >= 0 ? "created" : strerror(errno));
  if (x >= 0) close(x);
  int s = open(wl_path("ro/stay"), O_RDONLY | O_CLOEXEC);
  if (wl_expect(s >= 0, "open ro/stay: %m")) {
    wl_expect(pread(s, buf, STAY_LEN, 0) == STAY_LEN && wl_check(buf, STAY_LEN, 152) < 0,
              "ro/stay reads wrong");
    close(s);
  }
  unmount();
  wl_expect(!g_mounted, "umount %s: %m", mnt);
  wl_finish();
}
