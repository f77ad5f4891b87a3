/* Guard pages (MADV_GUARD_INSTALL, Linux 6.13+): a 16-page private anonymous read-write region,
 * between two PROT_NONE pages and filled with data, with pages 6 and 7 turned into guard pages
 * (page-table markers: the VMA is not split, the pages are not PROT_NONE).
 * On request: the region is still one rw-p VMA of 16 pages; reading or writing either guard page
 * raises SIGSEGV (handler + sigsetjmp); the 14 other pages hold their data; /proc/self/pagemap
 * bit 58 (guard region, Linux 6.14+) is set exactly on the guard pages when the kernel reported
 * it at setup (noted when it did not); finally MADV_GUARD_REMOVE makes the two pages usable,
 * reading as zeros, and the region's data is still intact. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_GUARD_REMOVE
#define MADV_GUARD_REMOVE 103
#endif

#define PG WL_PAGE
#define NPAGES 16
#define GUARD0 6
#define NGUARD 2
#define SEED 0x6a7dULL
#define PM_GUARD (1ULL << 58)

static bool is_guard(int i) { return i >= GUARD0 && i < GUARD0 + NGUARD; }

static sigjmp_buf g_jmp;
static volatile sig_atomic_t g_faults;

static void on_segv(int sig) {
  (void)sig;
  g_faults++;
  siglongjmp(g_jmp, 1);
}

/* Touches p (read or write); returns true if it faulted with SIGSEGV. */
static bool faults(volatile char* p, bool write) {
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_segv;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &old);
  bool faulted;
  if (sigsetjmp(g_jmp, 1) == 0) {
    if (write) {
      *p = 1;
    } else {
      (void)*p;
    }
    faulted = false;
  } else {
    faulted = true;
  }
  sigaction(SIGSEGV, &old, NULL);
  return faulted;
}

/* pagemap entries of the region, false on error. */
static bool read_pagemap(const char* p, uint64_t* ents) {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = pread(fd, ents, NPAGES * sizeof *ents, (off_t)((uintptr_t)p / PG * 8));
  close(fd);
  return n == (ssize_t)(NPAGES * sizeof *ents);
}

static bool vma_of(const void* addr, unsigned long* s, unsigned long* e, char* perms) {
  FILE* f = fopen("/proc/self/maps", "re");
  if (!f) return false;
  char line[1024];
  bool found = false;
  while (fgets(line, sizeof line, f)) {
    char p[5];
    if (sscanf(line, "%lx-%lx %4s", s, e, p) == 3 && (unsigned long)addr >= *s &&
        (unsigned long)addr < *e) {
      memcpy(perms, p, 5);
      found = true;
      break;
    }
  }
  fclose(f);
  return found;
}

static void check_data(const char* p, const char* when) {
  static char ref[NPAGES * PG];
  wl_fill(ref, sizeof ref, SEED);
  for (int i = 0; i < NPAGES; i++) {
    if (is_guard(i)) continue;
    wl_expect(memcmp(p + (size_t)i * PG, ref + (size_t)i * PG, PG) == 0,
              "page %d lost its data (%s)", i, when);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  /* PROT_NONE pages on both sides: the region never merges with a neighbour. */
  char* res = mmap(NULL, (NPAGES + 2) * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (res == MAP_FAILED) wl_die("mmap reservation: %m");
  char* p = mmap(res + PG, NPAGES * PG, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (p != res + PG) wl_die("mmap: %m");
  wl_fill(p, NPAGES * PG, SEED);
  if (madvise(p + GUARD0 * PG, NGUARD * PG, MADV_GUARD_INSTALL) != 0) {
    if (errno == EINVAL)
      wl_die("madvise(MADV_GUARD_INSTALL): EINVAL: kernel lacks guard pages (6.13+)");
    wl_die("madvise(MADV_GUARD_INSTALL): %m");
  }
  uint64_t pm[NPAGES];
  if (!read_pagemap(p, pm)) wl_die("reading /proc/self/pagemap: %m");
  bool pagemap_guard = (pm[GUARD0] & PM_GUARD) != 0;
  if (!pagemap_guard) wl_note("pagemap does not report guard pages (bit 58): not checked");
  if (!faults(p + GUARD0 * PG, false)) wl_die("the guard page does not fault at setup");

  wl_ready();
  wl_wait_term();

  unsigned long s = 0, e = 0;
  char perms[5] = "";
  if (wl_expect(vma_of(p, &s, &e, perms), "region at %p is gone", (void*)p)) {
    wl_expect(s == (unsigned long)p && e == (unsigned long)p + NPAGES * PG,
              "VMA %lx-%lx, expected %p-%p (split?)", s, e, (void*)p, (void*)(p + NPAGES * PG));
    wl_expect(strcmp(perms, "rw-p") == 0, "perms %s, expected rw-p", perms);
  }
  for (int i = GUARD0; i < GUARD0 + NGUARD; i++) {
    wl_expect(faults(p + (size_t)i * PG, false), "reading guard page %d did not fault", i);
    wl_expect(faults(p + (size_t)i * PG + PG - 1, true), "writing guard page %d did not fault", i);
  }
  check_data(p, "with guards");
  if (pagemap_guard && wl_expect(read_pagemap(p, pm), "reading pagemap: %m")) {
    for (int i = 0; i < NPAGES; i++) {
      bool g = (pm[i] & PM_GUARD) != 0;
      wl_expect(g == is_guard(i), "pagemap page %d: guard bit %d, expected %d (entry %llx)", i, g,
                is_guard(i), (unsigned long long)pm[i]);
    }
  }

  if (wl_expect(madvise(p + GUARD0 * PG, NGUARD * PG, MADV_GUARD_REMOVE) == 0,
                "MADV_GUARD_REMOVE: %m")) {
    for (int i = GUARD0; i < GUARD0 + NGUARD; i++) {
      bool f = faults(p + (size_t)i * PG, false);
      wl_expect(!f, "guard page %d still faults after MADV_GUARD_REMOVE", i);
      if (!f) {
        long nz = wl_check_zero(p + (size_t)i * PG, PG);
        wl_expect(nz < 0, "former guard page %d not zero at offset %ld", i, nz);
      }
    }
    check_data(p, "after removing the guards");
  }
  wl_finish();
}
