/* A disposition for every signal: each of 1..64 that can be caught (all but SIGKILL, SIGSTOP,
 * glibc's internal 32 and 33, and SIGTERM, which is the protocol's) gets a handler or SIG_IGN
 * with varied flags (SA_SIGINFO, SA_RESTART, SA_NODEFER, SA_RESETHAND, SA_ONSTACK on a
 * sigaltstack) and a varied sa_mask, derived from the signal number. Special ones:
 *   SIGTRAP    SA_SIGINFO handler, mask {SIGUSR2, SIGRTMIN+2}
 *   SIGUSR1    SA_SIGINFO|SA_RESETHAND
 *   SIGUSR2    SA_SIGINFO|SA_NODEFER, re-raises itself once from the handler; SIGRTMIN+7 does the
 *              same without SA_NODEFER
 *   SIGHUP     SIG_IGN (default would kill)
 *   SIGALRM    SA_SIGINFO|SA_RESTART; SIGVTALRM SA_SIGINFO without SA_RESTART
 *   SIGCHLD    SA_SIGINFO|SA_NOCLDSTOP|SA_RESTART
 * A child process has SIGCHLD with SA_SIGINFO|SA_NOCLDWAIT (which changes reaping, so not in
 * the root).
 * On request: sigaction() returns the same handler, flags and mask for every signal, and the
 * alternate stack is the same. Raised signals run the right handler: SIGTRAP with SI_TKILL and
 * its sa_mask (+ itself) blocked, not on the alt stack; an SA_ONSTACK one on the alt stack;
 * SIGUSR1 once, then its disposition is SIG_DFL; SIGUSR2 nests (depth 2), SIGRTMIN+7 does not;
 * SIGHUP is discarded; a read interrupted by SIGALRM restarts, by SIGVTALRM fails with EINTR;
 * a child that stops and exits raises SIGCHLD once (exit only). In the child: a grandchild that
 * exits is reaped automatically (waitpid gives ECHILD) and SIGCHLD still runs the handler. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define NSIG_K 64
#define ALT_SIZE (64 * 1024)
#define FLAG_MASK \
  (SA_SIGINFO | SA_RESTART | SA_NODEFER | SA_RESETHAND | SA_ONSTACK | SA_NOCLDSTOP | SA_NOCLDWAIT)

static char g_alt[ALT_SIZE] __attribute__((aligned(16)));

struct seen {
  volatile int count, depth, max_depth, code, onstack, status;
  volatile uint64_t mask; /* blocked set inside the handler (first delivery) */
};
static struct seen g_seen[NSIG_K + 1];
static volatile int g_plain[NSIG_K + 1];

static uint64_t cur_mask(void) {
  sigset_t m;
  pthread_sigmask(SIG_BLOCK, NULL, &m);
  uint64_t v = 0;
  for (int s = 1; s <= NSIG_K; s++) {
    if (sigismember(&m, s) == 1) v |= 1ULL << (s - 1);
  }
  return v;
}

static bool is_fault(int sig) {
  return sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE;
}

static void h_info(int sig, siginfo_t* si, void* uc) {
  (void)uc;
  if (is_fault(sig) && si->si_code > 0) {
    static const char msg[] = "# sigactions_all: real fault\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(99);
  }
  struct seen* s = &g_seen[sig];
  int n = s->count++;
  s->depth++;
  if (s->depth > s->max_depth) s->max_depth = s->depth;
  if (n == 0) {
    s->code = si->si_code;
    s->status = si->si_status;
    char local;
    s->onstack = &local >= g_alt && &local < g_alt + ALT_SIZE;
    s->mask = cur_mask();
  }
  if ((sig == SIGUSR2 || sig == SIGRTMIN + 7) && n == 0) raise(sig); /* nests iff SA_NODEFER */
  s->depth--;
}

static void h_plain(int sig) { g_plain[sig]++; }

struct want {
  bool set;
  void* handler; /* h_info, h_plain or SIG_IGN */
  int flags;
  uint64_t mask;
};
static struct want g_want[NSIG_K + 1];

static bool settable(int sig) {
  return sig != SIGKILL && sig != SIGSTOP && sig != 32 && sig != 33 && sig != SIGTERM;
}

static uint64_t bit(int sig) { return 1ULL << (sig - 1); }

/* The plan: a mix derived from the signal number, then the special ones. */
static void plan(void) {
  for (int s = 1; s <= NSIG_K; s++) {
    if (!settable(s)) continue;
    struct want* w = &g_want[s];
    w->set = true;
    switch (s % 6) {
      case 0:
        w->handler = (void*)h_info, w->flags = SA_SIGINFO | SA_RESTART;
        break;
      case 1:
        w->handler = (void*)h_plain, w->flags = 0;
        break;
      case 2:
        w->handler = (void*)SIG_IGN, w->flags = SA_RESTART;
        break;
      case 3:
        w->handler = (void*)h_info, w->flags = SA_SIGINFO | SA_NODEFER;
        break;
      case 4:
        w->handler = (void*)h_info, w->flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
        break;
      default:
        w->handler = (void*)h_plain, w->flags = SA_RESETHAND | SA_RESTART;
        break;
    }
    /* Fault signals: SA_SIGINFO, so the handler can tell a real fault from a raise. */
    if (is_fault(s) && w->handler != (void*)h_info) {
      w->handler = (void*)h_info;
      w->flags = SA_SIGINFO;
    }
    int a = (s * 7) % NSIG_K + 1, b = (s * 13 + 5) % NSIG_K + 1;
    w->mask = 0;
    if (settable(a)) w->mask |= bit(a);
    if (settable(b)) w->mask |= bit(b);
  }
  const int rt2 = SIGRTMIN + 2;
  g_want[SIGTRAP] = (struct want){true, (void*)h_info, SA_SIGINFO, bit(SIGUSR2) | bit(rt2)};
  g_want[SIGUSR1] = (struct want){true, (void*)h_info, SA_SIGINFO | SA_RESETHAND, bit(SIGWINCH)};
  g_want[SIGUSR2] = (struct want){true, (void*)h_info, SA_SIGINFO | SA_NODEFER, 0};
  g_want[SIGRTMIN + 7] = (struct want){true, (void*)h_info, SA_SIGINFO, bit(SIGUSR1)};
  g_want[SIGHUP] = (struct want){true, (void*)SIG_IGN, 0, bit(SIGINT)};
  g_want[SIGALRM] = (struct want){true, (void*)h_info, SA_SIGINFO | SA_RESTART, 0};
  g_want[SIGVTALRM] = (struct want){true, (void*)h_info, SA_SIGINFO, 0};
  g_want[SIGCHLD] =
      (struct want){true, (void*)h_info, SA_SIGINFO | SA_NOCLDSTOP | SA_RESTART, bit(SIGPIPE)};
  g_want[SIGWINCH] = (struct want){true, (void*)h_info, SA_SIGINFO | SA_ONSTACK, bit(SIGURG)};
}

static void to_sigset(uint64_t m, sigset_t* set) {
  sigemptyset(set);
  for (int s = 1; s <= NSIG_K; s++) {
    if (m & bit(s)) sigaddset(set, s);
  }
}

static void install(int sig, const struct want* w) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  if (w->flags & SA_SIGINFO) {
    sa.sa_sigaction = (void (*)(int, siginfo_t*, void*))w->handler;
  } else {
    sa.sa_handler = (void (*)(int))w->handler;
  }
  sa.sa_flags = w->flags;
  to_sigset(w->mask, &sa.sa_mask);
  if (sigaction(sig, &sa, NULL) != 0) wl_die("sigaction(%d): %m", sig);
}

static uint64_t from_sigset(const sigset_t* set) {
  uint64_t v = 0;
  for (int s = 1; s <= NSIG_K; s++) {
    if (sigismember(set, s) == 1) v |= bit(s);
  }
  return v;
}

static void check_action(int sig, const struct want* w) {
  struct sigaction sa;
  if (!wl_expect(sigaction(sig, NULL, &sa) == 0, "sigaction(%d) query: %m", sig)) return;
  void* h = (sa.sa_flags & SA_SIGINFO) ? (void*)sa.sa_sigaction : (void*)sa.sa_handler;
  wl_expect(h == w->handler, "signal %d: handler %p, expected %p", sig, h, w->handler);
  int flags = sa.sa_flags & FLAG_MASK;
  wl_expect(flags == w->flags, "signal %d: flags 0x%x, expected 0x%x", sig, (unsigned)flags,
            (unsigned)w->flags);
  uint64_t m = from_sigset(&sa.sa_mask);
  wl_expect(m == w->mask, "signal %d: sa_mask 0x%llx, expected 0x%llx", sig, (unsigned long long)m,
            (unsigned long long)w->mask);
}

/* ---------------------------------------------------------------- SA_RESTART by behaviour */

struct poke {
  pid_t tid;
  int sig;
  int wr;
};

static void* poker(void* arg) {
  struct poke* p = arg;
  struct timespec ts = {0, 100 * 1000000L};
  nanosleep(&ts, NULL); /* the main thread is in read() by then */
  syscall(SYS_tgkill, getpid(), p->tid, p->sig);
  ts.tv_nsec = 50 * 1000000L;
  nanosleep(&ts, NULL);
  (void)!write(p->wr, "x", 1);
  return NULL;
}

/* Blocks in read() on an empty pipe while another thread signals us, then writes a byte.
 * Returns read's result (errno kept). */
static ssize_t interrupted_read(int sig) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -2;
  struct poke pk = {wl_gettid(), sig, p[1]};
  pthread_t th;
  if (pthread_create(&th, NULL, poker, &pk) != 0) return -2;
  char c;
  ssize_t n = read(p[0], &c, 1);
  int saved = errno;
  pthread_join(th, NULL);
  close(p[0]);
  close(p[1]);
  errno = saved;
  return n;
}

/* ---------------------------------------------------------------- the SA_NOCLDWAIT child */

static void nocldwait_child(struct wl_sync* sync) {
  struct want w = {true, (void*)h_info, SA_SIGINFO | SA_NOCLDWAIT, bit(SIGUSR1)};
  install(SIGCHLD, &w);
  wl_sync_post(sync, NULL, 0);
  wl_wait_term();
  check_action(SIGCHLD, &w);
  int before = g_seen[SIGCHLD].count;
  pid_t g = wl_fork("grandchild");
  if (g == 0) _exit(7);
  pid_t r;
  while ((r = waitpid(g, NULL, 0)) < 0 && errno == EINTR) {
  }
  wl_expect(r < 0 && errno == ECHILD, "waitpid on an SA_NOCLDWAIT child returned %d (%s)", (int)r,
            r < 0 ? strerror(errno) : "reaped normally");
  wl_expect(g_seen[SIGCHLD].count == before + 1, "SIGCHLD handler ran %d times, expected 1",
            g_seen[SIGCHLD].count - before);
  if (before == 0 && g_seen[SIGCHLD].count == 1) {
    wl_expect(g_seen[SIGCHLD].code == CLD_EXITED && g_seen[SIGCHLD].status == 7,
              "SIGCHLD si_code %d status %d", g_seen[SIGCHLD].code, g_seen[SIGCHLD].status);
  }
  wl_finish();
}

/* ---------------------------------------------------------------- root */

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("nocldwait");
  if (child == 0) nocldwait_child(&sync);
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("the nocldwait child died during setup");

  stack_t ss = {.ss_sp = g_alt, .ss_size = ALT_SIZE, .ss_flags = 0};
  if (sigaltstack(&ss, NULL) != 0) wl_die("sigaltstack: %m");
  plan();
  for (int s = 1; s <= NSIG_K; s++) {
    if (g_want[s].set) install(s, &g_want[s]);
  }

  wl_ready();
  wl_wait_term();

  for (int s = 1; s <= NSIG_K; s++) {
    if (g_want[s].set) check_action(s, &g_want[s]);
  }
  stack_t cur;
  if (wl_expect(sigaltstack(NULL, &cur) == 0, "sigaltstack query: %m")) {
    wl_expect(cur.ss_sp == g_alt && cur.ss_size == ALT_SIZE && cur.ss_flags == 0,
              "alt stack %p/%zu/%d", cur.ss_sp, cur.ss_size, cur.ss_flags);
  }
  for (int s = 1; s <= NSIG_K; s++) {
    wl_expect(g_seen[s].count == 0 && g_plain[s] == 0, "signal %d handled before the check", s);
  }

  /* SIGTRAP: handler, siginfo, its mask, normal stack. */
  raise(SIGTRAP);
  struct seen* t = &g_seen[SIGTRAP];
  if (wl_expect(t->count == 1, "SIGTRAP handled %d times", t->count)) {
    wl_expect(t->code == SI_TKILL, "SIGTRAP si_code %d, expected SI_TKILL", t->code);
    uint64_t want = g_want[SIGTRAP].mask | bit(SIGTRAP);
    wl_expect((t->mask & want) == want, "SIGTRAP handler ran with mask 0x%llx, lacking 0x%llx",
              (unsigned long long)t->mask, (unsigned long long)want);
    wl_expect(!t->onstack, "SIGTRAP handler ran on the alternate stack");
  }
  /* SA_ONSTACK. */
  raise(SIGWINCH);
  wl_expect(g_seen[SIGWINCH].count == 1 && g_seen[SIGWINCH].onstack,
            "SIGWINCH (SA_ONSTACK): count %d, on alt stack %d", g_seen[SIGWINCH].count,
            g_seen[SIGWINCH].onstack);
  /* SA_RESETHAND. */
  raise(SIGUSR1);
  wl_expect(g_seen[SIGUSR1].count == 1, "SIGUSR1 handled %d times", g_seen[SIGUSR1].count);
  struct sigaction sa;
  sigaction(SIGUSR1, NULL, &sa);
  wl_expect(sa.sa_handler == SIG_DFL, "SIGUSR1 (SA_RESETHAND) not reset after delivery");
  /* SA_NODEFER nests, the default defers. */
  raise(SIGUSR2);
  wl_expect(g_seen[SIGUSR2].count == 2 && g_seen[SIGUSR2].max_depth == 2,
            "SIGUSR2 (SA_NODEFER): %d deliveries, depth %d, expected 2 nested",
            g_seen[SIGUSR2].count, g_seen[SIGUSR2].max_depth);
  const int rt7 = SIGRTMIN + 7;
  raise(rt7);
  wl_expect(g_seen[rt7].count == 2 && g_seen[rt7].max_depth == 1,
            "SIGRTMIN+7: %d deliveries, depth %d, expected 2 in sequence", g_seen[rt7].count,
            g_seen[rt7].max_depth);
  /* SIG_IGN: discarded (the default action would end us). */
  raise(SIGHUP);
  sigset_t pending;
  sigpending(&pending);
  wl_expect(!sigismember(&pending, SIGHUP), "ignored SIGHUP is pending");
  /* SA_RESTART or not. */
  ssize_t n = interrupted_read(SIGALRM);
  wl_expect(n == 1 && g_seen[SIGALRM].count == 1,
            "read interrupted by SIGALRM (SA_RESTART): returned %zd (%m), handler ran %d times", n,
            g_seen[SIGALRM].count);
  n = interrupted_read(SIGVTALRM);
  wl_expect(n == -1 && errno == EINTR && g_seen[SIGVTALRM].count == 1,
            "read interrupted by SIGVTALRM (no SA_RESTART): returned %zd (%m), handler ran %d "
            "times",
            n, g_seen[SIGVTALRM].count);
  /* SA_NOCLDSTOP: a stop does not raise SIGCHLD, an exit does. */
  int c0 = g_seen[SIGCHLD].count;
  pid_t s = wl_fork("stopper");
  if (s == 0) {
    raise(SIGSTOP);
    _exit(0);
  }
  int st = 0;
  pid_t r;
  while ((r = waitpid(s, &st, WUNTRACED)) < 0 && errno == EINTR) {
  }
  wl_expect(r == s && WIFSTOPPED(st), "stopper did not stop (0x%x)", st);
  wl_expect(g_seen[SIGCHLD].count == c0, "SIGCHLD (SA_NOCLDSTOP) raised by a child's stop");
  kill(s, SIGCONT);
  wl_reap(s, "stopper");
  wl_expect(g_seen[SIGCHLD].count == c0 + 1, "SIGCHLD handled %d times for one exit",
            g_seen[SIGCHLD].count - c0);

  /* Nothing else ran. */
  for (int sig = 1; sig <= NSIG_K; sig++) {
    if (sig == SIGTRAP || sig == SIGWINCH || sig == SIGUSR1 || sig == SIGUSR2 || sig == rt7 ||
        sig == SIGALRM || sig == SIGVTALRM || sig == SIGCHLD) {
      continue;
    }
    wl_expect(g_seen[sig].count == 0 && g_plain[sig] == 0, "signal %d handled unexpectedly", sig);
  }

  kill(child, SIGTERM);
  wl_reap(child, "nocldwait");
  wl_finish();
}
