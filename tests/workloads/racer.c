/* Writes without a pause, page after page, the number of the current pass into a 32 MiB region
 * (the first and the last word of each page), so that at every instant the pages before the one
 * being written hold the current pass and the pages after it the previous one. A checkpoint taken
 * while it writes must capture the memory and the registers of one and the same instant: a page
 * read before the job wrote it, and not read again, breaks the invariant the restored job checks
 * on SIGTERM. This is what a pre-copy (pages read while the job runs, those written meanwhile
 * read again while frozen) must get right. */
#include <stdio.h>
#include <sys/mman.h>

#include "workload.h"

#define NPAGES 8192UL
#define WORDS (WL_PAGE / sizeof(uint64_t))

int main(int argc, char** argv) {
  wl_init(argc, argv);
  volatile uint64_t* mem = mmap(NULL, NPAGES * WL_PAGE, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) wl_die("mmap: %m");
  for (uint64_t j = 0; j < NPAGES; j++) mem[j * WORDS] = mem[j * WORDS + WORDS - 1] = 1;

  uint64_t pass = 2, i = 0;
  int checked = 0;
  wl_ready();
  for (;;) {
    mem[i * WORDS] = pass;
    mem[i * WORDS + WORDS - 1] = pass;
    if (++i == NPAGES) {
      i = 0;
      pass++;
    }
    /* The check, at a page boundary: exactly what this instant must look like. Then one more
     * whole pass, and the same check again. */
    if (wl_term && i == NPAGES / 2) {
      for (uint64_t j = 0; j < NPAGES; j++) {
        uint64_t want = j < i ? pass : pass - 1;
        if (!wl_expect(mem[j * WORDS] == want && mem[j * WORDS + WORDS - 1] == want,
                       "pass %llu, page %llu: page %llu holds %llu/%llu, not %llu",
                       (unsigned long long)pass, (unsigned long long)i, (unsigned long long)j,
                       (unsigned long long)mem[j * WORDS],
                       (unsigned long long)mem[j * WORDS + WORDS - 1], (unsigned long long)want))
          break;
      }
      if (checked++) break;
    }
  }
  wl_finish();
}
