/* madvise() advice and accounting flags on anonymous memory. Inside one PROT_NONE reservation,
 * eleven 4-page private anonymous regions are mapped, each followed by a PROT_NONE guard gap
 * (so no two of them can merge into one VMA):
 *   plain       rw, no advice                    VmFlags {ac}
 *   dontfork    MADV_DONTFORK                    {dc ac}
 *   dontdump    MADV_DONTDUMP                    {dd ac}
 *   wipeonfork  MADV_WIPEONFORK                  {wf ac}
 *   sequential  MADV_SEQUENTIAL                  {sr ac}
 *   random      MADV_RANDOM                      {rr ac}
 *   hugepage    MADV_HUGEPAGE                    {hg ac}
 *   nohugepage  MADV_NOHUGEPAGE                  {nh ac}
 *   mergeable   MADV_MERGEABLE (KSM)             {mg ac}
 *   noreserve   MAP_NORESERVE                    {nr}
 *   ro_born     PROT_READ from the start         {}    (never writable: not accounted)
 *   ro_mprot    rw, then mprotect(PROT_READ)     {ac}  (accounting is kept)
 * Each holds its own data pattern (ro_born is written through /proc/self/mem, which does not
 * make it writable or accounted).
 * On request: every region is still exactly one VMA [start, end) with its protection, the set of
 * the mnemonics dc dd wf sr rr hg nh mg nr ac in its smaps VmFlags is exactly the expected one,
 * the data is intact; and behaviour: a child forked now sees the WIPEONFORK region as zeros, the
 * DONTFORK region unmapped (touching it raises SIGSEGV, and it is absent from the child's
 * maps), and the other regions with their data. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define PG WL_PAGE
#define REGION_PAGES 4
#define REGION_LEN (REGION_PAGES * PG)
#define SLOT_LEN (REGION_LEN + PG) /* region + PROT_NONE gap */

/* The advice mnemonics compared (bit i = kMnemonics[i]). */
static const char* const kMnemonics[] = {"dc", "dd", "wf", "sr", "rr",
                                         "hg", "nh", "mg", "nr", "ac"};
enum { M_DC, M_DD, M_WF, M_SR, M_RR, M_HG, M_NH, M_MG, M_NR, M_AC, M_COUNT };
#define B(m) (1u << (m))

enum kind { K_ADVICE, K_NORESERVE, K_RO_BORN, K_RO_MPROT };

struct region {
  const char* name;
  enum kind kind;
  int advice; /* for K_ADVICE; -1 = none */
  unsigned want;
  const char* perms;
  char* addr;
  uint64_t seed;
};

static struct region g_regions[] = {
    {"plain", K_ADVICE, -1, B(M_AC), "rw-p", NULL, 0},
    {"dontfork", K_ADVICE, MADV_DONTFORK, B(M_DC) | B(M_AC), "rw-p", NULL, 0},
    {"dontdump", K_ADVICE, MADV_DONTDUMP, B(M_DD) | B(M_AC), "rw-p", NULL, 0},
    {"wipeonfork", K_ADVICE, MADV_WIPEONFORK, B(M_WF) | B(M_AC), "rw-p", NULL, 0},
    {"sequential", K_ADVICE, MADV_SEQUENTIAL, B(M_SR) | B(M_AC), "rw-p", NULL, 0},
    {"random", K_ADVICE, MADV_RANDOM, B(M_RR) | B(M_AC), "rw-p", NULL, 0},
    {"hugepage", K_ADVICE, MADV_HUGEPAGE, B(M_HG) | B(M_AC), "rw-p", NULL, 0},
    {"nohugepage", K_ADVICE, MADV_NOHUGEPAGE, B(M_NH) | B(M_AC), "rw-p", NULL, 0},
    {"mergeable", K_ADVICE, MADV_MERGEABLE, B(M_MG) | B(M_AC), "rw-p", NULL, 0},
    {"noreserve", K_NORESERVE, -1, B(M_NR), "rw-p", NULL, 0},
    {"ro_born", K_RO_BORN, -1, 0, "r--p", NULL, 0},
    {"ro_mprot", K_RO_MPROT, -1, B(M_AC), "r--p", NULL, 0},
};
#define NREGIONS ((int)(sizeof g_regions / sizeof g_regions[0]))

enum { R_PLAIN, R_DONTFORK, R_DONTDUMP, R_WIPEONFORK };

/* The VMA of /proc/self/smaps that contains addr: bounds, perms and the mnemonic set. */
struct vma {
  unsigned long start, end;
  char perms[5];
  unsigned flags;
  char vmflags[256];
};

static unsigned parse_vmflags(const char* s) {
  unsigned set = 0;
  char tok[8];
  int n;
  while (sscanf(s, " %7s%n", tok, &n) == 1) {
    for (int i = 0; i < M_COUNT; i++) {
      if (strcmp(tok, kMnemonics[i]) == 0) set |= 1u << i;
    }
    s += n;
  }
  return set;
}

static bool find_vma(const void* addr, struct vma* out) {
  FILE* f = fopen("/proc/self/smaps", "re");
  if (!f) return false;
  char line[1024];
  bool in = false, found = false;
  unsigned long a = (unsigned long)addr;
  while (fgets(line, sizeof line, f)) {
    unsigned long s, e;
    char p[5];
    if (sscanf(line, "%lx-%lx %4s ", &s, &e, p) == 3) {
      in = a >= s && a < e;
      if (in) {
        out->start = s;
        out->end = e;
        memcpy(out->perms, p, 5);
        out->flags = 0;
        out->vmflags[0] = 0;
      }
      continue;
    }
    if (in && strncmp(line, "VmFlags:", 8) == 0) {
      snprintf(out->vmflags, sizeof out->vmflags, "%.200s", line + 8);
      out->vmflags[strcspn(out->vmflags, "\n")] = 0;
      out->flags = parse_vmflags(line + 8);
      found = true;
      break;
    }
  }
  fclose(f);
  return found;
}

static void set_names(unsigned set, char* buf, size_t len) {
  buf[0] = 0;
  size_t n = 0;
  for (int i = 0; i < M_COUNT; i++) {
    if (set & (1u << i))
      n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? " " : "", kMnemonics[i]);
    if (n >= len) break;
  }
}

static sigjmp_buf g_jmp;
static volatile sig_atomic_t g_faults;

static void on_segv(int sig) {
  (void)sig;
  g_faults++;
  siglongjmp(g_jmp, 1);
}

/* Reads one byte at p; false if that raised SIGSEGV. */
static bool probe(const volatile char* p) {
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_segv;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_NODEFER;
  sigaction(SIGSEGV, &sa, &old);
  bool ok;
  if (sigsetjmp(g_jmp, 1) == 0) {
    (void)*p;
    ok = true;
  } else {
    ok = false;
  }
  sigaction(SIGSEGV, &old, NULL);
  return ok;
}

static bool in_maps(const void* addr) {
  FILE* f = fopen("/proc/self/maps", "re");
  if (!f) return true;
  char line[1024];
  bool found = false;
  while (fgets(line, sizeof line, f)) {
    unsigned long s, e;
    if (sscanf(line, "%lx-%lx", &s, &e) == 2 && (unsigned long)addr >= s &&
        (unsigned long)addr < e) {
      found = true;
      break;
    }
  }
  fclose(f);
  return found;
}

static void check_region(const struct region* r) {
  struct vma v;
  if (!wl_expect(find_vma(r->addr, &v), "%s: no VMA at %p", r->name, (void*)r->addr)) return;
  wl_expect(v.start == (unsigned long)r->addr && v.end == (unsigned long)r->addr + REGION_LEN,
            "%s: VMA is %lx-%lx, expected %p-%p (merged or split)", r->name, v.start, v.end,
            (void*)r->addr, (void*)(r->addr + REGION_LEN));
  wl_expect(strcmp(v.perms, r->perms) == 0, "%s: perms %s, expected %s", r->name, v.perms,
            r->perms);
  if (v.flags != r->want) {
    char got[64], want[64];
    set_names(v.flags, got, sizeof got);
    set_names(r->want, want, sizeof want);
    wl_expect(false, "%s: advice flags {%s}, expected {%s} (VmFlags:%s)", r->name, got, want,
              v.vmflags);
  }
  long bad = wl_check(r->addr, REGION_LEN, r->seed);
  wl_expect(bad < 0, "%s: data differs at offset %ld", r->name, bad);
}

/* The child forked at check time. */
static void fork_child(void) {
  const struct region* wf = &g_regions[R_WIPEONFORK];
  const struct region* df = &g_regions[R_DONTFORK];
  long nz = wl_check_zero(wf->addr, REGION_LEN);
  wl_expect(nz < 0, "child: WIPEONFORK region not zero at offset %ld", nz);
  wl_expect(!in_maps(df->addr), "child: DONTFORK region is mapped in the child");
  wl_expect(!probe(df->addr) && !probe(df->addr + REGION_LEN - 1),
            "child: reading the DONTFORK region did not fault");
  for (int i = 0; i < NREGIONS; i++) {
    const struct region* r = &g_regions[i];
    if (i == R_WIPEONFORK || i == R_DONTFORK) continue;
    long bad = wl_check(r->addr, REGION_LEN, r->seed);
    wl_expect(bad < 0, "child: %s data differs at offset %ld", r->name, bad);
  }
  /* the wiped region is usable */
  wl_fill(wf->addr, PG, 7);
  wl_expect(wl_check(wf->addr, PG, 7) < 0, "child: cannot write the wiped region");
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  size_t total = (size_t)NREGIONS * SLOT_LEN + PG;
  char* base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) wl_die("mmap reservation: %m");

  int mem = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
  if (mem < 0) wl_die("open /proc/self/mem: %m");
  char* buf = malloc(REGION_LEN);
  if (!buf) wl_die("malloc");

  for (int i = 0; i < NREGIONS; i++) {
    struct region* r = &g_regions[i];
    r->addr = base + PG + (size_t)i * SLOT_LEN;
    r->seed = 0x6d61647600ULL + (uint64_t)i;
    int prot = r->kind == K_RO_BORN ? PROT_READ : PROT_READ | PROT_WRITE;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    if (r->kind == K_NORESERVE) flags |= MAP_NORESERVE;
    if (mmap(r->addr, REGION_LEN, prot, flags, -1, 0) != r->addr) wl_die("mmap %s: %m", r->name);
    if (r->advice >= 0 && madvise(r->addr, REGION_LEN, r->advice) != 0) {
      wl_die("madvise(%s): %m", r->name);
    }
    if (r->kind == K_RO_BORN) {
      /* /proc/self/mem writes with FOLL_FORCE: the pages are COWed, the VMA stays r--p. */
      wl_fill(buf, REGION_LEN, r->seed);
      if (pwrite(mem, buf, REGION_LEN, (off_t)(uintptr_t)r->addr) != (ssize_t)REGION_LEN) {
        wl_die("writing %s through /proc/self/mem: %m", r->name);
      }
    } else {
      wl_fill(r->addr, REGION_LEN, r->seed);
    }
    if (r->kind == K_RO_MPROT && mprotect(r->addr, REGION_LEN, PROT_READ) != 0) {
      wl_die("mprotect %s: %m", r->name);
    }
  }
  close(mem);
  free(buf);

  /* The setup itself must produce the expected flags (a kernel without KSM or THP would not). */
  for (int i = 0; i < NREGIONS; i++) check_region(&g_regions[i]);
  if (wl_failed()) wl_die("setup does not have the expected flags");

  wl_ready();
  wl_wait_term();

  for (int i = 0; i < NREGIONS; i++) check_region(&g_regions[i]);
  /* the gaps are still there (nothing merged across them) */
  for (int i = 0; i <= NREGIONS; i++) {
    struct vma v;
    char* gap = base + (size_t)i * SLOT_LEN;
    wl_expect(find_vma(gap, &v) && strcmp(v.perms, "---p") == 0, "gap %d at %p is not PROT_NONE", i,
              (void*)gap);
  }

  pid_t child = wl_fork("forked");
  if (child == 0) fork_child();
  wl_reap(child, "child forked at check time");

  /* The parent's copies are untouched by the fork. */
  long bad = wl_check(g_regions[R_WIPEONFORK].addr, REGION_LEN, g_regions[R_WIPEONFORK].seed);
  wl_expect(bad < 0, "WIPEONFORK region wiped in the parent (offset %ld)", bad);
  bad = wl_check(g_regions[R_DONTFORK].addr, REGION_LEN, g_regions[R_DONTFORK].seed);
  wl_expect(bad < 0, "DONTFORK region changed in the parent (offset %ld)", bad);
  wl_finish();
}
