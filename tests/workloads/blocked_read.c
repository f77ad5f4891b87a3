/* A child blocked in read(2) on an empty pipe at checkpoint time. The data is written only
 * after the request (after any restore); the read must return exactly it. The child handles
 * EINTR by reading again. */
#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define MSG_LEN 64

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int p[2];
  if (pipe(p) != 0) wl_die("pipe: %m");
  pid_t reader = wl_fork("reader");
  if (reader == 0) {
    close(p[1]);
    char buf[MSG_LEN];
    size_t got = 0;
    int eintr = 0;
    while (got < MSG_LEN) {
      ssize_t n = read(p[0], buf + got, MSG_LEN - got);
      if (n < 0 && errno == EINTR) {
        eintr++;
        continue;
      }
      if (!wl_expect(n > 0, "read: %s", n == 0 ? "EOF" : strerror(errno))) break;
      got += (size_t)n;
    }
    if (got == MSG_LEN) wl_expect(wl_check(buf, MSG_LEN, 71) < 0, "read returned other bytes");
    wl_expect(wl_term == 0, "got SIGTERM (%d EINTR)", eintr);
    wl_finish();
  }
  close(p[0]);
  if (!wl_wait_in_syscall(reader, SYS_read, SYS_read)) wl_die("the reader never blocked in read");

  wl_ready();
  wl_wait_term();

  char msg[MSG_LEN];
  wl_fill(msg, MSG_LEN, 71);
  wl_expect(wl_write_full(p[1], msg, MSG_LEN), "write: %m");
  wl_reap(reader, "reader");
  wl_finish();
}
