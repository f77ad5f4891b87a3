/* A refusal names each object once: 100 socketpairs (200 sockets) held by 40 processes (every
 * child inherits them all) make 8000 descriptors that crest refuses. The report must list each
 * socket at most once, with its holders, and stay short; the job must be left running as it was.
 * Check: every socket still carries a byte written at setup, each exactly once. */
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define PAIRS 100
#define PROCS 40

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int sv[PAIRS][2];
  for (int i = 0; i < PAIRS; i++) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv[i]) != 0) wl_die("socketpair: %m");
    char b = (char)i;
    if (!wl_write_full(sv[i][0], &b, 1)) wl_die("write: %m");
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
  for (int i = 0; i < PAIRS; i++) {
    char b = 0;
    wl_expect(read(sv[i][1], &b, 1) == 1 && b == (char)i, "socketpair %d lost its byte", i);
  }
  wl_finish();
}
