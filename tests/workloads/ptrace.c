/* Refusal workload: the root traces its child (PTRACE_TRACEME) and keeps it in a ptrace stop.
 * A tree with a tracer inside cannot be seized by crest: `crest dump` must refuse (naming the
 * traced task) and leave both processes as they were; the check proves the child is still our
 * stopped tracee. */
#include <errno.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t child = wl_fork("tracee");
  if (child == 0) {
    if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0) _exit(3);
    raise(SIGSTOP);
    /* Never resumed: the root kills us. */
    for (;;) pause();
  }
  int st = 0;
  pid_t r;
  while ((r = waitpid(child, &st, 0)) < 0 && errno == EINTR) {
  }
  if (r != child || !WIFSTOPPED(st) || WSTOPSIG(st) != SIGSTOP) {
    wl_die("tracee did not stop (status 0x%x)", st);
  }

  wl_ready();
  wl_wait_term();

  struct user_regs_struct regs;
  wl_expect(ptrace(PTRACE_GETREGS, child, NULL, &regs) == 0,
            "the child is no longer our stopped tracee: %m");
  wl_expect(waitpid(child, &st, WNOHANG) == 0, "the child changed state");
  kill(child, SIGKILL);
  while ((r = waitpid(child, &st, 0)) < 0 && errno == EINTR) {
  }
  wl_expect(r == child && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "tracee status 0x%x", st);
  wl_finish();
}
