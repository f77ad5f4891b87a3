/* Processes blocked in sleeps at checkpoint time:
 *   rel  nanosleep(2 s), continuing with the remaining time after EINTR
 *   abs  clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, start + 2.5 s)
 * The root makes sure both are inside the call before it reports ready. After a restore the
 * sleeps must end (not hang, not return early with an error): each sleeper checks that at least
 * the requested time passed, then waits for the request. */
#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>

#include "workload.h"

#define REL_SEC 2
#define ABS_NSEC 2500000000LL

static void rel_sleeper(struct wl_sync* sync) {
  double start = wl_now();
  wl_sync_post(sync, NULL, 0);
  struct timespec req = {REL_SEC, 0}, rem;
  int interrupted = 0;
  for (;;) {
    if (nanosleep(&req, &rem) == 0) break;
    if (!wl_expect(errno == EINTR, "nanosleep: %m")) break;
    interrupted++;
    req = rem; /* the request interrupted us: sleep out the rest */
  }
  double slept = wl_now() - start;
  wl_expect(slept >= REL_SEC, "slept %.3f s of %d (interrupted %d times)", slept, REL_SEC,
            interrupted);
  wl_wait_term();
  wl_finish();
}

static void abs_sleeper(struct wl_sync* sync) {
  struct timespec now, deadline;
  clock_gettime(CLOCK_MONOTONIC, &now);
  long long ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec + ABS_NSEC;
  deadline.tv_sec = (time_t)(ns / 1000000000LL);
  deadline.tv_nsec = (long)(ns % 1000000000LL);
  wl_sync_post(sync, NULL, 0);
  int rc;
  while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL)) == EINTR) {
  }
  wl_expect(rc == 0, "clock_nanosleep: %s", strerror(rc));
  clock_gettime(CLOCK_MONOTONIC, &now);
  wl_expect(now.tv_sec > deadline.tv_sec ||
                (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec),
            "woke before the deadline");
  wl_wait_term();
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t rel = wl_fork("rel");
  if (rel == 0) rel_sleeper(&sync);
  pid_t abs_ = wl_fork("abs");
  if (abs_ == 0) abs_sleeper(&sync);
  if (!wl_sync_wait(&sync, 2, NULL, 0)) wl_die("a sleeper died during setup");
  if (!wl_wait_in_syscall(rel, SYS_clock_nanosleep, SYS_nanosleep) ||
      !wl_wait_in_syscall(abs_, SYS_clock_nanosleep, SYS_nanosleep)) {
    wl_die("the sleepers never blocked in their sleep");
  }

  wl_ready();
  wl_wait_term();

  kill(rel, SIGTERM);
  kill(abs_, SIGTERM);
  wl_reap(rel, "relative sleeper");
  wl_reap(abs_, "absolute sleeper");
  wl_finish();
}
