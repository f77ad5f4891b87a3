/* The script of the `incr` workload, shared by the workload (which performs it and verifies
 * itself against it) and by tests/incremental (which derives from it what every incremental
 * checkpoint must record and what every restore must give back).
 *
 * Regions, each mapped between two PROT_NONE guard pages so that no VMA merges with another:
 *   A  64 pages anonymous private: rewritten pages, a page written with zeros, pages freed with
 *      MADV_DONTNEED (one of them written again later), 4 pages never touched
 *   B   8 pages anonymous private: pages written only by read(2) from a file, two of them never
 *      present before (pages 6 and 7 are not touched at setup)
 *   S   8 pages MAP_SHARED|MAP_ANONYMOUS: written by the forked child, seen by both
 *   M   8 pages anonymous private, moved by mremap(MREMAP_FIXED) in state 2
 *   N  16 pages anonymous private, mapped in state 2
 *   H  512 pages (2 MiB) anonymous private, 2 MiB aligned, madvise(MADV_HUGEPAGE): one
 *      transparent huge page where the kernel has them; two of its 4 KiB pages rewritten
 * Processes: 0 = the root, 1 = a child forked at the start of state 3 (it has every region).
 *
 * States (the workload enters state s+1 on the test's command "s"; checkpoint k of a test is
 * taken in state k-1):
 *   0  setup: A[0..59], B[0..5], S, M, H written (version 1)
 *   1  A[0,5,6,7,40] v2; A[30] zeros; A[50..54] MADV_DONTNEED; B[2..4] and B[6..7] v2 by read();
 *      H[7,300] v2
 *   2  N mapped and written; M moved; A[51] v3 (present again); A[0] v3
 *   3  fork; child: S[3,4] v11, its A[10,11] v11; root: A[20] v2 (after the child's writes)
 *   4  root: A[21] v2 (a page the child still shared); child: S[7] v11, its A[12] v11
 *   5  nothing changes
 *
 * A page's bytes are a function of (region, page, version) only (incr_fill), so that a page of
 * the wrong process, place or time never matches. */
#ifndef CREST_TESTS_INCR_MODEL_H
#define CREST_TESTS_INCR_MODEL_H

#include <stdbool.h>
#include <stdint.h>

enum incr_region { INCR_A, INCR_B, INCR_S, INCR_M, INCR_N, INCR_H, INCR_NREGIONS };
enum incr_kind { INCR_ABSENT, INCR_ZERO, INCR_DATA };

#define INCR_STATES 6
#define INCR_FORK_STATE 3
#define INCR_MOVE_STATE 2
#define INCR_CHILD_VERSION 11u

struct incr_page {
  enum incr_kind kind;
  unsigned version;  /* INCR_DATA only */
};

static inline unsigned incr_region_pages(int region) {
  static const unsigned pages[INCR_NREGIONS] = {64, 8, 8, 8, 16, 512};
  return region >= 0 && region < INCR_NREGIONS ? pages[region] : 0;
}

static inline const char* incr_region_name(int region) {
  static const char* const names[INCR_NREGIONS] = {"A", "B", "S", "M", "N", "H"};
  return region >= 0 && region < INCR_NREGIONS ? names[region] : "?";
}

static inline bool incr_region_exists(int proc, int region, int state) {
  if (proc == 1 && state < INCR_FORK_STATE) return false;
  if (region == INCR_N) return state >= INCR_MOVE_STATE;
  return region >= 0 && region < INCR_NREGIONS;
}

/* Seed of wl_fill() for one version of one page. */
static inline uint64_t incr_seed(int region, unsigned page, unsigned version) {
  return ((uint64_t)(region + 1) << 40) ^ ((uint64_t)page << 16) ^ (uint64_t)version;
}

/* What page `page` of `region` holds in process `proc` in state `state`. */
static inline struct incr_page incr_model(int proc, int region, unsigned page, int state) {
  struct incr_page p = {INCR_ABSENT, 0};
  if (!incr_region_exists(proc, region, state) || page >= incr_region_pages(region)) return p;
  p.kind = INCR_DATA;
  p.version = 1;
  switch (region) {
    case INCR_A:
      if (page >= 60) {
        p.kind = INCR_ABSENT;
        return p;
      }
      if (state >= 1) {
        if (page == 0 || page == 5 || page == 6 || page == 7 || page == 40) p.version = 2;
        if (page == 30) p.kind = INCR_ZERO;
        if (page >= 50 && page <= 54) p.kind = INCR_ABSENT;
      }
      if (state >= 2) {
        if (page == 51) {
          p.kind = INCR_DATA;
          p.version = 3;
        }
        if (page == 0) p.version = 3;
      }
      if (proc == 0) {
        if (state >= 3 && page == 20) p.version = 2;
        if (state >= 4 && page == 21) p.version = 2;
      } else {
        if (state >= 3 && (page == 10 || page == 11)) p.version = INCR_CHILD_VERSION;
        if (state >= 4 && page == 12) p.version = INCR_CHILD_VERSION;
      }
      break;
    case INCR_B:
      if (state == 0 && page >= 6) p.kind = INCR_ABSENT;
      if (state >= 1 && ((page >= 2 && page <= 4) || page >= 6)) p.version = 2;
      break;
    case INCR_H:
      if (state >= 1 && (page == 7 || page == 300)) p.version = 2;
      break;
    case INCR_S: /* one object: both processes see the same bytes */
      if (state >= 3 && (page == 3 || page == 4)) p.version = INCR_CHILD_VERSION;
      if (state >= 4 && page == 7) p.version = INCR_CHILD_VERSION;
      break;
    default:
      break;
  }
  if (p.kind != INCR_DATA) p.version = 0;
  return p;
}

static inline bool incr_same(struct incr_page a, struct incr_page b) {
  return a.kind == b.kind && a.version == b.version;
}

/* Whether the child's private page is still the very frame it shares copy-on-write with the
 * root since the fork: neither process has written it since. */
static inline bool incr_shared_with_parent(int region, unsigned page, int state) {
  if (state < INCR_FORK_STATE || region == INCR_S) return false;
  struct incr_page at_fork = incr_model(0, region, page, INCR_FORK_STATE - 1);
  if (at_fork.kind == INCR_ABSENT) return false;
  return incr_same(incr_model(1, region, page, state), at_fork) &&
         incr_same(incr_model(0, region, page, state), at_fork);
}

#endif
