/* Signal-driven I/O ownership (O_ASYNC, F_SETOWN_EX, F_SETSIG) on the read ends of three
 * pipes:
 *   A  owner F_OWNER_TID = a second thread T of the root (T blocks every signal but
 *      SIGRTMIN+1), F_SETSIG SIGRTMIN+1; 64 bytes already buffered at setup (written before
 *      O_ASYNC was set, so no notice was due)
 *   B  owner F_OWNER_PID = the root, default signal (F_SETSIG 0: plain SIGIO, si_code SI_KERNEL)
 *   C  owner F_OWNER_PGRP = the root's process group, which also holds the child "member";
 *      F_SETSIG SIGRTMIN+2
 * On request: F_GETOWN_EX, F_GETOWN, F_GETSIG and F_GETFL (O_ASYNC) read back as set, no
 * notice has arrived yet (not even for A's buffered bytes), A still holds its 64 bytes. Then
 * one byte is written to each pipe in turn, and exactly one signal must arrive: A's on thread
 * T with si_fd = A's read fd and si_code POLL_IN; B's SIGIO in the root with si_code SI_KERNEL;
 * C's in the root and, once, in the member, both with si_fd = C's read fd. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define A_BUFFERED 64

struct seen {
  volatile sig_atomic_t count, fd, code, tid;
};
static struct seen g_a, g_b, g_c;
static volatile pid_t g_thread_tid;

static void record(struct seen* s, const siginfo_t* si) {
  s->count++;
  s->fd = si->si_fd;
  s->code = si->si_code;
  s->tid = wl_gettid();
}

static void on_a(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  record(&g_a, si);
}
static void on_b(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  record(&g_b, si);
}
static void on_c(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  record(&g_c, si);
}

static void install(int sig, void (*fn)(int, siginfo_t*, void*)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = fn;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL) != 0) wl_die("sigaction(%d): %m", sig);
}

static void* thread_main(void* arg) {
  (void)arg;
  sigset_t only;
  sigfillset(&only);
  sigdelset(&only, SIGRTMIN + 1);
  pthread_sigmask(SIG_SETMASK, &only, NULL);
  g_thread_tid = wl_gettid();
  for (;;) pause();
  return NULL;
}

static void nap(long ns) {
  struct timespec ts = {0, ns};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Waits up to 5 s for the first signal, then 100 ms more for any extra. */
static int wait_count(const struct seen* s) {
  double end = wl_now() + 5;
  while (s->count == 0 && wl_now() < end) nap(2000000);
  nap(100000000);
  return s->count;
}

static void make_async_pipe(int p[2], int owner_type, pid_t owner, int sig) {
  struct f_owner_ex ex;
  ex.type = owner_type;
  ex.pid = owner;
  if (fcntl(p[0], F_SETOWN_EX, &ex) != 0) wl_die("F_SETOWN_EX: %m");
  if (sig && fcntl(p[0], F_SETSIG, sig) != 0) wl_die("F_SETSIG: %m");
  if (fcntl(p[0], F_SETFL, O_ASYNC | O_NONBLOCK) != 0) wl_die("F_SETFL O_ASYNC: %m");
}

static void check_owner(int fd, const char* name, int type, pid_t pid, int legacy, int sig) {
  struct f_owner_ex ex = {.type = 0, .pid = -1};
  int rc = fcntl(fd, F_GETOWN_EX, &ex); /* before reading ex in the same call */
  wl_expect(rc == 0 && (int)ex.type == type && ex.pid == pid,
            "%s: F_GETOWN_EX {%d, %d}, expected {%d, %d}", name, (int)ex.type, (int)ex.pid, type,
            (int)pid);
  int own = fcntl(fd, F_GETOWN);
  wl_expect(own == legacy, "%s: F_GETOWN %d, expected %d", name, own, legacy);
  int s = fcntl(fd, F_GETSIG);
  wl_expect(s == sig, "%s: F_GETSIG %d, expected %d", name, s, sig);
  int fl = fcntl(fd, F_GETFL);
  wl_expect(fl >= 0 && (fl & O_ASYNC), "%s: O_ASYNC lost (flags 0x%x)", name, fl);
}

/* Checks `s` got exactly one signal with the given si_fd (fd < 0: not checked) and code. */
static void expect_one(const struct seen* s, const char* name, int fd, int code) {
  int n = wait_count(s);
  if (!wl_expect(n == 1, "%s: %d signals after one write, expected 1", name, n)) return;
  if (fd >= 0) wl_expect(s->fd == fd, "%s: si_fd %d, expected %d", name, (int)s->fd, fd);
  wl_expect(s->code == code, "%s: si_code %d, expected %d", name, (int)s->code, code);
}

static void drain(int fd, int want, const char* name) {
  char buf[256];
  int pending = wl_pipe_pending(fd);
  ssize_t n = read(fd, buf, sizeof buf);
  wl_expect(pending == want && n == want, "%s: %d bytes pending / %zd read, expected %d", name,
            pending, n, want);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const int rt_a = SIGRTMIN + 1, rt_c = SIGRTMIN + 2;
  install(rt_a, on_a);
  install(SIGIO, on_b);
  install(rt_c, on_c);

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  pthread_t th;
  if (pthread_create(&th, NULL, thread_main, NULL) != 0) wl_die("pthread_create failed");
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  while (g_thread_tid == 0) nap(1000000);
  pid_t tid = g_thread_tid;
  pid_t me = getpid();
  pid_t pgrp = getpgrp();

  int pa[2], pb[2], pc[2];
  if (pipe2(pa, O_CLOEXEC) != 0 || pipe2(pb, O_CLOEXEC) != 0 || pipe2(pc, O_CLOEXEC) != 0) {
    wl_die("pipe: %m");
  }
  char pre[A_BUFFERED];
  wl_fill(pre, sizeof pre, 101);
  if (!wl_write_full(pa[1], pre, sizeof pre)) wl_die("write A: %m");
  make_async_pipe(pa, F_OWNER_TID, tid, rt_a);
  make_async_pipe(pb, F_OWNER_PID, me, 0);
  make_async_pipe(pc, F_OWNER_PGRP, pgrp, rt_c);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t member = wl_fork("member");
  if (member == 0) {
    if (getpgrp() != pgrp) wl_die("member is not in the root's group");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    /* The root wrote to C before sending SIGTERM: the notice is queued or handled already. */
    expect_one(&g_c, "C in the member", pc[0], POLL_IN);
    wl_expect(g_a.count == 0 && g_b.count == 0, "member got %d A and %d B signals", (int)g_a.count,
              (int)g_b.count);
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("member died during setup");

  wl_ready();
  wl_wait_term();

  check_owner(pa[0], "A", F_OWNER_TID, tid, tid, rt_a);
  check_owner(pb[0], "B", F_OWNER_PID, me, me, 0);
  check_owner(pc[0], "C", F_OWNER_PGRP, pgrp, -pgrp, rt_c);
  wl_expect(g_a.count == 0 && g_b.count == 0 && g_c.count == 0,
            "signals before any write: A %d, B %d, C %d", (int)g_a.count, (int)g_b.count,
            (int)g_c.count);
  int pending = wl_pipe_pending(pa[0]);
  wl_expect(pending == A_BUFFERED, "A holds %d bytes, expected %d", pending, A_BUFFERED);
  g_a.count = g_b.count = g_c.count = 0;

  wl_expect(write(pa[1], "a", 1) == 1, "write A: %m");
  expect_one(&g_a, "A", pa[0], POLL_IN);
  wl_expect(g_a.count == 0 || g_a.tid == tid, "A: signal handled by tid %d, expected thread %d",
            (int)g_a.tid, (int)tid);
  drain(pa[0], A_BUFFERED + 1, "A");

  wl_expect(write(pb[1], "b", 1) == 1, "write B: %m");
  expect_one(&g_b, "B", -1, SI_KERNEL);
  drain(pb[0], 1, "B");

  wl_expect(write(pc[1], "c", 1) == 1, "write C: %m");
  expect_one(&g_c, "C in the root", pc[0], POLL_IN);
  drain(pc[0], 1, "C");
  wl_expect(g_a.count == 1 && g_b.count == 1,
            "signals on A/B after writes to B/C: A %d, B %d (expected 1 each)", (int)g_a.count,
            (int)g_b.count);

  kill(member, SIGTERM);
  wl_reap(member, "member");
  wl_finish();
}
