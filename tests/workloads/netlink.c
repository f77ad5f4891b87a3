/* Netlink sockets of several protocols, in two processes:
 *   - a NETLINK_ROUTE socket bound (port id chosen by the kernel), in the groups RTNLGRP_LINK and
 *     RTNLGRP_IPV4_IFADDR and in a group above 32 (RTNLGRP_NEXTHOP, joined by setsockopt only),
 *     with NETLINK_EXT_ACK, NETLINK_NO_ENOBUFS, NETLINK_GET_STRICT_CHK and SO_RCVBUF set, in
 *     non-blocking mode: same port id, groups, options and flags after the restore, and it still
 *     answers RTM_GETLINK for the loopback interface;
 *   - a NETLINK_GENERIC socket never bound: still not bound (port id 0), and it is given one
 *     and answered when it first asks (CTRL_CMD_GETFAMILY for "nlctrl");
 *   - two NETLINK_USERSOCK sockets talking by port id: one bound to a port id of the program's
 *     choosing, one (in the child) connected to it: a message sent after the restore arrives
 *     from the sender's port id.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

static unsigned port_of(int s) {
  struct sockaddr_nl a;
  socklen_t len = sizeof a;
  if (getsockname(s, (struct sockaddr*)&a, &len) != 0) return ~0u;
  return a.nl_pid;
}

static int opt(int s, int level, int name) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(s, level, name, &v, &len) != 0) return -1;
  return v;
}

/* Waits for one message (the socket may be non-blocking). */
static ssize_t recv_one(int s, void* buf, size_t len, struct sockaddr_nl* from) {
  for (int i = 0; i < 2000; i++) {
    socklen_t flen = sizeof *from;
    ssize_t n = recvfrom(s, buf, len, MSG_DONTWAIT, (struct sockaddr*)from, &flen);
    if (n >= 0 || (errno != EAGAIN && errno != EINTR)) return n;
    usleep(1000);
  }
  errno = ETIMEDOUT;
  return -1;
}

static void check_route(int s, unsigned seq) {
  struct {
    struct nlmsghdr h;
    struct ifinfomsg i;
  } req = {.h = {.nlmsg_len = sizeof req, .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST,
                 .nlmsg_seq = seq},
           .i = {.ifi_family = AF_UNSPEC, .ifi_index = (int)if_nametoindex("lo")}};
  char buf[8192];
  struct sockaddr_nl from;
  ssize_t n = -1;
  if (send(s, &req, sizeof req, 0) == (ssize_t)sizeof req) n = recv_one(s, buf, sizeof buf, &from);
  const struct nlmsghdr* h = (const struct nlmsghdr*)buf;
  wl_expect(n >= (ssize_t)sizeof *h && h->nlmsg_type == RTM_NEWLINK && h->nlmsg_seq == seq,
            "route socket: no answer to RTM_GETLINK (%zd, %m)", n);
}

static void check_generic(int s) {
  struct {
    struct nlmsghdr h;
    struct genlmsghdr g;
    struct nlattr a;
    char name[8];
  } req;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = GENL_ID_CTRL;
  req.h.nlmsg_flags = NLM_F_REQUEST;
  req.h.nlmsg_seq = 77;
  req.g.cmd = CTRL_CMD_GETFAMILY;
  req.g.version = 1;
  req.a.nla_len = NLA_HDRLEN + 7;
  req.a.nla_type = CTRL_ATTR_FAMILY_NAME;
  memcpy(req.name, "nlctrl", 7);
  char buf[8192];
  struct sockaddr_nl from;
  ssize_t n = -1;
  if (send(s, &req, sizeof req, 0) == (ssize_t)sizeof req) n = recv_one(s, buf, sizeof buf, &from);
  const struct nlmsghdr* h = (const struct nlmsghdr*)buf;
  wl_expect(n >= (ssize_t)sizeof *h && h->nlmsg_type == GENL_ID_CTRL && h->nlmsg_seq == 77,
            "generic socket: no answer to CTRL_CMD_GETFAMILY (%zd, %m)", n);
  wl_expect(port_of(s) != 0, "generic socket: no port id after its first request");
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  /* route */
  int rt = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  struct sockaddr_nl a = {.nl_family = AF_NETLINK, .nl_groups = 1u << (RTNLGRP_LINK - 1)};
  if (rt < 0 || bind(rt, (struct sockaddr*)&a, sizeof a) != 0) wl_die("route socket: %m");
  int one = 1, big = 300000;
  unsigned g = RTNLGRP_IPV4_IFADDR, g2 = RTNLGRP_NEXTHOP;
  if (setsockopt(rt, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g) != 0 ||
      setsockopt(rt, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g2, sizeof g2) != 0 ||
      setsockopt(rt, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one) != 0 ||
      setsockopt(rt, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one) != 0 ||
      setsockopt(rt, SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof one) != 0 ||
      setsockopt(rt, SOL_SOCKET, SO_RCVBUF, &big, sizeof big) != 0)
    wl_die("route socket options: %m");
  fcntl(rt, F_SETFL, O_NONBLOCK);
  const unsigned rt_port = port_of(rt);
  const int rcvbuf = opt(rt, SOL_SOCKET, SO_RCVBUF);
  uint32_t groups[4] = {0};
  socklen_t glen = sizeof groups;
  if (getsockopt(rt, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups, &glen) != 0) wl_die("groups: %m");
  check_route(rt, 1);

  /* generic, never bound */
  int gen = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
  if (gen < 0) wl_die("generic socket: %m");

  /* usersock: a receiver bound to a port id of our own */
  const unsigned rx_port = 0x40000000u | (unsigned)getpid();
  int rx = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_USERSOCK);
  struct sockaddr_nl ra = {.nl_family = AF_NETLINK, .nl_pid = rx_port};
  if (rx < 0 || bind(rx, (struct sockaddr*)&ra, sizeof ra) != 0) wl_die("usersock receiver: %m");

  int sync[2];
  if (pipe(sync) != 0) wl_die("pipe: %m");
  pid_t child = wl_fork("sender");
  if (child == 0) {
    close(sync[0]);
    int tx = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_USERSOCK);
    struct sockaddr_nl ta = {.nl_family = AF_NETLINK};
    if (tx < 0 || bind(tx, (struct sockaddr*)&ta, sizeof ta) != 0 ||
        connect(tx, (struct sockaddr*)&ra, sizeof ra) != 0)
      wl_die("usersock sender: %m");
    unsigned tx_port = port_of(tx);
    if (write(sync[1], &tx_port, sizeof tx_port) != sizeof tx_port) wl_die("sync: %m");
    wl_wait_term();
    wl_expect(port_of(tx) == tx_port, "sender: port id %u, was %u", port_of(tx), tx_port);
    struct sockaddr_nl peer;
    socklen_t plen = sizeof peer;
    wl_expect(getpeername(tx, (struct sockaddr*)&peer, &plen) == 0 && peer.nl_pid == rx_port,
              "sender: no longer connected to port %u", rx_port);
    struct nlmsghdr m = {.nlmsg_len = sizeof m, .nlmsg_type = 0x77, .nlmsg_seq = 42};
    wl_expect(send(tx, &m, sizeof m, 0) == (ssize_t)sizeof m, "sender: send: %m");
    wl_finish();
  }
  close(sync[1]);
  unsigned tx_port = 0;
  if (read(sync[0], &tx_port, sizeof tx_port) != sizeof tx_port) wl_die("sync: %m");

  wl_ready();
  wl_wait_term();

  wl_expect(port_of(rt) == rt_port, "route socket: port id %u, was %u", port_of(rt), rt_port);
  uint32_t now[4] = {0};
  glen = sizeof now;
  wl_expect(getsockopt(rt, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, now, &glen) == 0 &&
                memcmp(now, groups, sizeof now) == 0,
            "route socket: groups %x %x, were %x %x", now[0], now[1], groups[0], groups[1]);
  wl_expect(opt(rt, SOL_NETLINK, NETLINK_EXT_ACK) == 1 && opt(rt, SOL_NETLINK, NETLINK_NO_ENOBUFS) == 1 &&
                opt(rt, SOL_NETLINK, NETLINK_GET_STRICT_CHK) == 1 && opt(rt, SOL_NETLINK, NETLINK_PKTINFO) == 0,
            "route socket: netlink options differ");
  wl_expect(opt(rt, SOL_SOCKET, SO_RCVBUF) == rcvbuf, "route socket: SO_RCVBUF %d, was %d",
            opt(rt, SOL_SOCKET, SO_RCVBUF), rcvbuf);
  wl_expect((fcntl(rt, F_GETFL) & O_NONBLOCK) && (fcntl(rt, F_GETFD) & FD_CLOEXEC),
            "route socket: flags differ");
  check_route(rt, 2);

  wl_expect(port_of(gen) == 0, "generic socket: bound to port %u, was never bound", port_of(gen));
  check_generic(gen);

  wl_expect(port_of(rx) == rx_port, "usersock: port id %u, was %u", port_of(rx), rx_port);
  kill(child, SIGTERM);
  wl_reap(child, "sender");
  char buf[256];
  struct sockaddr_nl from;
  ssize_t n = recv_one(rx, buf, sizeof buf, &from);
  const struct nlmsghdr* h = (const struct nlmsghdr*)buf;
  wl_expect(n == (ssize_t)sizeof *h && h->nlmsg_type == 0x77 && h->nlmsg_seq == 42 && from.nl_pid == tx_port,
            "usersock: the sender's message did not arrive from port %u (%zd, from %u)", tx_port, n,
            from.nl_pid);
  wl_finish();
}
