/* Signal state: handlers with flags and masks, blocked signals, pending signals with their
 * siginfo, ignored signals and an alternate stack.
 *   SIGUSR1      SA_SIGINFO|SA_RESTART, sa_mask {SIGUSR2}; blocked; one queued with value 4242
 *   SIGRTMIN+1   SA_SIGINFO|SA_RESTART; blocked; queued twice (values 1, 2: order matters)
 *   SIGRTMIN+3   blocked; queued to the main *thread* (per-thread queue) with value 99
 *   SIGUSR2      SA_SIGINFO|SA_ONSTACK on a sigaltstack
 *   SIGHUP, SIGPIPE ignored
 * On request: dispositions, mask, pending set and alt stack are as set up; unblocking delivers
 * each pending signal exactly once with its siginfo. */
#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define ALT_SIZE (64 * 1024)

static char g_alt[ALT_SIZE] __attribute__((aligned(16)));

struct seen {
  volatile int count;
  volatile int values[4];
  volatile int codes[4];
  volatile pid_t pids[4];
  volatile int usr2_blocked; /* the handler ran with sa_mask applied */
  volatile int on_altstack;
};
static struct seen g_usr1, g_rt1, g_rt3, g_usr2;

static void record(struct seen* s, const siginfo_t* si) {
  int i = s->count;
  if (i < 4) {
    s->values[i] = si->si_value.sival_int;
    s->codes[i] = si->si_code;
    s->pids[i] = si->si_pid;
  }
  s->count = i + 1;
}

static void on_usr1(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  record(&g_usr1, si);
  sigset_t cur;
  sigprocmask(SIG_BLOCK, NULL, &cur);
  g_usr1.usr2_blocked = sigismember(&cur, SIGUSR2);
}

static void on_rt1(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  record(&g_rt1, si);
}

static void on_rt3(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  record(&g_rt3, si);
}

static void on_usr2(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  record(&g_usr2, si);
  char local;
  g_usr2.on_altstack = &local >= g_alt && &local < g_alt + ALT_SIZE;
}

static void install(int sig, void (*fn)(int, siginfo_t*, void*), int flags, int mask_sig) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = fn;
  sa.sa_flags = SA_SIGINFO | flags;
  sigemptyset(&sa.sa_mask);
  if (mask_sig) sigaddset(&sa.sa_mask, mask_sig);
  if (sigaction(sig, &sa, NULL) != 0) wl_die("sigaction(%d): %s", sig, strerror(errno));
}

static void check_action(int sig, void (*fn)(int, siginfo_t*, void*), int flags, int mask_sig,
                         const char* name) {
  struct sigaction sa;
  if (!wl_expect(sigaction(sig, NULL, &sa) == 0, "sigaction(%s)", name)) return;
  wl_expect(sa.sa_sigaction == fn, "%s: handler %p, expected %p", name, (void*)sa.sa_sigaction,
            (void*)fn);
  unsigned want = (unsigned)(SA_SIGINFO | flags);
  unsigned got = (unsigned)sa.sa_flags &
                 (unsigned)(SA_SIGINFO | SA_RESTART | SA_ONSTACK | SA_NODEFER | SA_RESETHAND);
  wl_expect(got == want, "%s: flags 0x%x, expected 0x%x", name, got, want);
  if (mask_sig) wl_expect(sigismember(&sa.sa_mask, mask_sig) == 1, "%s: sa_mask lost", name);
}

static void check_ignored(int sig, const char* name) {
  struct sigaction sa;
  wl_expect(sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN, "%s no longer ignored",
            name);
}

static void unblock(int sig) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, sig);
  sigprocmask(SIG_UNBLOCK, &s, NULL);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const int rt1 = SIGRTMIN + 1, rt3 = SIGRTMIN + 3;
  pid_t me = getpid();

  stack_t ss = {.ss_sp = g_alt, .ss_size = ALT_SIZE, .ss_flags = 0};
  if (sigaltstack(&ss, NULL) != 0) wl_die("sigaltstack: %m");
  install(SIGUSR1, on_usr1, SA_RESTART, SIGUSR2);
  install(rt1, on_rt1, SA_RESTART, 0);
  install(rt3, on_rt3, 0, 0);
  install(SIGUSR2, on_usr2, SA_ONSTACK, 0);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);

  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  sigaddset(&block, rt1);
  sigaddset(&block, rt3);
  sigprocmask(SIG_BLOCK, &block, NULL);

  union sigval v;
  v.sival_int = 4242;
  if (sigqueue(me, SIGUSR1, v) != 0) wl_die("sigqueue: %m");
  v.sival_int = 1;
  sigqueue(me, rt1, v);
  v.sival_int = 2;
  sigqueue(me, rt1, v);
  siginfo_t si;
  memset(&si, 0, sizeof si);
  si.si_signo = rt3;
  si.si_code = SI_QUEUE;
  si.si_pid = me;
  si.si_uid = getuid();
  si.si_value.sival_int = 99;
  if (syscall(SYS_rt_tgsigqueueinfo, me, wl_gettid(), rt3, &si) != 0) {
    wl_die("rt_tgsigqueueinfo: %m");
  }

  wl_ready();
  wl_wait_term();

  pid_t now = getpid();
  check_action(SIGUSR1, on_usr1, SA_RESTART, SIGUSR2, "SIGUSR1");
  check_action(rt1, on_rt1, SA_RESTART, 0, "SIGRTMIN+1");
  check_action(rt3, on_rt3, 0, 0, "SIGRTMIN+3");
  check_action(SIGUSR2, on_usr2, SA_ONSTACK, 0, "SIGUSR2");
  check_ignored(SIGHUP, "SIGHUP");
  check_ignored(SIGPIPE, "SIGPIPE");

  stack_t cur_ss;
  if (wl_expect(sigaltstack(NULL, &cur_ss) == 0, "sigaltstack query")) {
    wl_expect(cur_ss.ss_sp == g_alt && cur_ss.ss_size == ALT_SIZE && cur_ss.ss_flags == 0,
              "alt stack %p/%zu/%d, expected %p/%d/0", cur_ss.ss_sp, cur_ss.ss_size,
              cur_ss.ss_flags, (void*)g_alt, ALT_SIZE);
  }

  sigset_t mask, pending;
  sigprocmask(SIG_BLOCK, NULL, &mask);
  wl_expect(sigismember(&mask, SIGUSR1) && sigismember(&mask, rt1) && sigismember(&mask, rt3),
            "blocked signals were unblocked");
  wl_expect(!sigismember(&mask, SIGUSR2) && !sigismember(&mask, SIGTERM),
            "unexpected signals blocked");
  sigpending(&pending);
  wl_expect(
      sigismember(&pending, SIGUSR1) && sigismember(&pending, rt1) && sigismember(&pending, rt3),
      "pending signals lost (USR1 %d, RTMIN+1 %d, RTMIN+3 %d)", sigismember(&pending, SIGUSR1),
      sigismember(&pending, rt1), sigismember(&pending, rt3));
  wl_expect(g_usr1.count == 0 && g_rt1.count == 0 && g_rt3.count == 0,
            "blocked signals were delivered early (%d/%d/%d)", g_usr1.count, g_rt1.count,
            g_rt3.count);

  unblock(SIGUSR1);
  wl_expect(g_usr1.count == 1, "SIGUSR1 delivered %d times", g_usr1.count);
  if (g_usr1.count >= 1) {
    wl_expect(g_usr1.values[0] == 4242 && g_usr1.codes[0] == SI_QUEUE && g_usr1.pids[0] == now,
              "SIGUSR1 siginfo value %d code %d pid %d", g_usr1.values[0], g_usr1.codes[0],
              (int)g_usr1.pids[0]);
    wl_expect(g_usr1.usr2_blocked == 1, "SIGUSR1 handler ran without its sa_mask");
  }
  unblock(rt1);
  wl_expect(g_rt1.count == 2, "SIGRTMIN+1 delivered %d times, expected 2", g_rt1.count);
  if (g_rt1.count == 2) {
    wl_expect(g_rt1.values[0] == 1 && g_rt1.values[1] == 2, "SIGRTMIN+1 values %d,%d",
              g_rt1.values[0], g_rt1.values[1]);
    wl_expect(g_rt1.codes[0] == SI_QUEUE && g_rt1.codes[1] == SI_QUEUE, "SIGRTMIN+1 codes");
  }
  unblock(rt3);
  wl_expect(g_rt3.count == 1, "SIGRTMIN+3 (thread-directed) delivered %d times", g_rt3.count);
  if (g_rt3.count >= 1) {
    wl_expect(g_rt3.values[0] == 99 && g_rt3.codes[0] == SI_QUEUE, "SIGRTMIN+3 value %d code %d",
              g_rt3.values[0], g_rt3.codes[0]);
  }
  sigpending(&pending);
  wl_expect(
      !sigismember(&pending, SIGUSR1) && !sigismember(&pending, rt1) && !sigismember(&pending, rt3),
      "signals still pending after delivery");

  raise(SIGUSR2);
  wl_expect(g_usr2.count == 1 && g_usr2.on_altstack, "SIGUSR2: count %d, on alt stack %d",
            g_usr2.count, g_usr2.on_altstack);
  wl_expect(g_usr1.count == 1 && g_rt1.count == 2 && g_rt3.count == 1, "late duplicate signals");
  wl_finish();
}
