/* crest-init: the tiny init `crest run` and crestd start as pid 1 of a job's own pid namespace.
 *
 *   crest-init [--] CMD [ARGS...]
 *
 * It forks the job (CMD), then only waits: it reaps every orphan of the namespace, passes the
 * signals it receives on to the job, and when the job ends it exits with the job's status — the
 * job's exit code, or 128+N when a signal N killed it (a namespace's init cannot die by a signal
 * it sends itself, so the shell convention carries the signal; crest run turns it back into the
 * same fatal signal).
 *
 * Why so little: this process is the root of every checkpoint of the job, so it must hold
 * nothing the engine refuses (no socket, signalfd, epoll or pidfd) and nothing that would make
 * its restore differ. It keeps only stdio (the job shares it), blocks the signals it handles and
 * takes them with sigwaitinfo(), and waits with waitpid(). Interrupted calls are restarted, so a
 * checkpoint or a restore in the middle of any of them is invisible here.
 *
 * Exit statuses of its own: 127 CMD could not be started (the reason is on stderr), 126 usage or
 * setup failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* Signals passed on to the job. SIGCHLD is ours; SIGKILL and SIGSTOP cannot be caught. */
static const int kForwarded[] = {SIGTERM, SIGINT,  SIGHUP,   SIGQUIT, SIGUSR1, SIGUSR2,
                                 SIGALRM, SIGCONT, SIGWINCH, SIGXCPU, SIGPWR,  SIGTSTP,
                                 SIGTTIN, SIGTTOU, SIGVTALRM, SIGPROF, SIGURG, SIGXFSZ};

static void close_extra_fds(void) {
  /* Only stdio may reach the job and the checkpoints: anything else inherited is dropped. */
  if (close_range(3, ~0U, 0) == 0) return;
  long max = sysconf(_SC_OPEN_MAX);
  for (long fd = 3; fd < (max > 0 ? max : 1024); fd++) close((int)fd);
}

int main(int argc, char** argv) {
  int first = 1;
  if (first < argc && strcmp(argv[first], "--") == 0) first++;
  if (first >= argc) {
    fprintf(stderr, "crest-init: usage: crest-init [--] CMD [ARGS...]\n");
    return 126;
  }
  close_extra_fds();

  sigset_t waited, old;
  sigemptyset(&waited);
  sigaddset(&waited, SIGCHLD);
  for (size_t i = 0; i < sizeof kForwarded / sizeof kForwarded[0]; i++)
    sigaddset(&waited, kForwarded[i]);
  /* Blocked signals are never discarded, not even by a namespace's init (which drops signals it
   * has no handler for while they are unblocked): they wait for sigwaitinfo below. */
  if (sigprocmask(SIG_BLOCK, &waited, &old) != 0) {
    perror("crest-init: sigprocmask");
    return 126;
  }

  pid_t job = fork();
  if (job < 0) {
    perror("crest-init: fork");
    return 126;
  }
  if (job == 0) {
    sigprocmask(SIG_SETMASK, &old, NULL);
    execvp(argv[first], argv + first);
    fprintf(stderr, "crest-init: cannot run %s: %s\n", argv[first], strerror(errno));
    _exit(127);
  }

  for (;;) {
    /* Reap everything that has ended: the job, and orphans the namespace handed us. */
    for (;;) {
      int status = 0;
      pid_t r = waitpid(-1, &status, WNOHANG);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      if (r == job) {
        if (WIFEXITED(status)) return WEXITSTATUS(status);
        if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
        return 126;
      }
    }
    siginfo_t info;
    int sig = sigwaitinfo(&waited, &info);
    if (sig < 0 || sig == SIGCHLD) continue;
    kill(job, sig);
  }
}
