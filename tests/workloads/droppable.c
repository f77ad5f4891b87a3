/* MAP_DROPPABLE memory (Linux 6.11+): a 16-page MAP_DROPPABLE|MAP_ANONYMOUS read-write region
 * filled with a data pattern. The kernel may drop (zero) such pages under memory pressure, so
 * each page must read either as its pattern or as all zeros.
 * On request: the region is still one VMA with exactly its bounds and rw-p, its smaps VmFlags
 * contain "dp" (and the same "wf"/"nr"/"dd" the kernel set at creation: droppable implies
 * wipe-on-fork, no reservation and no core dump), every page is its pattern or zero (pages dropped
 * are noted), the region is writable, and a child forked now sees it as zeros (wipe on fork). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif

#define PG WL_PAGE
#define NPAGES 16
#define LEN (NPAGES * PG)
#define SEED 0xd20bULL

/* Number of pages that read as zero; -1 (and *bad_page) if a page is neither data nor zero. */
static int check_pages(const char* p, int* bad_page) {
  static char ref[LEN];
  wl_fill(ref, LEN, SEED);
  int zero = 0;
  for (int i = 0; i < NPAGES; i++) {
    const char* pg = p + (size_t)i * PG;
    if (memcmp(pg, ref + (size_t)i * PG, PG) == 0) continue;
    if (wl_check_zero(pg, PG) < 0) {
      zero++;
      continue;
    }
    *bad_page = i;
    return -1;
  }
  return zero;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  char* p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    if (errno == EINVAL)
      wl_die("mmap(MAP_DROPPABLE): EINVAL: this kernel lacks MAP_DROPPABLE (6.11+)");
    wl_die("mmap(MAP_DROPPABLE): %m");
  }
  wl_fill(p, LEN, SEED);

  struct wl_vma v;
  if (!wl_find_vma(p, &v)) wl_die("droppable region not in smaps");
  if (!wl_has_vmflag(v.vmflags, "dp")) wl_die("no dp in VmFlags at setup:%s", v.vmflags);
  static const char* const kImplied[] = {"wf", "nr", "dd"};
  bool want[3];
  for (int i = 0; i < 3; i++) want[i] = wl_has_vmflag(v.vmflags, kImplied[i]);
  bool want_wf = want[0];
  wl_note("VmFlags at setup:%s", v.vmflags);

  wl_ready();
  wl_wait_term();

  if (wl_expect(wl_find_vma(p, &v), "no mapping at %p", (void*)p)) {
    wl_expect(v.start == (unsigned long)p && v.end == (unsigned long)p + LEN,
              "VMA is %lx-%lx, expected %p-%p", v.start, v.end, (void*)p, (void*)(p + LEN));
    wl_expect(strcmp(v.perms, "rw-p") == 0, "perms %s, expected rw-p", v.perms);
    wl_expect(wl_has_vmflag(v.vmflags, "dp"), "VmFlags lack dp:%s", v.vmflags);
    for (int i = 0; i < 3; i++) {
      wl_expect(wl_has_vmflag(v.vmflags, kImplied[i]) == want[i], "%s %s (VmFlags:%s)", kImplied[i],
                want[i] ? "lost" : "appeared", v.vmflags);
    }
  }
  int bad = -1;
  int zero = check_pages(p, &bad);
  if (wl_expect(zero >= 0, "page %d is neither its data nor zero", bad) && zero > 0) {
    wl_note("%d of %d pages were dropped (read as zero)", zero, NPAGES);
  }

  wl_fill(p, PG, SEED + 1);
  wl_expect(wl_check(p, PG, SEED + 1) < 0, "region is not writable");
  wl_fill(p, PG, SEED); /* back to the pattern for the child's view of "non-zero" */

  if (want_wf) {
    pid_t child = wl_fork("forked");
    if (child == 0) {
      long nz = wl_check_zero(p, LEN);
      wl_expect(nz < 0, "droppable region not wiped in a forked child (offset %ld)", nz);
      wl_finish();
    }
    wl_reap(child, "child forked at check time");
  }
  wl_finish();
}
