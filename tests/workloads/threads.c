/* Eight threads, each with its own TLS (__thread) value and a stack array it keeps advancing
 * and verifying, and its own tid. Even threads spin (caught in user space by the checkpoint),
 * odd threads sleep between iterations (caught inside nanosleep). A restore that mixes up
 * fs_base, stacks, registers or tids between threads breaks a thread's own invariant. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "workload.h"

#define NTHREADS 8
#define NSLOTS 128

struct worker {
  pthread_t th;
  int index;
  uint64_t seed;
  pid_t tid;
  volatile uint64_t iters;
  uint64_t iters_at_ready;
  char error[256];
};

static struct worker g_workers[NTHREADS];
static pthread_barrier_t g_started;
static volatile int g_stop;

static __thread uint64_t tls_value;
static __thread char tls_name[32];
static __thread struct worker* tls_self;

static void* worker_main(void* arg) {
  struct worker* w = arg;
  tls_self = w;
  tls_value = w->seed;
  snprintf(tls_name, sizeof tls_name, "worker-%d", w->index);
  w->tid = wl_gettid();

  uint64_t stack[NSLOTS];
  for (int i = 0; i < NSLOTS; i++) stack[i] = w->seed * (uint64_t)(i + 1);
  uint64_t gen = 0;
  bool first = true;

  while (!g_stop) {
    for (int i = 0; i < NSLOTS; i++) {
      if (stack[i] != w->seed * (uint64_t)(i + 1) + gen) {
        snprintf(w->error, sizeof w->error, "thread %d: stack slot %d is %llu, expected %llu",
                 w->index, i, (unsigned long long)stack[i],
                 (unsigned long long)(w->seed * (uint64_t)(i + 1) + gen));
        return NULL;
      }
      stack[i]++;
    }
    gen++;
    char expect_name[32];
    snprintf(expect_name, sizeof expect_name, "worker-%d", w->index);
    if (tls_value != w->seed || tls_self != w || strcmp(tls_name, expect_name) != 0) {
      snprintf(w->error, sizeof w->error, "thread %d: TLS now %llx/%s, expected %llx/%s", w->index,
               (unsigned long long)tls_value, tls_name, (unsigned long long)w->seed, expect_name);
      return NULL;
    }
    if (wl_gettid() != w->tid) {
      snprintf(w->error, sizeof w->error, "thread %d: tid changed from %d to %d", w->index,
               (int)w->tid, (int)wl_gettid());
      return NULL;
    }
    w->iters++;
    if (first) {
      first = false;
      pthread_barrier_wait(&g_started);
    }
    if (w->index % 2) {
      struct timespec ts = {0, 2000000};
      nanosleep(&ts, NULL);
    } else {
      sched_yield();
    }
  }
  return NULL;
}

static int count_tasks(void) {
  DIR* d = opendir("/proc/self/task");
  if (!d) return -1;
  int n = 0;
  struct dirent* e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] != '.') n++;
  }
  closedir(d);
  return n;
}

static __thread uint64_t main_tls = 0x5eed;

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pthread_barrier_init(&g_started, NULL, NTHREADS + 1);

  /* Workers never take SIGTERM: the check request must reach the main thread. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (int i = 0; i < NTHREADS; i++) {
    struct worker* w = &g_workers[i];
    w->index = i;
    w->seed = wl_mix64(0x7417ead0ULL + (uint64_t)i) | 1;
    int rc = pthread_create(&w->th, NULL, worker_main, w);
    if (rc != 0) wl_die("pthread_create: %s", strerror(rc));
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_barrier_wait(&g_started);

  for (int i = 0; i < NTHREADS; i++) g_workers[i].iters_at_ready = g_workers[i].iters;
  main_tls = 0x5eed0001;
  wl_ready();
  wl_wait_term();

  wl_expect(count_tasks() == NTHREADS + 1, "%d tasks in /proc/self/task, expected %d",
            count_tasks(), NTHREADS + 1);
  wl_expect(main_tls == 0x5eed0001, "main thread TLS is %llx", (unsigned long long)main_tls);

  /* Let every worker run after the request, so the check covers execution after a restore. */
  uint64_t at_request[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) at_request[i] = g_workers[i].iters;
  double deadline = wl_now() + 30;
  for (int i = 0; i < NTHREADS; i++) {
    while (g_workers[i].iters < at_request[i] + 3 && g_workers[i].error[0] == 0 &&
           wl_now() < deadline) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
  g_stop = 1;
  for (int i = 0; i < NTHREADS; i++) {
    struct worker* w = &g_workers[i];
    int rc = pthread_join(w->th, NULL);
    wl_expect(rc == 0, "pthread_join(%d): %s", i, strerror(rc));
    wl_expect(w->error[0] == 0, "%s", w->error);
    wl_expect(w->iters >= at_request[i] + 3, "thread %d stalled at %llu iterations", i,
              (unsigned long long)w->iters);
    wl_expect(w->iters > w->iters_at_ready, "thread %d did not advance", i);
  }
  wl_finish();
}
