/* inotify watches with a hole in their numbers and a one-shot watch:
 *   one inotify instance (IN_NONBLOCK | IN_CLOEXEC), watches added in this order:
 *     wd 1  DIR/a  IN_CREATE | IN_DELETE
 *     wd 2  DIR/c  IN_CREATE, then removed (its IN_IGNORED read at setup): a hole
 *     wd 3  DIR/b  IN_MODIFY (DIR/b/f exists)
 *     wd 4  DIR/d  IN_CREATE | IN_ONESHOT
 *   nothing queued at the end of setup.
 * On request: fdinfo lists exactly wds 1, 3, 4, each on its directory's inode with its mask;
 * nothing is queued. Creating DIR/a/new gives exactly one event (wd 1, IN_CREATE, "new");
 * appending to DIR/b/f exactly one (wd 3, IN_MODIFY, "f"); creating DIR/b/g or DIR/c/x gives
 * none; removing DIR/a/new gives wd 1 IN_DELETE "new". Adding DIR/a again with the same mask
 * returns wd 1. The one-shot: creating DIR/d/x gives wd 4 IN_CREATE "x" then wd 4 IN_IGNORED,
 * and creating DIR/d/y nothing. A new watch on DIR/c gets a number above 4 (the kernel allocates
 * them cyclically: not the hole 2, not a freed 4) and reports its events under that number. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

static int g_in;

struct event {
  int wd;
  uint32_t mask, cookie;
  char name[NAME_MAX + 1];
};

/* Reads every queued event (the fd is non-blocking). Returns the count, or -1 on error. */
static int read_events(struct event* out, int max) {
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  int n = 0;
  for (;;) {
    ssize_t len = read(g_in, buf, sizeof buf);
    if (len < 0 && errno == EINTR) continue;
    if (len < 0 && errno == EAGAIN) return n;
    if (len <= 0) return -1;
    for (char* p = buf; p < buf + len;) {
      const struct inotify_event* e = (const struct inotify_event*)p;
      if (n < max) {
        out[n].wd = e->wd;
        out[n].mask = e->mask;
        out[n].cookie = e->cookie;
        snprintf(out[n].name, sizeof out[n].name, "%s", e->len ? e->name : "");
      }
      n++;
      p += sizeof *e + e->len;
    }
  }
}

static void describe(const struct event* ev, int n, char* out, size_t len) {
  size_t pos = 0;
  out[0] = 0;
  for (int i = 0; i < n && i < 8 && pos < len; i++) {
    pos += (size_t)snprintf(out + pos, len - pos, "%s{wd %d mask 0x%x \"%s\"}", i ? " " : "",
                            ev[i].wd, ev[i].mask, ev[i].name);
  }
}

/* Expects exactly the listed events (wd, mask, name) in order. */
static void expect_events(const char* what, int n_want, const struct event* want) {
  struct event got[16];
  int n = read_events(got, 16);
  char desc[512];
  describe(got, n < 16 ? n : 16, desc, sizeof desc);
  if (!wl_expect(n == n_want, "%s: %d events [%s], expected %d", what, n, desc, n_want)) return;
  for (int i = 0; i < n; i++) {
    wl_expect(got[i].wd == want[i].wd && got[i].mask == want[i].mask &&
                  strcmp(got[i].name, want[i].name) == 0,
              "%s: event %d is {wd %d mask 0x%x \"%s\"}, expected {wd %d mask 0x%x \"%s\"}", what,
              i, got[i].wd, got[i].mask, got[i].name, want[i].wd, want[i].mask, want[i].name);
  }
}

static void expect_none(const char* what) { expect_events(what, 0, NULL); }

static void touch(const char* path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (!wl_expect(fd >= 0, "creating %s: %m", path)) return;
  close(fd);
}

/* fdinfo lines "inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x ...". */
struct watch_info {
  int wd;
  unsigned long ino;
  unsigned mask;
};
static int read_fdinfo(struct watch_info* out, int max) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", g_in);
  FILE* f = fopen(path, "re");
  if (!f) return -1;
  char line[512];
  int n = 0;
  while (fgets(line, sizeof line, f) && n < max) {
    unsigned sdev;
    if (sscanf(line, "inotify wd:%x ino:%lx sdev:%x mask:%x", (unsigned*)&out[n].wd, &out[n].ino,
               &sdev, &out[n].mask) == 4) {
      n++;
    }
  }
  fclose(f);
  return n;
}

static void check_fdinfo(const int* wds, const char* const* dirs, const unsigned* masks, int nw) {
  struct watch_info w[16];
  int n = read_fdinfo(w, 16);
  if (!wl_expect(n == nw, "fdinfo lists %d watches, expected %d", n, nw)) return;
  for (int i = 0; i < nw; i++) {
    const struct watch_info* found = NULL;
    for (int k = 0; k < n; k++) {
      if (w[k].wd == wds[i]) found = &w[k];
    }
    if (!wl_expect(found != NULL, "fdinfo: no watch %d (%s)", wds[i], dirs[i])) continue;
    struct stat st;
    if (stat(wl_path(dirs[i]), &st) == 0) {
      wl_expect(found->ino == st.st_ino, "fdinfo: wd %d on inode %lu, %s is %lu", wds[i],
                found->ino, dirs[i], (unsigned long)st.st_ino);
    }
    wl_expect(found->mask == masks[i], "fdinfo: wd %d mask 0x%x, expected 0x%x", wds[i],
              found->mask, masks[i]);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const char* const dirs[] = {"a", "b", "c", "d"};
  for (int i = 0; i < 4; i++) {
    if (mkdir(wl_path(dirs[i]), 0755) != 0) wl_die("mkdir %s: %m", dirs[i]);
  }
  int f = open(wl_path("b/f"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (f < 0) wl_die("creating b/f: %m");
  close(f);

  g_in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (g_in < 0) wl_die("inotify_init1: %m");
  int wd_a = inotify_add_watch(g_in, wl_path("a"), IN_CREATE | IN_DELETE);
  int wd_c = inotify_add_watch(g_in, wl_path("c"), IN_CREATE);
  int wd_b = inotify_add_watch(g_in, wl_path("b"), IN_MODIFY);
  if (wd_a != 1 || wd_c != 2 || wd_b != 3) wl_die("watch numbers %d %d %d", wd_a, wd_c, wd_b);
  if (inotify_rm_watch(g_in, wd_c) != 0) wl_die("inotify_rm_watch: %m");
  int wd_d = inotify_add_watch(g_in, wl_path("d"), IN_CREATE | IN_ONESHOT);
  if (wd_d != 4) wl_die("one-shot watch number %d, expected 4", wd_d);
  struct event ev[4];
  int n = read_events(ev, 4);
  if (n != 1 || ev[0].wd != 2 || ev[0].mask != IN_IGNORED) {
    wl_die("setup: %d events after removing watch 2, expected its IN_IGNORED", n);
  }

  wl_ready();
  wl_wait_term();

  const int wds[] = {1, 3, 4};
  const char* const wdirs[] = {"a", "b", "d"};
  const unsigned masks[] = {IN_CREATE | IN_DELETE, IN_MODIFY, IN_CREATE | IN_ONESHOT};
  check_fdinfo(wds, wdirs, masks, 3);
  expect_none("before any change");

  touch(wl_path("a/new"));
  expect_events("create a/new", 1, (struct event[]){{1, IN_CREATE, 0, "new"}});

  int fd = open(wl_path("b/f"), O_WRONLY | O_APPEND | O_CLOEXEC);
  wl_expect(fd >= 0 && write(fd, "m", 1) == 1, "appending to b/f: %m");
  if (fd >= 0) close(fd);
  expect_events("append to b/f", 1, (struct event[]){{3, IN_MODIFY, 0, "f"}});

  touch(wl_path("b/g"));
  touch(wl_path("c/x"));
  expect_none("create b/g (IN_MODIFY only) and c/x (watch removed)");

  wl_expect(unlink(wl_path("a/new")) == 0, "unlink a/new: %m");
  expect_events("unlink a/new", 1, (struct event[]){{1, IN_DELETE, 0, "new"}});

  int again = inotify_add_watch(g_in, wl_path("a"), IN_CREATE | IN_DELETE);
  wl_expect(again == 1, "adding DIR/a again gave wd %d, expected 1", again);

  touch(wl_path("d/x"));
  expect_events("create d/x (one-shot)", 2,
                (struct event[]){{4, IN_CREATE, 0, "x"}, {4, IN_IGNORED, 0, ""}});
  touch(wl_path("d/y"));
  expect_none("create d/y after the one-shot fired");

  int fresh = inotify_add_watch(g_in, wl_path("c"), IN_CREATE);
  wl_note("new watch on DIR/c: wd %d", fresh);
  if (wl_expect(fresh > 4, "a new watch got wd %d, expected a fresh number above 4", fresh)) {
    touch(wl_path("c/y"));
    expect_events("create c/y (new watch)", 1, (struct event[]){{fresh, IN_CREATE, 0, "y"}});
  }
  touch(wl_path("a/last"));
  expect_events("create a/last", 1, (struct event[]){{1, IN_CREATE, 0, "last"}});
  wl_finish();
}
