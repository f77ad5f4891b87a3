/* An open directory that was removed: DIR/d is opened O_RDONLY|O_DIRECTORY (offset moved by a
 * getdents while it still held DIR/d/f), then f is unlinked and d removed (rmdir).
 * On request: fstat(fd) is a directory with nlink 0; /proc/self/fd/N reads "DIR/d (deleted)"
 * and reopening it with O_RDONLY|O_DIRECTORY gives a directory with the same inode; the
 * directory accepts no new entries (openat(fd, "x", O_CREAT) and mkdirat fail with ENOENT) and
 * lists nothing (getdents64 fails with ENOENT); the name d does not exist again. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

static long getdents(int fd) {
  char buf[4096];
  return syscall(SYS_getdents64, fd, buf, sizeof buf);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char dir[PATH_MAX];
  if (!realpath(wl_dir(), dir)) wl_die("realpath: %m");
  if (mkdir(wl_path("d"), 0750) != 0) wl_die("mkdir d: %m");
  int f = open(wl_path("d/f"), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (f < 0) wl_die("create d/f: %m");
  close(f);
  int fd = open(wl_path("d"), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) wl_die("open d: %m");
  if (getdents(fd) <= 0) wl_die("getdents d: %m");
  if (unlink(wl_path("d/f")) != 0 || rmdir(wl_path("d")) != 0) wl_die("remove d: %m");
  char want_link[PATH_MAX + 16];
  snprintf(want_link, sizeof want_link, "%s/d (deleted)", dir);

  wl_ready();
  wl_wait_term();

  struct stat st;
  if (wl_expect(fstat(fd, &st) == 0, "fstat: %m")) {
    wl_expect(S_ISDIR(st.st_mode), "not a directory (mode 0%o)", (unsigned)st.st_mode);
    wl_expect(st.st_nlink == 0, "%lu links, expected 0", (unsigned long)st.st_nlink);
    wl_expect((st.st_mode & 07777) == 0750, "mode %04o, expected 0750",
              (unsigned)(st.st_mode & 07777));
  }
  int fl = fcntl(fd, F_GETFL);
  wl_expect(fl >= 0 && (fl & (O_ACCMODE | O_DIRECTORY)) == (O_RDONLY | O_DIRECTORY), "flags 0%o",
            fl);
  char proc[64], link[PATH_MAX];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(proc, link, sizeof link - 1);
  link[n > 0 ? n : 0] = 0;
  wl_expect(n > 0 && strcmp(link, want_link) == 0, "%s is \"%s\", expected \"%s\"", proc, link,
            want_link);

  int again = open(proc, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (wl_expect(again >= 0, "reopening %s: %m", proc)) {
    struct stat st2;
    wl_expect(fstat(again, &st2) == 0 && S_ISDIR(st2.st_mode) && st2.st_ino == st.st_ino &&
                  st2.st_dev == st.st_dev,
              "the reopened fd is not the same directory");
    close(again);
  }

  int x = openat(fd, "x", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  wl_expect(x < 0 && errno == ENOENT, "openat(fd, \"x\", O_CREAT): %s, expected ENOENT",
            x >= 0 ? "created" : strerror(errno));
  if (x >= 0) close(x);
  int r = mkdirat(fd, "y", 0700);
  wl_expect(r < 0 && errno == ENOENT, "mkdirat(fd, \"y\"): %s, expected ENOENT",
            r == 0 ? "created" : strerror(errno));
  lseek(fd, 0, SEEK_SET);
  long got = getdents(fd);
  wl_expect(got < 0 && errno == ENOENT, "getdents64 on the removed directory: %ld (%s)", got,
            got < 0 ? strerror(errno) : "entries listed");
  wl_expect(access(wl_path("d"), F_OK) != 0 && errno == ENOENT, "the name d exists again");
  wl_finish();
}
