/* signalfd and the pending signals it reads:
 *   root   SIGUSR1, SIGUSR2 and SIGRTMIN+4 blocked; a signalfd for SIGUSR1 and SIGRTMIN+4 only
 *          (SFD_NONBLOCK | SFD_CLOEXEC); pending before wl_ready: one SIGUSR1 (kill to itself),
 *          two SIGRTMIN+4 (sigqueue to itself, values 11 then 22)
 *   child  "reader", forked after the signals were queued: inherits the signalfd and the mask,
 *          so nothing is pending for it (pending signals are not inherited)
 * On request, root: SIGUSR1 and SIGRTMIN+4 are pending (sigpending), the signalfd is readable
 * and O_NONBLOCK; reading it gives SIGUSR1 (SI_USER, from the root) once, then SIGRTMIN+4 twice
 * (SI_QUEUE, values 11 then 22), then EAGAIN; nothing is left pending. A new SIGUSR1 sent then
 * is read through the signalfd, while a SIGUSR2 (blocked, not in the signalfd's mask) is not:
 * the fd stays unreadable and sigtimedwait takes it. The root then queues SIGRTMIN+4 (value 33)
 * to the reader and tells it to check: the inherited signalfd reads the reader's own signals,
 * so it gives exactly that one (SI_QUEUE, value 33, from its parent), then EAGAIN. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
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

/* Reads one record: 1, or -errno. */
static int read_one(int fd, struct signalfd_siginfo* si) {
  memset(si, 0, sizeof *si);
  ssize_t n;
  do {
    n = read(fd, si, sizeof *si);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  return n == (ssize_t)sizeof *si ? 1 : -EIO;
}

/* Expects the next record to be `sig` with `code`, sender `pid` and (for SI_QUEUE) `value`. */
static void expect_record(int fd, const char* what, int sig, int code, pid_t pid, int value) {
  struct signalfd_siginfo si;
  int r = read_one(fd, &si);
  if (!wl_expect(r == 1, "%s: read gave %d (%s), expected signal %d", what, r,
                 r < 0 ? strerror(-r) : "short", sig)) {
    return;
  }
  wl_expect((int)si.ssi_signo == sig, "%s: signal %u, expected %d", what, si.ssi_signo, sig);
  wl_expect(si.ssi_code == code, "%s: si_code %d, expected %d", what, si.ssi_code, code);
  wl_expect((pid_t)si.ssi_pid == pid, "%s: sender pid %u, expected %d", what, si.ssi_pid, (int)pid);
  wl_expect(si.ssi_uid == getuid(), "%s: sender uid %u, expected %u", what, si.ssi_uid, getuid());
  if (code == SI_QUEUE) {
    wl_expect(si.ssi_int == value, "%s: value %d, expected %d", what, si.ssi_int, value);
  }
}

static void expect_empty(int fd, const char* what) {
  struct signalfd_siginfo si;
  int r = read_one(fd, &si);
  wl_expect(r == -EAGAIN, "%s: read gave %s (signal %u), expected EAGAIN", what,
            r == 1 ? "a record" : strerror(-r), r == 1 ? si.ssi_signo : 0);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const int rt4 = SIGRTMIN + 4;

  sigset_t blocked, fdmask;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGUSR1);
  sigaddset(&blocked, SIGUSR2);
  sigaddset(&blocked, rt4);
  if (sigprocmask(SIG_BLOCK, &blocked, NULL) != 0) wl_die("sigprocmask: %m");
  sigemptyset(&fdmask);
  sigaddset(&fdmask, SIGUSR1);
  sigaddset(&fdmask, rt4);
  int sfd = signalfd(-1, &fdmask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sfd < 0) wl_die("signalfd: %m");

  pid_t me = getpid();
  if (kill(me, SIGUSR1) != 0) wl_die("kill: %m");
  if (sigqueue(me, rt4, (union sigval){.sival_int = 11}) != 0) wl_die("sigqueue: %m");
  if (sigqueue(me, rt4, (union sigval){.sival_int = 22}) != 0) wl_die("sigqueue: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t reader = wl_fork("reader");
  if (reader == 0) {
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    /* The root queued our signal before asking us to check. */
    expect_record(sfd, "reader", rt4, SI_QUEUE, getppid(), 33);
    expect_empty(sfd, "reader after its one signal");
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("reader died during setup");

  wl_ready();
  wl_wait_term();

  int fl = fcntl(sfd, F_GETFL);
  wl_expect(fl >= 0 && (fl & O_NONBLOCK), "signalfd: O_NONBLOCK lost (F_GETFL 0x%x)", fl);
  sigset_t pending;
  sigpending(&pending);
  wl_expect(sigismember(&pending, SIGUSR1) && sigismember(&pending, rt4),
            "not pending: SIGUSR1 %d, SIGRTMIN+4 %d", sigismember(&pending, SIGUSR1),
            sigismember(&pending, rt4));
  wl_expect(readable(sfd, 0), "signalfd not readable with signals pending");

  /* Lowest number first: SIGUSR1, then the two queued SIGRTMIN+4 in order. */
  expect_record(sfd, "1st record", SIGUSR1, SI_USER, me, 0);
  expect_record(sfd, "2nd record", rt4, SI_QUEUE, me, 11);
  expect_record(sfd, "3rd record", rt4, SI_QUEUE, me, 22);
  expect_empty(sfd, "after the three queued signals");
  sigpending(&pending);
  wl_expect(!sigismember(&pending, SIGUSR1) && !sigismember(&pending, rt4),
            "still pending after reading: SIGUSR1 %d, SIGRTMIN+4 %d",
            sigismember(&pending, SIGUSR1), sigismember(&pending, rt4));

  /* The mask still works: SIGUSR1 through the fd, SIGUSR2 not. */
  kill(me, SIGUSR2);
  wl_expect(!readable(sfd, 0), "signalfd readable with only SIGUSR2 (not in its mask) pending");
  kill(me, SIGUSR1);
  wl_expect(readable(sfd, 1000), "signalfd not readable after a new SIGUSR1");
  expect_record(sfd, "new SIGUSR1", SIGUSR1, SI_USER, me, 0);
  expect_empty(sfd, "after the new SIGUSR1");
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  struct timespec zero = {0, 0};
  int got = sigtimedwait(&usr2, NULL, &zero);
  wl_expect(got == SIGUSR2, "sigtimedwait(SIGUSR2) gave %d: the signalfd took it?", got);

  /* The reader's inherited signalfd reads the reader's own queue. */
  wl_expect(sigqueue(reader, rt4, (union sigval){.sival_int = 33}) == 0, "sigqueue to reader: %m");
  kill(reader, SIGTERM);
  wl_reap(reader, "reader");
  wl_finish();
}
