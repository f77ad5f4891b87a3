/* Working and root directories that are gone or unusual:
 *   "cwd"       chdir()s into DIR/gone, which the root then removes (rmdir): its cwd is a
 *               deleted directory
 *   "jail"      chroot()s into DIR/jail (which stays) with its cwd in DIR/jail/sub
 *   "gonejail"  chroot()s into DIR/jail2 (cwd its root), which the root then removes: a deleted
 *               root directory (Linux allows rmdir of another process's root)
 * On request, each child checks from inside:
 *   cwd       stat(".") is a directory with nlink 0; /proc/self/cwd reads "DIR/gone (deleted)";
 *             getcwd fails with ENOENT; creating a file in "." fails with ENOENT
 *   jail      stat("/") and stat("/..") are DIR/jail's inode (recorded by the root at setup);
 *             getcwd is "/sub"; "/marker" reads back; "." is DIR/jail/sub's inode
 *   gonejail  stat("/") is a directory with nlink 0 and "/.." is the same directory; getcwd
 *             fails with ENOENT; creating "/x" fails with ENOENT
 * The root checks that the removed names do not exist again. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define MARKER "inside the jail\n"

struct ids {
  dev_t dev;
  ino_t ino;
};

static bool same_inode(const struct stat* st, const struct ids* id) {
  return st->st_dev == id->dev && st->st_ino == id->ino;
}

static struct ids ids_of(const char* path) {
  struct stat st;
  if (stat(path, &st) != 0) wl_die("stat %s: %m", path);
  struct ids id = {st.st_dev, st.st_ino};
  return id;
}

static void expect_inode(const char* path, const struct ids* id, const char* what) {
  struct stat st;
  if (!wl_expect(stat(path, &st) == 0, "stat(\"%s\"): %m", path)) return;
  wl_expect(same_inode(&st, id), "\"%s\" is inode %lu, expected %s's %lu", path,
            (unsigned long)st.st_ino, what, (unsigned long)id->ino);
}

/* The directory "path" is deleted: a directory with no links. */
static void expect_dead_dir(const char* path, const char* what) {
  struct stat st;
  if (!wl_expect(stat(path, &st) == 0, "%s: stat(\"%s\"): %m", what, path)) return;
  wl_expect(S_ISDIR(st.st_mode), "%s is not a directory (mode 0%o)", what, (unsigned)st.st_mode);
  wl_expect(st.st_nlink == 0, "%s has %lu links, expected 0 (deleted)", what,
            (unsigned long)st.st_nlink);
}

static void expect_getcwd_enoent(const char* what) {
  char buf[PATH_MAX];
  char* r = getcwd(buf, sizeof buf);
  wl_expect(r == NULL && errno == ENOENT, "%s: getcwd gave %s (%m), expected ENOENT", what,
            r ? r : "an error");
}

static void expect_no_create(const char* path, const char* what) {
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  wl_expect(fd < 0 && errno == ENOENT, "%s: creating %s: %s, expected ENOENT", what, path,
            fd >= 0 ? "created" : strerror(errno));
  if (fd >= 0) close(fd);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char dir[PATH_MAX];
  if (!realpath(wl_dir(), dir)) wl_die("realpath: %m");
  if (mkdir(wl_path("gone"), 0755) != 0 || mkdir(wl_path("jail"), 0755) != 0 ||
      mkdir(wl_path("jail/sub"), 0700) != 0 || mkdir(wl_path("jail2"), 0755) != 0) {
    wl_die("mkdir: %m");
  }
  int mfd = open(wl_path("jail/marker"), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (mfd < 0 || !wl_write_full(mfd, MARKER, strlen(MARKER))) wl_die("marker: %m");
  close(mfd);
  struct ids jail = ids_of(wl_path("jail"));
  struct ids sub = ids_of(wl_path("jail/sub"));
  char gone_link[PATH_MAX + 16];
  snprintf(gone_link, sizeof gone_link, "%s/gone (deleted)", dir);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t cwd = wl_fork("cwd");
  if (cwd == 0) {
    if (chdir(wl_path("gone")) != 0) wl_die("chdir gone: %m");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    expect_dead_dir(".", "cwd");
    char link[PATH_MAX];
    ssize_t n = readlink("/proc/self/cwd", link, sizeof link - 1);
    link[n > 0 ? n : 0] = 0;
    wl_expect(n > 0 && strcmp(link, gone_link) == 0, "/proc/self/cwd is \"%s\", expected \"%s\"",
              link, gone_link);
    expect_getcwd_enoent("cwd");
    expect_no_create("x", "cwd");
    wl_finish();
  }
  pid_t jailed = wl_fork("jail");
  if (jailed == 0) {
    if (chroot(wl_path("jail")) != 0 || chdir("/sub") != 0) wl_die("chroot jail: %m");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    expect_inode("/", &jail, "DIR/jail");
    expect_inode("/..", &jail, "DIR/jail (escaped the chroot?)");
    expect_inode(".", &sub, "DIR/jail/sub");
    char buf[PATH_MAX];
    char* r = getcwd(buf, sizeof buf);
    wl_expect(r && strcmp(r, "/sub") == 0, "getcwd in the jail: %s", r ? r : strerror(errno));
    char m[64] = {0};
    int fd = open("/marker", O_RDONLY | O_CLOEXEC);
    wl_expect(
        fd >= 0 && read(fd, m, sizeof m - 1) == (ssize_t)strlen(MARKER) && strcmp(m, MARKER) == 0,
        "/marker in the jail does not read back");
    if (fd >= 0) close(fd);
    wl_finish();
  }
  pid_t gonejail = wl_fork("gonejail");
  if (gonejail == 0) {
    if (chroot(wl_path("jail2")) != 0 || chdir("/") != 0) wl_die("chroot jail2: %m");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    expect_dead_dir("/", "the root directory");
    struct stat a, b;
    wl_expect(
        stat("/", &a) == 0 && stat("/..", &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev,
        "\"/..\" is not \"/\" in the deleted root");
    wl_expect(stat(".", &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev,
              "cwd is not the deleted root");
    expect_getcwd_enoent("gonejail");
    expect_no_create("/x", "gonejail");
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 3, NULL, 0)) wl_die("a child died during setup");
  if (rmdir(wl_path("gone")) != 0) wl_die("rmdir gone: %m");
  if (rmdir(wl_path("jail2")) != 0) wl_die("rmdir jail2: %m");

  wl_ready();
  wl_wait_term();

  wl_expect(access(wl_path("gone"), F_OK) != 0 && errno == ENOENT, "DIR/gone exists again");
  wl_expect(access(wl_path("jail2"), F_OK) != 0 && errno == ENOENT, "DIR/jail2 exists again");
  kill(cwd, SIGTERM);
  kill(jailed, SIGTERM);
  kill(gonejail, SIGTERM);
  wl_reap(cwd, "cwd");
  wl_reap(jailed, "jail");
  wl_reap(gonejail, "gonejail");
  wl_finish();
}
