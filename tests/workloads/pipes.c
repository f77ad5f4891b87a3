/* Pipes between processes holding data written but not yet read at checkpoint time:
 *   P1  root -> child, 3000 bytes, default capacity
 *   P2  child -> root, 100 KiB in a pipe grown to 256 KiB, root's read end O_NONBLOCK
 *   P3  root's own pipe; its write end is shared with the child and both wrote to it
 *   P4  empty, used after the request to prove the pipe still connects the two processes
 * On request each reader checks the exact byte count (FIONREAD), the bytes and the order. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

#define P1_LEN 3000
#define P2_LEN (100 * 1024)
#define P2_CAP (256 * 1024)
#define P3_ROOT_LEN 1000
#define P3_CHILD_LEN 500

static void make_pipe(int p[2]) {
  if (pipe(p) != 0) wl_die("pipe: %m");
}

static void write_pattern(int fd, size_t len, uint64_t seed) {
  char* buf = malloc(len);
  wl_fill(buf, len, seed);
  if (!wl_write_full(fd, buf, len)) wl_die("write: %m");
  free(buf);
}

/* Reads exactly len bytes that must be all that is buffered, and checks them. */
static void expect_buffered(int fd, size_t len, uint64_t seed, const char* what) {
  int pending = wl_pipe_pending(fd);
  if (!wl_expect(pending == (int)len, "%s: %d bytes buffered, expected %zu", what, pending, len))
    return;
  char* buf = malloc(len);
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  if (wl_expect(got == len, "%s: read %zu of %zu bytes", what, got, len)) {
    long bad = wl_check(buf, len, seed);
    wl_expect(bad < 0, "%s: byte %ld differs", what, bad);
  }
  free(buf);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int p1[2], p2[2], p3[2], p4[2];
  make_pipe(p1);
  make_pipe(p2);
  make_pipe(p3);
  make_pipe(p4);
  write_pattern(p3[1], P3_ROOT_LEN, 3);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("child");
  if (child == 0) {
    close(p1[1]);
    close(p2[0]);
    close(p3[0]);
    close(p4[1]);
    if (fcntl(p2[1], F_SETPIPE_SZ, P2_CAP) < P2_CAP) wl_die("F_SETPIPE_SZ: %m");
    write_pattern(p2[1], P2_LEN, 2);
    write_pattern(p3[1], P3_CHILD_LEN, 4);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();

    expect_buffered(p1[0], P1_LEN, 1, "P1 (root to child)");
    char ping[4];
    wl_expect(wl_read_full(p4[0], ping, 4) && memcmp(ping, "ping", 4) == 0,
              "P4: no ping after the request");
    wl_finish();
  }
  close(p1[0]);
  close(p2[1]);
  close(p4[0]);
  write_pattern(p1[1], P1_LEN, 1);
  if (fcntl(p2[0], F_SETFL, O_NONBLOCK) != 0) wl_die("F_SETFL: %m");
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("child died during setup");

  wl_ready();
  wl_wait_term();

  wl_expect(fcntl(p2[0], F_GETPIPE_SZ) >= P2_CAP, "P2 capacity %d, expected >= %d",
            fcntl(p2[0], F_GETPIPE_SZ), P2_CAP);
  wl_expect((fcntl(p2[0], F_GETFL) & O_NONBLOCK) != 0, "P2 read end lost O_NONBLOCK");
  wl_expect((fcntl(p1[1], F_GETFL) & O_ACCMODE) == O_WRONLY, "P1 write end not O_WRONLY");
  expect_buffered(p2[0], P2_LEN, 2, "P2 (child to root)");

  /* P3 holds the root's 1000 bytes, then the child's 500. */
  int pending = wl_pipe_pending(p3[0]);
  if (wl_expect(pending == P3_ROOT_LEN + P3_CHILD_LEN, "P3: %d bytes buffered, expected %d",
                pending, P3_ROOT_LEN + P3_CHILD_LEN)) {
    char buf[P3_ROOT_LEN + P3_CHILD_LEN];
    if (wl_expect(wl_read_full(p3[0], buf, sizeof buf), "P3: short read")) {
      wl_expect(wl_check(buf, P3_ROOT_LEN, 3) < 0, "P3: root's bytes differ");
      wl_expect(wl_check(buf + P3_ROOT_LEN, P3_CHILD_LEN, 4) < 0, "P3: child's bytes differ");
    }
  }
  /* The pipe still works both ways after the checkpoint. */
  wl_expect(wl_write_full(p3[1], "xyz", 3), "P3: write failed");
  char xyz[3];
  wl_expect(wl_read_full(p3[0], xyz, 3) && memcmp(xyz, "xyz", 3) == 0, "P3: round trip failed");

  wl_expect(wl_write_full(p4[1], "ping", 4), "P4: write failed");
  kill(child, SIGTERM);
  wl_reap(child, "child");
  wl_finish();
}
