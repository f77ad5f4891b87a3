/* pidfds held across the tree:
 *   root   a pidfd of its child C (PIDFD_NONBLOCK) and a pidfd of itself (blocking)
 *   C      a pidfd of the root; a SIGUSR1 handler that answers each SIGUSR1 by sending SIGUSR2
 *          (SI_QUEUE, value = the received value + 1) through that pidfd
 * On request, root: fdinfo of both pidfds gives the Pid /proc knows the process by (compared
 * with wl_proc_pid) and an NSpid ending in the pid the tree uses; F_GETFL shows O_NONBLOCK on
 * C's pidfd only; pidfd_send_signal(self, 0) succeeds; C's pidfd is not readable while C lives,
 * and waitid(P_PIDFD) on it fails with EAGAIN (non-blocking pidfd, C not exited). Then
 * pidfd_send_signal(C's pidfd, SIGUSR1, SI_QUEUE value 0x51): C gets it (from the root, value
 * 0x51) and its answer arrives in the root (SIGUSR2 from C, value 0x52). C, asked to stop,
 * checks its pidfd of the root the same way (fdinfo Pid and NSpid, not readable, signal 0
 * works) and exits 0. The pidfd of C becomes readable (poll) when C exits, and waitid(P_PIDFD)
 * reaps it with status 0. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static int pidfd_open(pid_t pid, unsigned flags) {
  return (int)syscall(SYS_pidfd_open, pid, flags);
}
static int pidfd_send(int pfd, int sig, int value, bool with_info) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  si.si_signo = sig;
  si.si_code = SI_QUEUE;
  si.si_pid = getpid();
  si.si_uid = getuid();
  si.si_value.sival_int = value;
  return (int)syscall(SYS_pidfd_send_signal, pfd, sig, with_info ? &si : NULL, 0);
}

struct got {
  volatile sig_atomic_t count, value, pid, code;
};
static struct got g_usr1, g_usr2;
static int g_parent_pfd = -1;

static void on_usr1(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  g_usr1.count++;
  g_usr1.value = si->si_value.sival_int;
  g_usr1.pid = si->si_pid;
  g_usr1.code = si->si_code;
  pidfd_send(g_parent_pfd, SIGUSR2, si->si_value.sival_int + 1, true);
}
static void on_usr2(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  g_usr2.count++;
  g_usr2.value = si->si_value.sival_int;
  g_usr2.pid = si->si_pid;
  g_usr2.code = si->si_code;
}

static void install(int sig, void (*fn)(int, siginfo_t*, void*)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = fn;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL) != 0) wl_die("sigaction(%d): %m", sig);
}

static bool readable(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n == 1 && (p.revents & POLLIN);
}

/* fdinfo of a pidfd: "Pid: %d" and the last number of "NSpid:". */
static bool pidfd_info(int pfd, int* pid, int* nspid_last) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pfd);
  FILE* f = fopen(path, "re");
  if (!f) return false;
  char line[256];
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "Pid: %d", pid) == 1) found |= 1;
    if (strncmp(line, "NSpid:", 6) == 0) {
      char* tok = strtok(line + 6, " \t\n");
      while (tok) {
        *nspid_last = (int)strtol(tok, NULL, 10);
        found |= 2;
        tok = strtok(NULL, " \t\n");
      }
    }
  }
  fclose(f);
  return found == 3;
}

static void check_pidfd(int pfd, const char* what, pid_t pid, bool nonblock) {
  int fpid = -1, nslast = -1;
  if (wl_expect(pidfd_info(pfd, &fpid, &nslast), "%s: no Pid/NSpid in fdinfo", what)) {
    pid_t want = wl_proc_pid(pid);
    wl_expect(fpid == want && want > 0, "%s: fdinfo Pid %d, /proc knows pid %d as %d", what, fpid,
              (int)pid, (int)want);
    wl_expect(nslast == pid, "%s: fdinfo NSpid ends in %d, expected %d", what, nslast, (int)pid);
  }
  int fl = fcntl(pfd, F_GETFL);
  wl_expect(fl >= 0 && !!(fl & O_NONBLOCK) == nonblock, "%s: F_GETFL 0x%x, O_NONBLOCK expected %s",
            what, fl, nonblock ? "set" : "clear");
  wl_expect(!readable(pfd, 0), "%s: readable while the process lives", what);
  wl_expect(pidfd_send(pfd, 0, 0, false) == 0, "%s: pidfd_send_signal(0): %m", what);
}

static void nap(long ns) {
  struct timespec ts = {0, ns};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void child_main(struct wl_sync* sync, pid_t root) {
  g_parent_pfd = pidfd_open(root, 0);
  if (g_parent_pfd < 0) wl_die("pidfd_open(root): %m");
  install(SIGUSR1, on_usr1);
  wl_sync_post(sync, NULL, 0);
  wl_wait_term();
  /* The root signalled us (and saw our answer) before asking us to stop. */
  wl_expect(g_usr1.count == 1, "%d SIGUSR1 received, expected 1", (int)g_usr1.count);
  wl_expect(g_usr1.code == SI_QUEUE && g_usr1.value == 0x51 && g_usr1.pid == getppid(),
            "SIGUSR1 si_code %d value 0x%x from %d, expected SI_QUEUE 0x51 from %d",
            (int)g_usr1.code, (int)g_usr1.value, (int)g_usr1.pid, (int)getppid());
  check_pidfd(g_parent_pfd, "C's pidfd of the root", getppid(), false);
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t root = getpid();
  install(SIGUSR2, on_usr2);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t c = wl_fork("C");
  if (c == 0) child_main(&sync, root);
  int pc = pidfd_open(c, PIDFD_NONBLOCK);
  if (pc < 0) wl_die("pidfd_open(C): %m");
  int pself = pidfd_open(root, 0);
  if (pself < 0) wl_die("pidfd_open(self): %m");
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("C died during setup");

  wl_ready();
  wl_wait_term();

  check_pidfd(pself, "pidfd of self", root, false);
  check_pidfd(pc, "pidfd of C", c, true);
  siginfo_t si;
  int r;
  if (fcntl(pc, F_GETFL) & O_NONBLOCK) { /* else it would block: already failed above */
    memset(&si, 0, sizeof si);
    errno = 0;
    r = waitid(P_PIDFD, (id_t)pc, &si, WEXITED);
    wl_expect(r == -1 && errno == EAGAIN, "waitid(P_PIDFD) on a live C: %d (%s), expected EAGAIN",
              r, r == 0 ? "reaped" : strerror(errno));
  }

  wl_expect(pidfd_send(pc, SIGUSR1, 0x51, true) == 0, "pidfd_send_signal(C, SIGUSR1): %m");
  double end = wl_now() + 5;
  while (g_usr2.count == 0 && wl_now() < end) nap(1000000);
  nap(50000000);
  wl_expect(g_usr2.count == 1, "%d answers (SIGUSR2) from C, expected 1", (int)g_usr2.count);
  if (g_usr2.count >= 1) {
    wl_expect(g_usr2.code == SI_QUEUE && g_usr2.value == 0x52 && g_usr2.pid == c,
              "answer si_code %d value 0x%x from %d, expected SI_QUEUE 0x52 from %d",
              (int)g_usr2.code, (int)g_usr2.value, (int)g_usr2.pid, (int)c);
  }

  wl_expect(pidfd_send(pc, SIGTERM, 0, false) == 0, "pidfd_send_signal(C, SIGTERM): %m");
  wl_expect(readable(pc, 5000), "C's pidfd did not become readable when C exited");
  memset(&si, 0, sizeof si);
  do {
    r = waitid(P_PIDFD, (id_t)pc, &si, WEXITED);
  } while (r < 0 && errno == EINTR);
  if (wl_expect(r == 0, "waitid(P_PIDFD, C): %m")) {
    wl_expect(si.si_pid == c, "waitid reaped pid %d, expected %d", (int)si.si_pid, (int)c);
    wl_expect(si.si_code == CLD_EXITED && si.si_status == 0,
              "C ended with si_code %d status %d (its checks failed?)", si.si_code, si.si_status);
  }
  wl_finish();
}
