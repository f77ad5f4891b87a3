/* O_PATH descriptors, which name a file without opening it for I/O:
 *   file  DIR/p/file (regular, known contents), O_PATH
 *   dir   DIR/p, O_PATH|O_DIRECTORY|O_CLOEXEC
 *   link  DIR/p/link (a symlink to "file"), O_PATH|O_NOFOLLOW: the link itself
 * On request: F_GETFL includes O_PATH for all three (and FD_CLOEXEC only on dir); fstat gives
 * the inode stat/lstat of the path gives (link: S_ISLNK); read, write and lseek fail with
 * EBADF on file (no I/O through an O_PATH fd); openat(dir, "file") opens and reads the file,
 * fstatat(dir, "link", AT_SYMLINK_NOFOLLOW) finds the link; readlinkat(link, "") gives "file";
 * reopening file through /proc/self/fd/N with O_RDONLY reads its contents. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define TEXT "the file behind an O_PATH fd\n"

static void expect_same_inode(int fd, const char* path, bool follow, const char* what) {
  struct stat a, b;
  if (!wl_expect(fstat(fd, &a) == 0, "%s: fstat: %m", what)) return;
  int rc = follow ? stat(path, &b) : lstat(path, &b);
  if (!wl_expect(rc == 0, "%s: stat %s: %m", what, path)) return;
  wl_expect(a.st_ino == b.st_ino && a.st_dev == b.st_dev && a.st_mode == b.st_mode,
            "%s: fstat gives inode %lu mode 0%o, the path inode %lu mode 0%o", what,
            (unsigned long)a.st_ino, (unsigned)a.st_mode, (unsigned long)b.st_ino,
            (unsigned)b.st_mode);
}

static void expect_opath(int fd, int fd_flags, const char* what) {
  int fl = fcntl(fd, F_GETFL);
  wl_expect(fl >= 0 && (fl & O_PATH), "%s: F_GETFL 0%o lacks O_PATH", what, fl);
  int fdf = fcntl(fd, F_GETFD);
  wl_expect(fdf == fd_flags, "%s: F_GETFD %d, expected %d", what, fdf, fd_flags);
}

static void expect_ebadf(long rc, const char* what) {
  wl_expect(rc < 0 && errno == EBADF, "%s through the O_PATH fd: %s, expected EBADF", what,
            rc >= 0 ? "worked" : strerror(errno));
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (mkdir(wl_path("p"), 0755) != 0) wl_die("mkdir p: %m");
  int w = open(wl_path("p/file"), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (w < 0 || !wl_write_full(w, TEXT, strlen(TEXT))) wl_die("create p/file: %m");
  close(w);
  if (symlink("file", wl_path("p/link")) != 0) wl_die("symlink: %m");

  int file = open(wl_path("p/file"), O_PATH);
  int dir = open(wl_path("p"), O_PATH | O_DIRECTORY | O_CLOEXEC);
  int link = open(wl_path("p/link"), O_PATH | O_NOFOLLOW);
  if (file < 0 || dir < 0 || link < 0) wl_die("open O_PATH: %m");

  wl_ready();
  wl_wait_term();

  expect_opath(file, 0, "file");
  expect_opath(dir, FD_CLOEXEC, "dir");
  expect_opath(link, 0, "link");
  expect_same_inode(file, wl_path("p/file"), true, "file");
  expect_same_inode(dir, wl_path("p"), true, "dir");
  expect_same_inode(link, wl_path("p/link"), false, "link");
  struct stat st;
  wl_expect(fstat(link, &st) == 0 && S_ISLNK(st.st_mode), "link: fstat mode 0%o, not a symlink",
            (unsigned)st.st_mode);
  wl_expect(fstat(dir, &st) == 0 && S_ISDIR(st.st_mode), "dir: not a directory");

  char buf[128];
  expect_ebadf(read(file, buf, sizeof buf), "read");
  expect_ebadf(write(file, "x", 1), "write");
  expect_ebadf(lseek(file, 0, SEEK_SET), "lseek");
  expect_ebadf(pread(file, buf, 1, 0), "pread");

  int f2 = openat(dir, "file", O_RDONLY | O_CLOEXEC);
  if (wl_expect(f2 >= 0, "openat(dir, \"file\"): %m")) {
    memset(buf, 0, sizeof buf);
    wl_expect(read(f2, buf, sizeof buf) == (ssize_t)strlen(TEXT) && strcmp(buf, TEXT) == 0,
              "file opened through the O_PATH dir reads wrong");
    close(f2);
  }
  wl_expect(fstatat(dir, "link", &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode),
            "fstatat(dir, \"link\") does not find the symlink");

  memset(buf, 0, sizeof buf);
  ssize_t n = readlinkat(link, "", buf, sizeof buf - 1);
  wl_expect(n == 4 && strcmp(buf, "file") == 0, "readlinkat(link, \"\"): %zd \"%s\"", n, buf);

  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", file);
  int f3 = open(proc, O_RDONLY | O_CLOEXEC);
  if (wl_expect(f3 >= 0, "reopening %s: %m", proc)) {
    memset(buf, 0, sizeof buf);
    wl_expect(read(f3, buf, sizeof buf) == (ssize_t)strlen(TEXT) && strcmp(buf, TEXT) == 0,
              "file reopened through /proc reads wrong");
    close(f3);
  }
  wl_finish();
}
