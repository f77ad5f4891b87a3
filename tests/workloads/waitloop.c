/* A job that watches its children the way init-like programs and job launchers do, to prove
 * that checkpoints leave no trace a job can wait for:
 *   root    one child alive; loops waitpid(-1, WNOHANG), which must keep returning 0
 *   child   no children; loops wait() and waitpid(-1, WNOHANG), which must fail with ECHILD
 * Both count SIGCHLD (SA_SIGINFO, recording the sender) and must see none until the check.
 * Copy-on-write checkpoints fork a snapshot copy of each process (exit_signal 0, reaped by an
 * injected wait4): none of it may show up here. Each loop also probes with
 * waitid(P_ALL, WEXITED|WNOHANG|WNOWAIT|__WALL), which would see an exited clone child before
 * anyone reaps it; a sighting is noted on stderr (it is not a wait() result) but not failed.
 *
 * Check: the child verifies its counters and exits 0; the root verifies its own, reaps the
 * child, and must then have seen exactly one SIGCHLD, from that child. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static volatile sig_atomic_t g_sigchld;
static volatile sig_atomic_t g_sigchld_pid;

static void on_sigchld(int sig, siginfo_t* si, void* ctx) {
  (void)sig;
  (void)ctx;
  g_sigchld++;
  g_sigchld_pid = si->si_pid;
}

struct counters {
  unsigned long loops;
  unsigned long bad_results; /* wait results other than the expected one */
  unsigned long wall_sightings;
  pid_t first_wall_pid;
  int first_wall_code;
  pid_t first_bad_pid;
  int first_bad_errno;
};

static void pace(void) {
  struct timespec ts = {0, 100 * 1000};
  nanosleep(&ts, NULL); /* pacing only: a busy loop would starve the checkpointer of CPU */
}

static void probe_wall(struct counters* c) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT | __WALL) == 0 && si.si_pid != 0) {
    /* Noted at the check, not now: a line written now would grow out.log after a checkpoint,
     * and the restore of that checkpoint would (rightly) refuse the changed file. */
    if (c->wall_sightings++ == 0) {
      c->first_wall_pid = si.si_pid;
      c->first_wall_code = si.si_code;
    }
  }
}

static void bad(struct counters* c, pid_t r) {
  if (c->bad_results++ == 0) {
    c->first_bad_pid = r;
    c->first_bad_errno = errno;
  }
}

/* Both loops make every probe at least once, even when SIGTERM came before they started (the
 * baseline run asks the job to finish as soon as it is ready). */
static void child_loop(struct counters* c) {
  do {
    int st;
    pid_t r = wait(&st);
    if (!(r < 0 && (errno == ECHILD || errno == EINTR))) bad(c, r);
    r = waitpid(-1, &st, WNOHANG);
    if (!(r < 0 && (errno == ECHILD || errno == EINTR))) bad(c, r);
    probe_wall(c);
    c->loops++;
    pace();
  } while (!wl_term);
}

static void root_loop(struct counters* c) {
  do {
    int st;
    pid_t r = waitpid(-1, &st, WNOHANG);
    if (!(r == 0 || (r < 0 && errno == EINTR))) bad(c, r);
    probe_wall(c);
    c->loops++;
    pace();
  } while (!wl_term);
}

static void check(const struct counters* c, const char* who) {
  wl_expect(c->loops > 0, "%s: the loop never ran", who);
  wl_expect(c->bad_results == 0,
            "%s: %lu unexpected wait results, the first returned %d (errno %s)", who,
            c->bad_results, (int)c->first_bad_pid, strerror(c->first_bad_errno));
  wl_expect(g_sigchld == 0, "%s: %d SIGCHLD before the check, the last from pid %d", who,
            (int)g_sigchld, (int)g_sigchld_pid);
  wl_note("%s: %lu loops, %lu __WALL sightings", who, c->loops, c->wall_sightings);
  if (c->wall_sightings > 0)
    wl_note("%s: waitid(__WALL|WNOWAIT) saw an exited child %d (code %d) the job did not make",
            who, (int)c->first_wall_pid, c->first_wall_code);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigchld;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGCHLD, &sa, NULL) != 0) wl_die("sigaction(SIGCHLD): %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("child");
  if (child == 0) {
    wl_sync_post(&sync, NULL, 0);
    struct counters c = {0};
    child_loop(&c);
    check(&c, "child");
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("the child died during setup");
  wl_ready();

  struct counters c = {0};
  root_loop(&c);
  check(&c, "root");
  kill(child, SIGTERM);
  if (wl_reap(child, "child")) {
    /* The child's SIGCHLD is delivered on the way out of the wait that reaped it. */
    wl_expect(g_sigchld == 1 && g_sigchld_pid == child,
              "after reaping the child: %d SIGCHLD, the last from %d (expected 1 from %d)",
              (int)g_sigchld, (int)g_sigchld_pid, (int)child);
  }
  wl_finish();
}
