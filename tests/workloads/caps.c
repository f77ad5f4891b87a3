/* Credentials and capabilities of a non-root process made from root.
 *   victim   child, stays root, sleeps; counts SIGUSR1 and records the sender
 *   capped   child, as root: drops CAP_SYS_PTRACE from its bounding set, setgroups {5678, 42},
 *            setresgid(5678 x3), securebits KEEP_CAPS|NO_SETUID_FIXUP|NO_SETUID_FIXUP_LOCKED|
 *            NOROOT, setresuid(1234 x3) (capabilities kept: NO_SETUID_FIXUP), setfsuid(4321),
 *            setfsgid(8765), then capset permitted {NET_BIND_SERVICE, KILL, CHOWN}, effective
 *            {KILL}, inheritable {NET_BIND_SERVICE}, and raises NET_BIND_SERVICE as ambient.
 *            Keeps an fd of a root-owned file in DIR (opened while root).
 * On request, in capped: capget sets, PR_CAPBSET_READ of every capability (the whole bounding set
 * recorded at setup, CAP_SYS_PTRACE absent), PR_CAP_AMBIENT_IS_SET of every capability,
 * PR_GET_SECUREBITS, getresuid/getresgid, getgroups (as a set), fsuid/fsgid (setfsuid(-1));
 * behaviour: kill(victim, SIGUSR1) of the root-owned victim succeeds (CAP_KILL), fchown of the
 * root-owned file fails with EPERM (CAP_CHOWN only permitted), and succeeds once CAP_CHOWN is
 * raised into the effective set (it really is permitted). The victim then checks that it got
 * exactly that SIGUSR1 from capped. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <stdio.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define UID 1234
#define GID 5678
#define GROUP2 42
#define FSUID 4321
#define FSGID 8765
#define SECBITS \
  (SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_NOROOT)
#define CAPBIT(c) (1ULL << (c))
#define WANT_PRM (CAPBIT(CAP_NET_BIND_SERVICE) | CAPBIT(CAP_KILL) | CAPBIT(CAP_CHOWN))
#define WANT_EFF (CAPBIT(CAP_KILL))
#define WANT_INH (CAPBIT(CAP_NET_BIND_SERVICE))
#define WANT_AMB (CAPBIT(CAP_NET_BIND_SERVICE))

struct capsets {
  uint64_t eff, prm, inh;
};

static bool cap_get(struct capsets* c) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  if (syscall(SYS_capget, &h, d) != 0) return false;
  c->eff = d[0].effective | (uint64_t)d[1].effective << 32;
  c->prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
  c->inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
  return true;
}

static bool cap_set(const struct capsets* c) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  for (int i = 0; i < 2; i++) {
    d[i].effective = (uint32_t)(c->eff >> (32 * i));
    d[i].permitted = (uint32_t)(c->prm >> (32 * i));
    d[i].inheritable = (uint32_t)(c->inh >> (32 * i));
  }
  return syscall(SYS_capset, &h, d) == 0;
}

static int last_cap(void) {
  FILE* f = fopen("/proc/sys/kernel/cap_last_cap", "re");
  int n = 40;
  if (f) {
    if (fscanf(f, "%d", &n) != 1) n = 40;
    fclose(f);
  }
  return n > 63 ? 63 : n;
}

static uint64_t bounding_set(int last) {
  uint64_t s = 0;
  for (int c = 0; c <= last; c++) {
    if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1) s |= CAPBIT(c);
  }
  return s;
}

static uint64_t ambient_set(int last) {
  uint64_t s = 0;
  for (int c = 0; c <= last; c++) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1) s |= CAPBIT(c);
  }
  return s;
}

/* ---- victim ---- */

static volatile sig_atomic_t g_usr1_count;
static volatile pid_t g_usr1_pid;
static volatile uid_t g_usr1_uid;
static volatile int g_usr1_value;

static void on_usr1(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  g_usr1_count++;
  g_usr1_pid = si->si_pid;
  g_usr1_uid = si->si_uid;
  g_usr1_value = si->si_value.sival_int;
}

static void victim(struct wl_sync* sync, volatile pid_t* capped_pid) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_usr1;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, NULL);
  wl_sync_post(sync, NULL, 0);
  wl_wait_term();
  wl_expect(g_usr1_count == 1, "got SIGUSR1 %d times, expected 1 (from capped)", (int)g_usr1_count);
  if (g_usr1_count == 1) {
    wl_expect(g_usr1_value == 77 && g_usr1_uid == UID && g_usr1_pid == *capped_pid,
              "SIGUSR1 value %d uid %d pid %d, expected 77/%d/%d", g_usr1_value, (int)g_usr1_uid,
              (int)g_usr1_pid, UID, (int)*capped_pid);
  }
  wl_finish();
}

/* ---- capped ---- */

static void capped(struct wl_sync* sync, pid_t victim_pid, int last) {
  int fd = open(wl_path("root-owned"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) wl_die("create root-owned: %m");
  if (fchown(fd, 0, 0) != 0) wl_die("fchown root-owned: %m");

  if (prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) != 0) wl_die("PR_CAPBSET_DROP: %m");
  gid_t groups[2] = {GID, GROUP2};
  if (setgroups(2, groups) != 0) wl_die("setgroups: %m");
  if (setresgid(GID, GID, GID) != 0) wl_die("setresgid: %m");
  if (prctl(PR_SET_SECUREBITS, SECBITS, 0, 0, 0) != 0) wl_die("PR_SET_SECUREBITS: %m");
  if (setresuid(UID, UID, UID) != 0) wl_die("setresuid: %m");
  /* setresuid set fsuid to the euid; NO_SETUID_FIXUP kept CAP_SETUID/SETGID effective */
  setfsuid(FSUID);
  setfsgid(FSGID);
  if (setfsuid(-1) != FSUID || setfsgid(-1) != FSGID) wl_die("setfsuid/setfsgid did not stick");
  struct capsets want = {WANT_EFF, WANT_PRM, WANT_INH};
  if (!cap_set(&want)) wl_die("capset: %m");
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) != 0) {
    wl_die("PR_CAP_AMBIENT_RAISE: %m");
  }
  uint64_t bset = bounding_set(last);
  if (bset & CAPBIT(CAP_SYS_PTRACE)) wl_die("CAP_SYS_PTRACE still in the bounding set");
  struct capsets got;
  if (!cap_get(&got) || got.eff != WANT_EFF || got.prm != WANT_PRM || got.inh != WANT_INH) {
    wl_die("capabilities not as set up");
  }
  wl_sync_post(sync, NULL, 0);
  wl_wait_term();

  if (wl_expect(cap_get(&got), "capget: %m")) {
    wl_expect(got.eff == WANT_EFF, "effective %llx, expected %llx", (unsigned long long)got.eff,
              (unsigned long long)WANT_EFF);
    wl_expect(got.prm == WANT_PRM, "permitted %llx, expected %llx", (unsigned long long)got.prm,
              (unsigned long long)WANT_PRM);
    wl_expect(got.inh == WANT_INH, "inheritable %llx, expected %llx", (unsigned long long)got.inh,
              (unsigned long long)WANT_INH);
  }
  uint64_t b = bounding_set(last);
  wl_expect(b == bset, "bounding set %llx, expected %llx", (unsigned long long)b,
            (unsigned long long)bset);
  uint64_t amb = ambient_set(last);
  wl_expect(amb == WANT_AMB, "ambient set %llx, expected %llx", (unsigned long long)amb,
            (unsigned long long)WANT_AMB);
  int sb = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
  wl_expect(sb == SECBITS, "securebits %#x, expected %#x", sb, SECBITS);
  uid_t ru = -1, eu = -1, su = -1;
  gid_t rg = -1, eg = -1, sg = -1;
  getresuid(&ru, &eu, &su);
  getresgid(&rg, &eg, &sg);
  wl_expect(ru == UID && eu == UID && su == UID, "uids %d/%d/%d, expected %d", (int)ru, (int)eu,
            (int)su, UID);
  wl_expect(rg == GID && eg == GID && sg == GID, "gids %d/%d/%d, expected %d", (int)rg, (int)eg,
            (int)sg, GID);
  gid_t gl[16];
  int ng = getgroups(16, gl);
  bool has_gid = false, has_g2 = false;
  for (int i = 0; i < ng; i++) {
    has_gid |= gl[i] == GID;
    has_g2 |= gl[i] == GROUP2;
  }
  wl_expect(ng == 2 && has_gid && has_g2,
            "supplementary groups: %d of them (%d, %d), expected "
            "{%d, %d}",
            ng, ng > 0 ? (int)gl[0] : -1, ng > 1 ? (int)gl[1] : -1, GID, GROUP2);
  int fsu = setfsuid(-1), fsg = setfsgid(-1);
  wl_expect(fsu == FSUID && fsg == FSGID, "fsuid/fsgid %d/%d, expected %d/%d", fsu, fsg, FSUID,
            FSGID);

  /* CAP_KILL is effective: signalling a root process is allowed. */
  union sigval v = {.sival_int = 77};
  wl_expect(sigqueue(victim_pid, SIGUSR1, v) == 0, "sigqueue to the root-owned victim: %m");
  /* CAP_CHOWN is only permitted. */
  errno = 0;
  int r = fchown(fd, UID, -1);
  wl_expect(r == -1 && errno == EPERM, "fchown without effective CAP_CHOWN: %s, expected EPERM",
            r == 0 ? "succeeded" : strerror(errno));
  struct capsets raised = {WANT_EFF | CAPBIT(CAP_CHOWN), WANT_PRM, WANT_INH};
  if (wl_expect(cap_set(&raised), "raising CAP_CHOWN into the effective set: %m")) {
    wl_expect(fchown(fd, UID, -1) == 0, "fchown with CAP_CHOWN effective: %m");
    struct stat st;
    memset(&st, 0, sizeof st);
    fstat(fd, &st);
    wl_expect(st.st_uid == UID, "file owner %d after fchown", (int)st.st_uid);
  }
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int last = last_cap();

  /* the victim learns capped's pid through a shared page */
  volatile pid_t* capped_pid =
      mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (capped_pid == MAP_FAILED) wl_die("mmap: %m");
  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t vic = wl_fork("victim");
  if (vic == 0) victim(&sync, capped_pid);
  pid_t cap = wl_fork("capped");
  if (cap == 0) capped(&sync, vic, last);
  *capped_pid = cap;
  if (!wl_sync_wait(&sync, 2, NULL, 0)) wl_die("a child died during setup");

  wl_ready();
  wl_wait_term();

  /* capped first: it signals the victim, which then checks what it got */
  kill(cap, SIGTERM);
  wl_reap(cap, "capped");
  kill(vic, SIGTERM);
  wl_reap(vic, "victim");
  wl_finish();
}
