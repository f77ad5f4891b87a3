/* Robust futex lists and robust process-shared mutexes.
 *   root     main thread + 3 worker threads; glibc registers one robust list head per thread
 *            (set_robust_list); each head/len is recorded at setup. Worker 1 is blocked in
 *            pthread_mutex_lock(M1) (a futex wait with FUTEX_WAITERS set in M1's word); workers
 *            2 and 3 are blocked reading a pipe.
 *   holder   child process: its main thread holds robust mutex M1, its second thread holds M2
 *            (both PTHREAD_PROCESS_SHARED|PTHREAD_MUTEX_ROBUST, in MAP_SHARED anonymous memory).
 * On request: get_robust_list(tid) of every root thread (queried by the main thread, and by each
 * worker for itself once woken) and of both holder threads returns the recorded head and len.
 * Then the holder exits without unlocking; the kernel walks its threads' robust lists, so worker
 * 1's pending lock returns EOWNERDEAD, and so does the root's pthread_mutex_lock(M2); after
 * pthread_mutex_consistent + unlock both mutexes lock normally again. */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define NWORKERS 3

struct head {
  pid_t tid;
  void* head;
  size_t len;
};

struct shared {
  pthread_mutex_t m1, m2;
  struct head holder[2]; /* holder main thread, holder second thread */
};

static struct shared* g_sh;

static bool get_robust(pid_t tid, void** head, size_t* len) {
  return syscall(SYS_get_robust_list, tid, head, len) == 0;
}

static struct head self_head(void) {
  struct head h = {wl_gettid(), NULL, 0};
  if (!get_robust(0, &h.head, &h.len)) wl_die("get_robust_list: %m");
  return h;
}

static void expect_head(const struct head* h, const char* what) {
  void* head = NULL;
  size_t len = 0;
  if (!wl_expect(get_robust(h->tid, &head, &len), "%s (tid %d): get_robust_list: %m", what,
                 (int)h->tid)) {
    return;
  }
  wl_expect(head == h->head && len == h->len, "%s (tid %d): robust list %p/%zu, expected %p/%zu",
            what, (int)h->tid, head, len, h->head, h->len);
}

/* ---- root workers ---- */

struct worker {
  pthread_t th;
  int index;
  struct head h;
  volatile int started;
  int lock_rc;     /* worker 1: result of pthread_mutex_lock(M1) */
  char error[256]; /* set by the worker's own check */
};

static struct worker g_workers[NWORKERS];
static int g_wake[2]; /* pipe: one byte per pipe-blocked worker */

static void own_check(struct worker* w) {
  void* head = NULL;
  size_t len = 0;
  if (!get_robust(0, &head, &len)) {
    snprintf(w->error, sizeof w->error, "worker %d: get_robust_list: %s", w->index,
             strerror(errno));
  } else if (head != w->h.head || len != w->h.len) {
    snprintf(w->error, sizeof w->error, "worker %d: own robust list %p/%zu, expected %p/%zu",
             w->index, head, len, w->h.head, w->h.len);
  }
}

static void* worker_main(void* arg) {
  struct worker* w = arg;
  w->h = self_head();
  __atomic_store_n(&w->started, 1, __ATOMIC_RELEASE);
  if (w->index == 0) {
    w->lock_rc = pthread_mutex_lock(&g_sh->m1); /* blocks until the holder dies */
    if (w->lock_rc == EOWNERDEAD) {
      pthread_mutex_consistent(&g_sh->m1);
      pthread_mutex_unlock(&g_sh->m1);
    } else if (w->lock_rc == 0) {
      pthread_mutex_unlock(&g_sh->m1);
    }
  } else {
    char c;
    while (!wl_read_full(g_wake[0], &c, 1)) {
    }
  }
  own_check(w);
  return NULL;
}

/* ---- holder child ---- */

static volatile int g_holder_thread_ready;

static void* holder_thread(void* arg) {
  (void)arg;
  g_sh->holder[1] = self_head();
  int rc = pthread_mutex_lock(&g_sh->m2);
  if (rc != 0) wl_die("holder thread: lock M2: %s", strerror(rc));
  __atomic_store_n(&g_holder_thread_ready, 1, __ATOMIC_RELEASE);
  for (;;) pause(); /* every signal blocked: ends with the process, still holding M2 */
  return NULL;
}

static void holder(struct wl_sync* sync) {
  g_sh->holder[0] = self_head();
  int rc = pthread_mutex_lock(&g_sh->m1);
  if (rc != 0) wl_die("holder: lock M1: %s", strerror(rc));
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  pthread_t th;
  rc = pthread_create(&th, NULL, holder_thread, NULL);
  if (rc != 0) wl_die("pthread_create: %s", strerror(rc));
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  while (!__atomic_load_n(&g_holder_thread_ready, __ATOMIC_ACQUIRE)) sched_yield();
  wl_sync_post(sync, NULL, 0);

  wl_wait_term();
  expect_head(&g_sh->holder[0], "holder main thread");
  expect_head(&g_sh->holder[1], "holder second thread");
  /* exit without unlocking M1 or M2 */
  wl_finish();
}

static void init_mutex(pthread_mutex_t* m) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  int rc = pthread_mutex_init(m, &a);
  if (rc != 0) wl_die("pthread_mutex_init: %s", strerror(rc));
  pthread_mutexattr_destroy(&a);
}

/* Is task tid blocked in a futex wait (FUTEX_WAIT*, per /proc/self/task/TID/syscall)? */
static bool in_futex(pid_t tid) { return wl_wait_in_syscall(tid, SYS_futex, SYS_futex_waitv); }

int main(int argc, char** argv) {
  wl_init(argc, argv);

  g_sh = mmap(NULL, sizeof *g_sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_sh == MAP_FAILED) wl_die("mmap: %m");
  init_mutex(&g_sh->m1);
  init_mutex(&g_sh->m2);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("holder");
  if (child == 0) holder(&sync);
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("the holder died during setup");

  struct head main_head = self_head();
  if (pipe2(g_wake, O_CLOEXEC) != 0) wl_die("pipe: %m");
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (int i = 0; i < NWORKERS; i++) {
    g_workers[i].index = i;
    int rc = pthread_create(&g_workers[i].th, NULL, worker_main, &g_workers[i]);
    if (rc != 0) wl_die("pthread_create: %s", strerror(rc));
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  for (int i = 0; i < NWORKERS; i++) {
    while (!__atomic_load_n(&g_workers[i].started, __ATOMIC_ACQUIRE)) sched_yield();
  }
  /* worker 0 waits on M1 inside the kernel, the others in read() */
  if (!in_futex(g_workers[0].h.tid)) wl_die("worker 0 is not blocked on M1");
  for (int i = 1; i < NWORKERS; i++) {
    if (!wl_wait_in_syscall(g_workers[i].h.tid, SYS_read, SYS_read))
      wl_die("worker %d not in read", i);
  }
  /* sanity: every thread has its own head */
  for (int i = 0; i < NWORKERS; i++) {
    if (g_workers[i].h.head == main_head.head || g_workers[i].h.head == NULL) {
      wl_die("worker %d shares the main thread's robust list head", i);
    }
  }
  if (g_sh->holder[0].head == NULL || g_sh->holder[0].head == g_sh->holder[1].head) {
    wl_die("holder threads' robust heads %p/%p", g_sh->holder[0].head, g_sh->holder[1].head);
  }

  wl_ready();
  wl_wait_term();

  expect_head(&main_head, "root main thread");
  for (int i = 0; i < NWORKERS; i++) {
    char what[32];
    snprintf(what, sizeof what, "root worker %d", i);
    expect_head(&g_workers[i].h, what);
  }

  /* The holder dies holding M1 and M2. */
  kill(child, SIGTERM);
  wl_reap(child, "holder");

  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  int rc = pthread_timedjoin_np(g_workers[0].th, NULL, &deadline);
  if (!wl_expect(rc == 0, "worker 0 still blocked on M1 10 s after the holder died (%s)",
                 strerror(rc))) {
    wl_finish();
  }
  wl_expect(g_workers[0].lock_rc == EOWNERDEAD,
            "worker 0: pthread_mutex_lock(M1) returned %d (%s), expected EOWNERDEAD",
            g_workers[0].lock_rc, strerror(g_workers[0].lock_rc));

  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  rc = pthread_mutex_timedlock(&g_sh->m2, &deadline);
  wl_expect(rc == EOWNERDEAD, "pthread_mutex_lock(M2) returned %d (%s), expected EOWNERDEAD", rc,
            strerror(rc));
  if (rc == EOWNERDEAD) {
    wl_expect(pthread_mutex_consistent(&g_sh->m2) == 0, "pthread_mutex_consistent(M2)");
    wl_expect(pthread_mutex_unlock(&g_sh->m2) == 0, "unlock M2");
  } else if (rc == 0) {
    pthread_mutex_unlock(&g_sh->m2);
  }
  pthread_mutex_t* ms[2] = {&g_sh->m1, &g_sh->m2};
  for (int i = 0; i < 2; i++) {
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 2;
    rc = pthread_mutex_timedlock(ms[i], &deadline);
    wl_expect(rc == 0, "M%d after recovery: lock returned %s", i + 1, strerror(rc));
    if (rc == 0) pthread_mutex_unlock(ms[i]);
  }

  if (!wl_write_full(g_wake[1], "xx", NWORKERS - 1)) wl_die("waking the workers: %m");
  for (int i = 1; i < NWORKERS; i++) pthread_join(g_workers[i].th, NULL);
  for (int i = 0; i < NWORKERS; i++) {
    wl_expect(g_workers[i].error[0] == 0, "%s", g_workers[i].error);
  }
  wl_finish();
}
