/* Refusal: pseudo-terminals in states crest does not restore.
 *   R1  5 bytes written to the master, not read from the slave (non-canonical)
 *   R2  7 bytes written to the slave, not read from the master: not refused (crest saves them,
 *       reading them from the master and putting them back at once), here to show that the
 *       refused dump leaves them exactly as they were
 *   R3  a master whose slave nobody in the tree has open
 * On request (after the refused dump) everything is as it was: R1's slave reads exactly its
 * 5 bytes, R2's master its 7, R3's slave can be opened and passes data both ways. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "workload.h"

static int open_pair(int* slave, char* name, size_t len, bool open_slave) {
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) wl_die("posix_openpt: %m");
  snprintf(name, len, "%s", ptsname(m));
  *slave = -1;
  if (open_slave) {
    *slave = open(name, O_RDWR | O_NOCTTY);
    if (*slave < 0) wl_die("open %s: %m", name);
    struct termios t;
    if (tcgetattr(*slave, &t) != 0) wl_die("tcgetattr: %m");
    cfmakeraw(&t);
    if (tcsetattr(*slave, TCSANOW, &t) != 0) wl_die("tcsetattr: %m");
  }
  return m;
}

static int pending(int fd) {
  int n = -1;
  ioctl(fd, FIONREAD, &n);
  return n;
}

/* Waits (setup only) until fd has n bytes to read. */
static void wait_pending(int fd, int n, const char* what) {
  for (int i = 0; i < 400; i++) {
    if (pending(fd) == n) return;
    usleep(5000);
  }
  wl_die("%s: %d bytes pending, expected %d", what, pending(fd), n);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char n1[64], n2[64], n3[64];
  int s1, s2, s3;
  int m1 = open_pair(&s1, n1, sizeof n1, true);
  int m2 = open_pair(&s2, n2, sizeof n2, true);
  int m3 = open_pair(&s3, n3, sizeof n3, false);
  if (write(m1, "hello", 5) != 5 || write(s2, "goodbye", 7) != 7) wl_die("write: %m");
  wait_pending(s1, 5, "R1");
  wait_pending(m2, 7, "R2");

  wl_ready();
  wl_wait_term();

  char buf[16];
  wl_expect(pending(s1) == 5, "R1: %d bytes pending on the slave, expected 5", pending(s1));
  wl_expect(read(s1, buf, sizeof buf) == 5 && memcmp(buf, "hello", 5) == 0, "R1: bytes differ");
  wl_expect(pending(m2) == 7, "R2: %d bytes pending on the master, expected 7", pending(m2));
  wl_expect(read(m2, buf, sizeof buf) == 7 && memcmp(buf, "goodbye", 7) == 0, "R2: bytes differ");
  s3 = open(n3, O_RDWR | O_NOCTTY);
  if (wl_expect(s3 >= 0, "R3: cannot open its slave %s: %m", n3)) {
    struct termios t;
    tcgetattr(s3, &t);
    cfmakeraw(&t);
    tcsetattr(s3, TCSANOW, &t);
    wl_expect(write(m3, "abc", 3) == 3 && read(s3, buf, 3) == 3 && memcmp(buf, "abc", 3) == 0,
              "R3: master to slave failed");
    wl_expect(write(s3, "xy", 2) == 2 && read(m3, buf, 2) == 2 && memcmp(buf, "xy", 2) == 0,
              "R3: slave to master failed");
  }
  wl_finish();
}
