/* Open /proc files of the process itself. The root opens /proc/self/maps, /proc/self/status
 * and /proc/self/stat and keeps them; it reads the first 100 bytes of status (offset 100).
 * The child "kid" inherits the root's status fd (so it describes the root, not the kid) and
 * opens its own /proc/self/status.
 * On request (the root first, then the kid; reading always from offset 0 after lseek):
 *   root  status is still at offset 100; its NSpid's last field is getpid() and its Pid/NSpid
 *         lines equal those of a fresh open of /proc/self/status; maps lists a mapping made
 *         only now (exact range and permissions) and the mapping holding a static variable;
 *         stat's pid, comm, ppid, pgrp, session and start time equal a fresh open's, with one
 *         thread
 *   kid   the inherited status fd names the parent (NSpid last field == getppid()), its own
 *         fd names itself (== getpid())
 * /proc is the host's even when the tree runs in a new pid namespace: pids from /proc are
 * compared with getpid() only through the innermost NSpid field. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define MAPS_MAX (1 << 20)

static int g_static_var = 42;

/* Whole contents from offset 0 (lseek first), NUL-terminated; NULL on error. */
static char* read_from_start(int fd, size_t* len_out) {
  if (lseek(fd, 0, SEEK_SET) != 0) return NULL;
  char* buf = malloc(MAPS_MAX);
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, MAPS_MAX - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      free(buf);
      return NULL;
    }
    len += (size_t)n;
    if (n == 0 || len == MAPS_MAX - 1) break;
  }
  buf[len] = 0;
  if (len_out) *len_out = len;
  return buf;
}

static char* read_path(const char* path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  char* s = read_from_start(fd, NULL);
  close(fd);
  return s;
}

/* The line of `text` starting with `key` (copied, without the newline), or "" if none. */
static void line_of(const char* text, const char* key, char* out, size_t cap) {
  out[0] = 0;
  if (!text) return;
  size_t klen = strlen(key);
  for (const char* p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, key, klen) == 0) {
      const char* e = strchr(p, '\n');
      size_t n = e ? (size_t)(e - p) : strlen(p);
      if (n >= cap) n = cap - 1;
      memcpy(out, p, n);
      out[n] = 0;
      return;
    }
  }
}

/* Last number of the status line `NSpid:` (innermost pid namespace), -1 if none. */
static long nspid_last(const char* status) {
  char line[256];
  line_of(status, "NSpid:", line, sizeof line);
  const char* last = strrchr(line, '\t');
  if (!last) last = strrchr(line, ' ');
  return last ? strtol(last + 1, NULL, 10) : -1;
}

/* Field i (1-based) of a /proc/PID/stat line, counting "(comm)" as field 2. */
static void stat_field(const char* stat, int i, char* out, size_t cap) {
  out[0] = 0;
  if (!stat) return;
  const char* rp = strrchr(stat, ')');
  if (!rp) return;
  if (i <= 2) {
    const char* lp = strchr(stat, '(');
    const char* from = i == 1 ? stat : lp;
    const char* to = i == 1 ? lp - 1 : rp + 1;
    size_t n = (size_t)(to - from) < cap ? (size_t)(to - from) : cap - 1;
    memcpy(out, from, n);
    out[n] = 0;
    return;
  }
  const char* p = rp + 2; /* field 3 */
  for (int f = 3; f < i && p; f++) {
    p = strchr(p, ' ');
    if (p) p++;
  }
  if (!p) return;
  size_t n = strcspn(p, " \n");
  if (n >= cap) n = cap - 1;
  memcpy(out, p, n);
  out[n] = 0;
}

static bool maps_has_range(const char* maps, unsigned long start, unsigned long end,
                           const char* perms) {
  char key[64];
  snprintf(key, sizeof key, "%lx-%lx %s ", start, end, perms);
  for (const char* p = maps; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, key, strlen(key)) == 0) return true;
  }
  return false;
}

static bool maps_covers(const char* maps, unsigned long addr) {
  for (const char* p = maps; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    unsigned long s, e;
    if (sscanf(p, "%lx-%lx", &s, &e) == 2 && s <= addr && addr < e) return true;
  }
  return false;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int fm = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  int fs = open("/proc/self/status", O_RDONLY);
  int ft = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fm < 0 || fs < 0 || ft < 0) wl_die("open /proc/self: %m");
  char head[101] = {0};
  if (!wl_read_full(fs, head, sizeof head - 1)) wl_die("read status: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t kid = wl_fork("kid");
  if (kid == 0) {
    close(fm);
    close(ft);
    int own = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (own < 0) wl_die("open /proc/self/status: %m");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    char* parent = read_from_start(fs, NULL);
    char* self = read_from_start(own, NULL);
    long pp = nspid_last(parent), ps = nspid_last(self);
    wl_expect(pp == getppid(), "the inherited status fd names pid %ld, expected the parent %d", pp,
              (int)getppid());
    wl_expect(ps == getpid(), "the kid's own status fd names pid %ld, expected %d", ps,
              (int)getpid());
    free(parent);
    free(self);
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("kid died during setup");

  wl_ready();
  wl_wait_term();

  /* status */
  off_t off = lseek(fs, 0, SEEK_CUR);
  wl_expect(off == (off_t)sizeof head - 1, "status offset %lld, expected %zu", (long long)off,
            sizeof head - 1);
  char* status = read_from_start(fs, NULL);
  char* fresh = read_path("/proc/self/status");
  if (wl_expect(status && fresh, "reading status: %m")) {
    char a[256], b[256];
    line_of(status, "Name:", a, sizeof a);
    line_of(head, "Name:", b, sizeof b);
    wl_expect(a[0] && strcmp(a, b) == 0, "status fd \"%s\", at setup \"%s\"", a, b);
    long ns = nspid_last(status);
    wl_expect(ns == getpid(), "status fd: NSpid names %ld, expected %d", ns, (int)getpid());
    line_of(status, "Pid:", a, sizeof a);
    line_of(fresh, "Pid:", b, sizeof b);
    wl_expect(a[0] && strcmp(a, b) == 0, "status fd \"%s\", fresh open \"%s\"", a, b);
    line_of(status, "NSpid:", a, sizeof a);
    line_of(fresh, "NSpid:", b, sizeof b);
    wl_expect(a[0] && strcmp(a, b) == 0, "status fd \"%s\", fresh open \"%s\"", a, b);
  }
  free(status);
  free(fresh);

  /* maps: a mapping made now must be listed, so must the static variable's */
  size_t len = 5 * WL_PAGE;
  char* now = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (wl_expect(now != MAP_FAILED, "mmap: %m")) {
    char* maps = read_from_start(fm, NULL);
    if (wl_expect(maps != NULL, "reading maps: %m")) {
      wl_expect(maps_has_range(maps, (unsigned long)now, (unsigned long)now + len, "r--p"),
                "maps fd does not list the mapping %p-%p made at check time", (void*)now,
                (void*)(now + len));
      wl_expect(maps_covers(maps, (unsigned long)&g_static_var),
                "maps fd has no mapping holding %p", (void*)&g_static_var);
    }
    free(maps);
    munmap(now, len);
  }

  /* stat */
  char* st = read_from_start(ft, NULL);
  char* fst = read_path("/proc/self/stat");
  if (wl_expect(st && fst, "reading stat: %m")) {
    static const int fields[] = {1, 2, 4, 5, 6, 20, 22};
    static const char* names[] = {"pid", "comm", "ppid", "pgrp", "session", "threads", "start"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
      char a[64], b[64];
      stat_field(st, fields[i], a, sizeof a);
      stat_field(fst, fields[i], b, sizeof b);
      wl_expect(a[0] && strcmp(a, b) == 0, "stat fd %s \"%s\", fresh open \"%s\"", names[i], a, b);
    }
    char t[16];
    stat_field(st, 20, t, sizeof t);
    wl_expect(strcmp(t, "1") == 0, "stat fd: %s threads, expected 1", t);
  }
  free(st);
  free(fst);
  wl_expect(g_static_var == 42, "static variable changed");

  kill(kid, SIGTERM);
  wl_reap(kid, "kid");
  wl_finish();
}
