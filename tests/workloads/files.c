/* Regular files at offsets, with O_APPEND, O_NONBLOCK, close-on-exec, an fd duplicated to a
 * high number (one description, two fds), an offset past end of file, a directory, /dev/null
 * and /dev/zero, plus cwd and umask. The check compares the whole fd table, each fd's offset,
 * status flags and fd flags, and that writes land where the restored offsets say. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "workload.h"

#define F1_LEN 4096
#define F2_LEN 500
#define F3_LEN 100
#define FD_DUP 100
#define FD_HIGH 57

struct expect_fd {
  int fd;
  const char* name;
  off_t pos;    /* -1: not seekable / not checked */
  int flags;    /* F_GETFL & (O_ACCMODE|O_APPEND|O_NONBLOCK) */
  int fd_flags; /* F_GETFD */
};

static int must_open(const char* path, int flags, mode_t mode) {
  int fd = open(path, flags, mode);
  if (fd < 0) wl_die("open %s: %s", path, strerror(errno));
  return fd;
}

static void create_file(const char* name, size_t len, uint64_t seed) {
  char buf[F1_LEN];
  wl_fill(buf, len, seed);
  int fd = must_open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (!wl_write_full(fd, buf, len)) wl_die("write %s: %s", name, strerror(errno));
  close(fd);
}

/* Size of an open file, -1 on error (called before the check that prints it: argument
 * evaluation order is unspecified, so a value must not be produced inside the same call). */
static long long fd_size(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? (long long)st.st_size : -1;
}

static void check_fd(const struct expect_fd* e) {
  int fl = fcntl(e->fd, F_GETFL);
  int fdf = fcntl(e->fd, F_GETFD);
  if (!wl_expect(fl >= 0 && fdf >= 0, "%s (fd %d) is not open", e->name, e->fd)) return;
  wl_expect((fl & (O_ACCMODE | O_APPEND | O_NONBLOCK)) == e->flags,
            "%s (fd %d): flags 0x%x, expected 0x%x", e->name, e->fd,
            fl & (O_ACCMODE | O_APPEND | O_NONBLOCK), e->flags);
  wl_expect(fdf == e->fd_flags, "%s (fd %d): fd flags %d, expected %d", e->name, e->fd, fdf,
            e->fd_flags);
  if (e->pos >= 0) {
    off_t pos = lseek(e->fd, 0, SEEK_CUR);
    wl_expect(pos == e->pos, "%s (fd %d): offset %lld, expected %lld", e->name, e->fd,
              (long long)pos, (long long)e->pos);
  }
}

/* The open fds must be exactly the expected ones: nothing lost, nothing leaked in (the ready
 * pipe, a restorer's status fd or its own files). */
static void check_fd_table(const struct expect_fd* fds, int n) {
  DIR* d = opendir("/proc/self/fd");
  if (!wl_expect(d != NULL, "opendir /proc/self/fd: %m")) return;
  int self = dirfd(d);
  struct dirent* e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    int fd = atoi(e->d_name);
    if (fd == self) continue;
    bool known = fd <= 2;
    for (int i = 0; i < n; i++) known = known || fds[i].fd == fd;
    if (!known) {
      char link[PATH_MAX] = "?", path[64];
      snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
      ssize_t l = readlink(path, link, sizeof link - 1);
      if (l >= 0) link[l] = 0;
      wl_expect(false, "unexpected fd %d open (%s)", fd, link);
    }
  }
  closedir(d);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (chdir(wl_dir()) != 0) wl_die("chdir: %m");
  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) wl_die("getcwd: %m");
  umask(027);

  create_file("f1.dat", F1_LEN, 21);
  create_file("f3.dat", F3_LEN, 23);

  int fd_a = must_open("f1.dat", O_RDWR, 0);
  lseek(fd_a, 1234, SEEK_SET);
  if (dup2(fd_a, FD_DUP) != FD_DUP) wl_die("dup2: %m");
  int fd_c = must_open("f1.dat", O_RDONLY | O_CLOEXEC | O_NONBLOCK, 0);
  lseek(fd_c, 77, SEEK_SET);

  int fd_b = must_open("f2.log", O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644);
  char buf[F2_LEN];
  wl_fill(buf, F2_LEN, 22);
  if (!wl_write_full(fd_b, buf, F2_LEN)) wl_die("write f2: %m");

  int tmp = must_open("f3.dat", O_RDWR, 0);
  if (dup3(tmp, FD_HIGH, O_CLOEXEC) != FD_HIGH) wl_die("dup3: %m");
  close(tmp);
  lseek(FD_HIGH, 10000, SEEK_SET); /* past EOF: the next write makes a hole */

  int fd_dir = must_open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  int fd_null = must_open("/dev/null", O_RDWR, 0);
  int fd_zero = must_open("/dev/zero", O_RDONLY | O_CLOEXEC, 0);

  const struct expect_fd fds[] = {
      {fd_a, "f1.dat O_RDWR", 1234, O_RDWR, 0},
      {FD_DUP, "dup of f1.dat", 1234, O_RDWR, 0},
      {fd_c, "f1.dat O_RDONLY|O_NONBLOCK|O_CLOEXEC", 77, O_RDONLY | O_NONBLOCK, FD_CLOEXEC},
      {fd_b, "f2.log O_APPEND", F2_LEN, O_WRONLY | O_APPEND, 0},
      {FD_HIGH, "f3.dat past EOF", 10000, O_RDWR, FD_CLOEXEC},
      {fd_dir, "directory", -1, O_RDONLY, FD_CLOEXEC},
      {fd_null, "/dev/null", -1, O_RDWR, 0},
      {fd_zero, "/dev/zero", -1, O_RDONLY, FD_CLOEXEC},
  };
  const int nfds = (int)(sizeof fds / sizeof fds[0]);

  wl_ready();
  wl_wait_term();

  check_fd_table(fds, nfds);
  for (int i = 0; i < nfds; i++) check_fd(&fds[i]);

  char now[PATH_MAX];
  wl_expect(getcwd(now, sizeof now) && strcmp(now, cwd) == 0, "cwd is %s, expected %s", now, cwd);
  mode_t old = umask(022);
  wl_expect(old == 027, "umask %03o, expected 027", (unsigned)old);
  umask(old);

  /* fd_a and FD_DUP are one description: moving one moves the other. */
  lseek(fd_a, 2000, SEEK_SET);
  wl_expect(lseek(FD_DUP, 0, SEEK_CUR) == 2000, "dup'ed fd no longer shares the offset");
  lseek(fd_a, 1234, SEEK_SET);

  /* f1 unchanged; a write through fd_a lands at its offset, a read through fd_c at its own. */
  char f1[F1_LEN];
  if (wl_expect(pread(fd_c, f1, F1_LEN, 0) == F1_LEN, "pread f1: %m")) {
    wl_expect(wl_check(f1, F1_LEN, 21) < 0, "f1.dat contents changed");
  }
  char ten[10];
  if (wl_expect(read(fd_c, ten, 10) == 10, "read fd_c: %m")) {
    wl_expect(memcmp(ten, f1 + 77, 10) == 0, "read at fd_c's offset returned other bytes");
  }
  wl_expect(write(fd_a, "XYZ", 3) == 3, "write fd_a: %m");
  char xyz[3] = {0};
  wl_expect(pread(fd_c, xyz, 3, 1234) == 3 && memcmp(xyz, "XYZ", 3) == 0,
            "write through fd_a did not land at 1234");

  /* O_APPEND: after the file grew through another description, a write lands at the end. */
  int other = must_open("f2.log", O_WRONLY | O_APPEND | O_CLOEXEC, 0);
  wl_expect(wl_write_full(other, buf, 100), "extend f2.log");
  close(other);
  wl_expect(write(fd_b, "APPENDTEST", 10) == 10, "write fd_b: %m");
  struct stat st;
  long long size = fd_size(fd_b);
  wl_expect(size == F2_LEN + 110, "f2.log size %lld, expected %d", size, F2_LEN + 110);
  int f2r = must_open("f2.log", O_RDONLY | O_CLOEXEC, 0);
  char tail[10] = {0};
  wl_expect(pread(f2r, tail, 10, F2_LEN + 100) == 10 && memcmp(tail, "APPENDTEST", 10) == 0,
            "O_APPEND write did not land at the end");
  close(f2r);

  /* Past EOF: size unchanged until the write, then a hole and the bytes at 10000. */
  size = fd_size(FD_HIGH);
  wl_expect(size == F3_LEN, "f3.dat size %lld, expected %d", size, F3_LEN);
  wl_expect(write(FD_HIGH, "END", 3) == 3, "write f3: %m");
  size = fd_size(FD_HIGH);
  wl_expect(size == 10003, "f3.dat size %lld after the write, expected 10003", size);
  char hole[16], end[3];
  wl_expect(pread(FD_HIGH, hole, 16, 5000) == 16 && wl_check_zero(hole, 16) < 0,
            "f3.dat hole not zero");
  wl_expect(pread(FD_HIGH, end, 3, 10000) == 3 && memcmp(end, "END", 3) == 0,
            "write past EOF landed elsewhere");

  /* The directory fd is this directory. */
  struct stat dst, here;
  wl_expect(fstat(fd_dir, &dst) == 0 && stat(cwd, &here) == 0 && dst.st_ino == here.st_ino &&
                S_ISDIR(dst.st_mode),
            "directory fd is not the working directory");
  wl_expect(fstatat(fd_dir, "f1.dat", &st, 0) == 0, "fstatat through the directory fd failed");

  wl_expect(fstat(fd_null, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3),
            "fd %d is not /dev/null", fd_null);
  wl_expect(write(fd_null, "gone", 4) == 4, "write /dev/null failed");
  char z[64];
  memset(z, 1, sizeof z);
  wl_expect(fstat(fd_zero, &st) == 0 && st.st_rdev == makedev(1, 5) &&
                read(fd_zero, z, sizeof z) == (ssize_t)sizeof z && wl_check_zero(z, sizeof z) < 0,
            "fd %d is not /dev/zero", fd_zero);
  wl_finish();
}
