/* A FIFO in DIR with unread data from two writers: the root's description and the child's own
 * (separately opened) description. The root reads through a non-blocking read end, and also
 * holds an O_RDWR description. After the request the child writes once more through its
 * restored description, proving it still reaches the same FIFO. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define A_LEN 1000
#define B_LEN 1000
#define C_LEN 500

static void write_pattern(int fd, size_t len, uint64_t seed) {
  char buf[A_LEN];
  wl_fill(buf, len, seed);
  if (!wl_write_full(fd, buf, len)) wl_die("write to FIFO: %m");
}

static void expect_read(int fd, size_t len, uint64_t seed, const char* what) {
  char buf[A_LEN];
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  if (wl_expect(got == len, "%s: read %zu of %zu bytes", what, got, len)) {
    wl_expect(wl_check(buf, len, seed) < 0, "%s: bytes differ", what);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const char* path = wl_path("fifo");
  if (mkfifo(path, 0600) != 0) wl_die("mkfifo: %m");
  int rd = open(path, O_RDONLY | O_NONBLOCK);
  if (rd < 0) wl_die("open fifo for reading: %m");
  int wr = open(path, O_WRONLY);
  if (wr < 0) wl_die("open fifo for writing: %m");
  int rw = open(path, O_RDWR | O_CLOEXEC);
  if (rw < 0) wl_die("open fifo O_RDWR: %m");
  write_pattern(wr, A_LEN, 11);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("child");
  if (child == 0) {
    close(rd);
    close(wr);
    close(rw);
    int cw = open(path, O_WRONLY); /* readers exist: does not block */
    if (cw < 0) wl_die("child open fifo: %m");
    write_pattern(cw, B_LEN, 12);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    struct stat st;
    wl_expect(fstat(cw, &st) == 0 && S_ISFIFO(st.st_mode), "child's fd is not a FIFO");
    write_pattern(cw, C_LEN, 13);
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("child died during setup");

  wl_ready();
  wl_wait_term();

  struct stat by_fd, by_path;
  if (wl_expect(fstat(rd, &by_fd) == 0 && stat(path, &by_path) == 0, "stat: %m")) {
    wl_expect(S_ISFIFO(by_fd.st_mode) && S_ISFIFO(by_path.st_mode), "not a FIFO any more");
    wl_expect(by_fd.st_ino == by_path.st_ino && by_fd.st_dev == by_path.st_dev,
              "read end is not the FIFO at %s", path);
  }
  wl_expect((fcntl(rd, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == (O_RDONLY | O_NONBLOCK),
            "read end flags 0x%x", fcntl(rd, F_GETFL));
  wl_expect((fcntl(rw, F_GETFL) & O_ACCMODE) == O_RDWR, "O_RDWR end flags 0x%x",
            fcntl(rw, F_GETFL));
  wl_expect(fcntl(rw, F_GETFD) == FD_CLOEXEC, "O_RDWR end lost FD_CLOEXEC");
  int pending = wl_pipe_pending(rd);
  wl_expect(pending == A_LEN + B_LEN, "%d bytes buffered, expected %d", pending, A_LEN + B_LEN);
  expect_read(rd, A_LEN, 11, "root's bytes");
  expect_read(rd, B_LEN, 12, "child's bytes");

  kill(child, SIGTERM);
  wl_reap(child, "child");
  expect_read(rd, C_LEN, 13, "child's bytes written after the request");
  wl_expect(wl_pipe_pending(rd) == 0, "%d unexpected bytes left", wl_pipe_pending(rd));
  wl_finish();
}
