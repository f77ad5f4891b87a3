/* Pseudo-terminal pairs inside the tree, and a job-control session on one of them.
 *   A  master O_NONBLOCK in packet mode; termios: non-canonical with ISIG, no echo, VINTR ^C,
 *      VMIN 1, odd speeds (57600 in, 115200 out); window 37x111 (5x7 pixels); slave mode 0600.
 *      The root holds the master and one slave description; child C (setsid) opened the slave
 *      without O_NOCTTY, so A's slave is C's controlling terminal; C's child G leads its own
 *      process group, which C made the terminal's foreground group.
 *   B  canonical mode without echo, slave O_NONBLOCK and exclusive (TIOCEXCL), locked again
 *      (TIOCSPTLCK) after the slave was opened; window 24x80.
 * Nothing is buffered at the checkpoint.
 * On request the root checks every attribute (TCGETS2, TIOCGWINSZ, TIOCGPKT, TIOCGPTLCK,
 * TIOCGEXCL, slave mode, status flags), that each slave descriptor is the slave of its master
 * (TIOCGPTN, device numbers), data both ways through A (packet mode's status byte) and a line
 * through B; then types ^C into A and changes A's window size, which must reach G (SIGINT,
 * SIGWINCH) as the foreground group, and asks C and G to check: C that it leads the session
 * whose controlling terminal A's slave is (tcgetsid, tty_nr, tpgid in /proc/self/stat, a /dev/tty
 * descriptor it opened at setup, shared with G, still leads to it), G that
 * it has the terminal too, is its foreground and got both signals. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <asm/termbits.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "workload.h"

static volatile sig_atomic_t g_winch, g_int;
static void on_winch(int sig) { (void)sig; g_winch++; }
static void on_int(int sig) { (void)sig; g_int++; }

static int open_master(int flags, char* name, size_t len) {
  int m = open("/dev/ptmx", O_RDWR | O_NOCTTY | flags);
  if (m < 0) wl_die("open /dev/ptmx: %m");
  unsigned n = 0;
  int unlock = 0;
  if (ioctl(m, TIOCSPTLCK, &unlock) != 0 || ioctl(m, TIOCGPTN, &n) != 0) wl_die("ptmx: %m");
  snprintf(name, len, "/dev/pts/%u", n);
  return m;
}

static struct termios2 termios_a(void) {
  struct termios2 t;
  memset(&t, 0, sizeof t);
  t.c_iflag = 0;
  t.c_oflag = 0;
  t.c_cflag = CS8 | CREAD | BOTHER | (BOTHER << IBSHIFT);
  t.c_lflag = ISIG;
  t.c_cc[VINTR] = 3;
  t.c_cc[VQUIT] = 0x1c;
  t.c_cc[VSUSP] = 0; /* ^Z does nothing */
  t.c_cc[VMIN] = 1;
  t.c_cc[VTIME] = 0;
  t.c_ispeed = 57600;
  t.c_ospeed = 115200;
  return t;
}

static struct termios2 termios_b(int fd) {
  struct termios2 t;
  if (ioctl(fd, TCGETS2, &t) != 0) wl_die("TCGETS2: %m");
  t.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE);
  t.c_cc[VKILL] = 0x0b;
  t.c_cc[VERASE] = 0x08;
  return t;
}

static const struct winsize kWinA = {37, 111, 5, 7}, kWinB = {24, 80, 0, 0};

/* Whether fd (a slave descriptor) is the slave of master m. */
static bool slave_of(int fd, int m) {
  unsigned n = 0;
  struct stat a, b;
  char name[32];
  if (ioctl(m, TIOCGPTN, &n) != 0 || fstat(fd, &a) != 0) return false;
  snprintf(name, sizeof name, "/dev/pts/%u", n);
  if (stat(name, &b) != 0) return false;
  char link[64], self[64];
  snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
  ssize_t l = readlink(self, link, sizeof link - 1);
  if (l < 0) return false;
  link[l] = 0;
  if (!wl_expect(strcmp(link, name) == 0, "fd %d links to %s, its master is %s", fd, link, name))
    return false;
  return a.st_rdev == b.st_rdev && minor(a.st_rdev) + 256 * (major(a.st_rdev) - 136) == n;
}

static int int_ioctl(int fd, unsigned long req) {
  int v = -1;
  if (ioctl(fd, req, &v) != 0) return -1;
  return v;
}

static void expect_termios(int fd, const struct termios2* want, const char* what) {
  struct termios2 got;
  if (!wl_expect(ioctl(fd, TCGETS2, &got) == 0, "%s: TCGETS2: %m", what)) return;
  wl_expect(got.c_iflag == want->c_iflag && got.c_oflag == want->c_oflag &&
                got.c_cflag == want->c_cflag && got.c_lflag == want->c_lflag &&
                got.c_line == want->c_line,
            "%s: termios flags %x %x %x %x, expected %x %x %x %x", what, got.c_iflag, got.c_oflag,
            got.c_cflag, got.c_lflag, want->c_iflag, want->c_oflag, want->c_cflag, want->c_lflag);
  wl_expect(memcmp(got.c_cc, want->c_cc, sizeof got.c_cc) == 0, "%s: control characters differ",
            what);
  wl_expect(got.c_ispeed == want->c_ispeed && got.c_ospeed == want->c_ospeed,
            "%s: speeds %u/%u, expected %u/%u", what, got.c_ispeed, got.c_ospeed, want->c_ispeed,
            want->c_ospeed);
}

static void expect_winsize(int fd, const struct winsize* want, const char* what) {
  struct winsize got = {0, 0, 0, 0};
  wl_expect(ioctl(fd, TIOCGWINSZ, &got) == 0 && memcmp(&got, want, sizeof got) == 0,
            "%s: window %ux%u (%ux%u px), expected %ux%u", what, got.ws_row, got.ws_col,
            got.ws_xpixel, got.ws_ypixel, want->ws_row, want->ws_col);
}

/* /proc/self/stat fields 7 (tty_nr) and 8 (tpgid). */
static void stat_tty(int* tty_nr, int* tpgid) {
  char buf[1024];
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
  if (fd >= 0) close(fd);
  *tty_nr = *tpgid = -2;
  if (n <= 0) return;
  buf[n] = 0;
  char* p = strrchr(buf, ')');
  int ppid, pgrp, sid;
  char state;
  if (!p || sscanf(p + 2, "%c %d %d %d %d %d", &state, &ppid, &pgrp, &sid, tty_nr, tpgid) != 6)
    *tty_nr = *tpgid = -2;
}

static int encode_dev(dev_t d) {
  return (int)((minor(d) & 0xff) | (major(d) << 8) | ((minor(d) & ~0xffu) << 12));
}

/* G: the foreground process group of A's slave. */
static void run_g(int slave, dev_t rdev, pid_t c) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = on_winch;
  sigaction(SIGWINCH, &sa, NULL);
  sa.sa_handler = on_int;
  sigaction(SIGINT, &sa, NULL);
  wl_wait_term();
  int tty_nr, tpgid;
  stat_tty(&tty_nr, &tpgid);
  wl_expect(tty_nr == encode_dev(rdev), "G: tty_nr %d, expected %d", tty_nr, encode_dev(rdev));
  /* /proc may be the host's while the tree runs in a pid namespace of its own. */
  wl_expect(tpgid == wl_proc_pid(getpid()), "G: tpgid %d, expected its own group %d", tpgid,
            (int)wl_proc_pid(getpid()));
  wl_expect(getsid(0) == c && getpgid(0) == getpid(), "G: session %d group %d",
            (int)getsid(0), (int)getpgid(0));
  wl_expect(tcgetpgrp(slave) == getpid(), "G: tcgetpgrp %d", (int)tcgetpgrp(slave));
  wl_expect(g_int >= 1, "G: no SIGINT from ^C typed into the terminal");
  wl_expect(g_winch >= 1, "G: no SIGWINCH from the window size change");
  int tty = open("/dev/tty", O_RDWR | O_CLOEXEC);
  wl_expect(tty >= 0, "G: cannot open /dev/tty: %m");
  if (tty >= 0) close(tty);
  wl_finish();
}

/* C: leads a session whose controlling terminal is A's slave. */
static void run_c(const char* name_a, struct wl_sync* sync) {
  if (setsid() < 0) wl_die("setsid: %m");
  int slave = open(name_a, O_RDWR | O_CLOEXEC); /* no O_NOCTTY: our controlling terminal */
  if (slave < 0) wl_die("open %s: %m", name_a);
  struct stat st;
  if (fstat(slave, &st) != 0) wl_die("fstat: %m");
  int devtty = open("/dev/tty", O_RDWR | O_CLOEXEC); /* shared with G */
  if (devtty < 0) wl_die("open /dev/tty: %m");
  struct wl_sync gsync;
  wl_sync_init(&gsync);
  pid_t g = wl_fork("G");
  if (g == 0) {
    if (setpgid(0, 0) != 0) wl_die("setpgid: %m");
    wl_sync_post(&gsync, NULL, 0);
    run_g(slave, st.st_rdev, getppid());
  }
  setpgid(g, g);
  if (!wl_sync_wait(&gsync, 1, NULL, 0)) wl_die("G died during setup");
  if (tcsetpgrp(slave, g) != 0) wl_die("tcsetpgrp: %m");
  wl_sync_post(sync, &g, sizeof g);
  wl_wait_term();

  int tty_nr, tpgid;
  stat_tty(&tty_nr, &tpgid);
  pid_t sid = -1;
  wl_expect(ioctl(slave, TIOCGSID, &sid) == 0 && sid == getpid(), "C: TIOCGSID %d, expected %d",
            (int)sid, (int)getpid());
  wl_expect(tty_nr == encode_dev(st.st_rdev), "C: tty_nr %d, expected %d", tty_nr,
            encode_dev(st.st_rdev));
  wl_expect(tpgid == wl_proc_pid(g), "C: tpgid %d, expected G's group %d", tpgid,
            (int)wl_proc_pid(g));
  unsigned dev = 0;
  wl_expect(ioctl(devtty, TIOCGDEV, &dev) == 0 && (int)dev == encode_dev(st.st_rdev),
            "C: its /dev/tty descriptor is terminal %u, expected %d", dev, encode_dev(st.st_rdev));
  kill(g, SIGTERM);
  wl_reap(g, "G");
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char name_a[32], name_b[32];
  int ma = open_master(O_NONBLOCK, name_a, sizeof name_a);
  int mb = open_master(0, name_b, sizeof name_b);
  int sa = open(name_a, O_RDWR | O_NOCTTY);
  int sb = open(name_b, O_RDWR | O_NOCTTY | O_NONBLOCK);
  if (sa < 0 || sb < 0) wl_die("open slaves: %m");
  struct termios2 ta = termios_a(), tb = termios_b(sb);
  if (ioctl(sa, TCSETS2, &ta) != 0 || ioctl(mb, TCSETS2, &tb) != 0) wl_die("TCSETS2: %m");
  if (ioctl(ma, TIOCSWINSZ, &kWinA) != 0 || ioctl(sb, TIOCSWINSZ, &kWinB) != 0)
    wl_die("TIOCSWINSZ: %m");
  int one = 1;
  if (ioctl(ma, TIOCPKT, &one) != 0) wl_die("TIOCPKT: %m");
  if (fchmod(sa, 0600) != 0) wl_die("fchmod: %m");
  if (ioctl(sb, TIOCEXCL) != 0) wl_die("TIOCEXCL: %m");
  if (ioctl(mb, TIOCSPTLCK, &one) != 0) wl_die("TIOCSPTLCK: %m");
  /* Settings read back as the kernel keeps them (it may normalise flags). */
  if (ioctl(sa, TCGETS2, &ta) != 0 || ioctl(sb, TCGETS2, &tb) != 0) wl_die("TCGETS2: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t c = wl_fork("C");
  if (c == 0) {
    close(ma);
    close(mb);
    close(sa);
    close(sb);
    run_c(name_a, &sync);
  }
  pid_t g = 0;
  if (!wl_sync_wait(&sync, 1, &g, sizeof g)) wl_die("C died during setup");
  /* The packet-mode master may hold a status byte from the setup: read it off. */
  char junk[64];
  while (read(ma, junk, sizeof junk) > 0) {
  }

  wl_ready();
  wl_wait_term();

  wl_expect(slave_of(sa, ma), "A: fd %d is not the slave of its master", sa);
  wl_expect(slave_of(sb, mb), "B: fd %d is not the slave of its master", sb);
  expect_termios(sa, &ta, "A");
  expect_termios(mb, &tb, "B");
  expect_winsize(sa, &kWinA, "A");
  expect_winsize(mb, &kWinB, "B");
  wl_expect(int_ioctl(ma, TIOCGPKT) == 1, "A: packet mode %d", int_ioctl(ma, TIOCGPKT));
  wl_expect(int_ioctl(mb, TIOCGPKT) == 0, "B: packet mode %d", int_ioctl(mb, TIOCGPKT));
  wl_expect(int_ioctl(ma, TIOCGPTLCK) == 0, "A: lock %d", int_ioctl(ma, TIOCGPTLCK));
  wl_expect(int_ioctl(mb, TIOCGPTLCK) == 1, "B: lock %d", int_ioctl(mb, TIOCGPTLCK));
  wl_expect(int_ioctl(sb, TIOCGEXCL) == 1, "B: slave not exclusive");
  wl_expect(int_ioctl(sa, TIOCGEXCL) == 0, "A: slave exclusive");
  struct stat st;
  wl_expect(fstat(sa, &st) == 0 && (st.st_mode & 07777) == 0600, "A: slave mode %o",
            st.st_mode & 07777);
  wl_expect((fcntl(ma, F_GETFL) & O_NONBLOCK) && !(fcntl(mb, F_GETFL) & O_NONBLOCK) &&
                (fcntl(sb, F_GETFL) & O_NONBLOCK) && !(fcntl(sa, F_GETFL) & O_NONBLOCK),
            "status flags differ");
  wl_expect(int_ioctl(ma, TIOCINQ) == 0 && int_ioctl(sa, TIOCINQ) == 0 &&
                int_ioctl(mb, TIOCINQ) == 0 && int_ioctl(sb, TIOCINQ) == 0,
            "bytes appeared in a terminal");
  wl_expect(tcgetpgrp(ma) == g, "A: foreground group %d, expected G %d", (int)tcgetpgrp(ma),
            (int)g);

  /* Data both ways through A: the master reads a packet-mode status byte first. */
  char buf[64];
  wl_expect(write(sa, "out", 3) == 3, "A: slave write: %m");
  ssize_t n = -1;
  for (int i = 0; i < 200 && n < 0; i++) {
    n = read(ma, buf, sizeof buf);
    if (n < 0) usleep(5000);
  }
  wl_expect(n == 4 && buf[0] == 0 && memcmp(buf + 1, "out", 3) == 0,
            "A: the master read %zd bytes, expected a data packet \"out\"", n);
  wl_expect(write(ma, "in", 2) == 2, "A: master write: %m");
  wl_expect(read(sa, buf, 2) == 2 && memcmp(buf, "in", 2) == 0, "A: the slave did not read \"in\"");
  /* A line through B (canonical: read only once it is whole). */
  wl_expect(write(mb, "partial", 7) == 7, "B: master write: %m");
  wl_expect(read(sb, buf, sizeof buf) < 0 && errno == EAGAIN, "B: a partial line was readable");
  wl_expect(write(mb, " line\n", 6) == 6, "B: master write: %m");
  n = read(sb, buf, sizeof buf);
  wl_expect(n == 13 && memcmp(buf, "partial line\n", 13) == 0, "B: the slave read %zd bytes", n);

  /* Job control through A: ^C and a new window size reach the foreground group G. */
  wl_expect(write(ma, "\003", 1) == 1, "A: cannot type ^C");
  struct winsize bigger = {40, 120, 0, 0};
  wl_expect(ioctl(ma, TIOCSWINSZ, &bigger) == 0, "A: TIOCSWINSZ: %m");
  usleep(50000);
  kill(c, SIGTERM);
  wl_reap(c, "C");
  wl_finish();
}
