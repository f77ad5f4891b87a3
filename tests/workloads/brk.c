/* The program break: a 16 MiB region grown with sbrk and many small malloc blocks on the main
 * arena. After restore the break is where it was (the kernel's view, not glibc's cached one),
 * the old heap is intact, and the heap can grow and shrink again: sbrk by 64 MiB, thousands of
 * small mallocs, realloc of the old blocks. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define REGION (16UL << 20)
#define GROW (64UL << 20)
#define NBLOCKS 1000
#define NNEW 8000

static char* g_region;
static char* g_blocks[NBLOCKS];
static size_t g_sizes[NBLOCKS];
static uintptr_t g_brk;

static uintptr_t kernel_brk(void) { return (uintptr_t)syscall(SYS_brk, 0); }

int main(int argc, char** argv) {
  wl_init(argc, argv);
  g_region = sbrk((intptr_t)REGION);
  if (g_region == (void*)-1) wl_die("sbrk: %m");
  wl_fill(g_region, REGION, 81);
  for (int i = 0; i < NBLOCKS; i++) {
    g_sizes[i] = 100 + (size_t)(wl_mix64((uint64_t)i) % 1900);
    g_blocks[i] = malloc(g_sizes[i]);
    if (!g_blocks[i]) wl_die("malloc");
    wl_fill(g_blocks[i], g_sizes[i], 1000 + (uint64_t)i);
  }
  g_brk = kernel_brk();

  wl_ready();
  wl_wait_term();

  wl_expect(kernel_brk() == g_brk, "break at %#lx, expected %#lx", (unsigned long)kernel_brk(),
            (unsigned long)g_brk);
  wl_expect(sbrk(0) == (void*)g_brk, "glibc's break %p disagrees with %#lx", sbrk(0),
            (unsigned long)g_brk);
  long bad = wl_check(g_region, REGION, 81);
  wl_expect(bad < 0, "sbrk region byte %ld differs", bad);
  for (int i = 0; i < NBLOCKS; i++) {
    if (!wl_expect(wl_check(g_blocks[i], g_sizes[i], 1000 + (uint64_t)i) < 0,
                   "malloc block %d differs", i))
      break;
  }

  /* Grow the break directly. */
  char* grown = sbrk((intptr_t)GROW);
  if (wl_expect(grown != (void*)-1, "sbrk(+64 MiB) after restore: %m")) {
    wl_expect((uintptr_t)grown == g_brk, "sbrk grew from %p, expected %#lx", (void*)grown,
              (unsigned long)g_brk);
    wl_expect(wl_check_zero(grown, GROW) < 0, "fresh break memory is not zero");
    wl_fill(grown, GROW, 82);
    wl_expect(wl_check(grown, GROW, 82) < 0, "grown break memory does not hold data");
    wl_expect(kernel_brk() == g_brk + GROW, "break did not move");
    wl_expect(sbrk(-(intptr_t)GROW) != (void*)-1 && kernel_brk() == g_brk,
              "shrinking the break failed");
  }

  /* Grow through malloc (main arena) and realloc the old blocks. */
  static char* fresh[NNEW];
  for (int i = 0; i < NNEW; i++) {
    fresh[i] = malloc(4000);
    if (!wl_expect(fresh[i] != NULL, "malloc %d after restore failed", i)) break;
    memset(fresh[i], i & 0xff, 4000);
  }
  wl_expect(kernel_brk() > g_brk, "malloc of 32 MiB did not grow the break");
  for (int i = 0; i < NNEW && fresh[i]; i++) {
    if (!wl_expect(fresh[i][0] == (char)(i & 0xff) && fresh[i][3999] == (char)(i & 0xff),
                   "new block %d clobbered", i))
      break;
  }
  for (int i = 0; i < NBLOCKS; i += 7) {
    char* p = realloc(g_blocks[i], g_sizes[i] * 3);
    if (!wl_expect(p != NULL, "realloc failed")) break;
    wl_expect(wl_check(p, g_sizes[i], 1000 + (uint64_t)i) < 0, "realloc lost block %d", i);
    g_blocks[i] = p;
  }
  for (int i = 0; i < NNEW; i++) free(fresh[i]);
  wl_finish();
}
