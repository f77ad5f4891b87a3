/* File mappings and mapping attributes:
 *   priv.dat    8 pages MAP_PRIVATE rw, pages 1 and 3 modified (must not reach the file), page 5
 *               only read, page 7 never touched; the fd is closed (the mapping alone names the
 *               file)
 *   shared.dat  6 pages MAP_SHARED rw, page 2 modified (must be in the file)
 *   offset.dat  pages 2..5 of an 8-page file, MAP_PRIVATE read-only (file offset preserved)
 *   anonymous   4 pages rw with page 1 PROT_NONE in the middle (a split VMA)
 * Prot, offsets and names are checked in /proc/self/maps; contents through the mappings and
 * through fresh fds; after the request new writes go to the file (shared) or not (private). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define PG WL_PAGE

static int create_file(const char* name, int pages, uint64_t seed) {
  char* buf = malloc((size_t)pages * PG);
  wl_fill(buf, (size_t)pages * PG, seed);
  int fd = open(wl_path(name), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || !wl_write_full(fd, buf, (size_t)pages * PG)) {
    wl_die("create %s: %s", name, strerror(errno));
  }
  free(buf);
  return fd;
}

static void* must_map(size_t len, int prot, int flags, int fd, off_t off) {
  void* p = mmap(NULL, len, prot, flags, fd, off);
  if (p == MAP_FAILED) wl_die("mmap: %m");
  return p;
}

/* Page `page` of a file made by create_file(seed) is bytes [page*PG, page*PG+PG) of the pattern;
 * the pattern is position-based, so compare against a freshly generated copy. */
static bool page_is_file(const char* p, int page, uint64_t seed) {
  static char ref[8 * PG];
  wl_fill(ref, sizeof ref, seed);
  return memcmp(p, ref + (size_t)page * PG, PG) == 0;
}

static bool file_page_is(const char* name, int page, uint64_t seed, int as_page) {
  int fd = open(wl_path(name), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[PG];
  bool ok = pread(fd, buf, PG, (off_t)page * PG) == PG && page_is_file(buf, as_page, seed);
  close(fd);
  return ok;
}

static bool file_page_pattern(const char* name, int page, uint64_t seed) {
  int fd = open(wl_path(name), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[PG];
  bool ok = pread(fd, buf, PG, (off_t)page * PG) == PG && wl_check(buf, PG, seed) < 0;
  close(fd);
  return ok;
}

/* Finds the /proc/self/maps line starting at addr. */
static bool maps_line(const void* addr, char* perms, unsigned long* off, char* name, size_t nlen) {
  FILE* f = fopen("/proc/self/maps", "re");
  if (!f) return false;
  char line[4096];
  bool found = false;
  while (fgets(line, sizeof line, f)) {
    unsigned long start, end, offset;
    char p[5];
    int pos = 0;
    if (sscanf(line, "%lx-%lx %4s %lx %*s %*s%n", &start, &end, p, &offset, &pos) < 4) continue;
    if (start != (unsigned long)addr) continue;
    memcpy(perms, p, 5);
    *off = offset;
    const char* n = line + pos;
    while (*n == ' ') n++;
    snprintf(name, nlen, "%s", n);
    name[strcspn(name, "\n")] = 0;
    found = true;
    break;
  }
  fclose(f);
  return found;
}

static void expect_map(const void* addr, const char* perms, unsigned long off, const char* suffix,
                       const char* what) {
  char p[5] = "", name[4096] = "";
  unsigned long o = 0;
  if (!wl_expect(maps_line(addr, p, &o, name, sizeof name), "%s: no mapping at %p", what, addr))
    return;
  wl_expect(strcmp(p, perms) == 0, "%s: perms %s, expected %s", what, p, perms);
  wl_expect(o == off, "%s: offset 0x%lx, expected 0x%lx", what, o, off);
  size_t nl = strlen(name), sl = strlen(suffix);
  wl_expect(nl >= sl && strcmp(name + nl - sl, suffix) == 0, "%s: maps name '%s', expected '*%s'",
            what, name, suffix);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  int fpriv = create_file("priv.dat", 8, 41);
  char* priv = must_map(8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fpriv, 0);
  close(fpriv);
  wl_fill(priv + 1 * PG, PG, 42);
  wl_fill(priv + 3 * PG, PG, 43);
  volatile char sink = priv[5 * PG];
  (void)sink;

  int fshared = create_file("shared.dat", 6, 44);
  char* shared = must_map(6 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fshared, 0);
  wl_fill(shared + 2 * PG, PG, 45);

  int foff = create_file("offset.dat", 8, 46);
  char* offmap = must_map(4 * PG, PROT_READ, MAP_PRIVATE, foff, 2 * PG);
  close(foff);
  sink = offmap[0];

  char* anon = must_map(4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  wl_fill(anon, 4 * PG, 48);
  if (mprotect(anon + PG, PG, PROT_NONE) != 0) wl_die("mprotect: %m");

  wl_ready();
  wl_wait_term();

  expect_map(priv, "rw-p", 0, "/priv.dat", "private mapping");
  expect_map(shared, "rw-s", 0, "/shared.dat", "shared mapping");
  expect_map(offmap, "r--p", 2 * PG, "/offset.dat", "offset mapping");
  expect_map(anon, "rw-p", 0, "", "anonymous head");
  expect_map(anon + PG, "---p", 0, "", "PROT_NONE page");
  expect_map(anon + 2 * PG, "rw-p", 0, "", "anonymous tail");

  /* Private: modified pages hold our data, the others the file's, the file is untouched. */
  for (int pg = 0; pg < 8; pg++) {
    bool ok;
    if (pg == 1) {
      ok = wl_check(priv + PG, PG, 42) < 0;
    } else if (pg == 3) {
      ok = wl_check(priv + 3 * PG, PG, 43) < 0;
    } else {
      ok = page_is_file(priv + (size_t)pg * PG, pg, 41);
    }
    wl_expect(ok, "private mapping page %d has wrong contents", pg);
    wl_expect(file_page_is("priv.dat", pg, 41, pg), "priv.dat page %d changed in the file", pg);
  }
  wl_fill(priv, PG, 49);
  wl_expect(file_page_is("priv.dat", 0, 41, 0), "a private write after restore reached the file");

  /* Shared: the modified page is in the file; a new write goes there too. */
  for (int pg = 0; pg < 6; pg++) {
    bool ok = pg == 2 ? wl_check(shared + 2 * PG, PG, 45) < 0
                      : page_is_file(shared + (size_t)pg * PG, pg, 44);
    wl_expect(ok, "shared mapping page %d has wrong contents", pg);
  }
  wl_expect(file_page_pattern("shared.dat", 2, 45), "shared.dat page 2 lacks the mapped write");
  wl_fill(shared + 4 * PG, PG, 47);
  wl_expect(file_page_pattern("shared.dat", 4, 47),
            "a shared write after restore did not reach the file");
  char direct[PG];
  wl_fill(direct, PG, 50);
  wl_expect(pwrite(fshared, direct, PG, 5 * PG) == PG && wl_check(shared + 5 * PG, PG, 50) < 0,
            "a write to shared.dat is not seen through the mapping");

  for (int pg = 0; pg < 4; pg++) {
    wl_expect(page_is_file(offmap + (size_t)pg * PG, pg + 2, 46),
              "offset mapping page %d is not file page %d", pg, pg + 2);
  }
  wl_expect(wl_check(anon, PG, 48) < 0, "anonymous page 0 differs");
  {
    char ref[4 * PG];
    wl_fill(ref, sizeof ref, 48);
    wl_expect(memcmp(anon + 2 * PG, ref + 2 * PG, 2 * PG) == 0, "anonymous pages 2-3 differ");
  }
  wl_finish();
}
