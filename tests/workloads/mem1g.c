/* 1 GiB of mixed memory, as a solver would hold it: per 4 KiB page, chosen by a hash of its
 * index, one of
 *   20%  a hole, never touched            5%  written, then MADV_DONTNEED (must read as zero)
 *    5%  written with zeros (present)    25%  doubles
 *   20%  small integers                  25%  random bytes
 * The last 64 MiB are made read-only after filling. Everything is a function of the page index,
 * so the check recomputes each page; holes must still read as zero. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "workload.h"

#define PG WL_PAGE
#define TOTAL (1UL << 30)
#define NPAGES (TOTAL / PG)
#define RO_BYTES (64UL << 20)

enum kind { HOLE, DROPPED, ZERO, DOUBLES, INTS, RANDOM };

static enum kind page_kind(size_t page) {
  unsigned h = (unsigned)(wl_mix64(page ^ 0x6d656d31ULL) % 100);
  if (h < 20) return HOLE;
  if (h < 25) return DROPPED;
  if (h < 30) return ZERO;
  if (h < 55) return DOUBLES;
  if (h < 75) return INTS;
  return RANDOM;
}

/* The contents of a non-zero page. */
static void make_page(size_t page, enum kind k, void* out) {
  switch (k) {
    case DOUBLES: {
      double* d = out;
      for (int i = 0; i < (int)(PG / sizeof *d); i++) d[i] = (double)page + (double)i * 0.001;
      break;
    }
    case INTS: {
      int32_t* v = out;
      for (int i = 0; i < (int)(PG / sizeof *v); i++)
        v[i] = (int32_t)((page * 31 + (size_t)i * 7) & 0xff);
      break;
    }
    case RANDOM: {
      uint64_t* w = out;
      uint64_t x = wl_mix64(page) | 1;
      for (int i = 0; i < (int)(PG / sizeof *w); i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        w[i] = x * 0x2545f4914f6cdd1dULL;
      }
      break;
    }
    default:
      memset(out, 0, PG);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char* mem =
      mmap(NULL, TOTAL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) wl_die("mmap 1 GiB: %m");
  for (size_t page = 0; page < NPAGES; page++) {
    enum kind k = page_kind(page);
    char* p = mem + page * PG;
    switch (k) {
      case HOLE:
        break;
      case DROPPED:
        memset(p, 0xa5, PG);
        if (madvise(p, PG, MADV_DONTNEED) != 0) wl_die("madvise: %m");
        break;
      case ZERO:
        memset(p, 0, PG);
        break;
      default:
        make_page(page, k, p);
    }
  }
  if (mprotect(mem + TOTAL - RO_BYTES, RO_BYTES, PROT_READ) != 0) {
    wl_die("mprotect: %m");
  }

  wl_ready();
  wl_wait_term();

  static char ref[PG];
  size_t bad = 0, first_bad = 0;
  for (size_t page = 0; page < NPAGES; page++) {
    enum kind k = page_kind(page);
    const char* p = mem + page * PG;
    bool ok;
    if (k == HOLE || k == DROPPED || k == ZERO) {
      ok = wl_check_zero(p, PG) < 0;
    } else {
      make_page(page, k, ref);
      ok = memcmp(p, ref, PG) == 0;
    }
    if (!ok && bad++ == 0) first_bad = page;
  }
  wl_expect(bad == 0, "%zu of %lu pages differ, the first at page %zu (kind %d)", bad,
            (unsigned long)NPAGES, first_bad, (int)page_kind(first_bad));
  wl_finish();
}
