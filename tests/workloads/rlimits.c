/* Resource limits. The root and a child each lower the soft and hard limits of every resource
 * to their own values (hard limits can only be lowered: the targets are clamped to the hard
 * limit inherited from the harness, which is noted when it happens):
 *                root soft/hard           child soft/hard
 *   NOFILE       200 / 300                150 / 250
 *   STACK        4 MiB / 64 MiB           6 MiB / 32 MiB
 *   CORE         0 / 1 MiB                0 / 512 KiB
 *   CPU          3600 / 7200 s            1800 / 3600 s
 *   MEMLOCK      256 / 512 KiB            128 KiB / 1 MiB
 *   NPROC        20000 / 30000            10000 / 25000
 *   MSGQUEUE     400000 / 800000          200000 / 300000
 *   NICE         10 / 20                  5 / 15
 *   RTPRIO       5 / 10                   2 / 3
 *   FSIZE        1 / 2 GiB                1 MiB / 4 MiB (SIGXFSZ ignored)
 *   AS           64 / 128 GiB             48 / 96 GiB
 *   SIGPENDING   1000 / 2000              500 / 900
 *   DATA, RSS, LOCKS, RTTIME: lowered too (generous values)
 * On request, in both: getrlimit of every resource (all RLIM_NLIMITS, recorded at setup) is
 * unchanged, and the root also reads the child's with prlimit(pid). Behaviour: opening files
 * fails with EMFILE exactly when the next fd would reach the NOFILE soft limit; the soft limit
 * can be raised to the hard one, the hard one cannot be raised (EPERM, without
 * CAP_SYS_RESOURCE); in the child a write crossing the FSIZE soft limit is cut short there and
 * the next one fails with EFBIG. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "workload.h"

#define KB 1024ULL
#define MB (1024 * KB)
#define GB (1024 * MB)

struct target {
  int res;
  const char* name;
  rlim_t soft[2], hard[2]; /* [0] root, [1] child */
};

static const struct target kTargets[] = {
    {RLIMIT_NOFILE, "NOFILE", {200, 150}, {300, 250}},
    {RLIMIT_STACK, "STACK", {4 * MB, 6 * MB}, {64 * MB, 32 * MB}},
    {RLIMIT_CORE, "CORE", {0, 0}, {1 * MB, 512 * KB}},
    {RLIMIT_CPU, "CPU", {3600, 1800}, {7200, 3600}},
    {RLIMIT_MEMLOCK, "MEMLOCK", {256 * KB, 128 * KB}, {512 * KB, 1 * MB}},
    {RLIMIT_NPROC, "NPROC", {20000, 10000}, {30000, 25000}},
    {RLIMIT_MSGQUEUE, "MSGQUEUE", {400000, 200000}, {800000, 300000}},
    {RLIMIT_NICE, "NICE", {10, 5}, {20, 15}},
    {RLIMIT_RTPRIO, "RTPRIO", {5, 2}, {10, 3}},
    {RLIMIT_FSIZE, "FSIZE", {1 * GB, 1 * MB}, {2 * GB, 4 * MB}},
    {RLIMIT_AS, "AS", {64 * GB, 48 * GB}, {128 * GB, 96 * GB}},
    {RLIMIT_SIGPENDING, "SIGPENDING", {1000, 500}, {2000, 900}},
    {RLIMIT_DATA, "DATA", {32 * GB, 24 * GB}, {64 * GB, 48 * GB}},
    {RLIMIT_RSS, "RSS", {1 * GB, 2 * GB}, {4 * GB, 3 * GB}},
    {RLIMIT_LOCKS, "LOCKS", {1000, 700}, {2000, 800}},
    {RLIMIT_RTTIME, "RTTIME", {5000000, 3000000}, {10000000, 4000000}},
};
#define NTARGETS ((int)(sizeof kTargets / sizeof kTargets[0]))

static const char* res_name(int res) {
  for (int i = 0; i < NTARGETS; i++) {
    if (kTargets[i].res == res) return kTargets[i].name;
  }
  return "?";
}

static void apply(int who) {
  for (int i = 0; i < NTARGETS; i++) {
    const struct target* t = &kTargets[i];
    struct rlimit cur;
    if (getrlimit(t->res, &cur) != 0) wl_die("getrlimit(%s): %m", t->name);
    struct rlimit want = {t->soft[who], t->hard[who]};
    if (cur.rlim_max != RLIM_INFINITY && want.rlim_max > cur.rlim_max) {
      want.rlim_max = cur.rlim_max;
      wl_note("%s: hard limit %llu is below the target %llu: using it", t->name,
              (unsigned long long)cur.rlim_max, (unsigned long long)t->hard[who]);
    }
    if (want.rlim_cur > want.rlim_max) want.rlim_cur = want.rlim_max;
    if (setrlimit(t->res, &want) != 0) wl_die("setrlimit(%s): %m", t->name);
  }
}

static void record(struct rlimit* lim) {
  for (int r = 0; r < RLIM_NLIMITS; r++) {
    if (getrlimit(r, &lim[r]) != 0) wl_die("getrlimit(%d): %m", r);
  }
}

static void compare(const struct rlimit* want, const struct rlimit* got, const char* whose) {
  for (int r = 0; r < RLIM_NLIMITS; r++) {
    wl_expect(got[r].rlim_cur == want[r].rlim_cur && got[r].rlim_max == want[r].rlim_max,
              "%s RLIMIT_%s (%d): %llu/%llu, expected %llu/%llu", whose, res_name(r), r,
              (unsigned long long)got[r].rlim_cur, (unsigned long long)got[r].rlim_max,
              (unsigned long long)want[r].rlim_cur, (unsigned long long)want[r].rlim_max);
  }
}

static bool has_cap_sys_resource(void) {
  FILE* f = fopen("/proc/self/status", "re");
  if (!f) return false;
  char line[256];
  unsigned long long eff = 0;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "CapEff:", 7) == 0) eff = strtoull(line + 7, NULL, 16);
  }
  fclose(f);
  return (eff >> 24) & 1; /* CAP_SYS_RESOURCE */
}

/* Opens /dev/null until it fails: must fail with EMFILE with the soft limit's last fd taken. */
static void check_nofile(const struct rlimit* lim) {
  int fds[1024], n = 0, last = -1, err = 0;
  while (n < 1024) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      err = errno;
      break;
    }
    fds[n++] = fd;
    if (fd > last) last = fd;
  }
  wl_expect(err == EMFILE, "opening files stopped with %s after %d, expected EMFILE",
            err ? strerror(err) : "no error", n);
  wl_expect((rlim_t)last + 1 == lim[RLIMIT_NOFILE].rlim_cur,
            "highest fd opened %d, expected %llu (NOFILE soft limit - 1)", last,
            (unsigned long long)lim[RLIMIT_NOFILE].rlim_cur - 1);
  for (int i = 0; i < n; i++) close(fds[i]);

  struct rlimit up = {lim[RLIMIT_NOFILE].rlim_max, lim[RLIMIT_NOFILE].rlim_max};
  wl_expect(setrlimit(RLIMIT_NOFILE, &up) == 0, "raising NOFILE soft to the hard limit: %m");
  if (!has_cap_sys_resource()) {
    struct rlimit over = {lim[RLIMIT_NOFILE].rlim_max + 1, lim[RLIMIT_NOFILE].rlim_max + 1};
    errno = 0;
    int r = setrlimit(RLIMIT_NOFILE, &over);
    wl_expect(r == -1 && errno == EPERM, "raising the NOFILE hard limit: %s, expected EPERM",
              r == 0 ? "succeeded" : strerror(errno));
  } else {
    wl_note("CAP_SYS_RESOURCE is effective: raising a hard limit not tried");
  }
  setrlimit(RLIMIT_NOFILE, &lim[RLIMIT_NOFILE]);
}

static void check_fsize(const struct rlimit* lim) {
  rlim_t cap = lim[RLIMIT_FSIZE].rlim_cur;
  if (cap == RLIM_INFINITY || cap > 64 * MB) return;
  int fd = open(wl_path("fsize.dat"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (!wl_expect(fd >= 0, "create fsize.dat: %m")) return;
  char buf[64];
  memset(buf, 'x', sizeof buf);
  ssize_t n = pwrite(fd, buf, sizeof buf, (off_t)cap - 16);
  wl_expect(n == 16, "write crossing the FSIZE limit wrote %zd bytes, expected 16", n);
  errno = 0;
  n = pwrite(fd, buf, sizeof buf, (off_t)cap);
  wl_expect(n == -1 && errno == EFBIG, "write at the FSIZE limit: %zd (%s), expected EFBIG", n,
            n < 0 ? strerror(errno) : "no error");
  close(fd);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  struct wl_sync sync;
  wl_sync_init(&sync);
  struct rlimit child_lim[RLIM_NLIMITS];
  pid_t child = wl_fork("child");
  if (child == 0) {
    signal(SIGXFSZ, SIG_IGN);
    apply(1);
    struct rlimit mine[RLIM_NLIMITS];
    record(mine);
    wl_sync_post(&sync, mine, sizeof mine);
    wl_wait_term();
    struct rlimit now[RLIM_NLIMITS];
    record(now);
    compare(mine, now, "child");
    check_nofile(mine);
    check_fsize(mine);
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, child_lim, sizeof child_lim)) wl_die("the child died during setup");

  apply(0);
  struct rlimit mine[RLIM_NLIMITS];
  record(mine);
  int differ = 0;
  for (int r = 0; r < RLIM_NLIMITS; r++) {
    differ +=
        mine[r].rlim_cur != child_lim[r].rlim_cur || mine[r].rlim_max != child_lim[r].rlim_max;
  }
  wl_note("%d of %d limits differ between root and child", differ, RLIM_NLIMITS);

  wl_ready();
  wl_wait_term();

  struct rlimit now[RLIM_NLIMITS];
  record(now);
  compare(mine, now, "root");
  for (int r = 0; r < RLIM_NLIMITS; r++) {
    if (!wl_expect(prlimit(child, r, NULL, &now[r]) == 0, "prlimit(child, %d): %m", r)) {
      now[r] = child_lim[r];
    }
  }
  compare(child_lim, now, "child (seen by prlimit)");
  check_nofile(mine);

  kill(child, SIGTERM);
  wl_reap(child, "child");
  wl_finish();
}
