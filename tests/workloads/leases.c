/* File leases (F_SETLEASE), held by the root:
 *   W  opened O_RDWR (the only open of the file anywhere), write lease (F_WRLCK), F_SETSIG
 *      SIGRTMIN+2 so the break notice carries siginfo (si_fd, si_code POLL_MSG)
 *   R  opened O_RDONLY (no writer anywhere), read lease (F_RDLCK), default notice (SIGIO)
 * Neither file may be opened again by the tree: any conflicting open breaks the lease.
 * On request: F_GETLEASE gives the same types, F_GETSIG the same signal, and no break notice
 * has arrived yet. Then, for each file, a fresh process forked at check time opens it
 * (W: O_RDONLY|O_NONBLOCK, R: O_WRONLY|O_NONBLOCK) and gets EWOULDBLOCK; that starts a lease
 * break, so the holder receives exactly one notice (for W with si_fd = W's fd); the holder
 * releases (F_UNLCK) and the same open then succeeds. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static volatile sig_atomic_t g_rt_count, g_rt_fd, g_rt_code;
static volatile sig_atomic_t g_io_count;

static void on_rt(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  g_rt_count++;
  g_rt_fd = si->si_fd;
  g_rt_code = si->si_code;
}

static void on_io(int sig) {
  (void)sig;
  g_io_count++;
}

static int create(const char* name, int flags) {
  int fd = open(wl_path(name), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) wl_die("create %s: %m", name);
  char buf[1000];
  wl_fill(buf, sizeof buf, 91);
  if (!wl_write_full(fd, buf, sizeof buf)) wl_die("write %s: %m", name);
  close(fd);
  fd = open(wl_path(name), flags | O_CLOEXEC);
  if (fd < 0) wl_die("open %s: %m", name);
  return fd;
}

/* open(name, flags) in a new process: 0 if it opened, else the errno. */
static int fresh_open(const char* name, int flags) {
  pid_t pid = wl_fork("opener");
  if (pid == 0) {
    int fd = open(wl_path(name), flags | O_CLOEXEC);
    _exit(fd >= 0 ? 0 : errno > 0 && errno < 255 ? errno : 255);
  }
  int st;
  pid_t r;
  while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR) {
  }
  if (r != pid || !WIFEXITED(st)) return 255;
  return WEXITSTATUS(st);
}

/* Waits up to `secs` for *count to reach `want`; then a little longer for extras. */
static int wait_count(volatile sig_atomic_t* count, int want, double secs) {
  double end = wl_now() + secs;
  while (*count < want && wl_now() < end) {
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  struct timespec settle = {0, 100000000};
  while (nanosleep(&settle, &settle) != 0 && errno == EINTR) {
  }
  return *count;
}

static const char* lease_name(int t) {
  return t == F_RDLCK ? "F_RDLCK" : t == F_WRLCK ? "F_WRLCK" : t == F_UNLCK ? "F_UNLCK" : "?";
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const int rtsig = SIGRTMIN + 2;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sa.sa_sigaction = on_rt;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  if (sigaction(rtsig, &sa, NULL) != 0) wl_die("sigaction rt: %m");
  sa.sa_handler = on_io;
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGIO, &sa, NULL) != 0) wl_die("sigaction SIGIO: %m");

  int w = create("W", O_RDWR);
  int r = create("R", O_RDONLY);
  if (fcntl(w, F_SETSIG, rtsig) != 0) wl_die("F_SETSIG: %m");
  if (fcntl(w, F_SETLEASE, F_WRLCK) != 0) wl_die("F_SETLEASE W F_WRLCK: %m");
  if (fcntl(r, F_SETLEASE, F_RDLCK) != 0) wl_die("F_SETLEASE R F_RDLCK: %m");

  wl_ready();
  wl_wait_term();

  int lw = fcntl(w, F_GETLEASE), lr = fcntl(r, F_GETLEASE);
  wl_expect(lw == F_WRLCK, "W lease is %s (%d), expected F_WRLCK", lease_name(lw), lw);
  wl_expect(lr == F_RDLCK, "R lease is %s (%d), expected F_RDLCK", lease_name(lr), lr);
  wl_expect(fcntl(w, F_GETSIG) == rtsig, "W F_GETSIG %d, expected %d", fcntl(w, F_GETSIG), rtsig);
  wl_expect(fcntl(r, F_GETSIG) == 0, "R F_GETSIG %d, expected 0", fcntl(r, F_GETSIG));
  wl_expect(g_rt_count == 0 && g_io_count == 0,
            "break notices before any conflicting open: %d on W, %d on R", (int)g_rt_count,
            (int)g_io_count);
  g_rt_count = g_io_count = 0;

  /* W: a reader must wait for the write lease. */
  int e = fresh_open("W", O_RDONLY | O_NONBLOCK);
  wl_expect(e == EWOULDBLOCK, "fresh O_RDONLY|O_NONBLOCK open of write-leased W: %s",
            e == 0 ? "opened" : strerror(e));
  int n = wait_count(&g_rt_count, 1, 5);
  wl_expect(n == 1, "W break: %d notices (signal %d), expected 1", n, rtsig);
  if (n >= 1) {
    wl_expect(g_rt_fd == w, "W break notice si_fd %d, expected %d", (int)g_rt_fd, w);
    wl_expect(g_rt_code == POLL_MSG, "W break notice si_code %d, expected POLL_MSG",
              (int)g_rt_code);
  }
  wl_expect(g_io_count == 0, "W break also sent %d SIGIO", (int)g_io_count);
  lw = fcntl(w, F_GETLEASE);
  wl_expect(lw == F_RDLCK, "W lease while breaking for a reader is %s, expected F_RDLCK",
            lease_name(lw));
  wl_expect(fcntl(w, F_SETLEASE, F_UNLCK) == 0, "F_SETLEASE W F_UNLCK: %m");
  wl_expect(fcntl(w, F_GETLEASE) == F_UNLCK, "W lease still %s after F_UNLCK",
            lease_name(fcntl(w, F_GETLEASE)));
  e = fresh_open("W", O_RDONLY | O_NONBLOCK);
  wl_expect(e == 0, "open of W after the release: %s", strerror(e));

  /* R: a writer must wait for the read lease. */
  e = fresh_open("R", O_WRONLY | O_NONBLOCK);
  wl_expect(e == EWOULDBLOCK, "fresh O_WRONLY|O_NONBLOCK open of read-leased R: %s",
            e == 0 ? "opened" : strerror(e));
  n = wait_count(&g_io_count, 1, 5);
  wl_expect(n == 1, "R break: %d SIGIO, expected 1", n);
  wl_expect(g_rt_count == 1, "R break sent signal %d too", rtsig);
  lr = fcntl(r, F_GETLEASE);
  wl_expect(lr == F_UNLCK, "R lease while breaking for a writer is %s, expected F_UNLCK",
            lease_name(lr));
  wl_expect(fcntl(r, F_SETLEASE, F_UNLCK) == 0, "F_SETLEASE R F_UNLCK: %m");
  e = fresh_open("R", O_WRONLY | O_NONBLOCK);
  wl_expect(e == 0, "open of R after the release: %s", strerror(e));
  wl_finish();
}
