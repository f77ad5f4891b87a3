/* Shared file mappings whose write permission depends on how the file was opened:
 *   rw.dat  (4 pages) opened O_RDWR, mapped MAP_SHARED PROT_READ, fd closed: the mapping may
 *           later be made writable (VmFlags has mw)
 *   ro.dat  (4 pages, mode 0644) opened O_RDONLY, mapped MAP_SHARED PROT_READ, fd closed: the
 *           mapping can never become writable (no mw), even though root could open it O_RDWR
 * On request: both are r--s mappings of their files with the file's data; mw is present on the
 * first and absent on the second; mprotect(PROT_READ|PROT_WRITE) of the first succeeds and a
 * write through it reaches the file (pread from a new fd); mprotect(PROT_WRITE) of the second
 * fails with EACCES and the file is unchanged. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define PG WL_PAGE
#define NPAGES 4
#define LEN (NPAGES * PG)
#define SEED_RW 0x3a1ULL
#define SEED_RO 0x3a2ULL
#define SEED_NEW 0x3a3ULL

static void create_file(const char* name, uint64_t seed) {
  char* buf = malloc(LEN);
  if (!buf) wl_die("malloc");
  wl_fill(buf, LEN, seed);
  int fd = open(wl_path(name), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || !wl_write_full(fd, buf, LEN)) wl_die("create %s: %m", name);
  close(fd);
  free(buf);
}

static char* map_file(const char* name, int oflags) {
  int fd = open(wl_path(name), oflags | O_CLOEXEC);
  if (fd < 0) wl_die("open %s: %m", name);
  char* p = mmap(NULL, LEN, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) wl_die("mmap %s: %m", name);
  close(fd);
  return p;
}

static void check_map(const char* p, const char* name, bool may_write) {
  struct wl_vma v;
  if (!wl_expect(wl_find_vma(p, &v), "%s: no mapping at %p", name, (void*)p)) return;
  wl_expect(v.start == (unsigned long)p && v.end == (unsigned long)p + LEN,
            "%s: VMA %lx-%lx, expected %p-%p", name, v.start, v.end, (void*)p, (void*)(p + LEN));
  wl_expect(strcmp(v.perms, "r--s") == 0, "%s: perms %s, expected r--s", name, v.perms);
  size_t nl = strlen(v.name), sl = strlen(name);
  wl_expect(nl > sl && strcmp(v.name + nl - sl, name) == 0 && v.name[nl - sl - 1] == '/',
            "%s: mapping names '%s'", name, v.name);
  wl_expect(wl_has_vmflag(v.vmflags, "mw") == may_write, "%s: VmFlags %s mw (may write):%s", name,
            may_write ? "lack" : "have", v.vmflags);
}

/* Page `page` of file `name` holds the wl_fill(seed) pattern of a LEN buffer at that page. */
static bool file_page_is(const char* name, int page, uint64_t seed, bool whole_pattern) {
  int fd = open(wl_path(name), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  static char buf[PG], ref[LEN];
  bool ok = pread(fd, buf, PG, (off_t)page * PG) == PG;
  close(fd);
  if (!ok) return false;
  if (whole_pattern) return wl_check(buf, PG, seed) < 0;
  wl_fill(ref, LEN, seed);
  return memcmp(buf, ref + (size_t)page * PG, PG) == 0;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  create_file("rw.dat", SEED_RW);
  create_file("ro.dat", SEED_RO);
  char* rw = map_file("rw.dat", O_RDWR);
  char* ro = map_file("ro.dat", O_RDONLY);

  wl_ready();
  wl_wait_term();

  check_map(rw, "rw.dat", true);
  check_map(ro, "ro.dat", false);
  long bad = wl_check(rw, LEN, SEED_RW);
  wl_expect(bad < 0, "rw.dat mapping differs at offset %ld", bad);
  bad = wl_check(ro, LEN, SEED_RO);
  wl_expect(bad < 0, "ro.dat mapping differs at offset %ld", bad);

  if (wl_expect(mprotect(rw, LEN, PROT_READ | PROT_WRITE) == 0,
                "mprotect(rw.dat mapping, PROT_READ|PROT_WRITE): %m")) {
    wl_fill(rw + 2 * PG, PG, SEED_NEW);
    wl_expect(file_page_is("rw.dat", 2, SEED_NEW, true),
              "a write through the rw.dat mapping did not reach the file");
    wl_expect(file_page_is("rw.dat", 1, SEED_RW, false), "rw.dat page 1 changed in the file");
  }
  errno = 0;
  int r = mprotect(ro, LEN, PROT_WRITE);
  wl_expect(r == -1 && errno == EACCES,
            "mprotect(ro.dat mapping, PROT_WRITE) returned %d (%s), expected EACCES", r,
            r == 0 ? "success: the read-only-opened mapping became writable" : strerror(errno));
  for (int i = 0; i < NPAGES; i++) {
    wl_expect(file_page_is("ro.dat", i, SEED_RO, false), "ro.dat page %d changed in the file", i);
  }
  wl_finish();
}
