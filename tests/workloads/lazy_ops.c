/* Memory operations that a lazy restore must keep exact while pages are still missing: the
 * process never stops doing them, so right after a restore (crest restore --lazy) they run
 * while most of its 192 MiB is not back yet.
 *   A (64 MiB)  a fork: the child checks a 1 MiB slice and exits with the verdict
 *   B (64 MiB)  mremap'd back and forth between two places; one page checked after each move
 *   C (64 MiB)  one page MADV_DONTNEED'd (must read zero), then written again
 *   D (64 KiB)  pieces munmap'd and mapped again (must read zero), then written again
 * Every page's contents is a function of its region, its index and (for the pages freed and
 * written again) a generation kept in a static table; the check reads all of it. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define PG WL_PAGE
#define BIG (64UL << 20)
#define NBIG (BIG / PG)
#define SMALL (64UL << 10)
#define NSMALL (SMALL / PG)

static unsigned char* a;
static unsigned char* b;
static unsigned char* b_other; /* the other place B moves to */
static unsigned char* c;
static unsigned char* d;
static uint32_t c_gen[NBIG];  /* pages of C rewritten: generation */
static uint32_t d_gen[NSMALL];

static uint64_t word(uint64_t region, uint64_t page, uint64_t i, uint32_t gen) {
  return wl_mix64((region << 56) ^ (page << 20) ^ i ^ ((uint64_t)gen << 40));
}
static void fill(unsigned char* base, uint64_t region, size_t page, uint32_t gen) {
  uint64_t* w = (uint64_t*)(base + page * PG);
  for (size_t i = 0; i < PG / 8; i++) w[i] = word(region, page, i, gen);
}
static bool same(const unsigned char* base, uint64_t region, size_t page, uint32_t gen) {
  const uint64_t* w = (const uint64_t*)(base + page * PG);
  for (size_t i = 0; i < PG / 8; i++)
    if (w[i] != word(region, page, i, gen)) return false;
  return true;
}
static bool zero(const unsigned char* p) {
  for (size_t i = 0; i < PG; i++)
    if (p[i]) return false;
  return true;
}

/* What a wrong page holds instead, for the report: zeros, or which page of which region (as
 * first written) its first word is. */
static const char* what_is(const unsigned char* page) {
  static char buf[96];
  if (zero(page)) return "zeros";
  const uint64_t w = *(const uint64_t*)page;
  for (uint64_t region = 1; region <= 3; region++)
    for (size_t q = 0; q < NBIG; q++)
      if (w == word(region, q, 0, 0)) {
        snprintf(buf, sizeof buf, "page %zu of %c as first written", q, (char)('A' + region - 1));
        return buf;
      }
  return "other bytes";
}

static unsigned char* map(size_t len) {
  void* p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) wl_die("mmap: %s", strerror(errno));
  return p;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  a = map(BIG);
  b = map(BIG);
  c = map(BIG);
  d = map(SMALL);
  b_other = map(BIG); /* reserve a place for B, then free it */
  munmap(b_other, BIG);
  for (size_t p = 0; p < NBIG; p++) {
    fill(a, 1, p, 0);
    fill(b, 2, p, 0);
    fill(c, 3, p, 0);
  }
  for (size_t p = 0; p < NSMALL; p++) fill(d, 4, p, 0);
  wl_ready();

  uint64_t n = 0, forks = 0, moves = 0;
  while (!wl_term) {
    n++;
    uint64_t r = wl_mix64(n);
    switch (n % 4) {
      case 0: { /* now and then a fork: the child reads a 1 MiB slice of A */
        if ((n / 4) % 16 != 0) break;
        size_t first = (size_t)(r % (NBIG - 256));
        pid_t pid = fork();
        if (pid < 0) wl_die("fork: %s", strerror(errno));
        if (pid == 0) {
          for (size_t p = first; p < first + 256; p++)
            if (!same(a, 1, p, 0)) _exit(1);
          _exit(0);
        }
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        wl_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a child forked at iteration %llu "
                  "found region A wrong (status %d)", (unsigned long long)n, st);
        forks++;
        break;
      }
      case 1: { /* B moves */
        void* to = mremap(b, BIG, BIG, MREMAP_MAYMOVE | MREMAP_FIXED, b_other);
        if (to == MAP_FAILED) wl_die("mremap: %s", strerror(errno));
        b_other = b;
        b = to;
        size_t p = (size_t)(r % NBIG);
        wl_expect(same(b, 2, p, 0), "page %zu of B wrong after a move (%s)", p,
                  zero(b + p * PG) ? "zeros" : "other bytes");
        moves++;
        break;
      }
      case 2: { /* a page of C freed */
        size_t p = (size_t)(r % NBIG);
        madvise(c + p * PG, PG, MADV_DONTNEED);
        wl_expect(zero(c + p * PG), "page %zu of C not zero after MADV_DONTNEED", p);
        fill(c, 3, p, ++c_gen[p]);
        break;
      }
      case 3: { /* a page of D unmapped and mapped again */
        size_t p = (size_t)(r % NSMALL);
        munmap(d + p * PG, PG);
        void* m = mmap(d + p * PG, PG, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (m != d + p * PG) wl_die("mmap again: %s", strerror(errno));
        wl_expect(zero(d + p * PG), "page %zu of D not zero when mapped again", p);
        fill(d, 4, p, ++d_gen[p]);
        break;
      }
    }
    if (n % 64 == 0) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }

  for (size_t p = 0; p < NBIG; p++) {
    if (!wl_expect(same(a, 1, p, 0), "page %zu of A wrong (%s)", p, what_is(a + p * PG))) break;
    if (!wl_expect(same(b, 2, p, 0), "page %zu of B wrong (%s)", p, what_is(b + p * PG))) break;
    if (!wl_expect(same(c, 3, p, c_gen[p]), "page %zu of C wrong (%s)", p, what_is(c + p * PG)))
      break;
  }
  for (size_t p = 0; p < NSMALL; p++)
    if (!wl_expect(same(d, 4, p, d_gen[p]), "page %zu of D wrong (%s)", p, what_is(d + p * PG)))
      break;
  wl_note("%llu forks, %llu moves", (unsigned long long)forks, (unsigned long long)moves);
  wl_finish();
}
