/* Sealed memory (mseal, syscall 462, Linux 6.10+). Inside a PROT_NONE reservation (gaps keep
 * regions apart):
 *   A  8 pages private anonymous rw, data; only pages 2..5 sealed (the VMA splits in three)
 *   B  4 pages private anonymous, data written then mprotect'ed read-only, all sealed
 * On request: A[2..5] and B are single VMAs with "sl" in VmFlags (A's outer parts without), perms
 * rw-p / r--p, data intact; on the sealed ranges munmap, mprotect, mremap and mmap(MAP_FIXED)
 * over them fail with EPERM, and so does MADV_DONTNEED on B (discarding read-only anonymous
 * memory is blocked by the seal); sealed A is still writable; the unsealed head of A can still
 * be unmapped. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#ifndef SYS_mseal
#define SYS_mseal 462
#endif

#define PG WL_PAGE
#define SEED_A 0x5ea1ULL
#define SEED_B 0x5ea2ULL

static void check_vma(const char* what, const char* p, size_t len, const char* perms, bool sealed) {
  struct wl_vma v;
  if (!wl_expect(wl_find_vma(p, &v), "%s: no VMA at %p", what, (void*)p)) return;
  wl_expect(v.start == (unsigned long)p && v.end == (unsigned long)p + len,
            "%s: VMA %lx-%lx, expected %p-%p", what, v.start, v.end, (void*)p, (void*)(p + len));
  wl_expect(strcmp(v.perms, perms) == 0, "%s: perms %s, expected %s", what, v.perms, perms);
  wl_expect(wl_has_vmflag(v.vmflags, "sl") == sealed, "%s: %s (VmFlags:%s)", what,
            sealed ? "not sealed" : "sealed", v.vmflags);
}

/* r: the call's result (-1 = failed), err: its errno. */
static void expect_eperm(long r, int err, const char* what) {
  wl_expect(r == -1 && err == EPERM, "%s: returned %ld (%s), expected EPERM", what, r,
            r == -1 ? strerror(err) : "success");
}

#define EXPECT_EPERM(call, what)   \
  do {                             \
    errno = 0;                     \
    long r_ = (long)(call);        \
    expect_eperm(r_, errno, what); \
  } while (0)

/* Attempts every forbidden operation on a sealed range. */
static void check_sealed_ops(const char* what, char* p, size_t len, char* spare) {
  char msg[128];
  snprintf(msg, sizeof msg, "%s: munmap", what);
  EXPECT_EPERM(munmap(p, PG), msg);
  snprintf(msg, sizeof msg, "%s: mprotect", what);
  EXPECT_EPERM(mprotect(p, len, PROT_READ | PROT_WRITE | PROT_EXEC), msg);
  snprintf(msg, sizeof msg, "%s: mremap (move)", what);
  errno = 0;
  void* m = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, spare);
  expect_eperm(m == MAP_FAILED ? -1L : 0L, errno, msg);
  snprintf(msg, sizeof msg, "%s: mmap(MAP_FIXED) over it", what);
  errno = 0;
  void* o = mmap(p, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  expect_eperm(o == MAP_FAILED ? -1L : 0L, errno, msg);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  /* layout (pages): gap | A (8) | gap | B (4) | gap | spare (4, target of the mremap try) | gap */
  char* res = mmap(NULL, 20 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (res == MAP_FAILED) wl_die("mmap reservation: %m");
  char* a = res + PG;
  char* b = res + 10 * PG;
  char* spare = res + 15 * PG;
  const int rw = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
  if (mmap(a, 8 * PG, rw, flags, -1, 0) != a) wl_die("mmap A: %m");
  if (mmap(b, 4 * PG, rw, flags, -1, 0) != b) wl_die("mmap B: %m");
  if (mmap(spare, 4 * PG, rw, flags, -1, 0) != spare) wl_die("mmap spare: %m");
  wl_fill(a, 8 * PG, SEED_A);
  wl_fill(b, 4 * PG, SEED_B);
  if (mprotect(b, 4 * PG, PROT_READ) != 0) wl_die("mprotect B: %m");
  if (syscall(SYS_mseal, a + 2 * PG, 4 * PG, 0) != 0) {
    if (errno == ENOSYS || errno == EINVAL) wl_die("mseal: %m: kernel lacks mseal (6.10+)");
    wl_die("mseal A: %m");
  }
  if (syscall(SYS_mseal, b, 4 * PG, 0) != 0) wl_die("mseal B: %m");

  wl_ready();
  wl_wait_term();

  check_vma("A head", a, 2 * PG, "rw-p", false);
  check_vma("A sealed", a + 2 * PG, 4 * PG, "rw-p", true);
  check_vma("A tail", a + 6 * PG, 2 * PG, "rw-p", false);
  check_vma("B", b, 4 * PG, "r--p", true);
  long bad = wl_check(a, 8 * PG, SEED_A);
  wl_expect(bad < 0, "A data differs at offset %ld", bad);
  bad = wl_check(b, 4 * PG, SEED_B);
  wl_expect(bad < 0, "B data differs at offset %ld", bad);

  check_sealed_ops("A sealed", a + 2 * PG, 4 * PG, spare);
  check_sealed_ops("B", b, 4 * PG, spare);
  EXPECT_EPERM(madvise(b, 4 * PG, MADV_DONTNEED), "B: madvise(MADV_DONTNEED)");
  bad = wl_check(b, 4 * PG, SEED_B);
  wl_expect(bad < 0, "B data differs after the attempts, at offset %ld", bad);

  /* Sealing does not forbid writing, and the unsealed parts are free. */
  wl_fill(a + 3 * PG, PG, SEED_A + 1);
  wl_expect(wl_check(a + 3 * PG, PG, SEED_A + 1) < 0, "sealed A is not writable");
  wl_expect(munmap(a, 2 * PG) == 0, "munmap of the unsealed head of A: %m");
  check_vma("A sealed (after unmapping the head)", a + 2 * PG, 4 * PG, "rw-p", true);
  wl_finish();
}
