/* A refusal names each object once: 200 netlink sockets (NETLINK_ROUTE, each bound to a port id
 * of its own) held by 40 processes (every child inherits them all) make 8000 descriptors that
 * crest refuses. The report must list each socket at most once, with its holders, and stay
 * short; the job must be left running as it was. Check: every socket still has its port id and
 * still answers a request (RTM_GETLINK for the loopback interface) sent after the check starts. */
#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define SOCKS 200
#define PROCS 40

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int sv[SOCKS];
  unsigned port[SOCKS];
  for (int i = 0; i < SOCKS; i++) {
    struct sockaddr_nl a = {.nl_family = AF_NETLINK};
    socklen_t len = sizeof a;
    sv[i] = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (sv[i] < 0 || bind(sv[i], (struct sockaddr*)&a, sizeof a) != 0 ||
        getsockname(sv[i], (struct sockaddr*)&a, &len) != 0) {
      wl_die("netlink socket: %m");
    }
    port[i] = a.nl_pid;
  }
  pid_t kids[PROCS - 1];
  for (int k = 0; k < PROCS - 1; k++) {
    kids[k] = wl_fork("holder");
    if (kids[k] == 0) {
      wl_wait_term();
      _exit(0);
    }
  }
  wl_ready();
  wl_wait_term();
  for (int k = 0; k < PROCS - 1; k++) kill(kids[k], SIGTERM);
  for (int k = 0; k < PROCS - 1; k++) wl_reap(kids[k], "holder");
  const int lo = (int)if_nametoindex("lo");
  for (int i = 0; i < SOCKS; i++) {
    struct sockaddr_nl a;
    socklen_t len = sizeof a;
    wl_expect(getsockname(sv[i], (struct sockaddr*)&a, &len) == 0 && a.nl_pid == port[i],
              "netlink socket %d lost its port id %u", i, port[i]);
    struct {
      struct nlmsghdr h;
      struct ifinfomsg i;
    } req = {.h = {.nlmsg_len = sizeof req, .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST,
                   .nlmsg_seq = (unsigned)i + 1},
             .i = {.ifi_family = AF_UNSPEC, .ifi_index = lo}};
    char buf[8192];
    ssize_t n = -1;
    if (send(sv[i], &req, sizeof req, 0) == (ssize_t)sizeof req) {
      do n = recv(sv[i], buf, sizeof buf, 0);
      while (n < 0 && errno == EINTR);
    }
    const struct nlmsghdr* h = (const struct nlmsghdr*)buf;
    wl_expect(n >= (ssize_t)sizeof *h && h->nlmsg_type == RTM_NEWLINK && h->nlmsg_seq == (unsigned)i + 1,
              "netlink socket %d: no answer to RTM_GETLINK (%zd, %m)", i, n);
  }
  wl_finish();
}
