/* Refusal workload: a NETLINK_ROUTE socket with the kernel's answer to RTM_GETLINK queued and not
 * read yet. Netlink queues cannot be read without taking the messages, so `crest dump` must refuse
 * naming the queued messages, and leave them queued: the check reads the answer, whole. */
#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (s < 0) wl_die("route socket: %m");
  struct {
    struct nlmsghdr h;
    struct ifinfomsg i;
  } req = {.h = {.nlmsg_len = sizeof req, .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST,
                 .nlmsg_seq = 9},
           .i = {.ifi_family = AF_UNSPEC, .ifi_index = (int)if_nametoindex("lo")}};
  if (send(s, &req, sizeof req, 0) != (ssize_t)sizeof req) wl_die("send: %m");
  char peek[8192];
  ssize_t want = recv(s, peek, sizeof peek, MSG_PEEK);
  if (want <= 0) wl_die("no answer: %m");

  wl_ready();
  wl_wait_term();

  char buf[8192];
  ssize_t n = recv(s, buf, sizeof buf, MSG_DONTWAIT);
  const struct nlmsghdr* h = (const struct nlmsghdr*)buf;
  wl_expect(n == want && memcmp(buf, peek, (size_t)n) == 0 && h->nlmsg_type == RTM_NEWLINK &&
                h->nlmsg_seq == 9,
            "the queued answer is gone or changed (%zd bytes, expected %zd: %m)", n, want);
  wl_finish();
}
