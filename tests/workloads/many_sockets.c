/* A refusal names each object once: 200 UDP sockets on 127.0.0.1 held by 40 processes (every
 * child inherits them all) make 8000 descriptors that crest refuses. The report must list each
 * socket at most once, with its holders, and stay short; the job must be left running as it was.
 * Check: every socket still holds the one datagram it sent itself at setup, exactly once. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
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
  for (int i = 0; i < SOCKS; i++) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    sv[i] = socket(AF_INET, SOCK_DGRAM, 0);
    if (sv[i] < 0 || bind(sv[i], (struct sockaddr*)&a, sizeof a) != 0 ||
        getsockname(sv[i], (struct sockaddr*)&a, &len) != 0) {
      wl_die("UDP socket: %m");
    }
    char b = (char)i;
    if (sendto(sv[i], &b, 1, 0, (struct sockaddr*)&a, len) != 1) wl_die("sendto: %m");
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
    char b = 0;
    wl_expect(recv(sv[i], &b, 1, MSG_DONTWAIT) == 1 && b == (char)i, "socket %d lost its datagram", i);
    wl_expect(recv(sv[i], &b, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "socket %d: a second datagram",
              i);
  }
  wl_finish();
}
