/* A process whose working directory is /proc/<pid> of a child that has exited and been reaped:
 * that directory cannot be made again for a restored tree, so crest must refuse the tree by name
 * and leave it running. Check: the cwd is still that dead task's /proc directory (its entries
 * are gone: opening "status" there fails) and the process otherwise works. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t gone = fork();
  if (gone == 0) {
    pause();
    _exit(0);
  }
  /* /proc/<pid> as /proc knows it (the host's, whatever namespace the tree runs in) */
  char path[64];
  snprintf(path, sizeof path, "/proc/%d", (int)gone);
  if (chdir(path) != 0) wl_die("chdir %s: %m", path);
  kill(gone, SIGKILL);
  waitpid(gone, NULL, 0);
  wl_expect(open("status", O_RDONLY) < 0, "the dead task's status is still there");

  wl_ready();
  wl_wait_term();

  errno = 0;
  int fd = open("status", O_RDONLY);
  wl_expect(fd < 0, "the cwd is no longer the dead task's /proc directory");
  char buf[64];
  wl_expect(getcwd(buf, sizeof buf) == NULL || strstr(buf, "/proc/") != NULL,
            "the cwd moved: %s", buf);
  wl_finish();
}
