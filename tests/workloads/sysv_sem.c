/* System V semaphores (and a message queue) in the host's IPC namespace:
 *   S  keyed, 0640, 3 semaphores set to 5, 0, 7 by the parent (their sempid); the child sits
 *      blocked in semop(-1) on semaphore 1 when the tree is checkpointed.
 *   T  IPC_PRIVATE, 0604, 1 semaphore set to 42 by the child.
 * After the request: ids, keys, modes, every value, each semaphore's last pid, one waiter
 * counted on semaphore 1; the parent's semop(+1) wakes the child, which takes the unit exactly
 * once (semaphore 1 back to 0).
 *   Q  a message queue the parent sent two messages to (its lspid): both arrive once, in order. */
#include <errno.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/syscall.h>

#include "workload.h"

union semun {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
};

static void check_set(int id, key_t key, unsigned mode, int nsems) {
  struct semid_ds ds;
  union semun arg = {.buf = &ds};
  if (!wl_expect(semctl(id, 0, IPC_STAT, arg) == 0, "IPC_STAT of sem %d: %m", id)) return;
  wl_expect(ds.sem_perm.__key == key, "sem %d has key %#x, expected %#x", id,
            (unsigned)ds.sem_perm.__key, (unsigned)key);
  wl_expect((ds.sem_perm.mode & 0777) == mode, "sem %d has mode %o, expected %o", id,
            ds.sem_perm.mode & 0777, mode);
  wl_expect((int)ds.sem_nsems == nsems, "sem %d has %d semaphores", id, (int)ds.sem_nsems);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  key_t key;
  int s;
  for (int tries = 0;; tries++) {
    key = wl_random_key(0x55);
    s = semget(key, 3, IPC_CREAT | IPC_EXCL | 0640);
    if (s >= 0 || errno != EEXIST || tries == 64) break;
  }
  int t = semget(IPC_PRIVATE, 1, IPC_CREAT | 0604);
  if (s < 0 || t < 0) wl_die("semget: %m");
  unsigned short vals[3] = {5, 0, 7};
  union semun arg = {.array = vals};
  if (semctl(s, 0, SETALL, arg) != 0) wl_die("SETALL: %m");
  int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
  struct {
    long type;
    char text[8];
  } m1 = {5, "first"}, m2 = {9, "second"}, got;
  if (q < 0 || msgsnd(q, &m1, 6, 0) != 0 || msgsnd(q, &m2, 7, 0) != 0) wl_die("msgsnd: %m");

  pid_t child = wl_fork("child");
  if (child == 0) {
    union semun one = {.val = 42};
    if (semctl(t, 0, SETVAL, one) != 0) wl_die("SETVAL: %m");
    struct sembuf down = {1, -1, 0};
    int r;
    while ((r = semop(s, &down, 1)) != 0 && errno == EINTR) continue;
    wl_expect(r == 0, "child: semop: %m");
    wl_finish();
  }
  if (!wl_wait_in_syscall(child, SYS_semop, SYS_semtimedop)) wl_die("child never blocked in semop");
  while (semctl(s, 1, GETNCNT) != 1) usleep(1000);

  wl_ready();
  wl_wait_term();

  check_set(s, key, 0640, 3);
  check_set(t, IPC_PRIVATE, 0604, 1);
  wl_expect(semget(key, 0, 0) == s, "the key of S finds another id");
  unsigned short now[3] = {0};
  union semun get = {.array = now};
  if (wl_expect(semctl(s, 0, GETALL, get) == 0, "GETALL: %m"))
    wl_expect(now[0] == 5 && now[1] == 0 && now[2] == 7, "values %u %u %u, expected 5 0 7",
              now[0], now[1], now[2]);
  wl_expect(semctl(t, 0, GETVAL) == 42, "T's value is %d", semctl(t, 0, GETVAL));
  wl_expect(semctl(s, 0, GETPID) == getpid() && semctl(s, 2, GETPID) == getpid(),
            "sempid of S is %d %d, expected %d", semctl(s, 0, GETPID), semctl(s, 2, GETPID),
            getpid());
  wl_expect(semctl(t, 0, GETPID) == child, "sempid of T is %d, expected the child %d",
            semctl(t, 0, GETPID), child);
  /* Just restored, the child may not have run yet: its semop restarts and waits again. */
  for (int i = 0; i < 2000 && semctl(s, 1, GETNCNT) != 1; i++) usleep(1000);
  wl_expect(semctl(s, 1, GETNCNT) == 1, "%d waiters on semaphore 1, expected the child",
            semctl(s, 1, GETNCNT));
  wl_expect(semctl(s, 1, GETVAL) == 0, "semaphore 1 is %d before the parent's semop",
            semctl(s, 1, GETVAL));
  struct sembuf up = {1, 1, 0};
  wl_expect(semop(s, &up, 1) == 0, "semop(+1): %m");
  wl_reap(child, "child");
  wl_expect(semctl(s, 1, GETVAL) == 0, "semaphore 1 is %d after the child took it",
            semctl(s, 1, GETVAL));
  ssize_t n = msgrcv(q, &got, sizeof got.text, 0, IPC_NOWAIT);
  wl_expect(n == 6 && got.type == 5 && memcmp(got.text, "first", 6) == 0, "Q's first message");
  n = msgrcv(q, &got, sizeof got.text, 0, IPC_NOWAIT);
  wl_expect(n == 7 && got.type == 9 && memcmp(got.text, "second", 7) == 0, "Q's second message");
  wl_expect(msgrcv(q, &got, sizeof got.text, 0, IPC_NOWAIT) < 0, "Q holds a third message");
  msgctl(q, IPC_RMID, NULL);
  semctl(s, 0, IPC_RMID);
  semctl(t, 0, IPC_RMID);
  wl_finish();
}
