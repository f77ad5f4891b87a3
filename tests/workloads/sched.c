/* Per-thread scheduling state. The main thread and five workers, each setting its own:
 *   thread  policy                          affinity     timer slack   ioprio
 *   main    SCHED_OTHER nice 0              all          75 us         (default)
 *   batch   SCHED_BATCH nice 5              first CPU    100 us        BE level 3
 *   idle    SCHED_IDLE                      last CPU     2 ms          IDLE
 *   neg     SCHED_OTHER nice -3             all          50 us         BE level 6
 *   fifo    SCHED_FIFO priority 10          all          (0: RT)       RT level 2
 *   rr      SCHED_RR priority 20 with       all          (0: RT)       (default)
 *           SCHED_RESET_ON_FORK
 * (first/last CPU of the process's affinity at start; the same CPU if it has only one.) The
 * workers sleep in read() on a pipe (the RT ones must not hog a CPU); every signal blocked.
 * What each thread reads back at setup is recorded.
 * On request, the main thread compares for every thread, by tid: sched_getattr (policy, flags,
 * nice, priority), sched_getscheduler (policy | SCHED_RESET_ON_FORK), getpriority, the affinity
 * mask and ioprio_get. Then the workers are woken and check themselves: PR_GET_TIMERSLACK,
 * sched_getattr(0), and sched_getcpu() is inside their affinity (really running there); the rr
 * thread forks a child that must come out SCHED_OTHER nice 0 without the reset flag (the
 * reset-on-fork behaviour), and the neg thread's child (no reset flag) inherits nice -3. */
#include <errno.h>
#include <fcntl.h>
#include <linux/ioprio.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

/* glibc 2.36 has no sched_attr, and <linux/sched/types.h> clashes with <sched.h>. */
struct sched_attr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime, sched_deadline, sched_period;
  uint32_t sched_util_min, sched_util_max;
};

#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif
#ifndef SCHED_FLAG_RESET_ON_FORK
#define SCHED_FLAG_RESET_ON_FORK 0x01
#endif

enum { T_MAIN, T_BATCH, T_IDLE, T_NEG, T_FIFO, T_RR, NT };
static const char* const kNames[NT] = {"main", "batch", "idle", "neg", "fifo", "rr"};

struct want {
  int policy;
  int nice;
  int prio;
  bool reset_on_fork;
  int cpu; /* -1: all, 0: first, 1: last */
  unsigned long slack;
  int ioclass, iolevel; /* ioclass < 0: leave */
};

static const struct want kWant[NT] = {
    {SCHED_OTHER, 0, 0, false, -1, 75000, -1, 0},
    {SCHED_BATCH, 5, 0, false, 0, 100000, IOPRIO_CLASS_BE, 3},
    {SCHED_IDLE, 0, 0, false, 1, 2000000, IOPRIO_CLASS_IDLE, 7},
    {SCHED_OTHER, -3, 0, false, -1, 50000, IOPRIO_CLASS_BE, 6},
    {SCHED_FIFO, 0, 10, false, -1, 0, IOPRIO_CLASS_RT, 2},
    {SCHED_RR, 0, 20, true, -1, 0, -1, 0},
};

struct state {
  struct sched_attr attr;
  int scheduler; /* sched_getscheduler */
  int priority;  /* getpriority */
  cpu_set_t mask;
  int ioprio;
  long slack;
};

struct thread {
  pthread_t th;
  int index;
  pid_t tid;
  struct state st;
  volatile int ready;
  char error[512];
};

static struct thread g_t[NT];
static cpu_set_t g_all;
static int g_first_cpu, g_last_cpu;
static int g_wake[2];

static int sys_sched_setattr(pid_t tid, struct sched_attr* a) {
  return (int)syscall(SYS_sched_setattr, tid, a, 0);
}

static int sys_sched_getattr(pid_t tid, struct sched_attr* a) {
  memset(a, 0, sizeof *a);
  return (int)syscall(SYS_sched_getattr, tid, a, sizeof *a, 0);
}

static int ioprio_get(pid_t tid) { return (int)syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid); }

/* Reads a thread's state from outside (by tid); slack only for the caller itself. */
static bool read_state(pid_t tid, struct state* s, bool self) {
  memset(s, 0, sizeof *s);
  if (sys_sched_getattr(tid, &s->attr) != 0) return false;
  s->scheduler = sched_getscheduler(tid);
  errno = 0;
  s->priority = getpriority(PRIO_PROCESS, (id_t)tid);
  if (errno) return false;
  if (sched_getaffinity(tid, sizeof s->mask, &s->mask) != 0) return false;
  s->ioprio = ioprio_get(tid);
  s->slack = self ? prctl(PR_GET_TIMERSLACK) : -1;
  return true;
}

/* Describes the first difference between two states, "" if none (slack compared if both set). */
static void diff_state(const struct state* a, const struct state* b, char* out, size_t len) {
  out[0] = 0;
  if (a->attr.sched_policy != b->attr.sched_policy) {
    snprintf(out, len, "policy %u, expected %u", b->attr.sched_policy, a->attr.sched_policy);
  } else if ((a->attr.sched_flags & SCHED_FLAG_RESET_ON_FORK) !=
             (b->attr.sched_flags & SCHED_FLAG_RESET_ON_FORK)) {
    snprintf(out, len, "sched_flags %#llx, expected %#llx", (unsigned long long)b->attr.sched_flags,
             (unsigned long long)a->attr.sched_flags);
  } else if (a->attr.sched_nice != b->attr.sched_nice) {
    snprintf(out, len, "nice %d, expected %d", b->attr.sched_nice, a->attr.sched_nice);
  } else if (a->attr.sched_priority != b->attr.sched_priority) {
    snprintf(out, len, "rt priority %u, expected %u", b->attr.sched_priority,
             a->attr.sched_priority);
  } else if (a->scheduler != b->scheduler) {
    snprintf(out, len, "sched_getscheduler %#x, expected %#x", b->scheduler, a->scheduler);
  } else if (a->priority != b->priority) {
    snprintf(out, len, "getpriority %d, expected %d", b->priority, a->priority);
  } else if (!CPU_EQUAL(&a->mask, &b->mask)) {
    snprintf(out, len, "affinity of %d CPUs (CPU0 %d, CPU1 %d), expected %d CPUs (%d, %d)",
             CPU_COUNT(&b->mask), CPU_ISSET(0, &b->mask), CPU_ISSET(1, &b->mask),
             CPU_COUNT(&a->mask), CPU_ISSET(0, &a->mask), CPU_ISSET(1, &a->mask));
  } else if (a->ioprio != b->ioprio) {
    snprintf(out, len, "ioprio %#x, expected %#x", b->ioprio, a->ioprio);
  } else if (a->slack >= 0 && b->slack >= 0 && a->slack != b->slack) {
    snprintf(out, len, "timer slack %ld ns, expected %ld", b->slack, a->slack);
  }
}

static void apply(int i) {
  const struct want* w = &kWant[i];
  struct sched_attr a;
  memset(&a, 0, sizeof a);
  a.size = sizeof a;
  a.sched_policy = (unsigned)w->policy;
  a.sched_flags = w->reset_on_fork ? SCHED_FLAG_RESET_ON_FORK : 0;
  a.sched_nice = w->nice;
  a.sched_priority = (unsigned)w->prio;
  /* slack first: for RT threads the kernel forces it to 0 (and ignores later sets) */
  if (prctl(PR_SET_TIMERSLACK, w->slack ? w->slack : 1000UL) != 0)
    wl_die("%s: PR_SET_TIMERSLACK: %m", kNames[i]);
  if (sys_sched_setattr(0, &a) != 0) wl_die("%s: sched_setattr: %m", kNames[i]);
  if (w->cpu >= 0) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(w->cpu == 0 ? g_first_cpu : g_last_cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) wl_die("%s: sched_setaffinity: %m", kNames[i]);
  }
  if (w->ioclass >= 0 && syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0,
                                 IOPRIO_PRIO_VALUE(w->ioclass, w->iolevel)) != 0) {
    wl_die("%s: ioprio_set: %m", kNames[i]);
  }
}

/* Sanity of the setup: what the kernel reports is what was asked. */
static void check_applied(int i, const struct state* s) {
  const struct want* w = &kWant[i];
  if ((int)s->attr.sched_policy != w->policy || (int)s->attr.sched_priority != w->prio ||
      (w->policy != SCHED_FIFO && w->policy != SCHED_RR && s->attr.sched_nice != w->nice) ||
      ((s->attr.sched_flags & SCHED_FLAG_RESET_ON_FORK) != 0) != w->reset_on_fork) {
    wl_die("%s: setup gave policy %u prio %u nice %d flags %#llx", kNames[i], s->attr.sched_policy,
           s->attr.sched_priority, s->attr.sched_nice, (unsigned long long)s->attr.sched_flags);
  }
  if (w->ioclass >= 0 && s->ioprio != (int)IOPRIO_PRIO_VALUE(w->ioclass, w->iolevel)) {
    wl_die("%s: setup gave ioprio %#x", kNames[i], s->ioprio);
  }
  long want_slack = (w->policy == SCHED_FIFO || w->policy == SCHED_RR) ? 0 : (long)w->slack;
  if (s->slack != want_slack)
    wl_note("%s: timer slack reads %ld ns, asked %ld", kNames[i], s->slack, want_slack);
}

/* Forks a child that reports (through its exit status) whether its scheduling is as expected. */
static bool fork_probe(int want_policy, int want_nice, bool want_reset, char* err, size_t len) {
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(err, len, "fork: %s", strerror(errno));
    return false;
  }
  if (pid == 0) {
    struct sched_attr a;
    if (sys_sched_getattr(0, &a) != 0) _exit(10);
    if ((int)a.sched_policy != want_policy) _exit(11);
    if (a.sched_nice != want_nice) _exit(12);
    if (((a.sched_flags & SCHED_FLAG_RESET_ON_FORK) != 0) != want_reset) _exit(13);
    _exit(0);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return true;
  static const char* const why[] = {"getattr failed", "wrong policy", "wrong nice",
                                    "wrong reset flag"};
  int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  snprintf(err, len, "forked child: %s (status %#x)",
           code >= 10 && code <= 13 ? why[code - 10] : "died", st);
  return false;
}

static void self_check(struct thread* t) {
  struct state now;
  if (!read_state(0, &now, true)) {
    snprintf(t->error, sizeof t->error, "%s: reading own state: %s", kNames[t->index],
             strerror(errno));
    return;
  }
  char d[256];
  diff_state(&t->st, &now, d, sizeof d);
  if (d[0]) {
    snprintf(t->error, sizeof t->error, "%s (own view): %s", kNames[t->index], d);
    return;
  }
  /* Running now: on a CPU of the affinity mask (yield a few times to get migrated if needed). */
  int cpu = -1;
  for (int k = 0; k < 20; k++) {
    cpu = sched_getcpu();
    if (cpu >= 0 && CPU_ISSET(cpu, &t->st.mask)) break;
    sched_yield();
  }
  if (cpu < 0 || !CPU_ISSET(cpu, &t->st.mask)) {
    snprintf(t->error, sizeof t->error, "%s: running on CPU %d, outside its affinity",
             kNames[t->index], cpu);
    return;
  }
  char err[256];
  if (t->index == T_RR && !fork_probe(SCHED_OTHER, 0, false, err, sizeof err)) {
    snprintf(t->error, sizeof t->error, "rr (reset on fork): %s, expected SCHED_OTHER nice 0", err);
  } else if (t->index == T_NEG && !fork_probe(SCHED_OTHER, -3, false, err, sizeof err)) {
    snprintf(t->error, sizeof t->error, "neg: %s, expected SCHED_OTHER nice -3 inherited", err);
  }
}

static void* worker(void* arg) {
  struct thread* t = arg;
  t->tid = wl_gettid();
  apply(t->index);
  if (!read_state(0, &t->st, true)) wl_die("%s: reading state: %m", kNames[t->index]);
  check_applied(t->index, &t->st);
  __atomic_store_n(&t->ready, 1, __ATOMIC_RELEASE);
  char c;
  while (!wl_read_full(g_wake[0], &c, 1)) {
  }
  self_check(t);
  return NULL;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (sched_getaffinity(0, sizeof g_all, &g_all) != 0) wl_die("sched_getaffinity: %m");
  g_first_cpu = -1;
  for (int c = 0; c < CPU_SETSIZE; c++) {
    if (CPU_ISSET(c, &g_all)) {
      if (g_first_cpu < 0) g_first_cpu = c;
      g_last_cpu = c;
    }
  }
  if (g_first_cpu == g_last_cpu)
    wl_note("only CPU %d available: both pinned threads use it", g_first_cpu);
  if (pipe2(g_wake, O_CLOEXEC) != 0) wl_die("pipe: %m");

  g_t[T_MAIN].index = T_MAIN;
  g_t[T_MAIN].tid = wl_gettid();
  apply(T_MAIN);
  if (!read_state(0, &g_t[T_MAIN].st, true)) wl_die("reading main state: %m");
  check_applied(T_MAIN, &g_t[T_MAIN].st);

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (int i = 1; i < NT; i++) {
    g_t[i].index = i;
    int rc = pthread_create(&g_t[i].th, NULL, worker, &g_t[i]);
    if (rc != 0) wl_die("pthread_create: %s", strerror(rc));
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  for (int i = 1; i < NT; i++) {
    while (!__atomic_load_n(&g_t[i].ready, __ATOMIC_ACQUIRE)) usleep(1000);
    if (!wl_wait_in_syscall(g_t[i].tid, SYS_read, SYS_read))
      wl_die("%s is not asleep in read", kNames[i]);
  }

  wl_ready();
  wl_wait_term();

  for (int i = 0; i < NT; i++) {
    struct state now;
    bool self = i == T_MAIN;
    if (!wl_expect(read_state(g_t[i].tid, &now, self), "%s (tid %d): reading state: %m", kNames[i],
                   (int)g_t[i].tid)) {
      continue;
    }
    char d[256];
    diff_state(&g_t[i].st, &now, d, sizeof d);
    wl_expect(d[0] == 0, "%s (tid %d): %s", kNames[i], (int)g_t[i].tid, d);
  }
  if (!wl_write_full(g_wake[1], "wwwwwwww", NT - 1)) wl_die("waking the workers: %m");
  for (int i = 1; i < NT; i++) {
    pthread_join(g_t[i].th, NULL);
    wl_expect(g_t[i].error[0] == 0, "%s", g_t[i].error);
  }
  wl_finish();
}
