/* Event descriptors in the states crest cannot make again, all in one tree, so that one refused
 * dump must name each of them and leave every one exactly as it was:
 *   inotify   a watch on DIR/w with one IN_CREATE event queued (DIR/w/x created at setup), not
 *             read: reading it would take it from the job
 *   et        an epoll watching an eventfd (counter 1, so ready) edge-triggered, the edge not
 *             yet taken: whether it was taken cannot be seen without taking it
 *   spent     an epoll with a one-shot watch on an empty pipe's read end that fired (a byte was
 *             written, reported, read back): spent, on a file ready for nothing
 *   parent    a pidfd of the root's parent, outside the tree
 * Check (after the refused dump): the inotify event is read exactly once (wd 1, "x"); the
 * edge-triggered epoll reports the eventfd once, then not again; the spent watch reports nothing
 * even with a byte in the pipe until EPOLL_CTL_MOD re-arms it; the pidfd's fdinfo Pid is still
 * the parent's pid. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

/* epoll_wait with timeout 0: how many events, the first one's data in *data. */
static int ready(int ep, uint64_t* data) {
  struct epoll_event ev[4];
  int n;
  do {
    n = epoll_wait(ep, ev, 4, 0);
  } while (n < 0 && errno == EINTR);
  if (n > 0 && data) *data = ev[0].data.u64;
  return n;
}

static long fdinfo_pid(int fd) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  FILE* f = fopen(path, "re");
  long pid = -2;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "Pid: %ld", &pid) == 1) break;
  if (f) fclose(f);
  return pid;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  if (mkdir(wl_path("w"), 0755) != 0) wl_die("mkdir: %m");
  int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (in < 0 || inotify_add_watch(in, wl_path("w"), IN_CREATE) != 1) wl_die("inotify: %m");
  int x = open(wl_path("w/x"), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  if (x < 0) wl_die("create w/x: %m");
  close(x);

  int efd = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
  int et = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 0xE7};
  if (efd < 0 || et < 0 || epoll_ctl(et, EPOLL_CTL_ADD, efd, &ev) != 0) wl_die("et epoll: %m");

  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) wl_die("pipe: %m");
  int spent = epoll_create1(EPOLL_CLOEXEC);
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.u64 = 0x5E;
  if (spent < 0 || epoll_ctl(spent, EPOLL_CTL_ADD, p[0], &ev) != 0) wl_die("oneshot epoll: %m");
  char b = 'b';
  uint64_t data = 0;
  if (write(p[1], &b, 1) != 1 || ready(spent, &data) != 1 || data != 0x5E || read(p[0], &b, 1) != 1)
    wl_die("the one-shot watch did not fire once at setup");

  const pid_t parent = getppid();
  int pfd = (int)syscall(SYS_pidfd_open, parent, 0);
  if (pfd < 0) wl_die("pidfd_open(parent): %m");

  wl_ready();
  wl_wait_term();

  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  ssize_t n = read(in, buf, sizeof buf);
  const struct inotify_event* e = (const struct inotify_event*)buf;
  wl_expect(n == (ssize_t)(sizeof *e + e->len) && e->wd == 1 && (e->mask & IN_CREATE) &&
                strcmp(e->name, "x") == 0,
            "inotify: read %zd bytes, expected exactly the one IN_CREATE of x", n);
  wl_expect(read(in, buf, sizeof buf) < 0 && errno == EAGAIN, "inotify: more events queued");

  data = 0;
  wl_expect(ready(et, &data) == 1 && data == 0xE7, "edge-triggered: the edge is gone");
  wl_expect(ready(et, NULL) == 0, "edge-triggered: reported twice");

  if (write(p[1], &b, 1) != 1) wl_die("write: %m");
  wl_expect(ready(spent, NULL) == 0, "the spent one-shot watch reported again without a MOD");
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.u64 = 0x5F;
  data = 0;
  wl_expect(epoll_ctl(spent, EPOLL_CTL_MOD, p[0], &ev) == 0 && ready(spent, &data) == 1 &&
                data == 0x5F,
            "the one-shot watch did not report after EPOLL_CTL_MOD");

  wl_expect(fdinfo_pid(pfd) == parent, "pidfd: fdinfo Pid %ld, expected the parent %d",
            fdinfo_pid(pfd), (int)parent);
  wl_finish();
}
