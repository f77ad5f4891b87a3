/* Device nodes unlinked while open: mknod DIR/null c 1 3 (mode 0620) and DIR/zero c 1 5
 * (mode 0604), open both O_RDWR, unlink both names.
 * On request: fstat of each fd is a character device with the same rdev and mode, nlink 0 (a
 * node of its own, not /dev/null reopened); /proc/self/fd/N ends in " (deleted)"; the names do
 * not exist again; and the devices behave: the null one takes writes and reads EOF, the zero
 * one reads zeros and takes writes. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "workload.h"

struct node {
  const char* name;
  unsigned major, minor;
  mode_t mode;
  int fd;
};

static bool deleted_link(int fd) {
  char path[64], link[PATH_MAX];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) return false;
  link[n] = 0;
  return n > 10 && strcmp(link + n - 10, " (deleted)") == 0;
}

static void setup(struct node* nd) {
  const char* path = wl_path(nd->name);
  if (mknod(path, S_IFCHR | nd->mode, makedev(nd->major, nd->minor)) != 0) {
    wl_die("mknod %s: %m", nd->name);
  }
  if (chmod(path, nd->mode) != 0) wl_die("chmod %s: %m", nd->name); /* umask-proof */
  nd->fd = open(path, O_RDWR | O_CLOEXEC);
  if (nd->fd < 0) wl_die("open %s: %m", nd->name);
  if (unlink(path) != 0) wl_die("unlink %s: %m", nd->name);
}

static void check(const struct node* nd) {
  struct stat st;
  if (!wl_expect(fstat(nd->fd, &st) == 0, "fstat %s: %m", nd->name)) return;
  wl_expect(S_ISCHR(st.st_mode), "%s: not a character device (mode 0%o)", nd->name,
            (unsigned)st.st_mode);
  wl_expect(st.st_rdev == makedev(nd->major, nd->minor), "%s: rdev %u:%u, expected %u:%u", nd->name,
            major(st.st_rdev), minor(st.st_rdev), nd->major, nd->minor);
  wl_expect((st.st_mode & 07777) == nd->mode, "%s: mode %04o, expected %04o", nd->name,
            (unsigned)(st.st_mode & 07777), (unsigned)nd->mode);
  wl_expect(st.st_nlink == 0, "%s: %lu links, expected 0", nd->name, (unsigned long)st.st_nlink);
  wl_expect(deleted_link(nd->fd), "%s: fd link not marked deleted", nd->name);
  wl_expect(access(wl_path(nd->name), F_OK) != 0 && errno == ENOENT, "the name %s exists again",
            nd->name);
  int fl = fcntl(nd->fd, F_GETFL);
  wl_expect(fl >= 0 && (fl & O_ACCMODE) == O_RDWR, "%s: not O_RDWR", nd->name);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct node null = {"null", 1, 3, 0620, -1};
  struct node zero = {"zero", 1, 5, 0604, -1};
  setup(&null);
  setup(&zero);

  wl_ready();
  wl_wait_term();

  check(&null);
  check(&zero);
  char buf[4096];
  memset(buf, 'x', sizeof buf);
  wl_expect(write(null.fd, buf, sizeof buf) == (ssize_t)sizeof buf, "write to null: %m");
  ssize_t n = read(null.fd, buf, sizeof buf);
  wl_expect(n == 0, "read from null: %zd (%m), expected EOF", n);
  memset(buf, 'x', sizeof buf);
  n = read(zero.fd, buf, sizeof buf);
  wl_expect(n == (ssize_t)sizeof buf && wl_check_zero(buf, sizeof buf) < 0,
            "read from zero: %zd bytes, not all zero", n);
  wl_expect(write(zero.fd, buf, 100) == 100, "write to zero: %m");
  wl_finish();
}
