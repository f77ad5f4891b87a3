#include "workload.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile sig_atomic_t wl_term;

static const char* g_dir;
static const char* g_prog = "workload";
static const char* g_role = "root";
static bool g_root = true;
static pid_t g_pid;         /* our pid at setup: must survive restore */
static pid_t g_sid, g_pgid; /* the root's session and group after setup */
static int g_ready_fd = WL_READY_FD;
static char g_reason[512];
static int g_failures;

static void on_term(int sig) {
  (void)sig;
  wl_term = 1;
}

/* Formats into a buffer and writes with one write(2): no stdio buffers to duplicate at fork,
 * and lines from several processes sharing the O_APPEND log never interleave. */
static void emit(int fd, const char* prefix, const char* fmt, va_list ap) {
  char line[1024];
  int n = snprintf(line, sizeof line, "%s", prefix);
  if (n < 0) return;
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  if (m < 0) m = 0;
  size_t len = strnlen(line, sizeof line - 2);
  line[len++] = '\n';
  (void)wl_write_full(fd, line, len);
}

void wl_note(const char* fmt, ...) {
  char prefix[96];
  snprintf(prefix, sizeof prefix, "# %s %s[%d]: ", g_prog, g_role, (int)getpid());
  va_list ap;
  va_start(ap, fmt);
  emit(2, prefix, fmt, ap);
  va_end(ap);
}

void wl_init(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR   (fd 3: ready pipe; SIGTERM: verify and report)\n", argv[0]);
    exit(2);
  }
  const char* slash = strrchr(argv[0], '/');
  g_prog = slash ? slash + 1 : argv[0];
  g_dir = argv[1];
  g_pid = getpid();

  /* Everything but stdio and the ready pipe came from the launcher: not ours. */
  if (syscall(SYS_close_range, WL_READY_FD + 1, ~0U, 0) != 0) {
    for (int fd = WL_READY_FD + 1; fd < 1024; fd++) close(fd);
  }
  if (fcntl(WL_READY_FD, F_GETFD) < 0) g_ready_fd = -1; /* run by hand without a ready pipe */

  /* Own session and process group: the tree is self-contained. A process already leading its
   * group (started from a shell) cannot setsid(); it then keeps the caller's session. */
  if (setsid() < 0 && errno != EPERM) wl_die("setsid: %s", strerror(errno));
  g_sid = getsid(0);
  g_pgid = getpgid(0);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: blocked syscalls return EINTR on the check request */
  if (sigaction(SIGTERM, &sa, NULL) != 0) wl_die("sigaction(SIGTERM): %s", strerror(errno));
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, SIGTERM);
  sigprocmask(SIG_UNBLOCK, &unblock, NULL);
}

const char* wl_dir(void) { return g_dir; }

const char* wl_path(const char* name) {
  static char bufs[8][PATH_MAX];
  static unsigned next;
  char* b = bufs[next++ % 8];
  snprintf(b, PATH_MAX, "%s/%s", g_dir, name);
  return b;
}

void wl_ready(void) {
  if (g_ready_fd < 0) return;
  if (!wl_write_full(g_ready_fd, "R", 1)) wl_die("writing the ready byte: %s", strerror(errno));
  close(g_ready_fd);
  g_ready_fd = -1;
}

void wl_wait_term(void) {
  /* Block SIGTERM while testing the flag, and sleep with it unblocked: no lost wake-up. The
   * mask is restored afterwards, so a checkpoint taken inside sigsuspend (whose temporary mask
   * is what ptrace sees) leaves the program with the mask it expects either way. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigprocmask(SIG_BLOCK, &block, &old);
  sigset_t wait_mask = old;
  sigdelset(&wait_mask, SIGTERM);
  while (!wl_term) sigsuspend(&wait_mask);
  sigprocmask(SIG_SETMASK, &old, NULL);
}

pid_t wl_fork(const char* role) {
  /* SIGTERM stays blocked until the child has cleared the flag it inherited: a check request
   * sent to a child that has not run yet would otherwise be handled on its first return from
   * fork() and then forgotten by the clearing below. */
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  sigprocmask(SIG_BLOCK, &term, &old);
  pid_t pid = fork();
  if (pid < 0) wl_die("fork (%s): %s", role, strerror(errno));
  if (pid == 0) {
    if (g_ready_fd >= 0) close(g_ready_fd);
    g_ready_fd = -1;
    g_root = false;
    g_role = role;
    g_pid = getpid();
    wl_term = 0;
    g_failures = 0;
    g_reason[0] = 0;
  }
  sigprocmask(SIG_SETMASK, &old, NULL);
  return pid;
}

bool wl_is_root(void) { return g_root; }

bool wl_expect(bool cond, const char* fmt, ...) {
  if (cond) return true;
  int saved_errno = errno; /* for %m: the errno of the call being checked */
  char msg[384];
  va_list ap;
  errno = saved_errno;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (g_failures++ == 0) {
    if (g_root) {
      snprintf(g_reason, sizeof g_reason, "%s", msg);
    } else {
      snprintf(g_reason, sizeof g_reason, "%s: %s", g_role, msg);
    }
  }
  wl_note("check failed: %s", msg);
  return false;
}

bool wl_failed(void) { return g_failures > 0; }

static void describe_status(int st, char* buf, size_t len) {
  if (WIFEXITED(st)) {
    snprintf(buf, len, "exited %d", WEXITSTATUS(st));
  } else if (WIFSIGNALED(st)) {
    snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
  } else {
    snprintf(buf, len, "wait status 0x%x", st);
  }
}

bool wl_reap(pid_t pid, const char* what) {
  int st = 0;
  pid_t r;
  do {
    r = waitpid(pid, &st, 0);
  } while (r < 0 && errno == EINTR);
  if (r != pid) {
    return wl_expect(false, "waitpid(%s pid %d): %s", what, (int)pid,
                     r < 0 ? strerror(errno) : "wrong pid");
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return true;
  char desc[96];
  describe_status(st, desc, sizeof desc);
  return wl_expect(false, "%s (pid %d) %s", what, (int)pid, desc);
}

void wl_finish(void) {
  wl_expect(getpid() == g_pid, "pid changed: %d at setup, %d now", (int)g_pid, (int)getpid());
  if (g_root) {
    wl_expect(getsid(0) == g_sid, "session %d, expected %d", (int)getsid(0), (int)g_sid);
    wl_expect(getpgid(0) == g_pgid, "process group %d, expected %d", (int)getpgid(0), (int)g_pgid);
    struct sigaction sa;
    if (sigaction(SIGTERM, NULL, &sa) == 0) {
      wl_expect(sa.sa_handler == on_term, "SIGTERM handler changed");
    }
    /* No root sets a parent-death signal (a restore makes the root with one, then clears it). */
    int pdeath = -1;
    wl_expect(prctl(PR_GET_PDEATHSIG, &pdeath) == 0 && pdeath == 0, "parent-death signal %d", pdeath);
    char line[sizeof g_reason + 64];
    int n;
    if (g_failures == 0) {
      n = snprintf(line, sizeof line, "PASS\n");
    } else if (g_failures == 1) {
      n = snprintf(line, sizeof line, "FAIL: %s\n", g_reason);
    } else {
      n = snprintf(line, sizeof line, "FAIL: %s (+%d more)\n", g_reason, g_failures - 1);
    }
    if (n > 0) (void)wl_write_full(1, line, strnlen(line, sizeof line));
    _exit(g_failures == 0 ? 0 : 1);
  }
  if (g_failures) wl_note("FAILED: %s", g_reason);
  _exit(g_failures == 0 ? 0 : 1);
}

void wl_die(const char* fmt, ...) {
  int saved_errno = errno;
  char msg[384];
  va_list ap;
  errno = saved_errno;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  wl_expect(false, "%s", msg);
  wl_finish();
}

void wl_sync_init(struct wl_sync* s) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) wl_die("pipe: %s", strerror(errno));
  s->rd = p[0];
  s->wr = p[1];
}

void wl_sync_post(struct wl_sync* s, const void* rec, size_t len) {
  static const char one = 'r';
  if (len == 0) {
    rec = &one;
    len = 1;
  }
  if (!wl_write_full(s->wr, rec, len)) wl_die("posting readiness: %s", strerror(errno));
  close(s->wr);
  close(s->rd);
  s->rd = s->wr = -1;
}

bool wl_sync_wait(struct wl_sync* s, int n, void* recs, size_t len) {
  close(s->wr);
  s->wr = -1;
  bool ok = true;
  char one;
  for (int i = 0; i < n && ok; i++) {
    void* dst = len ? (char*)recs + (size_t)i * len : &one;
    ok = wl_read_full(s->rd, dst, len ? len : 1);
  }
  close(s->rd);
  s->rd = -1;
  return ok;
}

bool wl_wait_in_syscall(pid_t pid, long nr1, long nr2) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
  /* Polling is the only way to learn that another task has entered a syscall; this runs
   * during setup only, never as synchronisation with the harness. */
  for (int i = 0; i < 20000; i++) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n > 0) {
      buf[n] = 0;
      char* end;
      long nr = strtol(buf, &end, 10);
      if (end != buf && (nr == nr1 || nr == nr2)) {
        /* Seen inside the call; also require the task to be sleeping (state S). */
        char spath[64], sbuf[512];
        snprintf(spath, sizeof spath, "/proc/%d/stat", (int)pid);
        int sfd = open(spath, O_RDONLY | O_CLOEXEC);
        if (sfd < 0) return false;
        ssize_t sn = read(sfd, sbuf, sizeof sbuf - 1);
        close(sfd);
        if (sn > 0) {
          sbuf[sn] = 0;
          char* rp = strrchr(sbuf, ')');
          if (rp && rp[1] == ' ' && rp[2] == 'S') return true;
        }
      }
    }
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return false;
}

key_t wl_random_key(unsigned char tag) {
  uint32_t r = 0;
  while (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) {
  }
  r &= 0xffffff;
  return (key_t)(((uint32_t)tag << 24) | (r ? r : 1));
}

uint64_t wl_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* The pattern byte at offset i depends on (seed, i) only, so any sub-range can be checked. */
static uint64_t pattern_word(uint64_t seed, uint64_t word) {
  return wl_mix64(seed * 0x100000001b3ULL ^ word);
}

void wl_fill(void* buf, size_t len, uint64_t seed) {
  unsigned char* p = buf;
  for (size_t i = 0; i < len; i += 8) {
    uint64_t w = pattern_word(seed, i / 8);
    size_t n = len - i < 8 ? len - i : 8;
    memcpy(p + i, &w, n);
  }
}

long wl_check(const void* buf, size_t len, uint64_t seed) {
  const unsigned char* p = buf;
  for (size_t i = 0; i < len; i += 8) {
    uint64_t w = pattern_word(seed, i / 8);
    size_t n = len - i < 8 ? len - i : 8;
    if (memcmp(p + i, &w, n) != 0) {
      const unsigned char* wb = (const unsigned char*)&w;
      for (size_t j = 0; j < n; j++) {
        if (p[i + j] != wb[j]) return (long)(i + j);
      }
    }
  }
  return -1;
}

long wl_check_zero(const void* buf, size_t len) {
  const unsigned char* p = buf;
  for (size_t i = 0; i < len; i++) {
    if (p[i] != 0) return (long)i;
  }
  return -1;
}

bool wl_read_full(int fd, void* buf, size_t len) {
  char* p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= (size_t)n;
  }
  return true;
}

bool wl_write_full(int fd, const void* buf, size_t len) {
  const char* p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= (size_t)n;
  }
  return true;
}

int wl_pipe_pending(int fd) {
  int n = 0;
  if (ioctl(fd, FIONREAD, &n) != 0) return -1;
  return n;
}

double wl_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

pid_t wl_gettid(void) { return (pid_t)syscall(SYS_gettid); }

bool wl_find_vma(const void* addr, struct wl_vma* out) {
  FILE* f = fopen("/proc/self/smaps", "re");
  if (!f) return false;
  char line[1024];
  bool in = false, found = false;
  unsigned long a = (unsigned long)addr;
  while (fgets(line, sizeof line, f)) {
    unsigned long s, e;
    char p[5];
    int pos = 0;
    if (sscanf(line, "%lx-%lx %4s %*s %*s %*s%n", &s, &e, p, &pos) == 3 && pos > 0) {
      in = a >= s && a < e;
      if (in) {
        out->start = s;
        out->end = e;
        memcpy(out->perms, p, 5);
        const char* n = line + pos;
        while (*n == ' ') n++;
        snprintf(out->name, sizeof out->name, "%.250s", n);
        out->name[strcspn(out->name, "\n")] = 0;
        out->vmflags[0] = 0;
      }
      continue;
    }
    if (in && strncmp(line, "VmFlags:", 8) == 0) {
      snprintf(out->vmflags, sizeof out->vmflags, "%.200s", line + 8);
      out->vmflags[strcspn(out->vmflags, "\n")] = 0;
      found = true;
      break;
    }
  }
  fclose(f);
  return found;
}

bool wl_has_vmflag(const char* vmflags, const char* mnemonic) {
  char tok[8];
  int n;
  while (sscanf(vmflags, " %7s%n", tok, &n) == 1) {
    if (strcmp(tok, mnemonic) == 0) return true;
    vmflags += n;
  }
  return false;
}

pid_t wl_proc_pid(pid_t pid) {
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pfd < 0) return -1;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pfd);
  FILE* f = fopen(path, "re");
  pid_t r = -1;
  if (f) {
    char line[256];
    while (fgets(line, sizeof line, f)) {
      int v;
      if (sscanf(line, "Pid: %d", &v) == 1) {
        r = v;
        break;
      }
    }
    fclose(f);
  }
  close(pfd);
  return r;
}
