/* System V message queues in an IPC namespace of the job's own (the root unshares one first,
 * so every object of it is the job's):
 *   Q  keyed, 0620, qbytes lowered to 8000, four messages: (1 "alpha"), (2, 3000 bytes),
 *      (1 "gamma"), (3, empty).
 *   R  IPC_PRIVATE, empty; the child sits blocked in msgrcv(type 7) on it.
 * After the request: ids, keys, modes, qbytes, counts; msgrcv by type takes the type-2 message
 * first, then the rest arrive once each, in order, with their types; a message of type 7 wakes
 * the child, which gets it once. */
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/syscall.h>

#include "workload.h"

struct msg {
  long type;
  char text[4000];
};

static void send(int q, long type, const void* data, size_t len) {
  struct msg m = {.type = type};
  memcpy(m.text, data, len);
  if (msgsnd(q, &m, len, IPC_NOWAIT) != 0) wl_die("msgsnd: %m");
}

static void expect_msg(int q, long want_type, long get_type, const void* data, size_t len) {
  struct msg m;
  ssize_t n = msgrcv(q, &m, sizeof m.text, want_type, IPC_NOWAIT);
  if (!wl_expect(n >= 0, "msgrcv(type %ld): %m", want_type)) return;
  wl_expect(m.type == get_type && (size_t)n == len && memcmp(m.text, data, len) == 0,
            "msgrcv(type %ld) got type %ld, %zd bytes; expected type %ld, %zu bytes", want_type,
            m.type, n, get_type, len);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (unshare(CLONE_NEWIPC) != 0) wl_die("unshare(CLONE_NEWIPC): %m");
  key_t key = 0x56000000 | (getpid() & 0xffffff);
  int q = msgget(key, IPC_CREAT | IPC_EXCL | 0620);
  int r = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
  if (q < 0 || r < 0) wl_die("msgget: %m");
  static char big[3000];
  wl_fill(big, sizeof big, 71);
  send(q, 1, "alpha", 5);
  send(q, 2, big, sizeof big);
  send(q, 1, "gamma", 5);
  send(q, 3, "", 0);
  struct msqid_ds ds;
  if (msgctl(q, IPC_STAT, &ds) != 0) wl_die("IPC_STAT: %m");
  ds.msg_qbytes = 8000;
  if (msgctl(q, IPC_SET, &ds) != 0) wl_die("IPC_SET: %m");

  pid_t child = wl_fork("child");
  if (child == 0) {
    struct msg m;
    ssize_t n;
    while ((n = msgrcv(r, &m, sizeof m.text, 7, 0)) < 0 && errno == EINTR) continue;
    wl_expect(n == 4 && m.type == 7 && memcmp(m.text, "wake", 4) == 0, "child: msgrcv: %zd %m", n);
    wl_expect(msgrcv(r, &m, sizeof m.text, 0, IPC_NOWAIT) < 0 && errno == ENOMSG,
              "child: a second message on R");
    wl_finish();
  }
  if (!wl_wait_in_syscall(child, SYS_msgrcv, SYS_msgrcv)) wl_die("child never blocked in msgrcv");

  wl_ready();
  wl_wait_term();

  if (wl_expect(msgctl(q, IPC_STAT, &ds) == 0, "IPC_STAT of Q: %m")) {
    wl_expect(ds.msg_perm.__key == key && (ds.msg_perm.mode & 0777) == 0620,
              "Q has key %#x mode %o", (unsigned)ds.msg_perm.__key, ds.msg_perm.mode & 0777);
    wl_expect(ds.msg_qbytes == 8000, "Q's qbytes is %lu", (unsigned long)ds.msg_qbytes);
    wl_expect(ds.msg_qnum == 4 && ds.__msg_cbytes == 3010, "Q holds %lu messages, %lu bytes",
              (unsigned long)ds.msg_qnum, (unsigned long)ds.__msg_cbytes);
  }
  wl_expect(msgget(key, 0) == q, "the key of Q finds another id");
  expect_msg(q, 2, 2, big, sizeof big);
  expect_msg(q, 0, 1, "alpha", 5);
  expect_msg(q, 0, 1, "gamma", 5);
  expect_msg(q, 0, 3, "", 0);
  struct msg m;
  wl_expect(msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT) < 0 && errno == ENOMSG,
            "Q holds more messages than were sent");
  send(r, 7, "wake", 4);
  wl_reap(child, "child");
  msgctl(q, IPC_RMID, NULL);
  msgctl(r, IPC_RMID, NULL);
  wl_finish();
}
