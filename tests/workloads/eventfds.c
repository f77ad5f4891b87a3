/* eventfd counters and flags:
 *   A       eventfd(5, EFD_CLOEXEC), then 3 written: counter 8, blocking, not a semaphore
 *   B       eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK): counter 3, no close-on-exec
 *   shared  eventfd(1, 0) created before forking the child "adder", which writes 10 through its
 *           inherited descriptor during setup: counter 11, one object for both processes
 * On request: F_GETFL shows O_NONBLOCK on B only, F_GETFD FD_CLOEXEC on A only; A is readable
 * (poll, 0 timeout), one read gives 8, after which it is no longer readable; B gives 1, 1, 1,
 * then EAGAIN; the shared one gives 11, then not readable. Sharing after the restore: the
 * adder, told to stop, writes 100 through its descriptor before exiting, and the root reads
 * exactly 100 through its own. A write to A then wakes a poll on it (the object still works). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "workload.h"

static bool readable(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n == 1 && (p.revents & POLLIN);
}

/* One read of the counter: its value, or -errno. */
static long long read_counter(int fd) {
  uint64_t v = 0;
  ssize_t n;
  do {
    n = read(fd, &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  if (n != (ssize_t)sizeof v) return -EIO;
  return (long long)v;
}

static void check_flags(int fd, const char* name, bool nonblock, bool cloexec) {
  int fl = fcntl(fd, F_GETFL);
  int fdf = fcntl(fd, F_GETFD);
  wl_expect(fl >= 0 && !!(fl & O_NONBLOCK) == nonblock, "%s: F_GETFL 0x%x, O_NONBLOCK expected %s",
            name, fl, nonblock ? "set" : "clear");
  wl_expect(fdf >= 0 && !!(fdf & FD_CLOEXEC) == cloexec, "%s: F_GETFD 0x%x, FD_CLOEXEC expected %s",
            name, fdf, cloexec ? "set" : "clear");
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  int a = eventfd(5, EFD_CLOEXEC);
  if (a < 0) wl_die("eventfd A: %m");
  uint64_t three = 3;
  if (write(a, &three, sizeof three) != (ssize_t)sizeof three) wl_die("write A: %m");
  int b = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
  if (b < 0) wl_die("eventfd B: %m");
  int shared = eventfd(1, 0);
  if (shared < 0) wl_die("eventfd shared: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t adder = wl_fork("adder");
  if (adder == 0) {
    close(a);
    close(b);
    uint64_t ten = 10;
    if (write(shared, &ten, sizeof ten) != (ssize_t)sizeof ten) wl_die("write shared: %m");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    /* The root has read the 11 already: this is the proof that both still share one counter. */
    uint64_t hundred = 100;
    wl_expect(write(shared, &hundred, sizeof hundred) == (ssize_t)sizeof hundred,
              "write 100 to the shared eventfd: %m");
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("adder died during setup");

  wl_ready();
  wl_wait_term();

  check_flags(a, "A", false, true);
  check_flags(b, "B", true, false);
  check_flags(shared, "shared", false, false);

  /* A: the whole counter in one read, then empty (a read would block: probe with poll). */
  long long v;
  if (wl_expect(readable(a, 0), "A (counter 8) is not readable")) {
    v = read_counter(a);
    wl_expect(v == 8, "A: read %lld, expected 8", v);
  }
  wl_expect(!readable(a, 0), "A is still readable after reading its counter");

  /* B: semaphore, non-blocking (a read is only tried when it cannot block). */
  bool b_nonblock = fcntl(b, F_GETFL) & O_NONBLOCK;
  for (int i = 0; i < 3; i++) {
    if (!wl_expect(readable(b, 0), "B: not readable before read %d", i + 1)) break;
    v = read_counter(b);
    wl_expect(v == 1, "B: read %d gave %lld, expected 1", i + 1, v);
  }
  wl_expect(!readable(b, 0), "B: still readable after three reads");
  if (b_nonblock) {
    v = read_counter(b);
    wl_expect(v == -EAGAIN, "B: 4th read gave %lld, expected -EAGAIN (%d)", v, -EAGAIN);
  }

  /* Shared: 1 + 10 from the adder's setup. */
  if (wl_expect(readable(shared, 0), "shared: not readable")) {
    v = read_counter(shared);
    wl_expect(v == 11, "shared: read %lld, expected 11 (1 + 10 from the child)", v);
  }
  wl_expect(!readable(shared, 0), "shared: still readable after reading its counter");

  kill(adder, SIGTERM);
  if (wl_expect(readable(shared, 5000), "shared: the child's write of 100 did not arrive")) {
    v = read_counter(shared);
    wl_expect(v == 100, "shared: read %lld after the child's write, expected 100", v);
  }
  wl_reap(adder, "adder");

  /* A still works as an eventfd. */
  uint64_t add = 42;
  wl_expect(write(a, &add, sizeof add) == (ssize_t)sizeof add, "write A: %m");
  if (wl_expect(readable(a, 0), "A: not readable after a write")) {
    v = read_counter(a);
    wl_expect(v == 42, "A: read %lld after writing 42", v);
  }
  wl_finish();
}
