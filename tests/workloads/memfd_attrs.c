/* memfd inode attributes and seals:
 *   A  no sealing; fchmod 0600, fchown 1234:5678; 5000 bytes
 *   B  MFD_ALLOW_SEALING; 2 pages; sealed F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL,
 *      then mapped MAP_SHARED PROT_READ
 *   C  MFD_ALLOW_SEALING; 2 pages mapped MAP_SHARED PROT_READ|PROT_WRITE and written through the
 *      mapping, then sealed F_SEAL_FUTURE_WRITE: the existing mapping stays writable
 *   D  created without MFD_ALLOW_SEALING: F_GET_SEALS says F_SEAL_SEAL
 * On request: mode, uid and gid of all four as at setup (A: 0600 1234:5678); F_GET_SEALS
 * exactly as set; for B write/pwrite/ftruncate (shrink and grow)/F_ADD_SEALS fail with EPERM, a
 * new writable shared mapping fails with EPERM, mprotect(PROT_WRITE) of the existing mapping
 * fails; for C write() and a new writable shared mapping fail with EPERM while the old mapping
 * is still rw-s and a store through it reads back with pread; D refuses F_ADD_SEALS (EPERM) but
 * takes writes; A takes writes; all contents (fds and mappings) as written. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

#define PG WL_PAGE
#define A_LEN 5000
#define B_LEN (2 * PG)
#define C_LEN (2 * PG)
#define D_LEN 3000
#define ALL_B (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

struct owner {
  mode_t mode;
  uid_t uid;
  gid_t gid;
};

static struct owner owner_of(int fd, const char* name) {
  struct stat st;
  if (fstat(fd, &st) != 0) wl_die("fstat %s: %m", name);
  struct owner o = {st.st_mode, st.st_uid, st.st_gid};
  return o;
}

static void check_owner(int fd, const struct owner* want, const char* name) {
  struct stat st;
  if (!wl_expect(fstat(fd, &st) == 0, "fstat %s: %m", name)) return;
  wl_expect(st.st_mode == want->mode && st.st_uid == want->uid && st.st_gid == want->gid,
            "%s: mode 0%o owner %u:%u, expected 0%o %u:%u", name, (unsigned)st.st_mode,
            (unsigned)st.st_uid, (unsigned)st.st_gid, (unsigned)want->mode, (unsigned)want->uid,
            (unsigned)want->gid);
}

static void check_seals(int fd, int want, const char* name) {
  int s = fcntl(fd, F_GET_SEALS);
  wl_expect(s == want, "%s: seals 0x%x, expected 0x%x", name, s, want);
}

static void check_contents(int fd, size_t len, uint64_t seed, const char* name) {
  static char buf[4 * PG];
  struct stat st;
  long long size = fstat(fd, &st) == 0 ? (long long)st.st_size : -1;
  wl_expect(size == (long long)len, "%s: size %lld, expected %zu", name, size, len);
  if (wl_expect(pread(fd, buf, len, 0) == (ssize_t)len, "pread %s: %m", name)) {
    long bad = wl_check(buf, len, seed);
    wl_expect(bad < 0, "%s: byte %ld differs", name, bad);
  }
}

static void expect_eperm(int rc, const char* what) {
  wl_expect(rc < 0 && errno == EPERM, "%s: %s, expected EPERM", what,
            rc >= 0 ? "allowed" : strerror(errno));
}

static bool maps_perms(const void* addr, const char* perms) {
  FILE* f = fopen("/proc/self/maps", "re");
  if (!f) return false;
  char line[512];
  bool ok = false;
  while (fgets(line, sizeof line, f)) {
    unsigned long start;
    char p[8];
    if (sscanf(line, "%lx-%*x %7s", &start, p) == 2 && start == (unsigned long)addr) {
      ok = strcmp(p, perms) == 0;
      break;
    }
  }
  fclose(f);
  return ok;
}

static int new_memfd(const char* name, unsigned flags) {
  int fd = memfd_create(name, flags);
  if (fd < 0) wl_die("memfd_create %s: %m", name);
  return fd;
}

static void fill_fd(int fd, size_t len, uint64_t seed, const char* name) {
  static char buf[4 * PG];
  wl_fill(buf, len, seed);
  if (!wl_write_full(fd, buf, len)) wl_die("write %s: %m", name);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int a = new_memfd("crest-wl-a", MFD_CLOEXEC);
  fill_fd(a, A_LEN, 141, "A");
  if (fchmod(a, 0600) != 0 || fchown(a, 1234, 5678) != 0) wl_die("fchmod/fchown A: %m");

  int b = new_memfd("crest-wl-b", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  fill_fd(b, B_LEN, 142, "B");
  if (fcntl(b, F_ADD_SEALS, ALL_B) != 0) wl_die("F_ADD_SEALS B: %m");
  char* bm = mmap(NULL, B_LEN, PROT_READ, MAP_SHARED, b, 0);
  if (bm == MAP_FAILED) wl_die("mmap B: %m");

  int c = new_memfd("crest-wl-c", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  if (ftruncate(c, C_LEN) != 0) wl_die("ftruncate C: %m");
  char* cm = mmap(NULL, C_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, c, 0);
  if (cm == MAP_FAILED) wl_die("mmap C: %m");
  wl_fill(cm, C_LEN, 143);
  if (fcntl(c, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) != 0) wl_die("F_ADD_SEALS C: %m");

  int d = new_memfd("crest-wl-d", MFD_CLOEXEC);
  fill_fd(d, D_LEN, 144, "D");

  struct owner oa = {S_IFREG | 0600, 1234, 5678};
  struct owner ob = owner_of(b, "B"), oc = owner_of(c, "C"), od = owner_of(d, "D");
  if (owner_of(a, "A").mode != oa.mode) wl_die("A: fchmod did not take");

  wl_ready();
  wl_wait_term();

  check_owner(a, &oa, "A");
  check_owner(b, &ob, "B");
  check_owner(c, &oc, "C");
  check_owner(d, &od, "D");
  check_seals(a, F_SEAL_SEAL, "A");
  check_seals(b, ALL_B, "B");
  check_seals(c, F_SEAL_FUTURE_WRITE, "C");
  check_seals(d, F_SEAL_SEAL, "D");

  check_contents(a, A_LEN, 141, "A");
  check_contents(b, B_LEN, 142, "B");
  check_contents(c, C_LEN, 143, "C");
  check_contents(d, D_LEN, 144, "D");
  wl_expect(wl_check(bm, B_LEN, 142) < 0, "B's mapping differs");

  /* B: sealed shut. */
  expect_eperm((int)write(b, "x", 1), "write to B");
  expect_eperm((int)pwrite(b, "x", 1, 0), "pwrite to B");
  expect_eperm(ftruncate(b, PG), "shrinking B");
  expect_eperm(ftruncate(b, 4 * PG), "growing B");
  expect_eperm(fcntl(b, F_ADD_SEALS, F_SEAL_FUTURE_WRITE), "adding a seal to B");
  void* bw = mmap(NULL, B_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
  expect_eperm(bw == MAP_FAILED ? -1 : 0, "a writable shared mapping of B");
  if (bw != MAP_FAILED) munmap(bw, B_LEN);
  int rc = mprotect(bm, B_LEN, PROT_READ | PROT_WRITE);
  wl_expect(rc != 0, "mprotect(PROT_WRITE) of B's read-only shared mapping worked");
  wl_expect(maps_perms(bm, "r--s"), "B's mapping is not r--s");

  /* C: no new writes, but the old writable mapping still writes. */
  expect_eperm((int)write(c, "x", 1), "write to C");
  void* cw = mmap(NULL, C_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, c, 0);
  expect_eperm(cw == MAP_FAILED ? -1 : 0, "a new writable shared mapping of C");
  if (cw != MAP_FAILED) munmap(cw, C_LEN);
  if (wl_expect(maps_perms(cm, "rw-s"), "C's existing mapping is not rw-s any more")) {
    memcpy(cm + PG + 10, "THROUGH-THE-MAP", 15);
    char back[15];
    wl_expect(pread(c, back, 15, PG + 10) == 15 && memcmp(back, "THROUGH-THE-MAP", 15) == 0,
              "a store through C's mapping does not read back through the fd");
  }

  /* D: never sealable, still writable. */
  expect_eperm(fcntl(d, F_ADD_SEALS, F_SEAL_GROW), "adding a seal to D");
  wl_expect(pwrite(d, "dd", 2, D_LEN) == 2, "pwrite to D: %m");
  wl_expect(pwrite(a, "aa", 2, A_LEN) == 2, "pwrite to A: %m");
  wl_finish();
}
