/* AF_UNIX SOCK_DGRAM: queued datagrams from three senders, credentials, a connected pair.
 *   srv  (root) bound to DIR/srv, O_NONBLOCK. Eight datagrams queued, unread, in this order:
 *          #  sender  bytes   sent
 *          0  c1      1       before SO_PASSCRED
 *          1  c2      100     before
 *          2  c3      6000    before
 *          3  c1      0       before
 *          4  c2      0       after srv set SO_PASSCRED
 *          5  c3      1       after
 *          6  c1      6000    after
 *          7  c3      100     after
 *        c1 (root) is bound to DIR/c1, c2 (child "senders") to the abstract name
 *        "\0crest-wl-unix_dgram.<root pid>.c2", c3 (child) is unbound and never autobound (no
 *        SO_PASSCRED on any sender). Payloads are patterns seeded by their number.
 *   peer (root) bound to DIR/peer, O_NONBLOCK; d (child) bound to DIR/d and connect()ed to
 *        DIR/peer; d sent "hello peer" with send(), unread.
 * On request, root: srv has SO_PASSCRED 1 and SO_TYPE SOCK_DGRAM; FIONREAD before each receive
 * gives the size of the next datagram; recvmsg returns the eight in order, each whole (no
 * MSG_TRUNC), its payload intact, its sender address exactly as bound (c1: the path; c2: the
 * abstract name; c3: address length 0, which is what the kernel reports for an unbound sender)
 * and an SCM_CREDENTIALS message: for #4..#7 the sender process's pid (as recorded at setup; both
 * are in the tree and keep their pids), uid and gid; for #0..#3, sent while neither end asked for
 * credentials, pid 0 and the overflow uid/gid (the kernel attached none). Then EAGAIN. peer
 * reads "hello peer" from DIR/d; c1's sendto(DIR/d) fails EPERM (d accepts only its peer). The
 * child checks c2's and c3's names (c3 still unnamed, length sizeof(sa_family_t)), d's name and
 * peer name (DIR/peer), sends "after" with send() (received by peer from DIR/d) and receives
 * "to d", sent by the root from peer to DIR/d. */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

#define NMSG 8
static const struct {
  int sender; /* 1, 2, 3: c1, c2, c3 */
  size_t len;
  bool creds;
} g_msgs[NMSG] = {{1, 1, false}, {2, 100, false}, {3, 6000, false}, {1, 0, false},
                  {2, 0, true},  {3, 1, true},    {1, 6000, true},  {3, 100, true}};

static struct sockaddr_un g_c2addr;
static socklen_t g_c2len;

static socklen_t path_addr(struct sockaddr_un* sa, const char* path) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  snprintf(sa->sun_path, sizeof sa->sun_path, "%s", path);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sa->sun_path) + 1);
}

static int bound_dgram(const struct sockaddr_un* sa, socklen_t len, int flags) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | flags, 0);
  if (fd < 0 || bind(fd, (const struct sockaddr*)sa, len) != 0) wl_die("bind dgram: %m");
  return fd;
}

static bool same_addr(const struct sockaddr_un* a, socklen_t alen, const struct sockaddr_un* b,
                      socklen_t blen) {
  return alen == blen && memcmp(a, b, alen) == 0;
}

static void expect_name(int fd, bool peer, const struct sockaddr_un* want, socklen_t wlen,
                        const char* what) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  socklen_t len = sizeof sa - 1; /* room for a terminating zero in the message */
  int r = peer ? getpeername(fd, (struct sockaddr*)&sa, &len)
               : getsockname(fd, (struct sockaddr*)&sa, &len);
  if (r != 0) {
    wl_expect(false, "%s: %s: %m", what, peer ? "getpeername" : "getsockname");
    return;
  }
  wl_expect(same_addr(&sa, len, want, wlen), "%s: %s gives length %u, path \"%s\"", what,
            peer ? "getpeername" : "getsockname", (unsigned)len, sa.sun_path);
}

/* Receives one datagram within 5 s into buf; returns its length or -1. */
static ssize_t recv_one(int fd, char* buf, size_t cap, struct sockaddr_un* from, socklen_t* flen) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  while (poll(&p, 1, 5000) < 0 && errno == EINTR) {
  }
  *flen = sizeof *from;
  return recvfrom(fd, buf, cap, MSG_DONTWAIT, (struct sockaddr*)from, flen);
}

static void send_msg(int fd, int i, const struct sockaddr_un* to, socklen_t tolen) {
  char buf[6000];
  wl_fill(buf, g_msgs[i].len, 1000 + (uint64_t)i);
  if (sendto(fd, buf, g_msgs[i].len, 0, (const struct sockaddr*)to, tolen) !=
      (ssize_t)g_msgs[i].len) {
    wl_die("sendto #%d: %m", i);
  }
}

static int read_sysctl(const char* path) {
  FILE* f = fopen(path, "re");
  int v = -1;
  if (f) {
    if (fscanf(f, "%d", &v) != 1) v = -1;
    fclose(f);
  }
  return v;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t root = getpid();
  struct sockaddr_un srv_a, c1_a, peer_a, d_a, from, unnamed = {.sun_family = AF_UNIX};
  socklen_t srv_l = path_addr(&srv_a, wl_path("srv")), c1_l = path_addr(&c1_a, wl_path("c1"));
  socklen_t peer_l = path_addr(&peer_a, wl_path("peer")), d_l = path_addr(&d_a, wl_path("d"));
  memset(&g_c2addr, 0, sizeof g_c2addr);
  g_c2addr.sun_family = AF_UNIX;
  int nlen = snprintf(g_c2addr.sun_path + 1, sizeof g_c2addr.sun_path - 1,
                      "crest-wl-unix_dgram.%d.c2", (int)root);
  g_c2len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)nlen);

  int srv = bound_dgram(&srv_a, srv_l, SOCK_NONBLOCK);
  int c1 = bound_dgram(&c1_a, c1_l, 0);
  int c2 = bound_dgram(&g_c2addr, g_c2len, 0);
  int c3 = socket(AF_UNIX, SOCK_DGRAM, 0);
  int peer = bound_dgram(&peer_a, peer_l, SOCK_NONBLOCK);
  int d = bound_dgram(&d_a, d_l, 0);
  if (c3 < 0 || connect(d, (struct sockaddr*)&peer_a, peer_l) != 0) wl_die("c3/d: %m");

  /* The child sends the datagrams it is told to, one at a time, so the order is fixed. */
  int go[2], done[2];
  if (pipe(go) != 0 || pipe(done) != 0) wl_die("pipe: %m");
  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("senders");
  if (child == 0) {
    close(srv), close(c1), close(peer), close(go[1]), close(done[0]);
    unsigned char i;
    while (wl_read_full(go[0], &i, 1) && i < NMSG) {
      send_msg(g_msgs[i].sender == 2 ? c2 : c3, i, &srv_a, srv_l);
      if (!wl_write_full(done[1], &i, 1)) wl_die("ack: %m");
    }
    close(go[0]), close(done[1]);
    if (send(d, "hello peer", 10, 0) != 10) wl_die("send on d: %m");
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();

    expect_name(c2, false, &g_c2addr, g_c2len, "c2");
    expect_name(c3, false, &unnamed, sizeof(sa_family_t), "c3 (unbound)");
    expect_name(d, false, &d_a, d_l, "d");
    expect_name(d, true, &peer_a, peer_l, "d");
    wl_expect(send(d, "after", 5, 0) == 5, "send on d after the request: %m");
    char buf[16];
    socklen_t flen;
    ssize_t n = recv_one(d, buf, sizeof buf, &from, &flen);
    wl_expect(n == 4 && memcmp(buf, "to d", 4) == 0 && same_addr(&from, flen, &peer_a, peer_l),
              "d: no \"to d\" from DIR/peer (%zd, %m)", n);
    wl_finish();
  }
  close(c2), close(c3), close(d), close(go[0]), close(done[1]);
  int one = 1;
  for (unsigned char i = 0; i < NMSG; i++) {
    if (i == 4 && setsockopt(srv, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
      wl_die("SO_PASSCRED: %m");
    }
    if (g_msgs[i].sender == 1) {
      send_msg(c1, i, &srv_a, srv_l);
    } else if (!wl_write_full(go[1], &i, 1) || !wl_read_full(done[0], &i, 1)) {
      wl_die("senders died during setup");
    }
  }
  unsigned char stop = 0xff;
  (void)wl_write_full(go[1], &stop, 1);
  close(go[1]), close(done[0]);
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("senders died during setup");
  int overflow_uid = read_sysctl("/proc/sys/kernel/overflowuid");
  int overflow_gid = read_sysctl("/proc/sys/kernel/overflowgid");

  wl_ready();
  wl_wait_term();

  int v = -1;
  socklen_t vl = sizeof v;
  wl_expect(getsockopt(srv, SOL_SOCKET, SO_PASSCRED, &v, &vl) == 0 && v == 1, "srv: SO_PASSCRED %d",
            v);
  vl = sizeof v;
  wl_expect(getsockopt(srv, SOL_SOCKET, SO_TYPE, &v, &vl) == 0 && v == SOCK_DGRAM,
            "srv: SO_TYPE %d", v);
  expect_name(srv, false, &srv_a, srv_l, "srv");

  char* buf = malloc(8192);
  for (int i = 0; i < NMSG; i++) {
    int pending = -1;
    wl_expect(ioctl(srv, FIONREAD, &pending) == 0 && pending == (int)g_msgs[i].len,
              "#%d: FIONREAD %d, expected %zu", i, pending, g_msgs[i].len);
    char cbuf[CMSG_SPACE(sizeof(struct ucred)) + 64];
    struct iovec iov = {.iov_base = buf, .iov_len = 8192};
    struct msghdr m = {.msg_name = &from,
                       .msg_namelen = sizeof from,
                       .msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = cbuf,
                       .msg_controllen = sizeof cbuf};
    ssize_t n = recvmsg(srv, &m, MSG_DONTWAIT);
    if (!wl_expect(n >= 0, "#%d: recvmsg: %m", i)) break;
    wl_expect((size_t)n == g_msgs[i].len && !(m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)),
              "#%d: %zd bytes (flags 0x%x), expected %zu", i, n, m.msg_flags, g_msgs[i].len);
    long bad = wl_check(buf, (size_t)n, 1000 + (uint64_t)i);
    wl_expect(bad < 0, "#%d: byte %ld differs", i, bad);
    int s = g_msgs[i].sender;
    if (s == 1) {
      wl_expect(same_addr(&from, m.msg_namelen, &c1_a, c1_l), "#%d: sender is not DIR/c1", i);
    } else if (s == 2) {
      wl_expect(same_addr(&from, m.msg_namelen, &g_c2addr, g_c2len),
                "#%d: sender is not the abstract c2 (length %u)", i, (unsigned)m.msg_namelen);
    } else {
      wl_expect(m.msg_namelen == 0, "#%d: unbound sender has address length %u", i,
                (unsigned)m.msg_namelen);
    }
    struct cmsghdr* h = CMSG_FIRSTHDR(&m);
    if (!wl_expect(h && h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_CREDENTIALS &&
                       CMSG_NXTHDR(&m, h) == NULL,
                   "#%d: not exactly one SCM_CREDENTIALS", i)) {
      continue;
    }
    struct ucred u;
    memcpy(&u, CMSG_DATA(h), sizeof u);
    int want_pid = g_msgs[i].creds ? (int)(s == 1 ? root : child) : 0;
    int want_uid = g_msgs[i].creds ? (int)getuid() : overflow_uid;
    int want_gid = g_msgs[i].creds ? (int)getgid() : overflow_gid;
    wl_expect((int)u.pid == want_pid && (int)u.uid == want_uid && (int)u.gid == want_gid,
              "#%d: credentials pid %d uid %d gid %d, expected %d %d %d", i, (int)u.pid, (int)u.uid,
              (int)u.gid, want_pid, want_uid, want_gid);
  }
  ssize_t n = recv(srv, buf, 8192, MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EAGAIN, "srv: more than %d datagrams queued (%zd, %m)", NMSG, n);

  /* The connected pair. */
  socklen_t flen;
  n = recv_one(peer, buf, 8192, &from, &flen);
  wl_expect(n == 10 && memcmp(buf, "hello peer", 10) == 0 && same_addr(&from, flen, &d_a, d_l),
            "peer: queued \"hello peer\" from DIR/d missing (%zd, %m)", n);
  n = sendto(c1, "intruder", 8, MSG_DONTWAIT, (struct sockaddr*)&d_a, d_l);
  wl_expect(n < 0 && errno == EPERM, "c1 -> connected d: %zd (%m), expected EPERM", n);
  kill(child, SIGTERM);
  n = recv_one(peer, buf, 8192, &from, &flen);
  wl_expect(n == 5 && memcmp(buf, "after", 5) == 0 && same_addr(&from, flen, &d_a, d_l),
            "peer: no \"after\" from DIR/d (%zd, %m)", n);
  wl_expect(sendto(peer, "to d", 4, 0, (struct sockaddr*)&d_a, d_l) == 4, "peer -> d: %m");
  wl_reap(child, "senders");
  free(buf);
  wl_finish();
}
