/* Interrupted system calls keep the kernel's restart rules across a restore, also when a signal
 * is already pending as the tree is released. Timers fire every 10 ms, so signals become pending
 * while the tree is frozen for a dump and are queued again at the restore:
 *   - thread "pauser" loops in pause() with SIGALRM (ITIMER_REAL, periodic) unblocked: a handler
 *     that interrupts it must make it return EINTR (-ERESTARTNOHAND), never find it about to be
 *     made again; the interval timer keeps firing after the restore.
 *   - thread "suspender" loops in sigsuspend() with SIGUSR2 (a POSIX timer aimed at it) blocked
 *     outside the call: the same rule, and the mask is back after each call.
 *   - thread "reader" loops in read() on an empty pipe with a SIGUSR1 handler installed with
 *     SA_RESTART (a POSIX timer aimed at it): read() must never return EINTR (-ERESTARTSYS
 *     restarts), and returns exactly the bytes written at the check.
 * The main thread blocks all three signals; the other threads block SIGTERM, the check request. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "workload.h"

static volatile sig_atomic_t alarms, pause_eintr, pause_other;      /* pauser */
static volatile sig_atomic_t usr2, suspend_eintr, suspend_other;     /* suspender */
static volatile sig_atomic_t mask_lost;  /* SIGUSR2 not blocked after sigsuspend() */
static volatile sig_atomic_t usr1, read_eintr;                      /* reader */
static volatile sig_atomic_t stop;
static volatile pid_t pauser_tid, suspender_tid, reader_tid;
static int pipefd[2];
static char got[32];
static ssize_t got_len = -1;

/* Handler runs that found their thread about to make its pause()/sigsuspend() again: the
 * `syscall` instruction next, its number in rax. The kernel never puts a thread there when a
 * handler interrupts either call (-ERESTARTNOHAND: the call returns EINTR); a restore that
 * rewound the call and let a pending signal in first does. Without crest it would take a signal
 * landing in the one instruction before the call (about one run in ten million). */
static volatile sig_atomic_t made_again;

static void check_interrupted(void* uc_, long nr) {
  const ucontext_t* uc = uc_;
  const unsigned char* ip = (const unsigned char*)uc->uc_mcontext.gregs[REG_RIP];
  if (uc->uc_mcontext.gregs[REG_RAX] == nr && ip[0] == 0x0f && ip[1] == 0x05) made_again++;
}
static void on_alarm(int sig, siginfo_t* si, void* uc) {
  (void)sig, (void)si;
  alarms++;
  check_interrupted(uc, SYS_pause);
}
static void on_usr2(int sig, siginfo_t* si, void* uc) {
  (void)sig, (void)si;
  usr2++;
  check_interrupted(uc, SYS_rt_sigsuspend);
}
static void on_usr1(int sig) { (void)sig; usr1++; }

static void unblock(int sig) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, sig);
  pthread_sigmask(SIG_UNBLOCK, &s, NULL);
}

static void* pauser(void* arg) {
  (void)arg;
  unblock(SIGALRM);
  pauser_tid = (pid_t)syscall(SYS_gettid);
  while (!stop) {
    if (pause() == -1 && errno == EINTR)
      pause_eintr++;
    else
      pause_other++;
  }
  return NULL;
}

static void* suspender(void* arg) {
  (void)arg;
  suspender_tid = (pid_t)syscall(SYS_gettid);
  sigset_t during, now;
  pthread_sigmask(SIG_BLOCK, NULL, &during);
  sigdelset(&during, SIGUSR2);
  while (!stop) {
    if (sigsuspend(&during) == -1 && errno == EINTR)
      suspend_eintr++;
    else
      suspend_other++;
    pthread_sigmask(SIG_BLOCK, NULL, &now);
    if (!sigismember(&now, SIGUSR2)) mask_lost++;
  }
  return NULL;
}

static void* reader(void* arg) {
  (void)arg;
  reader_tid = (pid_t)syscall(SYS_gettid);
  unblock(SIGUSR1);
  for (;;) {
    ssize_t n = read(pipefd[0], got, sizeof got);
    if (n < 0 && errno == EINTR) {
      read_eintr++;
      continue;
    }
    got_len = n;
    return NULL;
  }
}

static timer_t thread_timer(pid_t tid, int sig) {
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = sig;
  sev._sigev_un._tid = tid;
  timer_t t;
  if (timer_create(CLOCK_MONOTONIC, &sev, &t) != 0) wl_die("timer_create: %m");
  struct itimerspec its = {{0, 10 * 1000 * 1000}, {0, 10 * 1000 * 1000}};
  if (timer_settime(t, 0, &its, NULL) != 0) wl_die("timer_settime: %m");
  return t;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (pipe(pipefd) != 0) wl_die("pipe: %m");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_flags = SA_SIGINFO; /* no SA_RESTART: pause() and sigsuspend() never restart anyway */
  sa.sa_sigaction = on_alarm;
  if (sigaction(SIGALRM, &sa, NULL) != 0) wl_die("sigaction: %m");
  sa.sa_sigaction = on_usr2;
  if (sigaction(SIGUSR2, &sa, NULL) != 0) wl_die("sigaction: %m");
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGUSR1, &sa, NULL) != 0) wl_die("sigaction: %m");
  sigset_t three;
  sigemptyset(&three);
  sigaddset(&three, SIGALRM);
  sigaddset(&three, SIGUSR1);
  sigaddset(&three, SIGUSR2);
  sigaddset(&three, SIGTERM); /* the check request is for the main thread alone */
  pthread_sigmask(SIG_BLOCK, &three, NULL); /* inherited; each thread unblocks its own */

  pthread_t tp, ts, tr;
  if (pthread_create(&tp, NULL, pauser, NULL) != 0 ||
      pthread_create(&ts, NULL, suspender, NULL) != 0 ||
      pthread_create(&tr, NULL, reader, NULL) != 0)
    wl_die("pthread_create failed");
  while (pauser_tid == 0 || reader_tid == 0 || suspender_tid == 0) usleep(1000);
  timer_t t1 = thread_timer(reader_tid, SIGUSR1);
  timer_t t2 = thread_timer(suspender_tid, SIGUSR2);
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_UNBLOCK, &term, NULL);
  struct itimerval itv = {{0, 10000}, {0, 10000}};
  if (setitimer(ITIMER_REAL, &itv, NULL) != 0) wl_die("setitimer: %m");
  usleep(50 * 1000);
  wl_expect(alarms > 0 && usr1 > 0 && usr2 > 0, "the timers do not fire");

  wl_ready();
  wl_wait_term();

  const int before = alarms;
  usleep(50 * 1000);
  wl_expect(alarms > before, "the periodic ITIMER_REAL no longer fires");

  /* Stop the timers, let what is pending land, then end the two loops and compare. */
  struct itimerval off;
  memset(&off, 0, sizeof off);
  setitimer(ITIMER_REAL, &off, NULL);
  struct itimerspec zero;
  memset(&zero, 0, sizeof zero);
  timer_settime(t1, 0, &zero, NULL);
  timer_settime(t2, 0, &zero, NULL);
  usleep(100 * 1000);
  wl_expect(made_again == 0,
            "%d signal handlers found pause()/sigsuspend() about to be made again after they "
            "interrupted it (the call must return EINTR)", (int)made_again);
  wl_expect(pause_eintr > 0 && suspend_eintr > 0, "pause()/sigsuspend() never returned EINTR");
  /* A SIGALRM that lands between two pause() calls ends none: send until the pauser is out. */
  stop = 1;
  pthread_kill(ts, SIGUSR2);
  pthread_join(ts, NULL);
  for (;;) {
    pthread_kill(tp, SIGALRM);
    struct timespec soon;
    clock_gettime(CLOCK_REALTIME, &soon);
    soon.tv_nsec += 10 * 1000 * 1000;
    if (soon.tv_nsec >= 1000000000L) soon.tv_sec++, soon.tv_nsec -= 1000000000L;
    if (pthread_timedjoin_np(tp, NULL, &soon) == 0) break;
  }
  wl_expect(pause_other == 0 && suspend_other == 0, "pause()/sigsuspend() returned %d/%d times "
            "other than with EINTR", (int)pause_other, (int)suspend_other);
  wl_expect(mask_lost == 0, "SIGUSR2 was unblocked %d times after sigsuspend()", (int)mask_lost);

  static const char msg[] = "after the restore";
  wl_expect(write(pipefd[1], msg, sizeof msg) == (ssize_t)sizeof msg, "write: %m");
  pthread_join(tr, NULL);
  wl_expect(got_len == (ssize_t)sizeof msg && memcmp(got, msg, sizeof msg) == 0,
            "read() gave %zd bytes, not the message", got_len);
  wl_expect(read_eintr == 0, "read() returned EINTR %d times under an SA_RESTART handler",
            (int)read_eintr);
  wl_note("%d SIGALRM, %d SIGUSR2, %d SIGUSR1", (int)alarms, (int)usr2, (int)usr1);
  wl_finish();
}
