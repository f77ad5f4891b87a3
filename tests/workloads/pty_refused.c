/* Refusal: pseudo-terminals in states crest does not restore.
 *   R1  5 bytes written to the master, not read from the slave (non-canonical)
 *   R2  7 bytes written to the slave, not read from the master: not refused (crest saves them,
 *       reading them from the master and putting them back at once), here to show that the
 *       refused dump leaves them exactly as they were
 *   R3  a master whose slave nobody in the tree has open
 *   R4  output stopped (tcflow TCOOFF on the slave, as ^S does with IXON)
 *   R5  packet mode, with a status byte (TIOCPKT_FLUSHREAD) waiting on the master
 *   R6  locked termios settings (TIOCSLCKTRMIOS)
 * On request (after the refused dump) everything is as it was: R1's slave reads exactly its
 * 5 bytes, R2's master its 7, R3's slave can be opened and passes data both ways, R4's output
 * is still stopped and flows once restarted, R5's master reads its status byte, R6's lock is
 * still set. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
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
  char n4[64], n5[64], n6[64];
  int s4, s5, s6;
  int m4 = open_pair(&s4, n4, sizeof n4, true);
  int m5 = open_pair(&s5, n5, sizeof n5, true);
  int m6 = open_pair(&s6, n6, sizeof n6, true);
  if (tcflow(s4, TCOOFF) != 0) wl_die("R4: tcflow TCOOFF: %m");
  int on = 1;
  if (ioctl(m5, TIOCPKT, &on) != 0) wl_die("R5: TIOCPKT: %m");
  if (tcflush(s5, TCIFLUSH) != 0) wl_die("R5: tcflush: %m");
  struct termios lock;
  memset(&lock, 0, sizeof lock);
  lock.c_cflag = CLOCAL;
  if (ioctl(s6, TIOCSLCKTRMIOS, &lock) != 0) wl_die("R6: TIOCSLCKTRMIOS: %m");

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
  /* R4: still stopped (the slave has no room to write), and flowing once restarted. */
  struct pollfd pfd = {s4, POLLOUT, 0};
  wl_expect(poll(&pfd, 1, 0) == 0, "R4: the output is no longer stopped");
  wl_expect(tcflow(s4, TCOON) == 0 && write(s4, "go", 2) == 2, "R4: cannot restart the output: %m");
  wait_pending(m4, 2, "R4 after TCOON");
  wl_expect(read(m4, buf, 2) == 2 && memcmp(buf, "go", 2) == 0, "R4: bytes differ");
  /* R5: the status byte is there to be read, once. */
  struct pollfd ppfd = {m5, POLLPRI, 0};
  wl_expect(poll(&ppfd, 1, 0) == 1, "R5: no packet status waits on the master");
  wl_expect(read(m5, buf, sizeof buf) == 1 && (buf[0] & TIOCPKT_FLUSHREAD),
            "R5: the master did not read a FLUSHREAD status byte");
  /* R6: the lock is kept. */
  struct termios got;
  memset(&got, 0, sizeof got);
  wl_expect(ioctl(s6, TIOCGLCKTRMIOS, &got) == 0 && got.c_cflag == CLOCAL,
            "R6: the locked settings are gone");
  close(m4), close(m5), close(m6), close(s4), close(s5), close(s6);
  wl_finish();
}
