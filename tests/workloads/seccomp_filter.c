/* Seccomp filters, shared by threads and not:
 *   root, threads main and T (NO_NEW_PRIVS):
 *     F1  getppid -> ERRNO(EPERM)    installed by main with TSYNC (so T has it too)
 *     F2  uname   -> ERRNO(ENOSYS)   installed by main with TSYNC
 *     F3  getuid  -> ERRNO(EACCES)   installed by T for itself only (no TSYNC)
 *   child "sync", threads main and U: F1 and F2 with TSYNC, nothing else.
 * On request, in every thread: the filtered syscalls fail with exactly those errnos and
 * unfiltered ones (getpid, getgid, getuid where not filtered) work; /proc/thread-self/status
 * has Seccomp 2 and Seccomp_filters 2 (main, U) or 3 (T); PR_GET_SECCOMP is 2 and
 * PR_GET_NO_NEW_PRIVS 1. Threads created after the restore inherit their creator's filters (a new
 * thread of main: 2, of T: 3). The shape of the filter tree is checked by behaviour: in the root
 * a TSYNC install must fail naming T (its chain is not an ancestor of main's); in "sync" it
 * must succeed (both threads still share one chain) and the new filter (getgid -> EROFS) then
 * applies to both threads. */
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "workload.h"

static long install_filter(int nr, int err, unsigned flags) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof f[0]), f};
  return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static long status_field(const char* key) {
  FILE* f = fopen("/proc/thread-self/status", "re");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
      v = strtol(line + klen + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return v;
}

/* What one thread must see. */
struct expect {
  const char* who;
  int nfilters;
  bool uid_denied; /* F3 */
  bool gid_denied; /* F4 (sync child, after the TSYNC at check time) */
};

/* Runs in the thread being checked; returns NULL or a malloc'ed reason. */
static char* check_thread(const struct expect* e) {
  char* why = NULL;
#define BAD(...)                                             \
  do {                                                       \
    if (!why && asprintf(&why, __VA_ARGS__) < 0) why = NULL; \
  } while (0)
  errno = 0;
  long r = syscall(SYS_getppid);
  if (r != -1 || errno != EPERM)
    BAD("%s: getppid returned %ld errno %d, expected EPERM", e->who, r, errno);
  struct utsname u;
  errno = 0;
  r = syscall(SYS_uname, &u);
  if (r != -1 || errno != ENOSYS)
    BAD("%s: uname returned %ld errno %d, expected ENOSYS", e->who, r, errno);
  errno = 0;
  r = syscall(SYS_getuid);
  if (e->uid_denied ? (r != -1 || errno != EACCES) : r != 0) {
    BAD("%s: getuid returned %ld errno %d, expected %s", e->who, r, errno,
        e->uid_denied ? "EACCES" : "0");
  }
  errno = 0;
  r = syscall(SYS_getgid);
  if (e->gid_denied ? (r != -1 || errno != EROFS) : r != 0) {
    BAD("%s: getgid returned %ld errno %d, expected %s", e->who, r, errno,
        e->gid_denied ? "EROFS" : "0");
  }
  r = syscall(SYS_getpid);
  if (r != getpid()) BAD("%s: getpid returned %ld", e->who, r);
  long mode = status_field("Seccomp"), n = status_field("Seccomp_filters");
  if (mode != SECCOMP_MODE_FILTER) BAD("%s: Seccomp %ld, expected 2", e->who, mode);
  if (n != e->nfilters) BAD("%s: Seccomp_filters %ld, expected %d", e->who, n, e->nfilters);
  r = prctl(PR_GET_SECCOMP, 0, 0, 0, 0);
  if (r != SECCOMP_MODE_FILTER) BAD("%s: PR_GET_SECCOMP %ld", e->who, r);
  r = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
  if (r != 1) BAD("%s: PR_GET_NO_NEW_PRIVS %ld", e->who, r);
#undef BAD
  return why;
}

static void* check_thread_main(void* arg) { return check_thread(arg); }

/* Checks `e` in a thread created now by the calling thread. */
static char* check_in_new_thread(const struct expect* e) {
  pthread_t th;
  if (pthread_create(&th, NULL, check_thread_main, (void*)e) != 0) return strdup("pthread_create");
  void* res = NULL;
  pthread_join(th, &res);
  return res;
}

static void report(char* why) {
  if (why) wl_expect(false, "%s", why);
  free(why);
}

/* A second thread driven by one-byte commands: 'F' install F3 (root's T only), 'C' check
 * (itself, then a new thread of its own), 'G' check with getgid denied. */
struct worker {
  pthread_t th;
  int cmd[2], done[2];
  pid_t tid;
  struct expect self, child;
  char* why;
};

static void* worker_main(void* arg) {
  struct worker* w = arg;
  w->tid = wl_gettid();
  char c = 'r';
  wl_write_full(w->done[1], &c, 1);
  while (wl_read_full(w->cmd[0], &c, 1)) {
    if (c == 'F') {
      if (install_filter(SYS_getuid, EACCES, 0) != 0 && !w->why) {
        if (asprintf(&w->why, "installing F3: %s", strerror(errno)) < 0) w->why = NULL;
      }
    } else if (c == 'C') {
      char* a = check_thread(&w->self);
      char* b = check_in_new_thread(&w->child);
      if (!w->why) w->why = a ? a : b;
      if (w->why != a) free(a);
      if (w->why != b) free(b);
    } else if (c == 'Q') {
      break;
    }
    c = 'd';
    wl_write_full(w->done[1], &c, 1);
  }
  return NULL;
}

static void worker_start(struct worker* w) {
  if (pipe2(w->cmd, O_CLOEXEC) != 0 || pipe2(w->done, O_CLOEXEC) != 0) wl_die("pipe: %m");
  /* The worker never takes SIGTERM: the request must reach the main thread. */
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, &old);
  int rc = pthread_create(&w->th, NULL, worker_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) wl_die("pthread_create: %s", strerror(rc));
  char c;
  if (!wl_read_full(w->done[0], &c, 1)) wl_die("worker thread did not start");
}

static void worker_do(struct worker* w, char cmd) {
  char c;
  if (!wl_write_full(w->cmd[1], &cmd, 1) || !wl_read_full(w->done[0], &c, 1)) {
    wl_die("worker thread gone");
  }
  report(w->why);
  w->why = NULL;
}

static void worker_quit(struct worker* w) {
  char c = 'Q';
  wl_write_full(w->cmd[1], &c, 1);
  pthread_join(w->th, NULL);
}

static void install_common(void) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) wl_die("PR_SET_NO_NEW_PRIVS: %m");
  if (install_filter(SYS_getppid, EPERM, SECCOMP_FILTER_FLAG_TSYNC) != 0) {
    wl_die("F1 with TSYNC: %m");
  }
  if (install_filter(SYS_uname, ENOSYS, SECCOMP_FILTER_FLAG_TSYNC) != 0) {
    wl_die("F2 with TSYNC: %m");
  }
}

/* The child: two threads on one shared chain. */
static void sync_process(struct wl_sync* sync) {
  struct worker u = {.self = {"sync/U", 2, false, false}, .child = {"sync/U+", 2, false, false}};
  worker_start(&u);
  install_common();
  wl_sync_post(sync, NULL, 0);
  wl_wait_term();

  struct expect m = {"sync/main", 2, false, false};
  report(check_thread(&m));
  worker_do(&u, 'C');
  long r = install_filter(SYS_getgid, EROFS, SECCOMP_FILTER_FLAG_TSYNC);
  if (wl_expect(r == 0,
                "TSYNC in the sync child returned %ld (errno %d): its threads no longer share "
                "one filter chain",
                r, r < 0 ? errno : 0)) {
    struct expect m4 = {"sync/main after TSYNC", 3, false, true};
    report(check_thread(&m4));
    u.self = (struct expect){"sync/U after TSYNC", 3, false, true};
    u.child = (struct expect){"sync/U+ after TSYNC", 3, false, true};
    worker_do(&u, 'C');
  }
  worker_quit(&u);
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("sync");
  if (child == 0) sync_process(&sync);
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("the sync child died during setup");

  struct worker t = {.self = {"T", 3, true, false}, .child = {"T+", 3, true, false}};
  worker_start(&t);
  install_common();
  worker_do(&t, 'F');
  if (wl_failed()) wl_finish();

  wl_ready();
  wl_wait_term();

  struct expect m = {"main", 2, false, false};
  struct expect mc = {"main+", 2, false, false};
  report(check_thread(&m));
  report(check_in_new_thread(&mc));
  worker_do(&t, 'C');
  /* T's chain has F3, which main's lacks: TSYNC must fail and name T. Nothing is installed
   * then (the filter would deny acct(2), which nobody calls, anyway). */
  long r = install_filter(SYS_acct, EPERM, SECCOMP_FILTER_FLAG_TSYNC);
  wl_expect(r == t.tid, "TSYNC from main returned %ld (errno %d), expected T's tid %d", r,
            r < 0 ? errno : 0, (int)t.tid);
  report(check_thread(&m));
  worker_quit(&t);

  kill(child, SIGTERM);
  wl_reap(child, "sync");
  wl_finish();
}
