/* Children in job-control stop at checkpoint time:
 *   S1  stopped by SIGSTOP (in the root's group)
 *   S2  stopped by SIGTSTP, default action (in its own group: the root's group is orphaned, its
 *       only outside parent being in another session, and the kernel discards SIGTSTP sent to
 *       an orphaned group)
 * Both spin incrementing a counter in MAP_SHARED memory while they run. The root waited for
 * both stop reports (waitpid WUNTRACED) during setup.
 * On request: /proc/S/stat state is 'T' for both; neither counter moves during 200 ms; then
 * SIGCONT: waitpid(WCONTINUED) reports each continued and both counters move; SIGTERM: both exit
 * 0. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

struct shared {
  volatile uint64_t count[2];
};

/* State letter of /proc/PID/stat (for a pid of our namespace), 0 on error. */
static char proc_state(pid_t pid) {
  pid_t ppid = wl_proc_pid(pid);
  if (ppid <= 0) return 0;
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)ppid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char* rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' ? rp[2] : 0;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void spinner(struct shared* sh, int i) {
  while (!wl_term) sh->count[i]++;
  wl_finish();
}

/* waitpid with a deadline (polls WNOHANG): a report that never comes is a failure, not a hang.
 * Returns the pid, 0 on timeout, -1 on error. */
static pid_t wait_report(pid_t pid, int* st, int flags, double timeout) {
  double t0 = wl_now();
  for (;;) {
    pid_t r = waitpid(pid, st, flags | WNOHANG);
    if (r != 0 && !(r < 0 && errno == EINTR)) return r;
    if (wl_now() - t0 > timeout) return 0;
    sleep_ms(1);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct shared* sh =
      mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED) wl_die("mmap: %m");

  pid_t s[2];
  static const int kSig[2] = {SIGSTOP, SIGTSTP};
  static const char* const kName[2] = {"S1", "S2"};
  s[0] = wl_fork("S1");
  if (s[0] == 0) spinner(sh, 0);
  s[1] = wl_fork("S2");
  if (s[1] == 0) {
    setpgid(0, 0);
    spinner(sh, 1);
  }
  if (setpgid(s[1], s[1]) != 0 && errno != EACCES) wl_die("setpgid(S2): %m");

  for (int i = 0; i < 2; i++) {
    /* Running first (so that stopping really interrupts it), then stopped. */
    double t0 = wl_now();
    while (sh->count[i] == 0 && wl_now() - t0 < 5) sleep_ms(1);
    if (sh->count[i] == 0) wl_die("%s never ran", kName[i]);
    if (kill(s[i], kSig[i]) != 0) wl_die("kill(%s): %m", kName[i]);
    int st = 0;
    pid_t r = wait_report(s[i], &st, WUNTRACED, 5);
    if (r != s[i] || !WIFSTOPPED(st) || WSTOPSIG(st) != kSig[i]) {
      wl_die("%s did not stop by signal %d (status 0x%x)", kName[i], kSig[i], st);
    }
  }

  wl_ready();
  wl_wait_term();

  uint64_t before[2];
  for (int i = 0; i < 2; i++) {
    char state = proc_state(s[i]);
    wl_expect(state == 'T', "%s: state '%c' in /proc/PID/stat, expected 'T'", kName[i],
              state ? state : '?');
    before[i] = sh->count[i];
  }
  sleep_ms(200);
  for (int i = 0; i < 2; i++) {
    wl_expect(sh->count[i] == before[i], "%s ran while stopped (counter %llu -> %llu)", kName[i],
              (unsigned long long)before[i], (unsigned long long)sh->count[i]);
  }
  /* A stop report the root already consumed must not come back. Not a failure: a restorer
   * that re-stops the task with a signal makes a new one, which a program may well see. */
  for (int i = 0; i < 2; i++) {
    int st = 0;
    pid_t r = waitpid(s[i], &st, WUNTRACED | WNOHANG);
    if (r != 0)
      wl_note("%s: a new wait report (%d, status 0x%x) after the restore", kName[i], (int)r, st);
  }

  for (int i = 0; i < 2; i++) {
    before[i] = sh->count[i];
    if (kill(s[i], SIGCONT) != 0) wl_expect(false, "kill(%s, SIGCONT): %m", kName[i]);
    int st = 0;
    pid_t r = wait_report(s[i], &st, WCONTINUED, 5);
    wl_expect(r == s[i] && WIFCONTINUED(st), "%s: waitpid(WCONTINUED) returned %d status 0x%x",
              kName[i], (int)r, st);
  }
  for (int i = 0; i < 2; i++) {
    double t0 = wl_now();
    while (sh->count[i] == before[i] && wl_now() - t0 < 5) sleep_ms(1);
    wl_expect(sh->count[i] != before[i], "%s does not run after SIGCONT", kName[i]);
  }
  for (int i = 0; i < 2; i++) {
    kill(s[i], SIGTERM);
    kill(s[i], SIGCONT); /* in case a check above failed with it still stopped */
  }
  wl_reap(s[0], "S1");
  wl_reap(s[1], "S2");
  wl_finish();
}
