/* Refusal workload: AF_UNIX state crest must refuse to dump, leaving the job running intact.
 *   (a) A stream connection to a process outside the tree. The root forks D, D forks G and
 *       exits; the root reaps D, so G is reparented out of the tree. G leaves the root's session
 *       (setsid), names itself "wl-unix-outside", listens on the abstract name
 *       "\0crest-wl-unix_refused.<root pid>", accepts the root's connection, sends "hello from
 *       outside" (left unread by the root) and then echoes whatever arrives. G exits on EOF, on
 *       SIGTERM, or 60 s after it started, so it never outlives the test for long.
 *   (b) A SOCK_DGRAM socketpair with one queued datagram "fd attached" carrying SCM_RIGHTS: the
 *       read end of a pipe that holds "through the pipe"; the root closed both pipe ends after
 *       sending, so the pipe exists only in flight (restorable on its own: unix_scm_rights).
 * On request, root: the connection's SO_PEERCRED pid is still G's; "hello from outside" is
 * there, and "echo?" sent now comes back; the datagram arrives with exactly one descriptor
 * (no MSG_CTRUNC), a FIFO that reads "through the pipe" and then EOF. Then the root closes the
 * connection and makes sure G is gone: it waits for G to exit on the EOF and sends it SIGTERM
 * (by pid, only while that pid is still G: comm and own session) if it has not. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define G_NAME "wl-unix-outside"
#define G_LIFETIME 60.0
#define HELLO "hello from outside"
#define PIPE_TEXT "through the pipe"

static struct sockaddr_un g_addr;
static socklen_t g_addrlen;

/* Waits until fd is readable, SIGTERM arrived or the deadline passed. */
static bool readable_before(int fd, double deadline) {
  while (!wl_term && wl_now() < deadline) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 1000) == 1) return true;
  }
  return false;
}

static void outside_g(struct wl_sync* sync) {
  double deadline = wl_now() + G_LIFETIME;
  setsid();
  prctl(PR_SET_NAME, G_NAME, 0, 0, 0);
  int l = socket(AF_UNIX, SOCK_STREAM, 0);
  if (l < 0 || bind(l, (struct sockaddr*)&g_addr, g_addrlen) != 0 || listen(l, 1) != 0) _exit(1);
  pid_t me = getpid();
  wl_sync_post(sync, &me, sizeof me);
  int c = readable_before(l, deadline) ? accept(l, NULL, NULL) : -1;
  close(l);
  if (c < 0 || !wl_write_full(c, HELLO, strlen(HELLO))) _exit(1);
  char buf[256];
  while (readable_before(c, deadline)) {
    ssize_t n = recv(c, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0 || send(c, buf, (size_t)n, MSG_NOSIGNAL) != n) break;
  }
  _exit(0);
}

/* Receives exactly len bytes within 5 s. */
static bool recv_exact(int fd, char* buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1) return false;
    ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
    if (n <= 0) return false;
    got += (size_t)n;
  }
  return true;
}

/* Whether pid is still our G: its comm, and its own session. */
static bool is_g(pid_t g) {
  char path[64], comm[32] = {0};
  snprintf(path, sizeof path, "/proc/%d/comm", (int)g);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, comm, sizeof comm - 1);
  close(fd);
  comm[n > 0 ? n : 0] = 0;
  comm[strcspn(comm, "\n")] = 0;
  return strcmp(comm, G_NAME) == 0 && getsid(g) == g;
}

/* Alive and not a zombie (G is not ours to reap: its new parent does). */
static bool running(pid_t g) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)g);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  char* rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

static bool wait_gone(pid_t g, double seconds) {
  double t0 = wl_now();
  while (running(g)) {
    if (wl_now() - t0 > seconds) return false;
    usleep(2000);
  }
  return true;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  memset(&g_addr, 0, sizeof g_addr);
  g_addr.sun_family = AF_UNIX;
  int nlen = snprintf(g_addr.sun_path + 1, sizeof g_addr.sun_path - 1, "crest-wl-unix_refused.%d",
                      (int)getpid());
  g_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)nlen);

  /* (a) G, outside the tree, before anything else exists that it could inherit. */
  struct wl_sync gsync;
  wl_sync_init(&gsync);
  pid_t d = wl_fork("D");
  if (d == 0) {
    if (wl_fork("outside") == 0) outside_g(&gsync);
    _exit(0);
  }
  wl_reap(d, "D");
  pid_t g = -1;
  if (!wl_sync_wait(&gsync, 1, &g, sizeof g)) wl_die("G died before listening");
  siginfo_t si;
  if (waitid(P_PID, (id_t)g, &si, WEXITED | WNOHANG | WNOWAIT) == 0) wl_die("G is our child");
  int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0 || connect(c, (struct sockaddr*)&g_addr, g_addrlen) != 0) wl_die("connect to G: %m");
  struct ucred cred;
  socklen_t clen = sizeof cred;
  if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || cred.pid != g) {
    wl_die("SO_PEERCRED of the connection to G: pid %d, expected %d", (int)cred.pid, (int)g);
  }
  struct pollfd p = {.fd = c, .events = POLLIN};
  if (poll(&p, 1, 5000) != 1) wl_die("G's hello did not arrive");

  /* (b) A pipe's read end in flight. */
  int q[2], pp[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM, 0, q) != 0 || pipe(pp) != 0) wl_die("socketpair/pipe: %m");
  if (!wl_write_full(pp[1], PIPE_TEXT, strlen(PIPE_TEXT))) wl_die("write pipe: %m");
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct iovec iov = {.iov_base = "fd attached", .iov_len = 11};
  struct msghdr m = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  struct cmsghdr* h = CMSG_FIRSTHDR(&m);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(h), &pp[0], sizeof(int));
  if (sendmsg(q[0], &m, 0) != 11) wl_die("sendmsg SCM_RIGHTS: %m");
  close(pp[0]);
  close(pp[1]);

  wl_ready();
  wl_wait_term();

  /* (b) */
  char buf[64] = {0};
  union {
    char buf[CMSG_SPACE(4 * sizeof(int))];
    struct cmsghdr align;
  } rctl;
  struct iovec riov = {.iov_base = buf, .iov_len = sizeof buf};
  struct msghdr rm = {.msg_iov = &riov,
                      .msg_iovlen = 1,
                      .msg_control = rctl.buf,
                      .msg_controllen = sizeof rctl.buf};
  ssize_t n = recvmsg(q[1], &rm, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  wl_expect(n == 11 && memcmp(buf, "fd attached", 11) == 0 && !(rm.msg_flags & MSG_CTRUNC),
            "the SCM_RIGHTS datagram: %zd (%m), flags 0x%x", n, rm.msg_flags);
  h = n >= 0 ? CMSG_FIRSTHDR(&rm) : NULL;
  if (wl_expect(h && h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS &&
                    h->cmsg_len == CMSG_LEN(sizeof(int)) && CMSG_NXTHDR(&rm, h) == NULL,
                "the datagram does not carry exactly one descriptor")) {
    int fd;
    memcpy(&fd, CMSG_DATA(h), sizeof fd);
    struct stat st;
    wl_expect(fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode), "the received fd is not a pipe");
    memset(buf, 0, sizeof buf);
    wl_expect(wl_read_full(fd, buf, strlen(PIPE_TEXT)) && strcmp(buf, PIPE_TEXT) == 0,
              "the received pipe holds \"%s\", expected \"%s\"", buf, PIPE_TEXT);
    wl_expect(read(fd, buf, sizeof buf) == 0, "the received pipe is not at EOF");
    close(fd);
  }
  n = recv(q[1], buf, sizeof buf, MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EAGAIN, "a second datagram (%zd, %m)", n);

  /* (a) */
  clen = sizeof cred;
  wl_expect(getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 && cred.pid == g,
            "SO_PEERCRED pid %d, expected G %d", (int)cred.pid, (int)g);
  memset(buf, 0, sizeof buf);
  wl_expect(recv_exact(c, buf, strlen(HELLO)) && strcmp(buf, HELLO) == 0,
            "G's queued hello: \"%s\"", buf);
  memset(buf, 0, sizeof buf);
  wl_expect(send(c, "echo?", 5, MSG_NOSIGNAL) == 5 && recv_exact(c, buf, 5) &&
                memcmp(buf, "echo?", 5) == 0,
            "G did not echo (\"%s\", %m)", buf);
  close(c);
  if (!wait_gone(g, 2) && is_g(g)) {
    wl_expect(kill(g, SIGTERM) == 0, "kill(G %d): %m", (int)g);
    wl_expect(wait_gone(g, 2), "G (%d) did not exit", (int)g);
  }
  wl_finish();
}
