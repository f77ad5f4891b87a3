/* A FIFO whose name is gone: mkfifo DIR/ff, open the read end (O_RDONLY|O_NONBLOCK) and then
 * the write end (O_WRONLY), write 3000 bytes, unlink DIR/ff. Both ends stay open in the root.
 * On request: both fds are FIFOs of one inode with nlink 0 (the name must not come back); the
 * 3000 bytes are still buffered (FIONREAD) and read back exactly once, in order (then the
 * non-blocking read end reports EAGAIN: writer present, pipe empty); bytes written through the
 * write end now come out of the read end. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define LEN 3000
#define MORE 500

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const char* path = wl_path("ff");
  if (mkfifo(path, 0600) != 0) wl_die("mkfifo: %m");
  int rd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (rd < 0) wl_die("open read end: %m");
  int wr = open(path, O_WRONLY | O_CLOEXEC);
  if (wr < 0) wl_die("open write end: %m");
  char buf[LEN];
  wl_fill(buf, LEN, 131);
  if (!wl_write_full(wr, buf, LEN)) wl_die("write: %m");
  if (unlink(path) != 0) wl_die("unlink: %m");

  wl_ready();
  wl_wait_term();

  struct stat sr, sw;
  if (wl_expect(fstat(rd, &sr) == 0 && fstat(wr, &sw) == 0, "fstat: %m")) {
    wl_expect(S_ISFIFO(sr.st_mode) && S_ISFIFO(sw.st_mode), "not FIFOs: modes 0%o/0%o",
              (unsigned)sr.st_mode, (unsigned)sw.st_mode);
    wl_expect(sr.st_ino == sw.st_ino && sr.st_dev == sw.st_dev, "the two ends are different FIFOs");
    wl_expect(sr.st_nlink == 0 && sw.st_nlink == 0, "links %lu/%lu, expected 0",
              (unsigned long)sr.st_nlink, (unsigned long)sw.st_nlink);
    wl_expect((sr.st_mode & 07777) == 0600, "mode %04o, expected 0600",
              (unsigned)(sr.st_mode & 07777));
  }
  wl_expect(access(path, F_OK) != 0 && errno == ENOENT, "the name ff exists again");
  int rfl = fcntl(rd, F_GETFL), wfl = fcntl(wr, F_GETFL);
  wl_expect((rfl & (O_ACCMODE | O_NONBLOCK)) == (O_RDONLY | O_NONBLOCK) &&
                (wfl & (O_ACCMODE | O_NONBLOCK)) == O_WRONLY,
            "flags 0%o/0%o", rfl, wfl);

  int pending = wl_pipe_pending(rd);
  wl_expect(pending == LEN, "%d bytes buffered, expected %d", pending, LEN);
  char got[LEN + 1];
  ssize_t n = read(rd, got, sizeof got);
  wl_expect(n == LEN, "read %zd bytes, expected %d", n, LEN);
  if (n > 0) {
    long bad = wl_check(got, (size_t)n, 131);
    wl_expect(bad < 0, "byte %ld differs", bad);
  }
  n = read(rd, got, sizeof got);
  wl_expect(n < 0 && errno == EAGAIN, "read from the drained FIFO: %zd (%m), expected EAGAIN", n);

  char more[MORE];
  wl_fill(more, MORE, 132);
  wl_expect(write(wr, more, MORE) == MORE, "write after restore: %m");
  pending = wl_pipe_pending(rd);
  n = read(rd, got, sizeof got);
  wl_expect(pending == MORE && n == MORE && wl_check(got, MORE, 132) < 0,
            "new bytes: %d pending, %zd read back (expected %d, same bytes)", pending, n, MORE);
  wl_finish();
}
