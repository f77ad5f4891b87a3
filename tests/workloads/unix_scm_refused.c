/* Refusal workload: descriptors in flight (SCM_RIGHTS) crest cannot restore exactly, leaving the
 * job running intact. A SOCK_DGRAM socketpair q (the root holds both ends) has two datagrams
 * queued:
 *   (a) "sockets": both ends of a SOCK_STREAM socketpair x, "x-data" written into x[0] before;
 *       the root closed both: Unix sockets held only in flight (they could carry descriptors in
 *       turn: the kernel's garbage collector's case);
 *   (b) "epoll": an epoll instance watching eventfd E for EPOLLIN; the root closed the epoll
 *       (E it keeps, count 1): an epoll held only in flight.
 * (c) A SOCK_SEQPACKET listener on the abstract name "\0crest-wl-unix_scm_refused.<root pid>"
 *     with a connection waiting to be accepted, whose client k sent "w" with a descriptor of E.
 * On request, root: (a) arrives with two descriptors, stream sockets connected to each other:
 * x[1] reads "x-data", and "back" sent through x[1] arrives at x[0]; (b) with one epoll
 * descriptor that reports E readable; (c) the listener accepts the connection, which gives "w"
 * with E again (kcmp KCMP_FILE), and then nothing more. */
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

static void send_rights(int s, const char* data, const int* fds, int nfds) {
  union {
    char buf[CMSG_SPACE(2 * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct iovec iov = {.iov_base = (void*)data, .iov_len = strlen(data)};
  struct msghdr m = {.msg_iov = &iov,
                     .msg_iovlen = 1,
                     .msg_control = ctl.buf,
                     .msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int))};
  struct cmsghdr* h = CMSG_FIRSTHDR(&m);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
  memcpy(CMSG_DATA(h), fds, (size_t)nfds * sizeof(int));
  if (sendmsg(s, &m, 0) != (ssize_t)strlen(data)) wl_die("sendmsg \"%s\": %m", data);
}

/* Receives one message: its length (data in buf), its descriptors in fds (at most 2). */
static ssize_t receive(int s, char* buf, size_t cap, int* fds, int* nfds) {
  union {
    char buf[CMSG_SPACE(4 * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct iovec iov = {.iov_base = buf, .iov_len = cap};
  struct msghdr m = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  ssize_t n = recvmsg(s, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  *nfds = 0;
  if (n < 0) return n;
  for (struct cmsghdr* h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < k; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(h) + (size_t)i * sizeof fd, sizeof fd);
      if (*nfds < 2)
        fds[(*nfds)++] = fd;
      else
        close(fd);
    }
  }
  return n;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int q[2], x[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, q) != 0 ||
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, x) != 0)
    wl_die("socketpair: %m");
  /* (a) */
  if (!wl_write_full(x[0], "x-data", 6)) wl_die("write x: %m");
  send_rights(q[0], "sockets", x, 2);
  close(x[0]);
  close(x[1]);
  /* (b) */
  int e = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42};
  if (e < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev) != 0) wl_die("epoll: %m");
  send_rights(q[0], "epoll", &ep, 1);
  close(ep);
  /* (c) */
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  int nlen = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "crest-wl-unix_scm_refused.%d",
                      (int)getpid());
  socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)nlen);
  int l = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  int k = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (l < 0 || k < 0 || bind(l, (struct sockaddr*)&a, alen) != 0 || listen(l, 4) != 0 ||
      connect(k, (struct sockaddr*)&a, alen) != 0)
    wl_die("listener: %m");
  send_rights(k, "w", &e, 1);

  wl_ready();
  wl_wait_term();

  char buf[32] = {0};
  int fds[2];
  int nfds;
  /* (a) */
  ssize_t n = receive(q[1], buf, sizeof buf, fds, &nfds);
  if (wl_expect(n == 7 && memcmp(buf, "sockets", 7) == 0 && nfds == 2,
                "(a): %zd bytes with %d descriptors (%m)", n, nfds)) {
    memset(buf, 0, sizeof buf);
    wl_expect(wl_read_full(fds[1], buf, 6) && memcmp(buf, "x-data", 6) == 0,
              "(a): x[1] reads \"%s\"", buf);
    memset(buf, 0, sizeof buf);
    wl_expect(wl_write_full(fds[1], "back", 4) && wl_read_full(fds[0], buf, 4) &&
                  memcmp(buf, "back", 4) == 0,
              "(a): x[0] reads \"%s\"", buf);
    close(fds[0]);
    close(fds[1]);
  }
  /* (b) */
  n = receive(q[1], buf, sizeof buf, fds, &nfds);
  if (wl_expect(n == 5 && memcmp(buf, "epoll", 5) == 0 && nfds == 1,
                "(b): %zd bytes with %d descriptors (%m)", n, nfds)) {
    struct epoll_event got;
    wl_expect(epoll_wait(fds[0], &got, 1, 0) == 1 && got.data.u64 == 42 && (got.events & EPOLLIN),
              "(b): the epoll does not report E");
    close(fds[0]);
  }
  n = recv(q[1], buf, sizeof buf, MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EAGAIN, "q: a third datagram (%zd, %m)", n);
  /* (c) */
  int acc = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (wl_expect(acc >= 0, "(c): accept: %m")) {
    n = receive(acc, buf, sizeof buf, fds, &nfds);
    if (wl_expect(n == 1 && buf[0] == 'w' && nfds == 1, "(c): %zd bytes with %d descriptors (%m)",
                  n, nfds)) {
      wl_expect(syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, fds[0], e) == 0,
                "(c): the descriptor is not E");
      close(fds[0]);
    }
    n = recv(acc, buf, sizeof buf, MSG_DONTWAIT);
    wl_expect(n < 0 && errno == EAGAIN, "(c): a second record (%zd, %m)", n);
    close(acc);
  }
  close(k);
  close(l);
  wl_finish();
}
