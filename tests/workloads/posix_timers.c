/* POSIX interval timers (raw timer_* syscalls, so the ids are the kernel's):
 *   rt     CLOCK_REALTIME, every 50 ms, SIGEV_SIGNAL SIGUSR1, sigev_value 0x1234
 *   mono   CLOCK_MONOTONIC, one shot in 1 h, SIGEV_SIGNAL SIGRTMIN+2
 *   (hole) a timer created here and deleted: its id must stay unused
 *   boot   CLOCK_BOOTTIME, every 30 ms, SIGEV_THREAD_ID to the second thread, SIGRTMIN+3
 *   cpu    CLOCK_PROCESS_CPUTIME_ID, one shot after 1000 s of process CPU time, SIGRTMIN+4
 *   none   CLOCK_MONOTONIC, SIGEV_NONE, one shot in 1 h
 *   off    CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+5, never armed
 * The second thread blocks every signal but SIGRTMIN+3; the main thread blocks SIGRTMIN+3.
 * On request: /proc/self/timers lists exactly these ids, with their signal, sigev_value, notify
 * kind (signal/pid, signal/tid, none/pid) and clock; timer_gettime gives each its exact interval
 * and a sensible remaining time (1 h ones in (3000 s, 3600 s], cpu in (990 s, 1000 s], periodic
 * ones within their period, off disarmed). Behaviour, over 300 ms: rt delivers about 6 SIGUSR1
 * (3..9) to the main thread with si_code SI_TIMER, si_timerid rt and value 0x1234; boot about 10
 * SIGRTMIN+3 (5..15), all on the second thread with its id; mono never fires. With SIGUSR1
 * blocked for 250 ms, the one signal then delivered carries an overrun of about 4 (2..8) in
 * si_overrun and timer_getoverrun. The cpu timer only advances with CPU time (a 100 ms sleep
 * takes < 30 ms off, 100 ms of spinning at least 50 ms). timer_delete of the hole id fails with
 * EINVAL, and a new timer gets an id that is none of the above. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

enum { T_RT, T_MONO, T_BOOT, T_CPU, T_NONE, T_OFF, NT };
static const char* const kNames[NT] = {"rt", "mono", "boot", "cpu", "none", "off"};

struct timer {
  clockid_t clock;
  int notify;
  int sig; /* SIGRTMIN-relative if >= 100: 100 + n */
  int value;
  long long first_ns, interval_ns; /* first_ns 0: not armed */
};

#define MS 1000000LL
#define SEC 1000000000LL
static const struct timer kTimers[NT] = {
    {CLOCK_REALTIME, SIGEV_SIGNAL, SIGUSR1, 0x1234, 50 * MS, 50 * MS},
    {CLOCK_MONOTONIC, SIGEV_SIGNAL, 102, 0x2222, 3600 * SEC, 0},
    {CLOCK_BOOTTIME, SIGEV_THREAD_ID, 103, 0x3333, 30 * MS, 30 * MS},
    {CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, 104, 0x4444, 1000 * SEC, 0},
    {CLOCK_MONOTONIC, SIGEV_NONE, 0, 0x5555, 3600 * SEC, 0},
    {CLOCK_MONOTONIC, SIGEV_SIGNAL, 105, 0x6666, 0, 0},
};

static int sig_of(const struct timer* t) {
  return t->sig >= 100 ? SIGRTMIN + (t->sig - 100) : t->sig;
}

static int g_id[NT];
static int g_hole_id;
static pid_t g_thread_tid;
static volatile int g_stop;

/* signal records */
struct rec {
  volatile int count;
  volatile int bad_code, bad_value, bad_timer, bad_tid;
  volatile int last_overrun, last_getoverrun;
};
static struct rec g_usr1, g_rt3, g_rt2, g_rt4, g_rt5;

static void on_timer_sig(int sig, siginfo_t* si, void* uc) {
  (void)uc;
  struct rec* r;
  int want_timer, want_value;
  pid_t want_tid;
  if (sig == SIGUSR1) {
    r = &g_usr1;
    want_timer = g_id[T_RT];
    want_value = kTimers[T_RT].value;
    want_tid = getpid();
  } else if (sig == SIGRTMIN + 3) {
    r = &g_rt3;
    want_timer = g_id[T_BOOT];
    want_value = kTimers[T_BOOT].value;
    want_tid = g_thread_tid;
  } else if (sig == SIGRTMIN + 2) {
    r = &g_rt2;
    want_timer = g_id[T_MONO];
    want_value = kTimers[T_MONO].value;
    want_tid = -1;
  } else if (sig == SIGRTMIN + 4) {
    r = &g_rt4;
    want_timer = g_id[T_CPU];
    want_value = kTimers[T_CPU].value;
    want_tid = -1;
  } else {
    r = &g_rt5;
    want_timer = g_id[T_OFF];
    want_value = kTimers[T_OFF].value;
    want_tid = -1;
  }
  r->count++;
  if (si->si_code != SI_TIMER) r->bad_code++;
  if (si->si_value.sival_int != want_value) r->bad_value++;
  if (si->si_timerid != want_timer) r->bad_timer++;
  if (want_tid > 0 && wl_gettid() != want_tid) r->bad_tid++;
  r->last_overrun = si->si_overrun;
  r->last_getoverrun = (int)syscall(SYS_timer_getoverrun, si->si_timerid);
}

static void* second_thread(void* arg) {
  (void)arg;
  g_thread_tid = wl_gettid();
  sigset_t m;
  sigfillset(&m);
  sigdelset(&m, SIGRTMIN + 3);
  pthread_sigmask(SIG_SETMASK, &m, NULL);
  while (!g_stop) pause();
  return NULL;
}

static long long ts_ns(const struct timespec* t) { return t->tv_sec * SEC + t->tv_nsec; }

static bool get_time(int id, long long* value, long long* interval) {
  struct itimerspec its;
  if (syscall(SYS_timer_gettime, id, &its) != 0) return false;
  *value = ts_ns(&its.it_value);
  *interval = ts_ns(&its.it_interval);
  return true;
}

static int create_timer(const struct timer* t, pid_t tid) {
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = t->notify;
  sev.sigev_signo = sig_of(t);
  sev.sigev_value.sival_int = t->value;
  if (t->notify == SIGEV_THREAD_ID) sev.sigev_notify_thread_id = tid;
  int id = -1;
  if (syscall(SYS_timer_create, t->clock, &sev, &id) != 0) return -1;
  return id;
}

static void arm(int id, const struct timer* t) {
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  its.it_value.tv_sec = t->first_ns / SEC;
  its.it_value.tv_nsec = t->first_ns % SEC;
  its.it_interval.tv_sec = t->interval_ns / SEC;
  its.it_interval.tv_nsec = t->interval_ns % SEC;
  if (syscall(SYS_timer_settime, id, 0, &its, NULL) != 0) wl_die("timer_settime: %m");
}

static void sleep_ms(long ms) {
  struct timespec end;
  clock_gettime(CLOCK_MONOTONIC, &end);
  end.tv_nsec += ms * 1000000L;
  end.tv_sec += end.tv_nsec / 1000000000L;
  end.tv_nsec %= 1000000000L;
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &end, NULL) == EINTR) {
  }
}

/* /proc/self/timers: "ID: n", "signal: s/value", "notify: kind/...", "ClockID: c". */
struct proc_timer {
  int id, sig, clock;
  unsigned long long value;
  char notify[16];
};

static int read_proc_timers(struct proc_timer* out, int max) {
  FILE* f = fopen("/proc/self/timers", "re");
  if (!f) return -1;
  char line[256];
  int n = -1;
  while (fgets(line, sizeof line, f)) {
    int v;
    unsigned long long val;
    char kind[8], target[8];
    if (sscanf(line, "ID: %d", &v) == 1) {
      if (n + 1 >= max) break;
      n++;
      memset(&out[n], 0, sizeof out[n]);
      out[n].id = v;
    } else if (n >= 0 && sscanf(line, "signal: %d/%llx", &v, &val) == 2) {
      out[n].sig = v;
      out[n].value = val;
    } else if (n >= 0 && sscanf(line, "notify: %7[a-z]/%7[a-z]", kind, target) == 2) {
      snprintf(out[n].notify, sizeof out[n].notify, "%s/%s", kind, target);
    } else if (n >= 0 && sscanf(line, "ClockID: %d", &v) == 1) {
      out[n].clock = v;
    }
  }
  fclose(f);
  return n + 1;
}

static void check_proc_timers(void) {
  struct proc_timer pt[32];
  int n = read_proc_timers(pt, 32);
  if (!wl_expect(n >= 0, "reading /proc/self/timers: %m")) return;
  wl_expect(n == NT, "/proc/self/timers lists %d timers, expected %d", n, NT);
  for (int i = 0; i < NT; i++) {
    const struct timer* t = &kTimers[i];
    const struct proc_timer* p = NULL;
    for (int k = 0; k < n; k++) {
      if (pt[k].id == g_id[i]) p = &pt[k];
    }
    if (!wl_expect(p != NULL, "%s: id %d missing from /proc/self/timers", kNames[i], g_id[i])) {
      continue;
    }
    const char* kind = t->notify == SIGEV_THREAD_ID ? "signal/tid"
                       : t->notify == SIGEV_NONE    ? "none/pid"
                                                    : "signal/pid";
    wl_expect(strcmp(p->notify, kind) == 0, "%s: notify %s, expected %s", kNames[i], p->notify,
              kind);
    /* the kernel shows CPU clocks encoded: the process's own CPU-time clock is -6 */
    int clock = t->clock == CLOCK_PROCESS_CPUTIME_ID ? -6 : (int)t->clock;
    wl_expect(p->clock == clock, "%s: clock %d, expected %d", kNames[i], p->clock, clock);
    if (t->notify != SIGEV_NONE) {
      wl_expect(p->sig == sig_of(t) && p->value == (unsigned long long)t->value,
                "%s: signal %d/%llx, expected %d/%x", kNames[i], p->sig, p->value, sig_of(t),
                t->value);
    }
  }
  for (int k = 0; k < n; k++) {
    wl_expect(pt[k].id != g_hole_id, "the deleted timer id %d is back", g_hole_id);
  }
}

static void check_times(void) {
  for (int i = 0; i < NT; i++) {
    const struct timer* t = &kTimers[i];
    long long v, iv;
    if (!wl_expect(get_time(g_id[i], &v, &iv), "%s: timer_gettime(%d): %m", kNames[i], g_id[i])) {
      continue;
    }
    wl_expect(iv == t->interval_ns, "%s: interval %lld ns, expected %lld", kNames[i], iv,
              t->interval_ns);
    long long lo, hi;
    if (t->first_ns == 0) {
      lo = hi = 0;
    } else if (t->interval_ns) {
      lo = 1;
      hi = t->interval_ns;
    } else if (t->clock == CLOCK_PROCESS_CPUTIME_ID) {
      lo = t->first_ns - 10 * SEC;
      hi = t->first_ns;
    } else {
      lo = 3000 * SEC;
      hi = t->first_ns;
    }
    wl_expect(v >= lo && v <= hi, "%s: remaining %lld ns, expected in [%lld, %lld]", kNames[i], v,
              lo, hi);
  }
}

static void reset(struct rec* r) { memset((void*)r, 0, sizeof *r); }

static void check_rec(const struct rec* r, const char* what) {
  wl_expect(r->bad_code == 0, "%s: %d signals without SI_TIMER", what, r->bad_code);
  wl_expect(r->bad_value == 0, "%s: %d signals with a wrong si_value", what, r->bad_value);
  wl_expect(r->bad_timer == 0, "%s: %d signals with a wrong si_timerid", what, r->bad_timer);
  wl_expect(r->bad_tid == 0, "%s: %d signals delivered to the wrong thread", what, r->bad_tid);
}

static void spin_cpu_ms(long ms) {
  struct timespec s, n;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &s);
  do {
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &n);
  } while (ts_ns(&n) - ts_ns(&s) < ms * MS);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_timer_sig;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  int sigs[] = {SIGUSR1, SIGRTMIN + 2, SIGRTMIN + 3, SIGRTMIN + 4, SIGRTMIN + 5};
  for (int i = 0; i < 5; i++) {
    if (sigaction(sigs[i], &sa, NULL) != 0) wl_die("sigaction: %m");
  }

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  pthread_t th;
  int rc = pthread_create(&th, NULL, second_thread, NULL);
  if (rc != 0) wl_die("pthread_create: %s", strerror(rc));
  sigaddset(&old, SIGRTMIN + 3);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  while (!__atomic_load_n(&g_thread_tid, __ATOMIC_ACQUIRE)) sched_yield();

  for (int i = 0; i < NT; i++) {
    if (i == T_BOOT) {
      /* the hole: created between mono and boot, then deleted */
      g_hole_id = create_timer(&kTimers[T_OFF], 0);
      if (g_hole_id < 0) wl_die("timer_create (hole): %m");
    }
    g_id[i] = create_timer(&kTimers[i], g_thread_tid);
    if (g_id[i] < 0) wl_die("timer_create(%s): %m", kNames[i]);
  }
  if (syscall(SYS_timer_delete, g_hole_id) != 0) wl_die("timer_delete: %m");
  for (int i = 0; i < NT; i++) {
    if (kTimers[i].first_ns) arm(g_id[i], &kTimers[i]);
  }
  wl_note("timer ids: rt %d mono %d (hole %d) boot %d cpu %d none %d off %d", g_id[T_RT],
          g_id[T_MONO], g_hole_id, g_id[T_BOOT], g_id[T_CPU], g_id[T_NONE], g_id[T_OFF]);

  wl_ready();
  wl_wait_term();

  check_proc_timers();
  check_times();

  /* Firing rate and delivery over 300 ms. */
  reset(&g_usr1);
  reset(&g_rt3);
  sleep_ms(300);
  int n_usr1 = g_usr1.count, n_rt3 = g_rt3.count;
  wl_expect(n_usr1 >= 3 && n_usr1 <= 9, "rt (50 ms): %d SIGUSR1 in 300 ms, expected about 6",
            n_usr1);
  wl_expect(n_rt3 >= 5 && n_rt3 <= 15, "boot (30 ms): %d SIGRTMIN+3 in 300 ms, expected about 10",
            n_rt3);
  check_rec(&g_usr1, "rt");
  check_rec(&g_rt3, "boot");
  wl_expect(g_rt2.count == 0 && g_rt4.count == 0 && g_rt5.count == 0,
            "unexpected firings: mono %d, cpu %d, off %d", g_rt2.count, g_rt4.count, g_rt5.count);

  /* Overruns: SIGUSR1 blocked for 250 ms, then delivered once. */
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &usr1, NULL);
  sleep_ms(25);
  reset(&g_usr1);
  sleep_ms(250);
  pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
  wl_expect(g_usr1.count == 1, "%d SIGUSR1 delivered after unblocking, expected 1", g_usr1.count);
  if (g_usr1.count >= 1) {
    wl_expect(g_usr1.last_overrun >= 2 && g_usr1.last_overrun <= 8,
              "si_overrun %d after 250 ms blocked, expected about 4", g_usr1.last_overrun);
    wl_expect(g_usr1.last_getoverrun == g_usr1.last_overrun, "timer_getoverrun %d, si_overrun %d",
              g_usr1.last_getoverrun, g_usr1.last_overrun);
  }
  check_rec(&g_usr1, "rt (overrun)");

  /* The cpu timer follows process CPU time only. */
  long long v0, v1, v2, iv;
  if (get_time(g_id[T_CPU], &v0, &iv)) {
    sleep_ms(100);
    get_time(g_id[T_CPU], &v1, &iv);
    spin_cpu_ms(100);
    get_time(g_id[T_CPU], &v2, &iv);
    wl_expect(v0 - v1 < 30 * MS, "cpu timer advanced %lld ms during a 100 ms sleep",
              (v0 - v1) / MS);
    wl_expect(v1 - v2 >= 50 * MS, "cpu timer advanced %lld ms during 100 ms of spinning",
              (v1 - v2) / MS);
  }

  /* Ids: the hole stays a hole, a new timer gets a fresh id. */
  errno = 0;
  long r = syscall(SYS_timer_delete, g_hole_id);
  wl_expect(r == -1 && errno == EINVAL, "timer_delete(hole id %d): %s, expected EINVAL", g_hole_id,
            r == 0 ? "succeeded" : strerror(errno));
  int fresh = create_timer(&kTimers[T_OFF], 0);
  if (wl_expect(fresh >= 0, "timer_create after restore: %m")) {
    bool clash = fresh == g_hole_id;
    for (int i = 0; i < NT; i++) clash |= fresh == g_id[i];
    wl_expect(!clash, "new timer got id %d, already used", fresh);
    wl_note("new timer id %d", fresh);
  }
  for (int i = 0; i < NT; i++) {
    wl_expect(syscall(SYS_timer_delete, g_id[i]) == 0, "timer_delete(%s): %m", kNames[i]);
  }
  g_stop = 1;
  pthread_kill(th, SIGRTMIN + 3);
  pthread_join(th, NULL);
  wl_finish();
}
