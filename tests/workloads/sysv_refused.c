/* Refusal: an attach of a System V segment partly unmapped (a restore attaches whole segments),
 * a segment attached by a process outside the tree (its contents would part ways), and a
 * semaphore changed with SEM_UNDO (adjustments no interface shows). After the refused dump all
 * are as they were: same contents, same attach counts, the adjustment undone at exit. */
#include <errno.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>

#include "workload.h"

#define PG WL_PAGE

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int s = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
  if (s < 0) wl_die("semget: %m");
  struct sembuf up = {0, 3, SEM_UNDO};
  pid_t undoer = wl_fork("undoer");
  if (undoer == 0) {
    if (semop(s, &up, 1) != 0) wl_die("semop: %m");
    wl_wait_term();
    wl_expect(semctl(s, 0, GETVAL) == 3, "undoer: value %d", semctl(s, 0, GETVAL));
    wl_finish();
  }
  while (semctl(s, 0, GETVAL) != 3) usleep(1000);

  int a = shmget(IPC_PRIVATE, 4 * PG, IPC_CREAT | 0600);
  int b = shmget(IPC_PRIVATE, 2 * PG, IPC_CREAT | 0600);
  if (a < 0 || b < 0) wl_die("shmget: %m");
  char* pa = shmat(a, NULL, 0);
  char* pb = shmat(b, NULL, 0);
  if (pa == (void*)-1 || pb == (void*)-1) wl_die("shmat: %m");
  wl_fill(pa, 4 * PG, 81);
  wl_fill(pb, 2 * PG, 82);
  if (munmap(pa + PG, PG) != 0) wl_die("munmap: %m");
  shmctl(a, IPC_RMID, NULL);
  shmctl(b, IPC_RMID, NULL);
  /* An outsider: a grandchild left by its parent, reparented away from the tree, holding b. */
  int p[2];
  if (pipe(p) != 0) wl_die("pipe: %m");
  pid_t mid = fork();
  if (mid == 0) {
    if (setsid() < 0) _exit(2);  /* not in the tree's session either */
    pid_t root = getppid();
    pid_t out = fork();
    if (out == 0) {
      pid_t me = getpid();
      munmap(pa, 4 * PG);  /* holds only b */
      close(p[0]);
      (void)!write(p[1], &me, sizeof me);
      close(p[1]);
      while (kill(root, 0) == 0) sleep(1);  /* ends with the tree's root */
      _exit(0);
    }
    _exit(out > 0 ? 0 : 1);
  }
  close(p[1]);
  int st;
  if (waitpid(mid, &st, 0) != mid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) wl_die("setup of the outsider");
  pid_t outsider = 0;
  if (read(p[0], &outsider, sizeof outsider) != sizeof outsider) wl_die("outsider did not start");
  close(p[0]);
  struct shmid_ds ds;

  wl_ready();
  wl_wait_term();

  wl_expect(wl_check(pa, PG, 81) < 0, "a differs");
  wl_expect(wl_check(pb, 2 * PG, 82) < 0, "b differs");
  int n = shmctl(b, IPC_STAT, &ds) == 0 ? (int)ds.shm_nattch : -1;
  wl_expect(n == 2, "b attached %d times", n);
  n = shmctl(a, IPC_STAT, &ds) == 0 ? (int)ds.shm_nattch : -1;
  wl_expect(n == 2, "a attached %d times (two pieces)", n);
  kill(undoer, SIGTERM);
  wl_reap(undoer, "undoer");
  wl_expect(semctl(s, 0, GETVAL) == 0, "the undoer's adjustment was not undone at its exit: %d",
            semctl(s, 0, GETVAL));
  semctl(s, 0, IPC_RMID);
  if (outsider > 0 && outsider != getpid()) kill(outsider, SIGKILL);
  wl_finish();
}
