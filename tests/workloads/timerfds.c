/* timerfds on three clocks, armed in different ways:
 *   periodic  CLOCK_MONOTONIC, TFD_NONBLOCK, every 40 ms; left unread for 200 ms at setup so
 *             expirations are pending (at least floor(elapsed / 40 ms), counted from the clock:
 *             fdinfo "ticks:" says 1 until a read or timerfd_gettime forwards the timer, and
 *             the setup does neither, so that the dump sees the timer as it is)
 *   slow      CLOCK_MONOTONIC, TFD_NONBLOCK, first expiration 10 ms after arming, then every
 *             10 s: its one expiration is pending (unread) at the end of setup
 *   wall      CLOCK_REALTIME, one shot at an absolute time 2 s after setup
 *             (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET)
 *   boot      CLOCK_BOOTTIME, one shot 1 h from setup (relative)
 *   off       CLOCK_MONOTONIC, armed for 1 s then disarmed
 * On request: fdinfo gives each its clock (and wall its settime flags 03); F_GETFL shows
 * O_NONBLOCK on periodic and slow only.
 *   periodic  it_interval exactly 40 ms, it_value in (0, 40 ms]; one read gives at least the
 *             expirations pending at setup; then it keeps its rate (5..10 expirations over
 *             300 ms, ~7.5 due)
 *   slow      it_interval exactly 10 s, it_value in (0, 10 s]; readable, one read gives >= 1:
 *             the pending expiration survived whenever the check comes (periodic's count
 *             cannot show a lost backlog once 160 ms have passed since the restore)
 *   wall      checked before its deadline: armed, it_value <= 2 s and matching the absolute
 *             deadline, not readable; it then fires at the deadline (not before, at most
 *             150 ms after) and read gives 1. Checked after it (a slow check): readable, read
 *             gives 1. Either way disarmed afterwards.
 *   boot      it_value in [3000 s, 3600 s], it_interval 0, not readable
 *   off       it_value and it_interval zero, not readable; armed for 50 ms it fires once */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define MS 1000000LL
#define SEC 1000000000LL
#define PERIOD_NS (40 * MS)

static long long ts_ns(const struct timespec* t) { return t->tv_sec * SEC + t->tv_nsec; }
static struct timespec ns_ts(long long ns) {
  struct timespec t = {ns / SEC, ns % SEC};
  return t;
}
static long long clock_ns(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return ts_ns(&t);
}

static void sleep_ms(long ms) {
  struct timespec end = ns_ts(clock_ns(CLOCK_MONOTONIC) + ms * MS);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &end, NULL) == EINTR) {
  }
}

static bool readable(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n == 1 && (p.revents & POLLIN);
}

/* One read of the expiration count: the count, or -errno. */
static long long read_ticks(int fd) {
  uint64_t v = 0;
  ssize_t n;
  do {
    n = read(fd, &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  if (n != (ssize_t)sizeof v) return -EIO;
  return (long long)v;
}

/* fdinfo of a timerfd: "clockid: %d", "ticks: %llu", "settime flags: 0%o". */
struct tfd_info {
  int clockid;
  unsigned long long ticks;
  unsigned flags;
  int found;
};
static bool fdinfo(int fd, struct tfd_info* out) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  FILE* f = fopen(path, "re");
  if (!f) return false;
  memset(out, 0, sizeof *out);
  char line[256];
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "clockid: %d", &out->clockid) == 1) out->found |= 1;
    if (sscanf(line, "ticks: %llu", &out->ticks) == 1) out->found |= 2;
    if (sscanf(line, "settime flags: %o", &out->flags) == 1) out->found |= 4;
  }
  fclose(f);
  return out->found == 7;
}

static bool gettime(int fd, long long* value, long long* interval) {
  struct itimerspec its;
  if (timerfd_gettime(fd, &its) != 0) return false;
  *value = ts_ns(&its.it_value);
  *interval = ts_ns(&its.it_interval);
  return true;
}

static void arm(int fd, int flags, long long value_ns, long long interval_ns) {
  struct itimerspec its = {.it_interval = ns_ts(interval_ns), .it_value = ns_ts(value_ns)};
  if (timerfd_settime(fd, flags, &its, NULL) != 0) wl_die("timerfd_settime: %m");
}

static void check_info(int fd, const char* name, int clockid, unsigned flags) {
  struct tfd_info in;
  if (!wl_expect(fdinfo(fd, &in), "%s: no timerfd fields in fdinfo", name)) return;
  wl_expect(in.clockid == clockid, "%s: clockid %d, expected %d", name, in.clockid, clockid);
  wl_expect(in.flags == flags, "%s: settime flags 0%o, expected 0%o", name, in.flags, flags);
}

static void check_nonblock(int fd, const char* name, bool nonblock) {
  int fl = fcntl(fd, F_GETFL);
  wl_expect(fl >= 0 && !!(fl & O_NONBLOCK) == nonblock, "%s: F_GETFL 0x%x, O_NONBLOCK expected %s",
            name, fl, nonblock ? "set" : "clear");
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  int periodic = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  int wall = timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC);
  int boot = timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC);
  int off = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  int slow = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (slow < 0 || periodic < 0 || wall < 0 || boot < 0 || off < 0) wl_die("timerfd_create: %m");

  arm(periodic, 0, PERIOD_NS, PERIOD_NS);
  long long armed_at = clock_ns(CLOCK_MONOTONIC); /* just after the true arming time */
  long long wall_deadline = clock_ns(CLOCK_REALTIME) + 2 * SEC;
  arm(wall, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, wall_deadline, 0);
  arm(boot, 0, 3600 * SEC, 0);
  arm(slow, 0, 10 * MS, 10 * SEC);
  arm(off, 0, 1 * SEC, 0);
  arm(off, 0, 0, 0);

  sleep_ms(200);
  /* Expirations surely due by now (1 ms of margin for the timer interrupt). */
  long long setup_ticks = (clock_ns(CLOCK_MONOTONIC) - armed_at - 1 * MS) / PERIOD_NS;
  if (setup_ticks < 4) wl_die("only %lld expirations due after 200 ms", setup_ticks);
  if (!readable(slow, 0)) wl_die("slow: its 10 ms expiration is not pending after 200 ms");
  struct tfd_info in;
  if (!fdinfo(periodic, &in)) wl_die("no timerfd fields in fdinfo");
  wl_note("periodic: %lld expirations pending at setup (fdinfo ticks: %llu)", setup_ticks,
          in.ticks);

  wl_ready();
  wl_wait_term();

  check_info(periodic, "periodic", CLOCK_MONOTONIC, 0);
  check_info(wall, "wall", CLOCK_REALTIME, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET);
  check_info(boot, "boot", CLOCK_BOOTTIME, 0);
  check_info(off, "off", CLOCK_MONOTONIC, 0);
  check_info(slow, "slow", CLOCK_MONOTONIC, 0);
  check_nonblock(periodic, "periodic", true);
  check_nonblock(wall, "wall", false);
  check_nonblock(boot, "boot", false);
  check_nonblock(off, "off", false);
  check_nonblock(slow, "slow", true);

  long long v, iv;
  /* boot: 1 h one-shot, relative. */
  if (wl_expect(gettime(boot, &v, &iv), "boot: timerfd_gettime: %m")) {
    wl_expect(iv == 0, "boot: interval %lld ns, expected 0", iv);
    wl_expect(v >= 3000 * SEC && v <= 3600 * SEC, "boot: %lld ms left, expected 3000..3600 s",
              v / MS);
  }
  wl_expect(!readable(boot, 0), "boot: readable, the 1 h timer fired");

  /* off: disarmed; still a working timer. */
  if (wl_expect(gettime(off, &v, &iv), "off: timerfd_gettime: %m")) {
    wl_expect(v == 0 && iv == 0, "off: value %lld ns interval %lld ns, expected disarmed", v, iv);
  }
  wl_expect(!readable(off, 0), "off: readable while disarmed");

  /* slow: its expiration from setup is still pending. */
  if (wl_expect(gettime(slow, &v, &iv), "slow: timerfd_gettime: %m")) {
    wl_expect(iv == 10 * SEC, "slow: interval %lld ns, expected 10 s", iv);
    wl_expect(v > 0 && v <= 10 * SEC, "slow: %lld ns to the next expiration, expected (0, 10 s]",
              v);
  }
  if (wl_expect(readable(slow, 0), "slow: not readable, the expiration pending at setup is lost")) {
    long long ns = read_ticks(slow);
    wl_expect(ns >= 1, "slow: read gave %lld, expected at least the 1 expiration pending at setup",
              ns);
  }

  /* periodic: exact interval, pending expirations kept, rate. */
  if (wl_expect(gettime(periodic, &v, &iv), "periodic: timerfd_gettime: %m")) {
    wl_expect(iv == PERIOD_NS, "periodic: interval %lld ns, expected %lld", iv, PERIOD_NS);
    wl_expect(v > 0 && v <= PERIOD_NS,
              "periodic: %lld ns to the next expiration, expected (0, %lld]", v, PERIOD_NS);
  }
  long long n0 = read_ticks(periodic);
  wl_expect(n0 >= setup_ticks, "periodic: read %lld expirations, %lld were pending at setup", n0,
            setup_ticks);
  double t0 = wl_now();
  sleep_ms(300);
  long long n1 = read_ticks(periodic);
  double dt = wl_now() - t0;
  wl_expect(n1 >= 5 && n1 <= 10, "periodic: %lld expirations in %.0f ms, expected about 7.5", n1,
            dt * 1000);
  long long n2 = read_ticks(periodic);
  wl_expect(n2 == -EAGAIN || n2 == 1, "periodic: an immediate re-read gave %lld", n2);

  /* wall: absolute deadline on the realtime clock. */
  long long now = clock_ns(CLOCK_REALTIME);
  bool ok = wl_expect(gettime(wall, &v, &iv), "wall: timerfd_gettime: %m");
  bool fired = false;
  if (ok && now < wall_deadline - 20 * MS) {
    wl_expect(iv == 0, "wall: interval %lld ns, expected 0", iv);
    long long left = wall_deadline - now;
    wl_expect(v > 0 && v <= 2 * SEC, "wall: %lld ms left, expected (0, 2000]", v / MS);
    wl_expect(v <= left + 5 * MS && v >= left - 50 * MS,
              "wall: %lld ms left, the absolute deadline is %lld ms away", v / MS, left / MS);
    wl_expect(!readable(wall, 0), "wall: readable %lld ms before its deadline", left / MS);
    int wait_ms = (int)(left / MS) + 1000;
    fired = readable(wall, wait_ms);
    long long at = clock_ns(CLOCK_REALTIME);
    wl_expect(fired, "wall: did not fire within %d ms", wait_ms);
    if (fired) {
      wl_expect(at >= wall_deadline && at <= wall_deadline + 150 * MS,
                "wall: fired %lld ms after its absolute deadline", (at - wall_deadline) / MS);
    }
  } else if (ok) {
    /* At or past the deadline (a slow check): it has fired, or does within moments. */
    wl_note("wall: checked %lld ms after its deadline", (now - wall_deadline) / MS);
    fired = readable(wall, 1000);
    wl_expect(fired, "wall: not readable %lld ms after its deadline",
              (clock_ns(CLOCK_REALTIME) - wall_deadline) / MS);
  }
  if (fired) { /* the fd blocks: read only when it cannot */
    v = read_ticks(wall);
    wl_expect(v == 1, "wall: read %lld after firing, expected 1", v);
  }
  if (wl_expect(gettime(wall, &v, &iv), "wall: timerfd_gettime: %m")) {
    wl_expect(v == 0 && iv == 0, "wall: armed (%lld ns left) after its deadline", v);
  }

  /* off fires when armed. */
  arm(off, 0, 50 * MS, 0);
  wl_expect(!readable(off, 20), "off: fired within 20 ms of being armed for 50 ms");
  if (wl_expect(readable(off, 1000), "off: armed for 50 ms, did not fire")) {
    v = read_ticks(off);
    wl_expect(v == 1, "off: read %lld, expected 1", v);
  }
  wl_finish();
}
