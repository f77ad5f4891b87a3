/* Refusal: a file on tmpfs the tree maps shared that a process outside the tree maps too. crest
 * saves such a file with the job and makes it again at restore in place of what is at its path,
 * so the outside process would keep the old one and no longer share it with the job (as for a
 * System V segment attached from outside). The outside process is a grandchild of the root whose
 * parent exited (reparented away from the tree, in a session of its own). On request (after the
 * refused dump) the root still sees what the outsider writes. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define PG WL_PAGE

int main(int argc, char** argv) {
  wl_init(argc, argv);
  uint64_t h = 1469598103934665603ull;
  for (const char* c = wl_dir(); *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
  char path[128];
  snprintf(path, sizeof path, "/dev/shm/crest-wl-shmout-%016llx", (unsigned long long)h);
  unlink(path);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 || ftruncate(fd, 4 * PG) != 0) wl_die("%s: %m", path);
  char* shm = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (shm == MAP_FAILED) wl_die("mmap: %m");
  close(fd);
  wl_fill(shm, PG, 71);

  int p[2];
  if (pipe(p) != 0) wl_die("pipe: %m");
  pid_t child = wl_fork("child");
  if (child == 0) {
    pid_t outsider = fork();
    if (outsider < 0) _exit(1);
    if (outsider == 0) {
      setsid();
      close(p[0]);
      pid_t me = getpid();
      if (write(p[1], &me, sizeof me) != sizeof me) _exit(1);
      close(p[1]);
      /* Until killed: answer the root's page 1 in page 2. */
      for (;;) {
        if (shm[PG] == 'q') {
          memset(shm + 2 * PG, 'a', PG);
        }
        usleep(10000);
      }
    }
    _exit(0);
  }
  close(p[1]);
  pid_t outsider = 0;
  if (read(p[0], &outsider, sizeof outsider) != sizeof outsider) wl_die("no outsider");
  close(p[0]);
  wl_reap(child, "child");

  wl_ready();
  wl_wait_term();

  wl_expect(wl_check(shm, PG, 71) < 0, "the root's page differs");
  shm[PG] = 'q';
  for (int i = 0; i < 300 && shm[2 * PG] != 'a'; i++) usleep(10000);
  wl_expect(shm[2 * PG] == 'a', "the outsider no longer shares the file with the root");
  kill(outsider, SIGKILL);
  unlink(path);
  wl_finish();
}
