/* memfds: contents, size, offset, seals, names, and mappings.
 *   sealed   MFD_ALLOW_SEALING|MFD_CLOEXEC, 3 pages of data in a 5-page+100-byte file, offset
 *            1000, sealed against shrink and grow
 *   plain    16 pages, mapped MAP_SHARED and written through the mapping, offset 777
 *   maponly  mapped MAP_SHARED, fd closed: only the mapping keeps it alive */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define PG WL_PAGE
#define SEALED_SIZE (5 * PG + 100)

static bool link_is(int fd, const char* want) {
  char path[64], link[PATH_MAX];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) return false;
  link[n] = 0;
  return strcmp(link, want) == 0;
}

static bool maps_has(const void* addr, const char* name) {
  FILE* f = fopen("/proc/self/maps", "re");
  if (!f) return false;
  char line[4096];
  bool ok = false;
  while (fgets(line, sizeof line, f)) {
    unsigned long start;
    if (sscanf(line, "%lx-", &start) == 1 && start == (unsigned long)addr) {
      ok = strstr(line, name) != NULL && strstr(line, " rw-s ") != NULL;
      break;
    }
  }
  fclose(f);
  return ok;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int sealed = memfd_create("crest-wl-sealed", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  int plain = memfd_create("crest-wl-plain", 0);
  int maponly = memfd_create("crest-wl-maponly", MFD_CLOEXEC);
  if (sealed < 0 || plain < 0 || maponly < 0) wl_die("memfd_create: %m");

  char buf[3 * PG];
  wl_fill(buf, sizeof buf, 61);
  if (!wl_write_full(sealed, buf, sizeof buf) || ftruncate(sealed, SEALED_SIZE) != 0) {
    wl_die("fill sealed: %m");
  }
  lseek(sealed, 1000, SEEK_SET);
  if (fcntl(sealed, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
    wl_die("F_ADD_SEALS: %m");
  }

  if (ftruncate(plain, 16 * PG) != 0) wl_die("ftruncate plain: %m");
  char* pm = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, plain, 0);
  if (pm == MAP_FAILED) wl_die("mmap plain: %m");
  wl_fill(pm, 4 * PG, 62);
  lseek(plain, 777, SEEK_SET);

  if (ftruncate(maponly, 4 * PG) != 0) wl_die("ftruncate maponly: %m");
  char* mm = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, maponly, 0);
  if (mm == MAP_FAILED) wl_die("mmap maponly: %m");
  wl_fill(mm, 4 * PG, 63);
  close(maponly);

  wl_ready();
  wl_wait_term();

  struct stat st;
  long long size = fstat(sealed, &st) == 0 ? (long long)st.st_size : -1;
  wl_expect(size == (long long)SEALED_SIZE, "sealed size %lld", size);
  char got[5 * PG + 100];
  if (wl_expect(pread(sealed, got, sizeof got, 0) == (ssize_t)sizeof got, "pread sealed")) {
    wl_expect(wl_check(got, 3 * PG, 61) < 0, "sealed contents differ");
    wl_expect(wl_check_zero(got + 3 * PG, 2 * PG + 100) < 0, "sealed tail not zero");
  }
  wl_expect(lseek(sealed, 0, SEEK_CUR) == 1000, "sealed offset %lld",
            (long long)lseek(sealed, 0, SEEK_CUR));
  wl_expect(fcntl(sealed, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW), "seals 0x%x",
            fcntl(sealed, F_GET_SEALS));
  wl_expect(ftruncate(sealed, 8 * PG) != 0 && errno == EPERM, "growing a GROW-sealed memfd worked");
  wl_expect(fcntl(sealed, F_GETFD) == FD_CLOEXEC, "sealed lost FD_CLOEXEC");
  wl_expect(link_is(sealed, "/memfd:crest-wl-sealed (deleted)"), "sealed has the wrong name");

  size = fstat(plain, &st) == 0 ? (long long)st.st_size : -1;
  wl_expect(size == (long long)(16 * PG), "plain size %lld", size);
  wl_expect(fcntl(plain, F_GET_SEALS) == F_SEAL_SEAL, "plain seals 0x%x",
            fcntl(plain, F_GET_SEALS));
  wl_expect(link_is(plain, "/memfd:crest-wl-plain (deleted)"), "plain has the wrong name");
  wl_expect(lseek(plain, 0, SEEK_CUR) == 777, "plain offset %lld",
            (long long)lseek(plain, 0, SEEK_CUR));
  char pg[PG];
  {
    char ref[4 * PG];
    char all[4 * PG];
    wl_fill(ref, sizeof ref, 62);
    wl_expect(pread(plain, all, sizeof all, 0) == (ssize_t)sizeof all &&
                  memcmp(all, ref, sizeof ref) == 0 && memcmp(pm, ref, sizeof ref) == 0,
              "plain contents differ (fd or mapping)");
  }
  wl_fill(pm + 5 * PG, PG, 64);
  wl_expect(pread(plain, pg, PG, 5 * PG) == PG && wl_check(pg, PG, 64) < 0,
            "a write through the mapping is not in the memfd");
  wl_fill(pg, PG, 65);
  wl_expect(pwrite(plain, pg, PG, 6 * PG) == PG && wl_check(pm + 6 * PG, PG, 65) < 0,
            "a write to the memfd is not seen through the mapping");

  wl_expect(maps_has(mm, "/memfd:crest-wl-maponly (deleted)"), "maponly mapping lost its name");
  wl_expect(wl_check(mm, 4 * PG, 63) < 0, "maponly contents differ");
  wl_finish();
}
