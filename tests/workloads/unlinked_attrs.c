/* Files unlinked while open, whose inode attributes must come back with them:
 *   owned   mode 0640, owner 1234:5678, O_RDWR
 *   nomode  mode 0000, owner root, O_RDONLY (only root's DAC override can open it)
 *   setid   mode 06710 (set-uid and set-gid), owner 1234:5678, O_RDWR; a restore that
 *           chowns after chmod loses the set-id bits
 * Each has distinct contents. fchown then fchmod, then unlink. On request fstat of each fd
 * gives the same mode (all 12 permission bits), uid, gid, nlink 0 and size; the contents read
 * back; the names do not exist; a write through owned's fd reads back through it. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define UID 1234
#define GID 5678

struct victim {
  const char* name;
  mode_t mode;
  uid_t uid;
  gid_t gid;
  int flags;
  size_t len;
  uint64_t seed;
  int fd;
};

static void setup(struct victim* v) {
  const char* path = wl_path(v->name);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) wl_die("create %s: %m", v->name);
  char* buf = malloc(v->len);
  wl_fill(buf, v->len, v->seed);
  if (!wl_write_full(fd, buf, v->len)) wl_die("write %s: %m", v->name);
  free(buf);
  if (fchown(fd, v->uid, v->gid) != 0) wl_die("fchown %s: %m", v->name);
  if (fchmod(fd, v->mode) != 0) wl_die("fchmod %s: %m", v->name);
  if (v->flags == O_RDWR) {
    v->fd = fd;
  } else {
    v->fd = open(path, v->flags | O_CLOEXEC);
    if (v->fd < 0) wl_die("reopen %s: %m", v->name);
    close(fd);
  }
  struct stat st;
  if (fstat(v->fd, &st) != 0 || (st.st_mode & 07777) != v->mode) {
    wl_die("%s: mode %04o after setup, wanted %04o", v->name, (unsigned)(st.st_mode & 07777),
           (unsigned)v->mode);
  }
  if (unlink(path) != 0) wl_die("unlink %s: %m", v->name);
}

static void check(const struct victim* v) {
  struct stat st;
  if (!wl_expect(fstat(v->fd, &st) == 0, "fstat %s: %m", v->name)) return;
  wl_expect(S_ISREG(st.st_mode), "%s is not a regular file (mode 0%o)", v->name,
            (unsigned)st.st_mode);
  wl_expect((st.st_mode & 07777) == v->mode, "%s: mode %04o, expected %04o", v->name,
            (unsigned)(st.st_mode & 07777), (unsigned)v->mode);
  wl_expect(st.st_uid == v->uid && st.st_gid == v->gid, "%s: owner %u:%u, expected %u:%u", v->name,
            (unsigned)st.st_uid, (unsigned)st.st_gid, (unsigned)v->uid, (unsigned)v->gid);
  wl_expect(st.st_nlink == 0, "%s: %lu links, expected 0", v->name, (unsigned long)st.st_nlink);
  wl_expect(st.st_size == (off_t)v->len, "%s: size %lld, expected %zu", v->name,
            (long long)st.st_size, v->len);
  int fl = fcntl(v->fd, F_GETFL);
  wl_expect(fl >= 0 && (fl & O_ACCMODE) == v->flags, "%s: access mode 0%o, expected 0%o", v->name,
            fl & O_ACCMODE, v->flags);
  char* buf = malloc(v->len);
  if (wl_expect(pread(v->fd, buf, v->len, 0) == (ssize_t)v->len, "pread %s: %m", v->name)) {
    long bad = wl_check(buf, v->len, v->seed);
    wl_expect(bad < 0, "%s: byte %ld differs", v->name, bad);
  }
  free(buf);
  wl_expect(access(wl_path(v->name), F_OK) != 0 && errno == ENOENT, "the name %s exists again",
            v->name);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct victim v[] = {
      {"owned", 0640, UID, GID, O_RDWR, 10000, 121, -1},
      {"nomode", 0000, 0, 0, O_RDONLY, 777, 122, -1},
      {"setid", 06710, UID, GID, O_RDWR, 5000, 123, -1},
  };
  const int n = (int)(sizeof v / sizeof v[0]);
  for (int i = 0; i < n; i++) setup(&v[i]);

  wl_ready();
  wl_wait_term();

  for (int i = 0; i < n; i++) check(&v[i]);
  /* owned is still a writable file of its own. */
  wl_expect(pwrite(v[0].fd, "WRITTEN", 7, 20000) == 7, "pwrite owned: %m");
  char back[7] = {0};
  wl_expect(pread(v[0].fd, back, 7, 20000) == 7 && memcmp(back, "WRITTEN", 7) == 0,
            "owned: a write does not read back");
  wl_finish();
}
