/* A parent holding 512 MiB of (incompressible) data that forked 3 children which only read it:
 * the pages are shared copy-on-write by four processes. A checkpoint must store them once and a
 * restore must share them again (the harness checks the image size and the tree's memory); the
 * workload itself checks that every process still sees the right bytes. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "workload.h"

#define PG WL_PAGE
#define TOTAL (512UL << 20)
#define NPAGES (TOTAL / PG)
#define NCHILDREN 3

static char* g_mem;

static void make_page(size_t page, uint64_t* w) {
  uint64_t x = wl_mix64(page ^ 0x51200000ULL) | 1;
  for (size_t i = 0; i < PG / sizeof *w; i++) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w[i] = x * 0x2545f4914f6cdd1dULL;
  }
}

static size_t count_bad_pages(void) {
  static uint64_t ref[PG / sizeof(uint64_t)];
  size_t bad = 0;
  for (size_t page = 0; page < NPAGES; page++) {
    make_page(page, ref);
    if (memcmp(g_mem + page * PG, ref, PG) != 0) bad++;
  }
  return bad;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  g_mem = mmap(NULL, TOTAL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (g_mem == MAP_FAILED) wl_die("mmap: %m");
  for (size_t page = 0; page < NPAGES; page++) make_page(page, (uint64_t*)(g_mem + page * PG));

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t kids[NCHILDREN];
  for (int i = 0; i < NCHILDREN; i++) {
    kids[i] = wl_fork(i == 0 ? "reader0" : i == 1 ? "reader1" : "reader2");
    if (kids[i] == 0) {
      /* Read everything once (reading never unshares a page), then wait. */
      size_t bad = count_bad_pages();
      wl_expect(bad == 0, "%zu pages differ at setup", bad);
      wl_sync_post(&sync, NULL, 0);
      wl_wait_term();
      bad = count_bad_pages();
      wl_expect(bad == 0, "%zu of %lu pages differ", bad, (unsigned long)NPAGES);
      wl_finish();
    }
  }
  if (!wl_sync_wait(&sync, NCHILDREN, NULL, 0)) wl_die("a reader died during setup");

  wl_ready();
  wl_wait_term();

  for (int i = 0; i < NCHILDREN; i++) kill(kids[i], SIGTERM);
  size_t bad = count_bad_pages();
  wl_expect(bad == 0, "parent: %zu of %lu pages differ", bad, (unsigned long)NPAGES);
  for (int i = 0; i < NCHILDREN; i++) wl_reap(kids[i], "reader");
  wl_finish();
}
