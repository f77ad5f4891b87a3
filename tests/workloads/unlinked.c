/* Files unlinked while open: their contents and offsets must survive, and they must come back
 * unlinked (the name must not reappear). "victim" is open once at an offset; "victim2" is open
 * twice through separate descriptions of the same inode, so a write through one is seen by the
 * other only if the restore recreated one inode for both. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define V1_LEN 20000
#define V1_POS 12345
#define V2_LEN 8192

static void fill_file(int fd, size_t len, uint64_t seed) {
  char* buf = malloc(len);
  wl_fill(buf, len, seed);
  if (!wl_write_full(fd, buf, len)) wl_die("write: %m");
  free(buf);
}

static bool deleted_link(int fd) {
  char path[64], link[PATH_MAX];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) return false;
  link[n] = 0;
  return n > 10 && strcmp(link + n - 10, " (deleted)") == 0;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const char* p1 = wl_path("victim");
  const char* p2 = wl_path("victim2");
  int v1 = open(p1, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (v1 < 0) wl_die("open victim: %m");
  fill_file(v1, V1_LEN, 31);
  lseek(v1, V1_POS, SEEK_SET);
  int v2a = open(p2, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (v2a < 0) wl_die("open victim2: %m");
  fill_file(v2a, V2_LEN, 32);
  int v2b = open(p2, O_RDONLY);
  if (v2b < 0) wl_die("reopen victim2: %m");
  lseek(v2b, 100, SEEK_SET);
  if (unlink(p1) != 0 || unlink(p2) != 0) wl_die("unlink: %m");

  wl_ready();
  wl_wait_term();

  struct stat st;
  if (wl_expect(fstat(v1, &st) == 0, "fstat victim: %m")) {
    wl_expect(st.st_nlink == 0, "victim has %lu links", (unsigned long)st.st_nlink);
    wl_expect(st.st_size == V1_LEN, "victim size %lld", (long long)st.st_size);
  }
  wl_expect(deleted_link(v1), "victim's fd link is not marked deleted");
  wl_expect(access(p1, F_OK) != 0 && errno == ENOENT, "the name victim exists again");
  wl_expect(access(p2, F_OK) != 0 && errno == ENOENT, "the name victim2 exists again");
  wl_expect((fcntl(v1, F_GETFL) & O_ACCMODE) == O_RDWR, "victim not O_RDWR");
  wl_expect(lseek(v1, 0, SEEK_CUR) == V1_POS, "victim offset %lld",
            (long long)lseek(v1, 0, SEEK_CUR));
  char* buf = malloc(V1_LEN);
  if (wl_expect(pread(v1, buf, V1_LEN, 0) == V1_LEN, "pread victim")) {
    long bad = wl_check(buf, V1_LEN, 31);
    wl_expect(bad < 0, "victim byte %ld differs", bad);
  }
  free(buf);
  wl_expect(write(v1, "HELLO", 5) == 5, "write victim: %m");
  char hello[5];
  wl_expect(pread(v1, hello, 5, V1_POS) == 5 && memcmp(hello, "HELLO", 5) == 0,
            "write did not land at the offset");

  struct stat sa, sb;
  if (wl_expect(fstat(v2a, &sa) == 0 && fstat(v2b, &sb) == 0, "fstat victim2")) {
    wl_expect(sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev,
              "victim2's two descriptions point at different inodes");
    wl_expect(sa.st_nlink == 0 && sa.st_size == V2_LEN, "victim2 links %lu size %lld",
              (unsigned long)sa.st_nlink, (long long)sa.st_size);
  }
  wl_expect(deleted_link(v2a) && deleted_link(v2b), "victim2's links are not marked deleted");
  wl_expect(lseek(v2a, 0, SEEK_CUR) == V2_LEN && lseek(v2b, 0, SEEK_CUR) == 100,
            "victim2 offsets %lld/%lld", (long long)lseek(v2a, 0, SEEK_CUR),
            (long long)lseek(v2b, 0, SEEK_CUR));
  char b2[V2_LEN];
  if (wl_expect(pread(v2b, b2, V2_LEN, 0) == V2_LEN, "pread victim2")) {
    wl_expect(wl_check(b2, V2_LEN, 32) < 0, "victim2 contents differ");
  }
  wl_expect(pwrite(v2a, "SHARE", 5, 4000) == 5, "pwrite victim2");
  char share[5];
  wl_expect(pread(v2b, share, 5, 4000) == 5 && memcmp(share, "SHARE", 5) == 0,
            "a write through one victim2 description is not seen through the other");
  wl_finish();
}
