/* Memory in swap. 16 MiB of private anonymous memory and 1 MiB of copy-on-write copies of a
 * private file mapping, each page with its own pattern, are pushed out to swap
 * (MADV_PAGEOUT), and pushed out again every 20 ms while the job waits, so that every checkpoint
 * finds pages in swap, not present in memory: they hold the job's data as much as present pages
 * do. A 4-page hole in the middle of the anonymous region is never touched. On request: every
 * page holds its pattern and the hole is still a hole (not in memory, reads as zeros). Without
 * an active swap area MADV_PAGEOUT leaves anonymous pages where they are; the check is the same
 * (the e2e test that runs it turns a swap file on and checks VmSwap itself). */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define ANON_PAGES 4096UL
#define HOLE_AT 2048UL
#define HOLE_PAGES 4UL
#define FILE_PAGES 256UL
#define WORDS (WL_PAGE / sizeof(uint64_t))

static uint64_t pattern(uint64_t region, uint64_t page, uint64_t word) {
  return (region << 56) ^ (page * 0x9E3779B97F4A7C15ull) ^ (word * 0xBF58476D1CE4E5B9ull) ^ 0x5a;
}

static void fill(volatile uint64_t* m, uint64_t region, uint64_t pages, uint64_t skip_at, uint64_t skip) {
  for (uint64_t p = 0; p < pages; p++) {
    if (p >= skip_at && p < skip_at + skip) continue;
    for (uint64_t w = 0; w < WORDS; w++) m[p * WORDS + w] = pattern(region, p, w);
  }
}

static int check(volatile uint64_t* m, uint64_t region, uint64_t pages, uint64_t skip_at, uint64_t skip,
                 const char* what) {
  for (uint64_t p = 0; p < pages; p++) {
    int hole = p >= skip_at && p < skip_at + skip;
    for (uint64_t w = 0; w < WORDS; w++) {
      uint64_t want = hole ? 0 : pattern(region, p, w);
      if (!wl_expect(m[p * WORDS + w] == want, "%s page %llu word %llu: %#llx, not %#llx", what,
                     (unsigned long long)p, (unsigned long long)w,
                     (unsigned long long)m[p * WORDS + w], (unsigned long long)want))
        return 0;
    }
  }
  return 1;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  volatile uint64_t* anon = mmap(NULL, ANON_PAGES * WL_PAGE, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (anon == MAP_FAILED) wl_die("mmap: %m");
  fill(anon, 1, ANON_PAGES, HOLE_AT, HOLE_PAGES);

  /* A file of zeros mapped private: every page written is the job's own copy. */
  int fd = open(wl_path("swapped.data"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ftruncate(fd, FILE_PAGES * WL_PAGE) != 0) wl_die("swapped.data: %m");
  volatile uint64_t* file = mmap(NULL, FILE_PAGES * WL_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (file == MAP_FAILED) wl_die("mmap of swapped.data: %m");
  close(fd);
  fill(file, 2, FILE_PAGES, 0, 0);

  const struct timespec tick = {0, 20 * 1000 * 1000};
  madvise((void*)anon, ANON_PAGES * WL_PAGE, 21 /* MADV_PAGEOUT */);
  madvise((void*)file, FILE_PAGES * WL_PAGE, 21);
  wl_ready();
  while (!wl_term) {
    madvise((void*)anon, ANON_PAGES * WL_PAGE, 21);
    madvise((void*)file, FILE_PAGES * WL_PAGE, 21);
    nanosleep(&tick, NULL);
  }
  unsigned char vec[HOLE_PAGES];
  if (wl_expect(mincore((void*)(anon + HOLE_AT * WORDS), HOLE_PAGES * WL_PAGE, vec) == 0, "mincore: %m"))
    for (unsigned i = 0; i < HOLE_PAGES; i++)
      wl_expect(!(vec[i] & 1), "page %lu of the hole is in memory", HOLE_AT + i);
  check(anon, 1, ANON_PAGES, HOLE_AT, HOLE_PAGES, "anonymous");
  check(file, 2, FILE_PAGES, 0, 0, "file copy");
  wl_finish();
}
