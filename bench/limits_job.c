/* crest-bench-limits-job: a job at the edge of a resource, for bench/limits.py.
 *
 *   crest-bench-limits-job KIND N LOG
 *
 *   maps     N mappings: N pages reserved at once, every other one made read-write and stamped
 *            with its index (so no two neighbours merge: N/2 read-write, N/2 inaccessible)
 *   threads  N threads besides the main one, each blocked on a futex, 64 KiB stacks
 *   procs    N child processes, each blocked in pause()
 *   fds      N descriptors besides stdio: RLIMIT_NOFILE raised to fit, half of them eventfds
 *            whose counters are their index, half dups of one pipe end
 *   fdprocs  N descriptors spread over child processes, as many to a child as the hard
 *            RLIMIT_NOFILE allows (at most 10,000 less 64): a tree that holds more descriptors
 *            than one process may. One in 100 is an eventfd whose counter is its index, the rest
 *            dups of one pipe end per child (a restorer holds every description at once: N/100
 *            of them fit where N would not); each child checks its own (counters, the count)
 *   fdwide   the same with every descriptor an eventfd, 500 to a child: N descriptions, none
 *            at a high number
 *   fdtop    one descriptor at the highest number the hard RLIMIT_NOFILE allows (N ignored): a
 *            restorer under the same hard limit has no number left above it for its own
 *
 * It appends "READY <seconds it took>" to LOG once everything is made, then waits. SIGUSR1 asks
 * for the check: every mapping, thread, child or descriptor is still there and still holds what
 * it held; it appends "PASS" or "FAIL: <what>" and exits (0 or 1), ending its children. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int g_log = -1;
static volatile sig_atomic_t g_check = 0;
static uint32_t g_futex = 0;

static void say(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
  buf[n++] = '\n';
  (void)!write(g_log, buf, (size_t)n);
}

static void die(const char* what) {
  say("FAIL: %s: %s", what, strerror(errno));
  exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_usr1(int sig) {
  (void)sig;
  g_check = 1;
}

static void* sleeper(void* arg) {
  (void)arg;
  for (;;) syscall(SYS_futex, &g_futex, FUTEX_WAIT, 0, NULL, NULL, 0);
  return NULL;
}

static long count_dir(const char* path) {
  DIR* d = opendir(path);
  if (!d) return -1;
  long n = 0;
  struct dirent* e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n;
}

static long count_lines(const char* path) {
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  long n = 0;
  int c;
  while ((c = fgetc(f)) != EOF)
    if (c == '\n') ++n;
  fclose(f);
  return n;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s maps|threads|procs|fds|fdprocs|fdwide|fdtop N LOG\n", argv[0]);
    return 2;
  }
  const char* kind = argv[1];
  long n = atol(argv[2]);
  g_log = open(argv[3], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (g_log < 0) return 2;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  sigprocmask(SIG_BLOCK, &block, &old);
  double t0 = now();

  char* area = NULL;
  pid_t* kids = NULL;
  pid_t* fd_kids = NULL; /* fdprocs */
  long nfd_kids = 0;
  int first_fd = -1;
  if (strcmp(kind, "maps") == 0) {
    n /= 2; /* read-write pages; as many inaccessible ones between them */
    area = mmap(NULL, (size_t)(2 * n) * 4096, PROT_NONE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (area == MAP_FAILED) die("mmap");
    for (long i = 0; i < n; ++i) {
      char* p = area + (size_t)(2 * i) * 4096;
      if (mprotect(p, 4096, PROT_READ | PROT_WRITE) != 0) die("mprotect");
      *(long*)p = i;
    }
  } else if (strcmp(kind, "threads") == 0) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (long i = 0; i < n; ++i) {
      pthread_t t;
      int rc = pthread_create(&t, &attr, sleeper, NULL);
      if (rc != 0) {
        errno = rc;
        die("pthread_create");
      }
    }
  } else if (strcmp(kind, "procs") == 0) {
    kids = calloc((size_t)n, sizeof *kids);
    for (long i = 0; i < n; ++i) {
      pid_t p = fork();
      if (p < 0) die("fork");
      if (p == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        signal(SIGUSR1, SIG_IGN);
        for (;;) pause();
      }
      kids[i] = p;
    }
  } else if (strcmp(kind, "fdprocs") == 0 || strcmp(kind, "fdwide") == 0) {
    const long every = strcmp(kind, "fdwide") == 0 ? 1 : 100; /* one eventfd in `every` */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) die("getrlimit");
    long per = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 10000 ? 10000 - 64 : (long)rl.rlim_max - 64;
    if (every == 1) per = 500; /* many children of low numbers: more descriptions than any */
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit(RLIMIT_NOFILE)");
    nfd_kids = (n + per - 1) / per;
    fd_kids = calloc((size_t)nfd_kids, sizeof *fd_kids);
    for (long k = 0; k < nfd_kids; ++k) {
      const long m = n - k * per < per ? n - k * per : per;
      int ready[2];
      if (pipe(ready) != 0) die("pipe");
      pid_t p = fork();
      if (p < 0) die("fork");
      if (p == 0) {
        close(ready[0]);
        int pfd[2];
        if (pipe(pfd) != 0) _exit(3);
        const int first = pfd[1] + 1;
        for (long i = 0; i < m - 2; ++i) {
          int fd = (i % every == 0) ? eventfd((unsigned)(k * per + i + 1), EFD_NONBLOCK) : dup(pfd[1]);
          if (fd != first + i) _exit(3);
        }
        close(ready[1]);
        while (!g_check) sigsuspend(&old);
        for (long i = 0; i < m - 2; i += every) {
          uint64_t v = 0;
          if (read(first + (int)i, &v, sizeof v) != (ssize_t)sizeof v || v != (uint64_t)(k * per + i + 1))
            _exit(1);
        }
        _exit(count_dir("/proc/self/fd") >= m ? 0 : 2);
      }
      close(ready[1]);
      char c;
      if (read(ready[0], &c, 1) != 0) die("a child's ready pipe");
      close(ready[0]);
      int st;
      if (waitpid(p, &st, WNOHANG) != 0) {
        errno = 0;
        die("a child could not make its descriptors");
      }
      fd_kids[k] = p;
    }
  } else if (strcmp(kind, "fdtop") == 0) {
    /* One descriptor at the highest number the hard limit allows (N is ignored). */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) die("getrlimit");
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit(RLIMIT_NOFILE)");
    first_fd = (int)rl.rlim_max - 1;
    if (dup2(0, first_fd) != first_fd) die("dup2");
    n = 0;
  } else if (strcmp(kind, "fds") == 0) {
    struct rlimit rl = {(rlim_t)n + 64, (rlim_t)n + 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit(RLIMIT_NOFILE)");
    int pfd[2];
    if (pipe(pfd) != 0) die("pipe");
    first_fd = pfd[1] + 1;
    for (long i = 0; i < n - 2; ++i) {
      int fd = (i % 2 == 0) ? eventfd((unsigned)i + 1, EFD_NONBLOCK) : dup(pfd[1]);
      if (fd < 0) die(i % 2 == 0 ? "eventfd" : "dup");
      if (fd != first_fd + i) {
        errno = 0;
        die("descriptors not contiguous");
      }
    }
  } else {
    fprintf(stderr, "unknown kind %s\n", kind);
    return 2;
  }
  say("READY %.3f", now() - t0);

  while (!g_check) sigsuspend(&old);

  const char* bad = NULL;
  if (area) {
    for (long i = 0; i < n && !bad; ++i)
      if (*(long*)(area + (size_t)(2 * i) * 4096) != i) bad = "a page lost its stamp";
    if (!bad && count_lines("/proc/self/maps") < 2 * n) bad = "fewer mappings than made";
  } else if (strcmp(kind, "threads") == 0) {
    if (count_dir("/proc/self/task") != n + 1) bad = "thread count changed";
  } else if (kids) {
    for (long i = 0; i < n && !bad; ++i) {
      int st;
      if (waitpid(kids[i], &st, WNOHANG) != 0) bad = "a child is gone";
    }
    for (long i = 0; i < n; ++i) kill(kids[i], SIGKILL);
    for (long i = 0; i < n; ++i) waitpid(kids[i], NULL, 0);
  } else if (fd_kids) {
    for (long k = 0; k < nfd_kids; ++k) kill(fd_kids[k], SIGUSR1);
    for (long k = 0; k < nfd_kids; ++k) {
      int st = 0;
      if (waitpid(fd_kids[k], &st, 0) != fd_kids[k] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bad = WIFEXITED(st) && WEXITSTATUS(st) == 1 ? "a child's eventfd lost its count"
              : "a child lost descriptors or died";
    }
  } else if (strcmp(kind, "fdtop") == 0) {
    if (fcntl(first_fd, F_GETFD) < 0) bad = "the top descriptor is gone";
  } else if (first_fd >= 0) {
    for (long i = 0; i < n - 2 && !bad; i += 2) {
      uint64_t v = 0;
      if (read(first_fd + (int)i, &v, sizeof v) != (ssize_t)sizeof v || v != (uint64_t)i + 1)
        bad = "an eventfd lost its count";
    }
    if (!bad && count_dir("/proc/self/fd") < n) bad = "fewer descriptors than made";
  }
  if (bad) {
    say("FAIL: %s", bad);
    return 1;
  }
  say("PASS");
  return 0;
}
