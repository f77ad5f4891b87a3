/* System V shared memory in the host's IPC namespace, shared by a parent and its child:
 *   A  keyed, 0640, 3 pages + 100 bytes: attached by the parent, inherited by the child, and
 *      attached a second time by the child read-only; the parent wrote page 0, the child page 2.
 *   B  IPC_PRIVATE, 16 pages: attached by both, then marked for destruction (IPC_RMID): its key
 *      reads IPC_PRIVATE and its mode SHM_DEST, yet both still share it.
 *   C  keyed, 0600, not attached by anyone (the parent made it, wrote it and detached): taken
 *      by its creator pid; locked in memory (SHM_LOCK).
 *   D, E  D keyed K, attached (by both, through the fork) and marked for destruction; E made afterwards with
 *      the same key K (D gave it up), attached likewise: both come back, E keeps K.
 * After the request: ids, keys, modes, sizes, attach counts, lock and destruction states,
 * contents, the read-only attach, and sharing both ways (a page written by one side after
 * restore is seen by the other). */
#include <errno.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>

#include "workload.h"

#define PG WL_PAGE
#define A_SIZE (3 * PG + 100)
#define B_SIZE (16 * PG)
#define C_SIZE (5 * PG)

static key_t g_key_a, g_key_c, g_key_k;
static int g_a, g_b, g_c, g_d, g_e;
static char *g_pa, *g_pb, *g_ro, *g_pd, *g_pe;

static void check_segment(const char* who, int id, key_t key, unsigned mode, size_t size,
                          int nattch, int dest, int locked) {
  struct shmid_ds ds;
  if (!wl_expect(shmctl(id, IPC_STAT, &ds) == 0, "%s: IPC_STAT of shm %d: %m", who, id)) return;
  wl_expect(ds.shm_perm.__key == key, "%s: shm %d has key %#x, expected %#x", who, id,
            (unsigned)ds.shm_perm.__key, (unsigned)key);
  wl_expect((ds.shm_perm.mode & 0777) == mode, "%s: shm %d has mode %o, expected %o", who, id,
            ds.shm_perm.mode & 0777, mode);
  wl_expect(ds.shm_segsz == size, "%s: shm %d has size %zu, expected %zu", who, id,
            (size_t)ds.shm_segsz, size);
  wl_expect((int)ds.shm_nattch == nattch, "%s: shm %d attached %d times, expected %d", who, id,
            (int)ds.shm_nattch, nattch);
  wl_expect(!!(ds.shm_perm.mode & SHM_DEST) == dest, "%s: shm %d SHM_DEST is %d", who, id,
            !!(ds.shm_perm.mode & SHM_DEST));
  wl_expect(!!(ds.shm_perm.mode & SHM_LOCKED) == locked, "%s: shm %d SHM_LOCKED is %d", who, id,
            !!(ds.shm_perm.mode & SHM_LOCKED));
  wl_expect(ds.shm_perm.cuid == getuid() && ds.shm_perm.uid == getuid(), "%s: shm %d owners", who, id);
}

static void check_contents(const char* who) {
  wl_expect(wl_check(g_pa, PG, 61) < 0, "%s: A page 0 differs", who);
  wl_expect(wl_check_zero(g_pa + PG, PG) < 0, "%s: A page 1 is not zero", who);
  wl_expect(wl_check(g_pa + 2 * PG, PG, 62) < 0, "%s: A page 2 differs", who);
  wl_expect(wl_check(g_pb, 4 * PG, 63) < 0, "%s: B differs", who);
  wl_expect(wl_check_zero(g_pb + 4 * PG, 12 * PG) < 0, "%s: B's untouched pages are not zero", who);
}

/* A new segment under a free random key (see wl_random_key). */
static int keyed(unsigned char tag, key_t* key, size_t size, int mode) {
  for (int tries = 0;; tries++) {
    *key = wl_random_key(tag);
    int id = shmget(*key, size, IPC_CREAT | IPC_EXCL | mode);
    if (id >= 0 || errno != EEXIST || tries == 64) return id;
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  g_a = keyed(0x53, &g_key_a, A_SIZE, 0640);
  g_b = shmget(IPC_PRIVATE, B_SIZE, IPC_CREAT | 0600);
  g_c = keyed(0x54, &g_key_c, C_SIZE, 0600);
  if (g_a < 0 || g_b < 0 || g_c < 0) wl_die("shmget: %m");
  g_pa = shmat(g_a, NULL, 0);
  g_pb = shmat(g_b, NULL, 0);
  char* pc = shmat(g_c, NULL, 0);
  if (g_pa == (void*)-1 || g_pb == (void*)-1 || pc == (void*)-1) wl_die("shmat: %m");
  wl_fill(g_pa, PG, 61);
  wl_fill(g_pb, 4 * PG, 63);
  wl_fill(pc, 3 * PG, 64);
  shmdt(pc);
  if (shmctl(g_c, SHM_LOCK, NULL) != 0) wl_die("SHM_LOCK: %m");
  g_d = keyed(0x57, &g_key_k, PG, 0600);
  if (g_d < 0 || (g_pd = shmat(g_d, NULL, 0)) == (void*)-1) wl_die("D: %m");
  wl_fill(g_pd, PG, 67);
  if (shmctl(g_d, IPC_RMID, NULL) != 0) wl_die("IPC_RMID of D: %m");
  g_e = shmget(g_key_k, 2 * PG, IPC_CREAT | IPC_EXCL | 0600);
  if (g_e < 0 || (g_pe = shmat(g_e, NULL, 0)) == (void*)-1) wl_die("E: %m");
  wl_fill(g_pe, 2 * PG, 68);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("child");
  if (child == 0) {
    g_ro = shmat(g_a, NULL, SHM_RDONLY);
    if (g_ro == (void*)-1) wl_die("shmat read-only: %m");
    wl_fill(g_pa + 2 * PG, PG, 62);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    check_contents("child");
    struct wl_vma v;
    wl_expect(wl_find_vma(g_ro, &v) && strcmp(v.perms, "r--s") == 0,
              "child: the read-only attach is %s", v.perms);
    wl_expect(wl_check(g_ro + 3 * PG, 100, 65) < 0 && wl_check(g_pa + 3 * PG, 100, 65) < 0,
              "child does not see the parent's write to A after restore");
    wl_fill(g_pb + 10 * PG, PG, 66);
    shmdt(g_ro);
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("child died during setup");
  if (shmctl(g_b, IPC_RMID, NULL) != 0) wl_die("IPC_RMID: %m");

  wl_ready();
  wl_wait_term();

  check_segment("parent", g_a, g_key_a, 0640, A_SIZE, 3, 0, 0);
  check_segment("parent", g_b, IPC_PRIVATE, 0600, B_SIZE, 2, 1, 0);
  check_segment("parent", g_c, g_key_c, 0600, C_SIZE, 0, 0, 1);
  wl_expect(shmget(g_key_a, 0, 0) == g_a, "parent: key of A finds another id");
  check_segment("parent", g_d, IPC_PRIVATE, 0600, PG, 2, 1, 0);
  check_segment("parent", g_e, g_key_k, 0600, 2 * PG, 2, 0, 0);
  wl_expect(shmget(g_key_k, 0, 0) == g_e, "parent: key K finds another id than E's");
  wl_expect(wl_check(g_pd, PG, 67) < 0 && wl_check(g_pe, 2 * PG, 68) < 0, "parent: D or E differ");
  check_contents("parent");
  pc = shmat(g_c, NULL, SHM_RDONLY);
  if (wl_expect(pc != (void*)-1, "parent: shmat of C: %m")) {
    wl_expect(wl_check(pc, 3 * PG, 64) < 0 && wl_check_zero(pc + 3 * PG, 2 * PG) < 0,
              "parent: C differs");
    shmdt(pc);
  }
  wl_fill(g_pa + 3 * PG, 100, 65);
  kill(child, SIGTERM);
  wl_reap(child, "child");
  wl_expect(wl_check(g_pb + 10 * PG, PG, 66) < 0, "parent does not see the child's write to B");
  shmctl(g_a, IPC_RMID, NULL);
  shmctl(g_c, IPC_RMID, NULL);
  shmctl(g_e, IPC_RMID, NULL);
  wl_finish();
}
