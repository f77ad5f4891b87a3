/* Locked memory (everything runs as root):
 *   root      region A: 4 pages mmap'ed then mlock()         VmFlags lo, all pages resident
 *             region B: 4 pages mmap(MAP_LOCKED)             lo, all pages resident
 *             region C: 8 pages mlock2(MLOCK_ONFAULT), pages 0, 3 and 5 touched   lo lf
 *             VmLck = 16 pages (locked_vm counts whole VMAs, faulted or not)
 *   all       child: mlockall(MCL_CURRENT|MCL_FUTURE), then maps region D (4 pages) after it
 *   setuid    child: mlock() of region F (4 pages) as root, then setresuid(65534 x3): the lock
 *             stays although the process could no longer make it (no CAP_IPC_LOCK)
 * Regions are carved from a PROT_NONE reservation with PROT_NONE gaps, so none merge.
 * On request, in every process: each region's VMA has exactly its lo/lf flags, smaps Locked
 * equals Rss for the locked VMAs (A, B, D, F fully resident; C holds at least the touched pages),
 * data intact, and VmLck in /proc/self/status equals the expected total and the sum of the
 * sizes of the VMAs flagged lo. The "all" child also: every VMA but the kernel's special ones
 * is locked, and a region mapped now gets lo and is populated (MCL_FUTURE still applies). The
 * "setuid" child: real/effective/saved uid 65534, no capabilities, not dumpable, lock kept. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "workload.h"

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif

#define PG WL_PAGE

struct vma {
  unsigned long start, end;
  char name[128];
  long rss_kb, locked_kb;
  bool lo, lf;
};

#define MAX_VMAS 512
static struct vma g_vmas[MAX_VMAS];

static bool has_tok(const char* s, const char* mn) {
  char tok[8];
  int n;
  while (sscanf(s, " %7s%n", tok, &n) == 1) {
    if (strcmp(tok, mn) == 0) return true;
    s += n;
  }
  return false;
}

/* Parses /proc/self/smaps into g_vmas; returns the count or -1. */
static int read_smaps(void) {
  FILE* f = fopen("/proc/self/smaps", "re");
  if (!f) return -1;
  char line[1024];
  int n = 0;
  struct vma* cur = NULL;
  while (fgets(line, sizeof line, f)) {
    unsigned long s, e;
    int pos = 0;
    if (sscanf(line, "%lx-%lx %*s %*s %*s %*s%n", &s, &e, &pos) == 2 && pos > 0) {
      if (n == MAX_VMAS) break;
      cur = &g_vmas[n++];
      memset(cur, 0, sizeof *cur);
      cur->start = s;
      cur->end = e;
      const char* nm = line + pos;
      while (*nm == ' ') nm++;
      snprintf(cur->name, sizeof cur->name, "%.127s", nm);
      cur->name[strcspn(cur->name, "\n")] = 0;
      continue;
    }
    if (!cur) continue;
    if (strncmp(line, "Rss:", 4) == 0) {
      cur->rss_kb = strtol(line + 4, NULL, 10);
    } else if (strncmp(line, "Locked:", 7) == 0) {
      cur->locked_kb = strtol(line + 7, NULL, 10);
    } else if (strncmp(line, "VmFlags:", 8) == 0) {
      cur->lo = has_tok(line + 8, "lo");
      cur->lf = has_tok(line + 8, "lf");
    }
  }
  fclose(f);
  return n;
}

static const struct vma* vma_at(int n, const void* addr) {
  for (int i = 0; i < n; i++) {
    if ((unsigned long)addr >= g_vmas[i].start && (unsigned long)addr < g_vmas[i].end) {
      return &g_vmas[i];
    }
  }
  return NULL;
}

static long status_kb(const char* key) {
  FILE* f = fopen("/proc/self/status", "re");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
      v = strtol(line + kl + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return v;
}

static unsigned long long status_hex(const char* key) {
  FILE* f = fopen("/proc/self/status", "re");
  if (!f) return ~0ULL;
  char line[256];
  unsigned long long v = ~0ULL;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
      v = strtoull(line + kl + 1, NULL, 16);
      break;
    }
  }
  fclose(f);
  return v;
}

/* One region's VMA: exact bounds, lo/lf as expected, Locked == Rss, resident >= min_kb. */
static void check_region(int n, const char* what, const char* p, size_t len, bool lf,
                         long min_rss_kb) {
  const struct vma* v = vma_at(n, p);
  if (!wl_expect(v != NULL, "%s: no VMA at %p", what, (void*)p)) return;
  wl_expect(v->start == (unsigned long)p && v->end == (unsigned long)p + len,
            "%s: VMA %lx-%lx, expected %p-%p", what, v->start, v->end, (void*)p, (void*)(p + len));
  wl_expect(v->lo, "%s: VmFlags lack lo (not locked)", what);
  wl_expect(v->lf == lf, "%s: lf (lock on fault) %s", what, lf ? "missing" : "unexpected");
  wl_expect(v->locked_kb == v->rss_kb, "%s: smaps Locked %ld kB but Rss %ld kB", what, v->locked_kb,
            v->rss_kb);
  wl_expect(v->rss_kb >= min_rss_kb, "%s: Rss %ld kB, expected at least %ld kB resident", what,
            v->rss_kb, min_rss_kb);
}

/* VmLck equals `expect_kb` (if >= 0) and the total size of the VMAs flagged lo. */
static void check_vmlck(int n, long expect_kb) {
  long vmlck = status_kb("VmLck");
  long sum = 0;
  for (int i = 0; i < n; i++) {
    if (g_vmas[i].lo) sum += (long)((g_vmas[i].end - g_vmas[i].start) / 1024);
  }
  if (expect_kb >= 0) {
    wl_expect(vmlck == expect_kb, "VmLck %ld kB, expected %ld kB", vmlck, expect_kb);
  }
  wl_expect(vmlck == sum, "VmLck %ld kB but the VMAs flagged lo total %ld kB", vmlck, sum);
}

static bool is_special(const char* name) {
  return strcmp(name, "[vdso]") == 0 || strcmp(name, "[vvar]") == 0 ||
         strcmp(name, "[vvar_vclock]") == 0 || strcmp(name, "[vsyscall]") == 0 ||
         strcmp(name, "[uprobes]") == 0;
}

/* Regions are carved out of a PROT_NONE reservation with a PROT_NONE page after each, so that
 * no two of them (or a region and some other anonymous mapping) merge into one VMA. */
#define RESERVE_PAGES 64
static char* g_reserve;
static size_t g_reserve_used;

static char* must_map(size_t len, int flags) {
  if (!g_reserve) {
    g_reserve = mmap(NULL, RESERVE_PAGES * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g_reserve == MAP_FAILED) wl_die("mmap reservation: %m");
    g_reserve_used = PG;
  }
  if (g_reserve_used + len + PG > RESERVE_PAGES * PG) wl_die("reservation full");
  char* want = g_reserve + g_reserve_used;
  char* p = mmap(want, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | flags,
                 -1, 0);
  if (p != want) wl_die("mmap: %m");
  g_reserve_used += len + PG;
  return p;
}

static void child_all(struct wl_sync* sync) {
  if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0) wl_die("mlockall: %m");
  char* d = must_map(4 * PG, 0);
  wl_fill(d, 4 * PG, 0xd0);
  wl_sync_post(sync, NULL, 0);
  wl_wait_term();

  int n = read_smaps();
  if (!wl_expect(n > 0, "reading smaps: %m")) wl_finish();
  check_region(n, "region D (after mlockall)", d, 4 * PG, false, 16);
  int unlocked = 0;
  for (int i = 0; i < n; i++) {
    const struct vma* v = &g_vmas[i];
    if (!v->lo && !is_special(v->name) && unlocked++ < 4) {
      wl_expect(false, "VMA %lx-%lx %s is not locked under mlockall", v->start, v->end, v->name);
    }
  }
  wl_expect(unlocked <= 4, "%d VMAs in all are not locked under mlockall", unlocked);
  check_vmlck(n, -1);
  long bad = wl_check(d, 4 * PG, 0xd0);
  wl_expect(bad < 0, "region D data differs at %ld", bad);

  /* MCL_FUTURE: a new mapping is locked and populated at once (no touching). */
  char* e = must_map(4 * PG, 0);
  n = read_smaps();
  check_region(n, "region E (mapped at check time)", e, 4 * PG, false, 16);
  check_vmlck(n, -1);
  wl_finish();
}

static void child_setuid(struct wl_sync* sync) {
  char* f = must_map(4 * PG, 0);
  wl_fill(f, 4 * PG, 0xf0);
  if (mlock(f, 4 * PG) != 0) wl_die("mlock: %m");
  if (setresuid(65534, 65534, 65534) != 0) wl_die("setresuid: %m");
  int dumpable = prctl(PR_GET_DUMPABLE);
  wl_sync_post(sync, NULL, 0);
  wl_wait_term();

  uid_t r = 0, e = 0, s = 0;
  getresuid(&r, &e, &s);
  wl_expect(r == 65534 && e == 65534 && s == 65534, "uids %d/%d/%d, expected 65534", (int)r, (int)e,
            (int)s);
  wl_expect(status_hex("CapEff") == 0 && status_hex("CapPrm") == 0,
            "capabilities CapPrm %llx CapEff %llx, expected none", status_hex("CapPrm"),
            status_hex("CapEff"));
  wl_expect(prctl(PR_GET_DUMPABLE) == dumpable, "dumpable %d, expected %d", prctl(PR_GET_DUMPABLE),
            dumpable);
  int n = read_smaps();
  if (!wl_expect(n > 0, "reading smaps: %m")) wl_finish();
  check_region(n, "region F (locked before setuid)", f, 4 * PG, false, 16);
  check_vmlck(n, 16);
  long bad = wl_check(f, 4 * PG, 0xf0);
  wl_expect(bad < 0, "region F data differs at %ld", bad);
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t all = wl_fork("all");
  if (all == 0) child_all(&sync);
  pid_t suid = wl_fork("setuid");
  if (suid == 0) child_setuid(&sync);
  if (!wl_sync_wait(&sync, 2, NULL, 0)) wl_die("a child died during setup");

  char* a = must_map(4 * PG, 0);
  wl_fill(a, 4 * PG, 0xa0);
  if (mlock(a, 4 * PG) != 0) wl_die("mlock: %m");
  char* b = must_map(4 * PG, MAP_LOCKED);
  wl_fill(b, 4 * PG, 0xb0);
  char* c = must_map(8 * PG, 0);
  if (mlock2(c, 8 * PG, MLOCK_ONFAULT) != 0) wl_die("mlock2(MLOCK_ONFAULT): %m");
  static const int touched[] = {0, 3, 5};
  for (int i = 0; i < 3; i++) wl_fill(c + (size_t)touched[i] * PG, PG, 0xc0 + (uint64_t)i);

  wl_ready();
  wl_wait_term();

  int n = read_smaps();
  if (wl_expect(n > 0, "reading smaps: %m")) {
    check_region(n, "region A (mlock)", a, 4 * PG, false, 16);
    check_region(n, "region B (MAP_LOCKED)", b, 4 * PG, false, 16);
    check_region(n, "region C (MLOCK_ONFAULT)", c, 8 * PG, true, 12);
    check_vmlck(n, 16 * 4);
  }
  long bad;
  bad = wl_check(a, 4 * PG, 0xa0);
  wl_expect(bad < 0, "region A data differs at %ld", bad);
  bad = wl_check(b, 4 * PG, 0xb0);
  wl_expect(bad < 0, "region B data differs at %ld", bad);
  for (int i = 0, t = 0; i < 8; i++) {
    if (t < 3 && touched[t] == i) {
      bad = wl_check(c + (size_t)i * PG, PG, 0xc0 + (uint64_t)t);
      t++;
    } else {
      bad = wl_check_zero(c + (size_t)i * PG, PG);
    }
    wl_expect(bad < 0, "region C page %d differs at %ld", i, bad);
  }

  kill(all, SIGTERM);
  kill(suid, SIGTERM);
  wl_reap(all, "child all (mlockall)");
  wl_reap(suid, "child setuid");
  wl_finish();
}
