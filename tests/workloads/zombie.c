/* Children that have exited but are not reaped yet at checkpoint time: one exited with a code,
 * one was killed by a signal. After the restore the root reaps both and must get exactly those
 * statuses (a restore that dropped them would give ECHILD). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define CODE 37

static bool is_zombie(pid_t pid) {
  char path[64], state = 0;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE* f = fopen(path, "r");
  if (!f) return false;
  /* state is the field after the ")" that ends comm */
  int c;
  while ((c = fgetc(f)) != EOF && c != ')') {
  }
  if (fscanf(f, " %c", &state) != 1) state = 0;
  fclose(f);
  return state == 'Z';
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t exited = wl_fork("exited");
  if (exited == 0) _exit(CODE);
  pid_t killed = wl_fork("killed");
  if (killed == 0) {
    for (;;) pause();
  }
  kill(killed, SIGUSR2);
  /* Both must be zombies before the checkpoint; waitid with WNOWAIT waits without reaping. */
  siginfo_t si;
  if (waitid(P_PID, (id_t)exited, &si, WEXITED | WNOWAIT) != 0) wl_die("waitid exited: %m");
  if (waitid(P_PID, (id_t)killed, &si, WEXITED | WNOWAIT) != 0) wl_die("waitid killed: %m");
  if (!is_zombie(exited) || !is_zombie(killed)) wl_die("children are not zombies");

  wl_ready();
  wl_wait_term();

  int st = 0;
  pid_t r;
  while ((r = waitpid(exited, &st, 0)) < 0 && errno == EINTR) {
  }
  wl_expect(r == exited, "waitpid(exited) returned %d (%s)", (int)r, r < 0 ? strerror(errno) : "");
  wl_expect(r != exited || (WIFEXITED(st) && WEXITSTATUS(st) == CODE),
            "exited child: status %#x, expected exit %d", st, CODE);
  while ((r = waitpid(killed, &st, 0)) < 0 && errno == EINTR) {
  }
  wl_expect(r == killed, "waitpid(killed) returned %d (%s)", (int)r, r < 0 ? strerror(errno) : "");
  wl_expect(r != killed || (WIFSIGNALED(st) && WTERMSIG(st) == SIGUSR2),
            "killed child: status %#x, expected SIGUSR2", st);
  wl_expect(waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD, "something else is left to reap");
  wl_finish();
}
