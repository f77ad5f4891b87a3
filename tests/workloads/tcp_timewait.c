/* A TCP listener without SO_REUSEADDR whose port a TIME_WAIT holds: the root listens on
 * 127.0.0.1 (port from the kernel), accepts a first connection from itself and closes the
 * accepted end first (so the TIME_WAIT is on the listener's port, for a minute), then keeps a
 * second connection (c, s) with "ping" unread on s. A restore on this node must bind the port
 * again although that TIME_WAIT (and the ones the kill of the job's last life leaves) has no
 * SO_REUSEADDR. Check: SO_REUSEADDR is still 0 on the listener, s reads "ping", "pong" goes
 * back to c, and a connection made now is accepted and carries a byte. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

static int connect_to(const struct sockaddr_in* a) {
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0 || connect(c, (const struct sockaddr*)a, sizeof *a) != 0) wl_die("connect: %m");
  return c;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0 || bind(l, (struct sockaddr*)&a, sizeof a) != 0 || listen(l, 4) != 0 ||
      getsockname(l, (struct sockaddr*)&a, &len) != 0) {
    wl_die("listener: %m");
  }
  int cx = connect_to(&a), sx = accept(l, NULL, NULL);
  if (sx < 0) wl_die("accept: %m");
  close(sx); /* the accepted end closes first: its TIME_WAIT is on the listener's port */
  char b;
  struct pollfd p = {.fd = cx, .events = POLLIN};
  if (poll(&p, 1, 5000) != 1 || read(cx, &b, 1) != 0) wl_die("no EOF on the first connection");
  close(cx);
  int c = connect_to(&a), s = accept(l, NULL, NULL);
  if (s < 0 || !wl_write_full(c, "ping", 4)) wl_die("second connection: %m");

  wl_ready();
  wl_wait_term();

  int reuse = -1;
  socklen_t rl = sizeof reuse;
  wl_expect(getsockopt(l, SOL_SOCKET, SO_REUSEADDR, &reuse, &rl) == 0 && reuse == 0,
            "listener: SO_REUSEADDR is %d, was 0", reuse);
  char buf[4];
  wl_expect(wl_read_full(s, buf, 4) && memcmp(buf, "ping", 4) == 0, "s: no \"ping\"");
  wl_expect(wl_write_full(s, "pong", 4) && wl_read_full(c, buf, 4) && memcmp(buf, "pong", 4) == 0,
            "c: no \"pong\"");
  int n = connect_to(&a), x = accept(l, NULL, NULL);
  wl_expect(x >= 0 && wl_write_full(n, "!", 1) && wl_read_full(x, &b, 1) && b == '!',
            "a new connection was not served: %m");
  wl_finish();
}
