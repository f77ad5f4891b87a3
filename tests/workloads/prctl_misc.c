/* Per-process attributes set through prctl(2), membarrier(2) and /proc:
 *   root   PR_SET_NAME "prctl-root", PR_SET_CHILD_SUBREAPER, PR_MCE_KILL early,
 *          PR_SET_THP_DISABLE, membarrier REGISTER_PRIVATE_EXPEDITED (+ _SYNC_CORE if offered),
 *          oom_score_adj 321, loginuid 4242, PR_SET_TIMERSLACK 123456, PR_SET_KEEPCAPS
 *   O2     orphaned at setup (its parent O1 exited and was reaped): reparented to the root
 *   mid -> P   P has PR_SET_PDEATHSIG(SIGUSR2) with a handler; mid is its parent
 *   fs     setfsuid(777)/setfsgid(888), euid/egid still 0 (so its fs capabilities are dropped)
 *   flags  PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE 0, and where this kernel/environment allows:
 *          PR_SET_MEMORY_MERGE, PR_SET_IO_FLUSHER (needs CAP_SYS_RESOURCE),
 *          PR_SET_SPECULATION_CTRL(STORE_BYPASS, DISABLE) (needs prctl-mode mitigation)
 *   tsc    PR_SET_TSC PR_TSC_SIGSEGV (never reads a clock through the vDSO: that uses rdtsc)
 * On request every value is read back with its getter (/proc for oom_score_adj, loginuid, comm
 * and the fs ids; MEMBARRIER_CMD_GET_REGISTRATIONS for membarrier), and behaviour is checked
 * where cheap: membarrier(PRIVATE_EXPEDITED[_SYNC_CORE]) succeeds (EPERM unregistered); a child
 * forked now inherits timer slack, THP/MCE settings, oom_score_adj, loginuid, comm and keep-caps
 * (setresuid(1000) keeps its permitted set, unlike a sibling without keep-caps); O2's parent is
 * the root; mid exits and P gets SIGUSR2 from it and is reparented to the subreaper root; fs
 * creates files owned 777:888 and cannot create in a 0700 root directory; tsc's children die of
 * SIGSEGV on rdtsc unless they re-enable it. */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#define PR_GET_IO_FLUSHER 58
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef MEMBARRIER_CMD_QUERY
#define MEMBARRIER_CMD_QUERY 0
#endif
#ifndef MEMBARRIER_CMD_PRIVATE_EXPEDITED
#define MEMBARRIER_CMD_PRIVATE_EXPEDITED (1 << 3)
#define MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED (1 << 4)
#endif
#ifndef MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE
#define MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE (1 << 5)
#define MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE (1 << 6)
#endif
#ifndef MEMBARRIER_CMD_GET_REGISTRATIONS
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)
#endif

#define ROOT_NAME "prctl-root"
#define TIMERSLACK 123456UL
#define OOM_ADJ 321
#define LOGINUID 4242
#define FSUID 777
#define FSGID 888

enum { R_O2, R_MID, R_P, R_FS, R_FLAGS, R_TSC, NROLES };
static const char* const kRole[NROLES] = {"O2", "mid", "P", "fs", "flags", "tsc"};
struct rec {
  int role;
  pid_t pid;
};

static pid_t g_root;

/* ---------------------------------------------------------------- helpers */

static long membarrier(int cmd) { return syscall(SYS_membarrier, cmd, 0, 0); }

/* Reads a small /proc file into buf (NUL-terminated, trailing newline dropped). */
static bool read_small(const char* path, char* buf, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, len - 1);
  close(fd);
  if (n < 0) return false;
  buf[n] = 0;
  if (n > 0 && buf[n - 1] == '\n') buf[n - 1] = 0;
  return true;
}

static bool write_small(const char* path, const char* text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = write(fd, text, strlen(text));
  int saved = errno;
  close(fd);
  errno = saved;
  return n == (ssize_t)strlen(text);
}

static long read_long(const char* path) {
  char buf[64];
  if (!read_small(path, buf, sizeof buf)) return -1;
  return strtol(buf, NULL, 10);
}

/* The line of /proc/self/status starting with key (without "key:\t"), or "" . */
static void status_line(const char* key, char* out, size_t len) {
  out[0] = 0;
  FILE* f = fopen("/proc/self/status", "re");
  if (!f) return;
  char line[256];
  size_t klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
      char* v = line + klen + 1;
      while (*v == '\t' || *v == ' ') v++;
      v[strcspn(v, "\n")] = 0;
      snprintf(out, len, "%s", v);
      break;
    }
  }
  fclose(f);
}

static void check_name(const char* want) {
  char name[32] = {0}, comm[32];
  prctl(PR_GET_NAME, name, 0, 0, 0);
  wl_expect(strcmp(name, want) == 0, "PR_GET_NAME \"%s\", expected \"%s\"", name, want);
  if (wl_expect(read_small("/proc/self/comm", comm, sizeof comm), "read comm: %m")) {
    wl_expect(strcmp(comm, want) == 0, "comm \"%s\", expected \"%s\"", comm, want);
  }
}

static void set_name(const char* name) {
  if (prctl(PR_SET_NAME, name, 0, 0, 0) != 0) wl_die("PR_SET_NAME: %m");
}

/* Waits for a child until a deadline; 0 on timeout. */
static pid_t wait_deadline(pid_t pid, int* st, double timeout) {
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    pid_t r = waitpid(pid, st, WNOHANG);
    if (r != 0 && !(r < 0 && errno == EINTR)) return r;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) * 1e-9 > timeout) {
      return 0;
    }
    usleep(2000);
  }
}

/* Reaps a child expected to die of signal `sig`. */
static void reap_signaled(pid_t pid, int sig, const char* what) {
  int st = 0;
  pid_t r;
  while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR) {
  }
  wl_expect(r == pid && WIFSIGNALED(st) && WTERMSIG(st) == sig,
            "%s: status 0x%x, expected death by signal %d", what, st, sig);
}

/* ---------------------------------------------------------------- the root's own settings */

static bool g_sync_core;          /* REGISTER_PRIVATE_EXPEDITED_SYNC_CORE offered and registered */
static long g_registrations = -1; /* expected GET_REGISTRATIONS, -1 if the kernel lacks it */
static bool g_loginuid;           /* loginuid could be written */

static void setup_root(void) {
  set_name(ROOT_NAME);
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) wl_die("PR_SET_CHILD_SUBREAPER: %m");
  if (prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0) != 0) wl_die("PR_MCE_KILL: %m");
  if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) wl_die("PR_SET_THP_DISABLE: %m");

  long offered = membarrier(MEMBARRIER_CMD_QUERY);
  if (offered < 0 || !(offered & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)) {
    wl_die("membarrier PRIVATE_EXPEDITED not offered (%ld)", offered);
  }
  if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != -1 || errno != EPERM) {
    wl_die("membarrier(PRIVATE_EXPEDITED) works before registering");
  }
  if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0) wl_die("membarrier register: %m");
  long want = MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED;
  if (offered & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) {
    if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) != 0) {
      wl_die("membarrier register SYNC_CORE: %m");
    }
    g_sync_core = true;
    want |= MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE;
  }
  if (offered & MEMBARRIER_CMD_GET_REGISTRATIONS) {
    g_registrations = want;
    long got = membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS);
    if (got != want) wl_die("membarrier registrations 0x%lx, expected 0x%lx", got, want);
  } else {
    wl_note("membarrier GET_REGISTRATIONS not offered: checked by behaviour only");
  }

  char text[32];
  snprintf(text, sizeof text, "%d", OOM_ADJ);
  if (!write_small("/proc/self/oom_score_adj", text)) wl_die("write oom_score_adj: %m");
  snprintf(text, sizeof text, "%d", LOGINUID);
  g_loginuid = write_small("/proc/self/loginuid", text);
  if (!g_loginuid) wl_note("cannot write /proc/self/loginuid (%m): not checked");

  if (prctl(PR_SET_TIMERSLACK, TIMERSLACK, 0, 0, 0) != 0) wl_die("PR_SET_TIMERSLACK: %m");
  if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) wl_die("PR_SET_KEEPCAPS: %m");
}

/* Checks what a process forked from the root inherits (and, for the root, has). */
static void check_inherited(void) {
  check_name(ROOT_NAME);
  long slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
  wl_expect(slack == (long)TIMERSLACK, "PR_GET_TIMERSLACK %ld, expected %lu", slack, TIMERSLACK);
  long thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
  wl_expect(thp == 1, "PR_GET_THP_DISABLE %ld, expected 1", thp);
  long mce = prctl(PR_MCE_KILL_GET, 0, 0, 0, 0);
  wl_expect(mce == PR_MCE_KILL_EARLY, "PR_MCE_KILL_GET %ld, expected %d", mce, PR_MCE_KILL_EARLY);
  long oom = read_long("/proc/self/oom_score_adj");
  wl_expect(oom == OOM_ADJ, "oom_score_adj %ld, expected %d", oom, OOM_ADJ);
  if (g_loginuid) {
    long luid = read_long("/proc/self/loginuid");
    wl_expect(luid == LOGINUID, "loginuid %ld, expected %d", luid, LOGINUID);
  }
  long keep = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
  wl_expect(keep == 1, "PR_GET_KEEPCAPS %ld, expected 1", keep);
  /* membarrier registrations belong to the mm, which a fork copies. */
  if (g_registrations >= 0) {
    long got = membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS);
    wl_expect(got == g_registrations, "membarrier registrations 0x%lx, expected 0x%lx", got,
              g_registrations);
  }
  wl_expect(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0,
            "membarrier(PRIVATE_EXPEDITED): %m (not registered?)");
  if (g_sync_core) {
    wl_expect(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) == 0,
              "membarrier(PRIVATE_EXPEDITED_SYNC_CORE): %m (not registered?)");
  }
}

/* Permitted capability set (low word, enough for a zero/non-zero test). */
static bool caps(uint64_t* permitted, uint64_t* effective) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  if (syscall(SYS_capget, &h, d) != 0) return false;
  *permitted = d[0].permitted | (uint64_t)d[1].permitted << 32;
  *effective = d[0].effective | (uint64_t)d[1].effective << 32;
  return true;
}

/* Forked at check time: inherited values, and keep-caps by behaviour. */
static void probe(void) {
  check_inherited();
  int isub = -1;
  prctl(PR_GET_CHILD_SUBREAPER, &isub, 0, 0, 0);
  wl_expect(isub == 0, "PR_GET_CHILD_SUBREAPER %d in a new child, expected 0", isub);

  /* Without keep-caps (control), setresuid to non-root empties the permitted set. */
  pid_t ctl = wl_fork("probe-nokeep");
  if (ctl == 0) {
    uint64_t p = 0, e = 0;
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 || setresuid(1000, 1000, 1000) != 0) _exit(3);
    if (!caps(&p, &e)) _exit(4);
    _exit(p == 0 && e == 0 ? 0 : 5);
  }
  uint64_t p = 0, e = 0;
  if (wl_expect(setresuid(1000, 1000, 1000) == 0, "setresuid: %m") &&
      wl_expect(caps(&p, &e), "capget: %m")) {
    wl_expect(p != 0, "keep-caps: permitted set empty after setresuid(1000)");
    wl_expect(e == 0, "effective set 0x%llx after setresuid(1000)", (unsigned long long)e);
  }
  wl_reap(ctl, "probe-nokeep (control without keep-caps)");
  wl_finish();
}

/* ---------------------------------------------------------------- children */

static void post(struct wl_sync* sync, int role) {
  struct rec r = {role, getpid()};
  wl_sync_post(sync, &r, sizeof r);
}

static void orphan_chain(struct wl_sync* sync) {
  pid_t o2 = wl_fork("O2");
  if (o2 == 0) {
    set_name("prctl-O2");
    post(sync, R_O2);
    wl_wait_term();
    wl_expect(getppid() == g_root, "ppid %d, expected the subreaper root %d", (int)getppid(),
              (int)g_root);
    check_name("prctl-O2");
    wl_finish();
  }
  _exit(0);
}

static volatile sig_atomic_t g_usr2;
static volatile int g_usr2_code;
static volatile pid_t g_usr2_pid;

static void on_usr2(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  g_usr2++;
  g_usr2_code = si->si_code;
  g_usr2_pid = si->si_pid;
}

static void pdeath_child(struct wl_sync* sync, pid_t mid) {
  set_name("prctl-P");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_usr2;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGUSR2, &sa, NULL) != 0) wl_die("sigaction: %m");
  sigset_t block, wait_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR2);
  sigaddset(&block, SIGTERM);
  sigprocmask(SIG_BLOCK, &block, &wait_mask);
  if (prctl(PR_SET_PDEATHSIG, SIGUSR2, 0, 0, 0) != 0) wl_die("PR_SET_PDEATHSIG: %m");
  if (getppid() != mid) wl_die("parent already gone at setup");
  post(sync, R_P);
  /* Woken by SIGUSR2 when mid dies (the real test), or SIGTERM from the root if it never
   * comes. */
  while (!g_usr2 && !wl_term) sigsuspend(&wait_mask);
  sigprocmask(SIG_SETMASK, &wait_mask, NULL);
  wl_expect(g_usr2 == 1, "%d SIGUSR2 from the parent's death, expected 1", (int)g_usr2);
  if (g_usr2 == 1) {
    wl_expect(g_usr2_code == SI_USER && g_usr2_pid == mid,
              "parent-death signal si_code %d si_pid %d, expected SI_USER from mid %d", g_usr2_code,
              (int)g_usr2_pid, (int)mid);
  }
  int sig = 0;
  prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0);
  wl_expect(sig == SIGUSR2, "PR_GET_PDEATHSIG %d, expected SIGUSR2", sig);
  wl_expect(getppid() == g_root, "ppid %d after mid died, expected the subreaper root %d",
            (int)getppid(), (int)g_root);
  check_name("prctl-P");
  wl_finish();
}

static void mid(struct wl_sync* sync) {
  set_name("prctl-mid");
  pid_t me = getpid();
  pid_t p = wl_fork("P");
  if (p == 0) pdeath_child(sync, me);
  post(sync, R_MID);
  wl_wait_term();
  check_name("prctl-mid");
  wl_finish(); /* P gets its SIGUSR2 now */
}

static void check_fs_ids(int dirfd, int privfd) {
  int fsuid = setfsuid((uid_t)-1), fsgid = setfsgid((gid_t)-1);
  wl_expect(fsuid == FSUID && fsgid == FSGID, "fsuid/fsgid %d/%d, expected %d/%d", fsuid, fsgid,
            FSUID, FSGID);
  wl_expect(geteuid() == 0 && getegid() == 0 && getuid() == 0, "uid/euid/egid %d/%d/%d",
            (int)getuid(), (int)geteuid(), (int)getegid());
  char uids[96], gids[96];
  status_line("Uid", uids, sizeof uids);
  status_line("Gid", gids, sizeof gids);
  wl_expect(strcmp(uids, "0\t0\t0\t777") == 0, "status Uid \"%s\"", uids);
  wl_expect(strcmp(gids, "0\t0\t0\t888") == 0, "status Gid \"%s\"", gids);

  char name[32];
  snprintf(name, sizeof name, "f.%d", (int)getpid());
  int fd = openat(dirfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
  if (wl_expect(fd >= 0, "create in the 0777 directory: %m")) {
    struct stat st;
    fstat(fd, &st);
    wl_expect(st.st_uid == FSUID && st.st_gid == FSGID, "new file owned %d:%d, expected %d:%d",
              (int)st.st_uid, (int)st.st_gid, FSUID, FSGID);
    close(fd);
    unlinkat(dirfd, name, 0);
  }
  /* fsuid != 0 dropped CAP_DAC_OVERRIDE & co. from the effective set: a 0700 root directory
   * is closed. */
  fd = openat(privfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
  wl_expect(fd < 0 && errno == EACCES, "create in the 0700 root directory: %s",
            fd >= 0 ? "allowed" : strerror(errno));
  if (fd >= 0) {
    close(fd);
    unlinkat(privfd, name, 0);
  }
}

static void fs_child(struct wl_sync* sync) {
  set_name("prctl-fs");
  int dirfd = open(wl_path("fsdir"), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int privfd = open(wl_path("priv"), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dirfd < 0 || privfd < 0) wl_die("open fsdir/priv: %m");
  setfsgid(FSGID);
  setfsuid(FSUID);
  check_fs_ids(dirfd, privfd);
  if (wl_failed()) wl_finish();
  post(sync, R_FS);
  wl_wait_term();
  check_fs_ids(dirfd, privfd);
  check_name("prctl-fs");
  wl_finish();
}

static void flags_child(struct wl_sync* sync) {
  set_name("prctl-flags");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) wl_die("PR_SET_NO_NEW_PRIVS: %m");
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) wl_die("PR_SET_DUMPABLE: %m");
  bool ksm = prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0;
  if (!ksm) wl_note("PR_SET_MEMORY_MERGE: %m: not checked");
  bool iof = prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0;
  if (!iof) wl_note("PR_SET_IO_FLUSHER: %m: not checked");
  long spec0 = prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0);
  bool spec = spec0 >= 0 && (spec0 & PR_SPEC_PRCTL);
  if (spec && prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, PR_SPEC_DISABLE, 0, 0) != 0) {
    wl_die("PR_SET_SPECULATION_CTRL: %m");
  }
  if (!spec) wl_note("store-bypass mitigation not prctl-controlled (0x%lx): not checked", spec0);
  post(sync, R_FLAGS);
  wl_wait_term();

  long v = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
  wl_expect(v == 1, "PR_GET_NO_NEW_PRIVS %ld", v);
  char line[64];
  status_line("NoNewPrivs", line, sizeof line);
  wl_expect(strcmp(line, "1") == 0, "status NoNewPrivs \"%s\"", line);
  v = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  wl_expect(v == 0, "PR_GET_DUMPABLE %ld, expected 0", v);
  if (ksm) {
    v = prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0);
    wl_expect(v == 1, "PR_GET_MEMORY_MERGE %ld, expected 1", v);
  }
  if (iof) {
    v = prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0);
    wl_expect(v == 1, "PR_GET_IO_FLUSHER %ld, expected 1", v);
  }
  if (spec) {
    v = prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0);
    wl_expect(v == (PR_SPEC_PRCTL | PR_SPEC_DISABLE), "store bypass control 0x%lx, expected 0x%x",
              v, (unsigned)(PR_SPEC_PRCTL | PR_SPEC_DISABLE));
  }
  check_name("prctl-flags");
  wl_finish();
}

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return (uint64_t)hi << 32 | lo;
}

/* No clock_gettime/wl_now in here: the vDSO reads the TSC. */
static void tsc_child(struct wl_sync* sync) {
  set_name("prctl-tsc");
  if (prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0) != 0) wl_die("PR_SET_TSC: %m");
  post(sync, R_TSC);
  wl_wait_term();
  int mode = 0;
  prctl(PR_GET_TSC, &mode, 0, 0, 0);
  wl_expect(mode == PR_TSC_SIGSEGV, "PR_GET_TSC %d, expected PR_TSC_SIGSEGV", mode);
  pid_t g1 = wl_fork("tsc-denied");
  if (g1 == 0) {
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    volatile uint64_t t = rdtsc();
    (void)t;
    _exit(0);
  }
  reap_signaled(g1, SIGSEGV, "rdtsc in a child of the PR_TSC_SIGSEGV process");
  pid_t g2 = wl_fork("tsc-enabled");
  if (g2 == 0) {
    if (prctl(PR_SET_TSC, PR_TSC_ENABLE, 0, 0, 0) != 0) _exit(3);
    volatile uint64_t t = rdtsc();
    _exit(t != 0 ? 0 : 4);
  }
  wl_reap(g2, "rdtsc after PR_TSC_ENABLE");
  check_name("prctl-tsc");
  wl_finish();
}

/* ---------------------------------------------------------------- root */

int main(int argc, char** argv) {
  wl_init(argc, argv);
  g_root = getpid();
  setup_root();
  if (mkdir(wl_path("fsdir"), 0777) != 0 || chmod(wl_path("fsdir"), 0777) != 0) {
    wl_die("mkdir fsdir: %m");
  }
  if (mkdir(wl_path("priv"), 0700) != 0) wl_die("mkdir priv: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t o1 = wl_fork("O1");
  if (o1 == 0) orphan_chain(&sync);
  if (wl_fork("mid") == 0) mid(&sync);
  if (wl_fork("fs") == 0) fs_child(&sync);
  if (wl_fork("flags") == 0) flags_child(&sync);
  if (wl_fork("tsc") == 0) tsc_child(&sync);

  struct rec recs[NROLES];
  if (!wl_sync_wait(&sync, NROLES, recs, sizeof recs[0])) wl_die("a child died during setup");
  pid_t pid[NROLES] = {0};
  for (int i = 0; i < NROLES; i++) {
    if (recs[i].role < 0 || recs[i].role >= NROLES) wl_die("bad record");
    pid[recs[i].role] = recs[i].pid;
  }
  wl_reap(o1, "O1");
  if (wl_failed()) wl_finish();

  wl_ready();
  wl_wait_term();

  check_inherited();
  int isub = 0;
  prctl(PR_GET_CHILD_SUBREAPER, &isub, 0, 0, 0);
  wl_expect(isub == 1, "PR_GET_CHILD_SUBREAPER %d, expected 1", isub);

  pid_t pr = wl_fork("probe");
  if (pr == 0) probe();
  wl_reap(pr, "probe");

  for (int i = 0; i < NROLES; i++) {
    if (i != R_P) kill(pid[i], SIGTERM);
  }
  for (int i = 0; i < NROLES; i++) {
    if (i != R_P) wl_reap(pid[i], kRole[i]);
  }
  /* P ends on its own once mid is gone (parent-death signal); SIGTERM only if it hangs. */
  int st = 0;
  pid_t r = wait_deadline(pid[R_P], &st, 5);
  if (r == 0) {
    wl_expect(false, "P did not react to its parent's death within 5 s");
    kill(pid[R_P], SIGTERM);
    wl_reap(pid[R_P], "P");
  } else {
    wl_expect(r == pid[R_P] && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "P (pid %d): waitpid returned %d (%s), status 0x%x", (int)pid[R_P], (int)r,
              r < 0 ? strerror(errno) : "ok", st);
  }
  wl_expect(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD, "something else is left to reap");
  wl_finish();
}
