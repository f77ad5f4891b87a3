/* A dump that is refused must leave the job exactly as it was. The root holds a userfaultfd
 * (which crest refuses) next to the kinds of state a careless dump would damage on its way to the
 * refusal, because crest injects system calls into every task before it decides:
 *   strict   child in SECCOMP_MODE_STRICT serving requests over pipes (an injected mmap that
 *            reached seccomp would kill it)
 *   trap     a thread with SIGTRAP blocked and one pending (a single-stepping injector makes a
 *            SIGTRAP of its own)
 *   stopped  child stopped by SIGSTOP (must stay stopped, its stop already reported)
 *   root     a POSIX lock, an mlock()ed region, a periodic ITIMER_REAL, a blocked signal set
 * Check (after the refused dump): the strict child still answers and its counter goes on; the
 * pending SIGTRAP is delivered exactly once when unblocked; the stopped child has not run and
 * continues on SIGCONT; the lock still excludes a fresh process; the region is still locked;
 * the timer still ticks; the userfaultfd is the same initialised object. */
#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static volatile sig_atomic_t traps, ticks;
static void on_trap(int sig) {
  (void)sig;
  traps++;
}
static void on_alarm(int sig) {
  (void)sig;
  ticks++;
}

__attribute__((noreturn)) static void strict_server(int cmd, int reply) {
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0) != 0) _exit(2);
  uint32_t served = 0, x;
  const char ready = 'R';
  if (write(reply, &ready, 1) != 1) syscall(SYS_exit, 3);
  for (;;) {
    ssize_t n = read(cmd, &x, sizeof x);
    if (n < 0 && errno == EINTR) continue;
    if (n != (ssize_t)sizeof x) syscall(SYS_exit, 4);
    if (x == 0) syscall(SYS_exit, 0);
    uint32_t a = x * 3 + served++;
    if (write(reply, &a, sizeof a) != (ssize_t)sizeof a) syscall(SYS_exit, 5);
  }
}

static atomic_int trap_ready, trap_go;
static void* trap_thread(void* arg) {
  (void)arg;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTRAP);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  syscall(SYS_tgkill, getpid(), wl_gettid(), SIGTRAP); /* pending on this thread */
  atomic_store(&trap_ready, 1);
  while (!atomic_load(&trap_go)) usleep(1000);
  sigset_t trap_only;
  sigemptyset(&trap_only);
  sigaddset(&trap_only, SIGTRAP);
  pthread_sigmask(SIG_UNBLOCK, &trap_only, NULL); /* delivered here, exactly once */
  return NULL;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_trap;
  sigaction(SIGTRAP, &sa, NULL);
  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, NULL);

  int ufd = (int)syscall(SYS_userfaultfd, O_CLOEXEC); /* the refused object */
  if (ufd < 0) wl_die("userfaultfd: %m");
  struct uffdio_api api = {.api = UFFD_API};
  if (ioctl(ufd, UFFDIO_API, &api) != 0) wl_die("UFFDIO_API: %m");

  int cmd[2], reply[2];
  if (pipe(cmd) || pipe(reply)) wl_die("pipe: %m");
  pid_t strict = wl_fork("strict");
  if (strict == 0) {
    close(cmd[1]);
    close(reply[0]);
    strict_server(cmd[0], reply[1]);
  }
  close(cmd[0]);
  close(reply[1]);
  char r;
  if (!wl_read_full(reply[0], &r, 1)) wl_die("strict child did not start");

  uint32_t served = 0;
  for (; served < 2; served++) {
    uint32_t x = 10 + served, a;
    if (!wl_write_full(cmd[1], &x, sizeof x) || !wl_read_full(reply[0], &a, sizeof a) ||
        a != x * 3 + served)
      wl_die("strict child answered wrong at setup");
  }

  volatile uint64_t* counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  pid_t stopped = wl_fork("stopped");
  if (stopped == 0) {
    for (;;) (*counter)++;
  }
  kill(stopped, SIGSTOP);
  int st;
  if (waitpid(stopped, &st, WUNTRACED) != stopped || !WIFSTOPPED(st)) wl_die("child did not stop");

  pthread_t th;
  if (pthread_create(&th, NULL, trap_thread, NULL)) wl_die("pthread_create");
  while (!atomic_load(&trap_ready)) usleep(1000);

  const char* path = wl_path("locked");
  int lfd = open(path, O_RDWR | O_CREAT, 0600);
  if (lfd < 0 || ftruncate(lfd, 100) != 0) wl_die("lock file: %m");
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
  if (fcntl(lfd, F_SETLK, &fl) != 0) wl_die("F_SETLK: %m");

  char* locked = mmap(NULL, 4 * WL_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  wl_fill(locked, 4 * WL_PAGE, 99);
  if (mlock(locked, 4 * WL_PAGE) != 0) wl_die("mlock: %m");
  struct itimerval it = {{0, 20000}, {0, 20000}};
  setitimer(ITIMER_REAL, &it, NULL);

  wl_ready();
  wl_wait_term();

  /* strict child: still in strict mode, counter goes on */
  uint32_t x = 77, a = 0;
  wl_expect(wl_write_full(cmd[1], &x, sizeof x) && wl_read_full(reply[0], &a, sizeof a) &&
                a == x * 3 + served,
            "the strict-seccomp child answered %u, expected %u", a, x * 3 + served);
  x = 0;
  (void)wl_write_full(cmd[1], &x, sizeof x);
  wl_reap(strict, "strict child");

  /* stopped child: has not run; SIGCONT lets it go */
  uint64_t c0 = *counter;
  usleep(100000);
  wl_expect(*counter == c0, "the stopped child ran (counter %llu -> %llu)",
            (unsigned long long)c0, (unsigned long long)*counter);
  pid_t w = waitpid(stopped, &st, WUNTRACED | WNOHANG);
  wl_expect(w == 0, "a new stop report for the stopped child (%d)", (int)w);
  kill(stopped, SIGCONT);
  usleep(50000);
  wl_expect(*counter != c0, "the child does not run after SIGCONT");
  kill(stopped, SIGKILL);
  waitpid(stopped, &st, 0);

  /* pending SIGTRAP: exactly once */
  atomic_store(&trap_go, 1);
  pthread_join(th, NULL);
  wl_expect(traps == 1, "SIGTRAP was delivered %d times, expected once", (int)traps);

  /* lock, mlock, timer, userfaultfd */
  pid_t probe = fork();
  if (probe == 0) {
    int fd = open(path, O_RDWR);
    struct flock g = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    _exit(fd >= 0 && fcntl(fd, F_SETLK, &g) != 0 && (errno == EAGAIN || errno == EACCES) ? 0 : 1);
  }
  waitpid(probe, &st, 0);
  wl_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the POSIX lock no longer excludes another process");
  unsigned char vec[4];
  wl_expect(mincore(locked, 4 * WL_PAGE, vec) == 0 && wl_check(locked, 4 * WL_PAGE, 99) < 0,
            "the locked region lost its data");
  FILE* f = fopen("/proc/self/status", "re");
  char line[256];
  long vmlck = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmLck: %ld", &vmlck) == 1) break;
  if (f) fclose(f);
  wl_expect(vmlck >= 16, "VmLck is %ld kB, the region is not locked any more", vmlck);
  int t0 = ticks;
  usleep(200000);
  wl_expect(ticks > t0, "the interval timer stopped");
  /* A second UFFDIO_API fails with EINVAL only on an instance already initialised. */
  struct uffdio_api again = {.api = UFFD_API};
  errno = 0;
  wl_expect(ioctl(ufd, UFFDIO_API, &again) != 0 && errno == EINVAL,
            "the userfaultfd is not the initialised one (%s)", strerror(errno));
  wl_finish();
}
