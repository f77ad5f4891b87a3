/* Refusal workload: holds a connected AF_UNIX socketpair with unread data and a TCP listener on
 * 127.0.0.1 (both of which crest restores) beside a packet socket (which it does not), so
 * `crest dump` must refuse naming the packet socket and leave the process running; the check
 * proves all three still work. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0) wl_die("socketpair: %m");
  if (!wl_write_full(sp[0], "hello", 5)) wl_die("write: %m");

  int lst = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (lst < 0 || bind(lst, (struct sockaddr*)&addr, sizeof addr) != 0 || listen(lst, 4) != 0) {
    wl_die("TCP listener: %m");
  }
  socklen_t alen = sizeof addr;
  getsockname(lst, (struct sockaddr*)&addr, &alen);
  unsigned short port = ntohs(addr.sin_port);

  /* Protocol 0: it receives nothing until bound to a protocol. */
  int pk = socket(AF_PACKET, SOCK_DGRAM, 0);
  if (pk < 0) wl_die("packet socket: %m");

  wl_ready();
  wl_wait_term();

  struct sockaddr_ll ll;
  socklen_t llen = sizeof ll;
  wl_expect(getsockname(pk, (struct sockaddr*)&ll, &llen) == 0 && ll.sll_family == AF_PACKET,
            "the packet socket is gone: %m");

  char buf[5];
  wl_expect(wl_read_full(sp[1], buf, 5) && memcmp(buf, "hello", 5) == 0,
            "socketpair lost its data");
  wl_expect(
      wl_write_full(sp[1], "back", 4) && wl_read_full(sp[0], buf, 4) && memcmp(buf, "back", 4) == 0,
      "socketpair round trip failed");
  alen = sizeof addr;
  wl_expect(getsockname(lst, (struct sockaddr*)&addr, &alen) == 0 && ntohs(addr.sin_port) == port,
            "listener lost its port");
  wl_expect(accept(lst, NULL, NULL) < 0 && errno == EAGAIN, "listener accept: %m");
  wl_finish();
}
