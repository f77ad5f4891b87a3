/* AF_UNIX descriptors in flight (SCM_RIGHTS): messages queued with descriptors of several kinds,
 * received only after the restore.
 *   stream socketpair (root holds both ends; receiver r without SO_PASSCRED), four messages:
 *     "head"        no descriptor (glued before the next one by the kernel's reads)
 *     "pipe-end"    the write end of pipe P; the root keeps P's read end and closed the write
 *                   end after sending: the write end exists only in flight
 *     "file!"       DIR/data opened O_RDWR|O_NONBLOCK at offset 5; closed after sending
 *     "tail-bytes"  no descriptor
 *   datagram socketpair (root holds both ends), three datagrams:
 *     "two"         eventfd E (count 7, EFD_NONBLOCK) twice; E closed after the last send
 *     "plain"       no descriptor
 *     "memfd+E"     memfd M ("memfd data", offset 3, F_SEAL_SHRINK), then E again; M closed
 *     "held"        the stream's sending end, a pidfd of C and a TCP listener on 127.0.0.1,
 *                   all still held by the root
 *     "misc"        O_PATH of DIR/data, /dev/null O_WRONLY, a timerfd armed for an hour, a
 *                   signalfd for SIGUSR1; all closed after sending
 *   seqpacket socketpair (child C sends, the root receives with SO_PASSCRED on), two records:
 *     "shared"      DIR/data2 that C keeps open at offset 11
 *     ""            (0 bytes) the read end of pipe Q whose write end C keeps; C closed the read end
 * On request, root: the stream gives "head" alone to a 4-byte read without control data, then
 * each message with its descriptor and nothing else, then EAGAIN; P's read end has no hang-up
 * while the received write end is open, reads "ping" written through it, then EOF once it is
 * closed; the file is DIR/data at offset 5 with O_RDWR|O_NONBLOCK and reads "56789". The
 * datagrams come in order with 2, 0 and 2 descriptors: every E is the same open file description
 * (kcmp KCMP_FILE, and one count of 7 read once); M reads "memfd data", is at offset 3 and has
 * F_SEAL_SHRINK. "held" gives the root's own descriptions (kcmp); "misc" an O_PATH descriptor of
 * DIR/data, /dev/null for writing, the timerfd with 0 < remaining <= 1 h and no interval, and
 * the signalfd with SIGUSR1's mask. The records carry C's credentials (SCM_CREDENTIALS) with their descriptor: the
 * first is C's own description of DIR/data2 (kcmp against C's fd, offset 11), the second Q's read
 * end, which reads "from child" once C, told by SIGTERM, writes it through its end. */
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "workload.h"

#define MAX_RIGHTS 4

static int kcmp_file(pid_t p1, int fd1, pid_t p2, int fd2) {
  return (int)syscall(SYS_kcmp, p1, p2, KCMP_FILE, fd1, fd2);
}

static void send_rights(int s, const void* data, size_t len, const int* fds, int nfds) {
  union {
    char buf[CMSG_SPACE(MAX_RIGHTS * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct iovec iov = {.iov_base = (void*)data, .iov_len = len};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    m.msg_control = ctl.buf;
    m.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
    struct cmsghdr* h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
    memcpy(CMSG_DATA(h), fds, (size_t)nfds * sizeof(int));
  }
  if (sendmsg(s, &m, 0) != (ssize_t)len) wl_die("sendmsg of %zu bytes with %d fds: %m", len, nfds);
}

/* What one recvmsg gave. */
struct got {
  ssize_t n;
  char data[64];
  int fds[MAX_RIGHTS];
  int nfds;
  bool creds;
  struct ucred cred;
  bool other;  /* any other control message, or MSG_CTRUNC */
};

static struct got receive(int s, size_t cap) {
  struct got g;
  memset(&g, 0, sizeof g);
  union {
    char buf[CMSG_SPACE(MAX_RIGHTS * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred)) + 64];
    struct cmsghdr align;
  } ctl;
  struct iovec iov = {.iov_base = g.data, .iov_len = cap < sizeof g.data ? cap : sizeof g.data};
  struct msghdr m = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  g.n = recvmsg(s, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (g.n < 0) return g;
  g.other = (m.msg_flags & MSG_CTRUNC) != 0;
  for (struct cmsghdr* h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
    if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
      int n = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int i = 0; i < n; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(h) + (size_t)i * sizeof fd, sizeof fd);
        if (g.nfds < MAX_RIGHTS)
          g.fds[g.nfds++] = fd;
        else
          close(fd), g.other = true;
      }
    } else if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_CREDENTIALS) {
      g.creds = true;
      memcpy(&g.cred, CMSG_DATA(h), sizeof g.cred);
    } else {
      g.other = true;
    }
  }
  return g;
}

/* One message: its bytes, its descriptor count, nothing else (and credentials when asked). */
static bool expect_msg(const struct got* g, const char* what, const char* data, size_t len,
                       int nfds) {
  return wl_expect(g->n == (ssize_t)len && memcmp(g->data, data, len) == 0 && g->nfds == nfds &&
                       !g->other,
                   "%s: %zd bytes \"%.*s\" with %d descriptors%s (%s), expected \"%s\" with %d", what,
                   g->n, g->n > 0 ? (int)g->n : 0, g->data, g->nfds,
                   g->other ? " and other control data" : "", g->n < 0 ? strerror(errno) : "ok",
                   data, nfds);
}

static void expect_empty(int s, const char* what) {
  char c;
  ssize_t n = recv(s, &c, 1, MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EAGAIN, "%s: more queued (%zd, %m)", what, n);
}

static off_t offset_of(int fd) { return lseek(fd, 0, SEEK_CUR); }

static int open_data(const char* name, off_t at, int flags) {
  int fd = open(wl_path(name), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || !wl_write_full(fd, "0123456789abcdef", 16)) wl_die("%s: %m", name);
  close(fd);
  fd = open(wl_path(name), O_RDWR | O_CLOEXEC | flags);
  if (fd < 0 || lseek(fd, at, SEEK_SET) != at) wl_die("%s: %m", name);
  return fd;
}

/* Waits up to 5 s for fd to be readable. */
static bool readable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r;
  while ((r = poll(&p, 1, 5000)) < 0 && errno == EINTR) {
  }
  return r == 1;
}

static void child_c(int qs, struct wl_sync* sync) {
  int file = open_data("data2", 11, 0);
  int pq[2];
  if (pipe2(pq, O_CLOEXEC) != 0) wl_die("pipe: %m");
  send_rights(qs, "shared", 6, &file, 1);
  send_rights(qs, "", 0, &pq[0], 1);
  close(pq[0]);
  int rec[2] = {file, pq[1]};
  wl_sync_post(sync, rec, sizeof rec);
  wl_wait_term();
  wl_expect(offset_of(file) == 11, "C: DIR/data2 at offset %lld, expected 11",
            (long long)offset_of(file));
  wl_expect(wl_write_full(pq[1], "from child", 10), "C: write to Q: %m");
  close(pq[1]);
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int st[2], dg[2], sq[2], p[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st) != 0 ||
      socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg) != 0 ||
      socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sq) != 0 || pipe2(p, O_CLOEXEC) != 0)
    wl_die("socketpair/pipe: %m");
  int one = 1;
  if (setsockopt(sq[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) wl_die("SO_PASSCRED: %m");

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t c = wl_fork("C");
  if (c == 0) {
    close(st[0]), close(st[1]), close(dg[0]), close(dg[1]), close(sq[1]), close(p[0]), close(p[1]);
    child_c(sq[0], &sync);
  }
  close(sq[0]);
  int c_fds[2];
  if (!wl_sync_wait(&sync, 1, c_fds, sizeof c_fds)) wl_die("C died during setup");

  /* The stream. */
  int file = open_data("data", 5, O_NONBLOCK);
  send_rights(st[0], "head", 4, NULL, 0);
  send_rights(st[0], "pipe-end", 8, &p[1], 1);
  send_rights(st[0], "file!", 5, &file, 1);
  send_rights(st[0], "tail-bytes", 10, NULL, 0);
  close(p[1]);
  close(file);

  /* The datagrams. */
  int e = eventfd(7, EFD_NONBLOCK | EFD_CLOEXEC);
  int m = (int)syscall(SYS_memfd_create, "scm-memfd", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (e < 0 || m < 0 || !wl_write_full(m, "memfd data", 10) || lseek(m, 3, SEEK_SET) != 3 ||
      fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK) != 0)
    wl_die("eventfd/memfd: %m");
  int two[2] = {e, e}, me[2] = {m, e};
  send_rights(dg[0], "two", 3, two, 2);
  send_rights(dg[0], "plain", 5, NULL, 0);
  send_rights(dg[0], "memfd+E", 7, me, 2);
  close(e);
  close(m);
  int pfd = (int)syscall(SYS_pidfd_open, c, 0);
  if (pfd < 0) wl_die("pidfd_open: %m");
  int tl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (tl < 0 || bind(tl, (struct sockaddr*)&lo, sizeof lo) != 0 || listen(tl, 4) != 0)
    wl_die("TCP listener: %m");
  int held[3] = {st[0], pfd, tl};
  send_rights(dg[0], "held", 4, held, 3);
  int opath = open(wl_path("data"), O_PATH | O_CLOEXEC);
  int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  struct itimerspec its = {.it_value = {.tv_sec = 3600}};
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  int sfd = signalfd(-1, &usr1, SFD_CLOEXEC);
  if (opath < 0 || null < 0 || tfd < 0 || sfd < 0 || timerfd_settime(tfd, 0, &its, NULL) != 0)
    wl_die("misc descriptors: %m");
  int misc[4] = {opath, null, tfd, sfd};
  send_rights(dg[0], "misc", 4, misc, 4);
  close(opath), close(null), close(tfd), close(sfd);

  wl_ready();
  wl_wait_term();

  /* The stream: the first message alone, then each with its descriptor. */
  struct got g = receive(st[1], 4);
  expect_msg(&g, "stream #0 (4-byte read)", "head", 4, 0);
  g = receive(st[1], 64);
  if (expect_msg(&g, "stream #1", "pipe-end", 8, 1)) {
    int w = g.fds[0];
    struct stat s;
    wl_expect(fstat(w, &s) == 0 && S_ISFIFO(s.st_mode) && (fcntl(w, F_GETFL) & O_ACCMODE) == O_WRONLY,
              "stream #1: not a pipe's write end");
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    wl_expect(poll(&pf, 1, 0) == 0, "P's read end: revents 0x%x before any write (its writer gone?)",
              pf.revents);
    char buf[8] = {0};
    wl_expect(wl_write_full(w, "ping", 4) && readable(p[0]) && wl_read_full(p[0], buf, 4) &&
                  memcmp(buf, "ping", 4) == 0,
              "P: \"ping\" through the received write end did not arrive (\"%s\", %m)", buf);
    close(w);
    wl_expect(readable(p[0]) && read(p[0], buf, sizeof buf) == 0,
              "P: no EOF once the received write end is closed");
  }
  g = receive(st[1], 64);
  if (expect_msg(&g, "stream #2", "file!", 5, 1)) {
    int f = g.fds[0];
    struct stat s, want;
    char buf[8] = {0};
    int fl = fcntl(f, F_GETFL);
    wl_expect(fstat(f, &s) == 0 && stat(wl_path("data"), &want) == 0 && s.st_ino == want.st_ino &&
                  s.st_dev == want.st_dev,
              "stream #2: not DIR/data");
    wl_expect(offset_of(f) == 5, "stream #2: offset %lld, expected 5", (long long)offset_of(f));
    wl_expect((fl & O_ACCMODE) == O_RDWR && (fl & O_NONBLOCK), "stream #2: flags 0%o", fl);
    wl_expect(read(f, buf, 5) == 5 && memcmp(buf, "56789", 5) == 0, "stream #2: read \"%s\"", buf);
    close(f);
  }
  g = receive(st[1], 64);
  expect_msg(&g, "stream #3", "tail-bytes", 10, 0);
  expect_empty(st[1], "stream");

  /* The datagrams: one eventfd, however many times it was sent. */
  g = receive(dg[1], 64);
  int e1 = -1;
  if (expect_msg(&g, "datagram #0", "two", 3, 2)) {
    e1 = g.fds[0];
    wl_expect(kcmp_file(getpid(), g.fds[0], getpid(), g.fds[1]) == 0,
              "datagram #0: its two descriptors are different descriptions");
    close(g.fds[1]);
  }
  g = receive(dg[1], 64);
  expect_msg(&g, "datagram #1", "plain", 5, 0);
  g = receive(dg[1], 64);
  if (expect_msg(&g, "datagram #2", "memfd+E", 7, 2)) {
    int mf = g.fds[0];
    char buf[16] = {0};
    wl_expect(pread(mf, buf, 10, 0) == 10 && memcmp(buf, "memfd data", 10) == 0,
              "datagram #2: the memfd holds \"%s\"", buf);
    wl_expect(offset_of(mf) == 3, "datagram #2: the memfd at offset %lld, expected 3",
              (long long)offset_of(mf));
    wl_expect(fcntl(mf, F_GET_SEALS) == F_SEAL_SHRINK, "datagram #2: seals 0x%x",
              fcntl(mf, F_GET_SEALS));
    wl_expect(e1 >= 0 && kcmp_file(getpid(), e1, getpid(), g.fds[1]) == 0,
              "datagram #2: its eventfd is not the one of datagram #0");
    close(mf);
    close(g.fds[1]);
  }
  if (e1 >= 0) {
    uint64_t v = 0;
    wl_expect(read(e1, &v, sizeof v) == sizeof v && v == 7, "the eventfd's count: %llu",
              (unsigned long long)v);
    wl_expect(read(e1, &v, sizeof v) < 0 && errno == EAGAIN, "the eventfd: a second count");
    close(e1);
  }
  g = receive(dg[1], 64);
  if (expect_msg(&g, "datagram #3", "held", 4, 3)) {
    wl_expect(kcmp_file(getpid(), g.fds[0], getpid(), st[0]) == 0,
              "datagram #3: not the stream's sending end");
    wl_expect(kcmp_file(getpid(), g.fds[1], getpid(), pfd) == 0, "datagram #3: not the root's pidfd");
    wl_expect(kcmp_file(getpid(), g.fds[2], getpid(), tl) == 0,
              "datagram #3: not the root's TCP listener");
    for (int i = 0; i < 3; i++) close(g.fds[i]);
  }
  g = receive(dg[1], 64);
  if (expect_msg(&g, "datagram #4", "misc", 4, 4)) {
    struct stat s, want;
    wl_expect((fcntl(g.fds[0], F_GETFL) & O_PATH) && fstat(g.fds[0], &s) == 0 &&
                  stat(wl_path("data"), &want) == 0 && s.st_ino == want.st_ino,
              "datagram #4: no O_PATH descriptor of DIR/data");
    wl_expect(fstat(g.fds[1], &s) == 0 && S_ISCHR(s.st_mode) && s.st_rdev == makedev(1, 3) &&
                  (fcntl(g.fds[1], F_GETFL) & O_ACCMODE) == O_WRONLY,
              "datagram #4: no /dev/null for writing");
    struct itimerspec now;
    wl_expect(timerfd_gettime(g.fds[2], &now) == 0 && (now.it_value.tv_sec > 0 || now.it_value.tv_nsec > 0) &&
                  now.it_value.tv_sec <= 3600 && now.it_interval.tv_sec == 0 &&
                  now.it_interval.tv_nsec == 0,
              "datagram #4: the timerfd has %lld s left", (long long)now.it_value.tv_sec);
    char path[64], info[512] = {0};
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", g.fds[3]);
    int fi = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fi >= 0 ? read(fi, info, sizeof info - 1) : -1;
    if (fi >= 0) close(fi);
    wl_expect(n > 0 && strstr(info, "sigmask:\t0000000000000200"), "datagram #4: signalfd %s", info);
    for (int i = 0; i < 4; i++) close(g.fds[i]);
  }
  expect_empty(dg[1], "datagrams");

  /* The records, with C's credentials. */
  g = receive(sq[1], 64);
  if (expect_msg(&g, "record #0", "shared", 6, 1)) {
    wl_expect(g.creds && g.cred.pid == c && g.cred.uid == getuid() && g.cred.gid == getgid(),
              "record #0: credentials pid %d (creds %d), expected C %d", (int)g.cred.pid, g.creds,
              (int)c);
    wl_expect(kcmp_file(getpid(), g.fds[0], c, c_fds[0]) == 0,
              "record #0: not C's description of DIR/data2 (%m)");
    wl_expect(offset_of(g.fds[0]) == 11, "record #0: offset %lld", (long long)offset_of(g.fds[0]));
    close(g.fds[0]);
  }
  g = receive(sq[1], 64);
  int q = -1;
  if (expect_msg(&g, "record #1 (0 bytes)", "", 0, 1)) {
    wl_expect(g.creds && g.cred.pid == c, "record #1: credentials pid %d, expected C %d",
              (int)g.cred.pid, (int)c);
    q = g.fds[0];
    struct stat s;
    wl_expect(fstat(q, &s) == 0 && S_ISFIFO(s.st_mode) && (fcntl(q, F_GETFL) & O_ACCMODE) == O_RDONLY,
              "record #1: not a pipe's read end");
  }
  expect_empty(sq[1], "records");
  kill(c, SIGTERM);
  if (q >= 0) {
    char buf[16] = {0};
    wl_expect(readable(q) && wl_read_full(q, buf, 10) && memcmp(buf, "from child", 10) == 0,
              "Q: \"from child\" did not arrive (\"%s\")", buf);
    close(q);
  }
  wl_reap(c, "C");
  wl_finish();
}
