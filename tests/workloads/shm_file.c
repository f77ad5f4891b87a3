/* A named file on tmpfs mapped shared, as POSIX shared memory and Open MPI's vader segments are:
 * /dev/shm/crest-wl-shm-<hash of DIR>, 4 MiB, mapped by the parent and its child after the
 * descriptor that made it was closed (the parent keeps a second one, at offset 8192). The parent
 * wrote the first MiB, the child the third, the rest never touched. After the request: the
 * contents are as written; the file at the path is the object both map and the parent's
 * descriptor refers to (a pwrite through it shows in the mapping, and the inode matches); each
 * side writes a page the other must see. crest saves the file's contents and makes it again at
 * restore, so the workload holds whether or not the file is still there. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define PG WL_PAGE
#define NPAGES 1024

static char* g_shm;
static char g_path[128];

static void check_layout(const char* who) {
  wl_expect(wl_check(g_shm, 256 * PG, 61) < 0, "%s: parent's pages differ", who);
  wl_expect(wl_check(g_shm + 512 * PG, 256 * PG, 62) < 0, "%s: child's pages differ", who);
  wl_expect(wl_check_zero(g_shm + 256 * PG, 44 * PG) < 0 &&
                wl_check_zero(g_shm + 302 * PG, 210 * PG) < 0 &&
                wl_check_zero(g_shm + 768 * PG, 32 * PG) < 0 &&
                wl_check_zero(g_shm + 801 * PG, 223 * PG) < 0,
            "%s: untouched pages are not zero", who);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  uint64_t h = 1469598103934665603ull;
  for (const char* c = wl_dir(); *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
  snprintf(g_path, sizeof g_path, "/dev/shm/crest-wl-shm-%016llx", (unsigned long long)h);
  unlink(g_path);
  int fd = open(g_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0) wl_die("open %s: %m", g_path);
  if (ftruncate(fd, NPAGES * PG) != 0) wl_die("ftruncate: %m");
  g_shm = mmap(NULL, NPAGES * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (g_shm == MAP_FAILED) wl_die("mmap: %m");
  close(fd);
  int kept = open(g_path, O_RDWR | O_CLOEXEC);
  if (kept < 0 || lseek(kept, 8192, SEEK_SET) != 8192) wl_die("second open of %s: %m", g_path);
  wl_fill(g_shm, 256 * PG, 61);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("child");
  if (child == 0) {
    close(kept);
    wl_fill(g_shm + 512 * PG, 256 * PG, 62);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    check_layout("child");
    wl_expect(wl_check(g_shm + 300 * PG, PG, 63) < 0, "child does not see the parent's new page");
    wl_fill(g_shm + 800 * PG, PG, 64);
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("child died during setup");

  wl_ready();
  wl_wait_term();

  check_layout("parent");
  struct stat by_path, by_fd, by_map;
  char map[64];
  snprintf(map, sizeof map, "/proc/self/map_files/%lx-%lx", (unsigned long)g_shm,
           (unsigned long)g_shm + NPAGES * PG);
  wl_expect(stat(g_path, &by_path) == 0, "%s is gone: %s", g_path, strerror(errno));
  wl_expect(fstat(kept, &by_fd) == 0 && stat(map, &by_map) == 0, "fstat/stat of the mapping: %m");
  wl_expect(by_path.st_ino == by_fd.st_ino && by_fd.st_ino == by_map.st_ino,
            "the path, the descriptor and the mapping are not one file (inodes %lu %lu %lu)",
            (unsigned long)by_path.st_ino, (unsigned long)by_fd.st_ino, (unsigned long)by_map.st_ino);
  wl_expect((by_path.st_mode & 07777) == 0640, "mode %o, not 0640", by_path.st_mode & 07777);
  wl_expect(by_path.st_size == (off_t)(NPAGES * PG), "size %lld", (long long)by_path.st_size);
  wl_expect(lseek(kept, 0, SEEK_CUR) == 8192, "the descriptor's offset moved");
  char page[PG];
  wl_fill(page, PG, 65);
  wl_expect(pwrite(kept, page, PG, 301 * PG) == (ssize_t)PG, "pwrite: %m");
  wl_expect(wl_check(g_shm + 301 * PG, PG, 65) < 0, "a write through the descriptor is not in the mapping");
  wl_fill(g_shm + 300 * PG, PG, 63);
  kill(child, SIGTERM);
  wl_reap(child, "child");
  wl_expect(wl_check(g_shm + 800 * PG, PG, 64) < 0, "parent does not see the child's new page");
  unlink(g_path);
  wl_finish();
}
