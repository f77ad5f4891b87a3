/* Output of a pseudo-terminal not read by its master yet, as mpirun leaves a rank's stdout
 * between two reads: a pair with the slave in its default cooked mode (OPOST|ONLCR), two lines
 * written to the slave ("one\n" "two\n", 10 bytes on the master's side after output processing)
 * and not read from the master. After the request: the master has exactly those 10 bytes to
 * read, "one\r\ntwo\r\n" (not processed twice), the pair's output processing is on as it was, and
 * a new line written to the slave arrives after them, processed once. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "workload.h"

static int pending(int fd) {
  int n = -1;
  ioctl(fd, FIONREAD, &n);
  return n;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) wl_die("posix_openpt: %m");
  int s = open(ptsname(m), O_RDWR | O_NOCTTY);
  if (s < 0) wl_die("open %s: %m", ptsname(m));
  struct termios t;
  if (tcgetattr(s, &t) != 0) wl_die("tcgetattr: %m");
  if (!(t.c_oflag & OPOST) || !(t.c_oflag & ONLCR)) wl_die("the slave is not in cooked output mode");
  if (write(s, "one\n", 4) != 4 || write(s, "two\n", 4) != 4) wl_die("write: %m");
  for (int i = 0; i < 1000 && pending(m) < 10; i++) usleep(1000);
  if (pending(m) != 10) wl_die("%d bytes pending on the master, expected 10", pending(m));

  wl_ready();
  wl_wait_term();

  wl_expect(pending(m) == 10, "%d bytes pending on the master, expected 10", pending(m));
  struct termios now;
  wl_expect(tcgetattr(s, &now) == 0 && now.c_oflag == t.c_oflag && now.c_lflag == t.c_lflag,
            "the pair's termios differ (oflag 0%o, saved 0%o)", now.c_oflag, t.c_oflag);
  if (write(s, "three\n", 6) != 6) wl_die("write: %m");
  for (int i = 0; i < 1000 && pending(m) < 17; i++) usleep(1000);
  char buf[64] = {0};
  ssize_t n = read(m, buf, sizeof buf - 1);
  wl_expect(n == 17 && memcmp(buf, "one\r\ntwo\r\nthree\r\n", 17) == 0,
            "the master read %zd bytes '%s', expected one\\r\\ntwo\\r\\nthree\\r\\n", n, buf);
  wl_finish();
}
