/* POSIX message queues:
 *   - "/crest-wl-mq.<pid>": mode 0640, mq_maxmsg 10, mq_msgsize 64, five messages of priorities
 *     1, 5, 1, 3, 5, and two descriptions: the root's O_RDWR one and an O_WRONLY|O_NONBLOCK one
 *     that a child shares;
 *   - "/crest-wl-mq2.<pid>": removed while open (mq_unlink), two messages;
 *   - "/crest-wl-mq3.<pid>": empty, a child blocked in mq_receive on it.
 * Check: attributes, mode and flags as they were; the messages come in priority order, oldest
 * first within a priority, each once; the removed queue has no name and still its messages; the
 * blocked child gets the message sent after the restore; the child's shared O_WRONLY|O_NONBLOCK
 * description can still send (and EAGAIN once the queue is full). The queues are removed at the
 * end. */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static char name1[64], name2[64], name3[64];

static void expect_msg(mqd_t q, const char* want, unsigned prio, const char* which) {
  char buf[64];
  unsigned p = 0;
  struct timespec soon;
  clock_gettime(CLOCK_REALTIME, &soon);
  soon.tv_sec += 5;
  ssize_t n = mq_timedreceive(q, buf, sizeof buf, &p, &soon);
  wl_expect(n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0 && p == prio,
            "%s: got %.*s (prio %u, %zd bytes), expected %s (prio %u)", which, n > 0 ? (int)n : 0,
            buf, p, n, want, prio);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  snprintf(name1, sizeof name1, "/crest-wl-mq.%d", (int)getpid());
  snprintf(name2, sizeof name2, "/crest-wl-mq2.%d", (int)getpid());
  snprintf(name3, sizeof name3, "/crest-wl-mq3.%d", (int)getpid());
  mq_unlink(name1), mq_unlink(name2), mq_unlink(name3);
  umask(0);
  struct mq_attr a = {.mq_maxmsg = 10, .mq_msgsize = 64};
  mqd_t q1 = mq_open(name1, O_RDWR | O_CREAT | O_EXCL, 0640, &a);
  mqd_t w1 = mq_open(name1, O_WRONLY | O_NONBLOCK);
  mqd_t q2 = mq_open(name2, O_RDWR | O_CREAT | O_EXCL, 0600, &a);
  mqd_t q3 = mq_open(name3, O_RDWR | O_CREAT | O_EXCL, 0600, &a);
  if (q1 < 0 || w1 < 0 || q2 < 0 || q3 < 0) wl_die("mq_open: %m");
  const char* msgs[] = {"a", "b", "c", "d", "e"};
  const unsigned prios[] = {1, 5, 1, 3, 5};
  for (int i = 0; i < 5; i++)
    if (mq_send(q1, msgs[i], 1, prios[i]) != 0) wl_die("mq_send: %m");
  if (mq_send(q2, "gone-1", 6, 0) != 0 || mq_send(q2, "gone-2", 6, 0) != 0) wl_die("mq_send: %m");
  if (mq_unlink(name2) != 0) wl_die("mq_unlink: %m");

  pid_t waiter = wl_fork("waiter");
  if (waiter == 0) {
    char buf[64];
    unsigned p = 0;
    ssize_t n;
    do n = mq_receive(q3, buf, sizeof buf, &p);
    while (n < 0 && errno == EINTR);
    wl_expect(n == 5 && memcmp(buf, "later", 5) == 0 && p == 7, "waiter: got %zd bytes (prio %u): %m", n, p);
    wl_finish();
  }
  pid_t sender = wl_fork("sender");
  if (sender == 0) {
    wl_wait_term();
    /* Five messages are queued: five more fit, the sixth finds the queue full. */
    for (int i = 0; i < 5; i++) wl_expect(mq_send(w1, "f", 1, 0) == 0, "sender: mq_send %d: %m", i);
    wl_expect(mq_send(w1, "g", 1, 0) != 0 && errno == EAGAIN, "sender: a full queue took a message (%m)");
    wl_finish();
  }
  if (!wl_wait_in_syscall(waiter, SYS_mq_timedreceive, SYS_mq_timedreceive))
    wl_die("the waiter never blocked in mq_receive");

  wl_ready();
  wl_wait_term();

  struct mq_attr now;
  wl_expect(mq_getattr(q1, &now) == 0 && now.mq_maxmsg == 10 && now.mq_msgsize == 64 &&
                now.mq_curmsgs == 5 && now.mq_flags == 0,
            "queue 1: attributes %ld/%ld/%ld flags %lx", now.mq_maxmsg, now.mq_msgsize,
            now.mq_curmsgs, now.mq_flags);
  wl_expect(mq_getattr(w1, &now) == 0 && now.mq_flags == O_NONBLOCK, "the second description lost O_NONBLOCK");
  wl_expect((fcntl(w1, F_GETFL) & O_ACCMODE) == O_WRONLY, "the second description is not O_WRONLY");
  struct stat st;
  wl_expect(fstat(q1, &st) == 0 && (st.st_mode & 07777) == 0640 && st.st_uid == getuid(),
            "queue 1: mode %o", st.st_mode & 07777);
  mqd_t again = mq_open(name2, O_RDONLY);
  wl_expect(again < 0 && errno == ENOENT, "the removed queue has a name again");
  if (again >= 0) mq_close(again);
  kill(sender, SIGTERM);
  wl_reap(sender, "sender");
  const char* order[] = {"b", "e", "d", "a", "c", "f", "f", "f", "f", "f"};
  const unsigned oprio[] = {5, 5, 3, 1, 1, 0, 0, 0, 0, 0};
  for (int i = 0; i < 10; i++) expect_msg(q1, order[i], oprio[i], "queue 1");
  expect_msg(q2, "gone-1", 0, "removed queue");
  expect_msg(q2, "gone-2", 0, "removed queue");
  wl_expect(mq_send(q3, "later", 5, 7) == 0, "mq_send to the waiter: %m");
  wl_reap(waiter, "waiter");
  mq_unlink(name1), mq_unlink(name3);
  wl_finish();
}
