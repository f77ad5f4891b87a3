/* A refusal names each object once: 200 packet sockets (each bound to the loopback interface
 * with a protocol of its own, so no traffic reaches them) held by 40 processes (every child
 * inherits them all) make 8000 descriptors that crest refuses. The report must list each socket
 * at most once, with its holders, and stay short; the job must be left running as it was. Check:
 * every socket is still bound where it was. */
#include <errno.h>
#include <arpa/inet.h>
#include <linux/if_packet.h>
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
  const int lo = (int)if_nametoindex("lo");
  for (int i = 0; i < SOCKS; i++) {
    /* An ethertype of its own per socket, which nothing sends on loopback. */
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons((unsigned short)(0x9000 + i)),
                            .sll_ifindex = lo};
    sv[i] = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sv[i] < 0 || bind(sv[i], (struct sockaddr*)&a, sizeof a) != 0) wl_die("packet socket: %m");
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
  for (int i = 0; i < SOCKS; i++) {
    struct sockaddr_ll a;
    socklen_t len = sizeof a;
    wl_expect(getsockname(sv[i], (struct sockaddr*)&a, &len) == 0 && a.sll_ifindex == lo &&
                  a.sll_protocol == htons((unsigned short)(0x9000 + i)),
              "packet socket %d is no longer bound where it was", i);
  }
  wl_finish();
}
