/* A member of the tree's session living outside the tree: the root (not a subreaper) forks D,
 * D forks G and exits; the root reaps D, so G is reparented out of the tree (to the harness, a
 * subreaper, or to init) while staying in the root's session and process group. G names itself
 * "wl-outside-G", writes its pid to DIR/outside.pid and sleeps until SIGTERM (or 120 s, so it
 * never outlives a broken run for long). The tree is only the root; a dump must report G as a
 * session member it cannot take (G also pins the root's pid number as its sid and pgid).
 * On request: the root checks its own state (pid, sid, pgid: wl_finish), reads G's pid from the
 * file and, if that process is still G (same comm, our session and group: not the case once the
 * root lives in a new pid namespace, where G is not visible), kills it with SIGTERM; G is not
 * the root's child, so it is not reaped here. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define G_NAME "wl-outside-G"

static void daemon_g(void) {
  prctl(PR_SET_NAME, G_NAME, 0, 0, 0);
  /* Written under a temporary name and renamed: the root never reads half a pid. */
  char text[32];
  int len = snprintf(text, sizeof text, "%d\n", (int)getpid());
  int fd = open(wl_path("outside.pid.tmp"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, text, (size_t)len) != len || close(fd) != 0 ||
      rename(wl_path("outside.pid.tmp"), wl_path("outside.pid")) != 0) {
    wl_die("writing outside.pid: %m");
  }
  double t0 = wl_now();
  while (!wl_term && wl_now() - t0 < 120) {
    struct timespec ts = {1, 0};
    nanosleep(&ts, NULL); /* EINTR on SIGTERM */
  }
  _exit(0);
}

static pid_t read_g_pid(void) {
  char buf[32];
  int fd = open(wl_path("outside.pid"), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  return (pid_t)atoi(buf);
}

/* comm of `pid` as /proc shows it ("" if none). */
static void comm_of(pid_t pid, char* out, size_t len) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
  out[0] = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, out, len - 1);
  close(fd);
  if (n <= 0) n = 0;
  out[n] = 0;
  out[strcspn(out, "\n")] = 0;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t root = getpid();
  pid_t d = wl_fork("D");
  if (d == 0) {
    pid_t g = wl_fork("G");
    if (g == 0) daemon_g();
    _exit(0);
  }
  wl_reap(d, "D");
  double t0 = wl_now();
  pid_t g = -1;
  while ((g = read_g_pid()) <= 0 && wl_now() - t0 < 5) usleep(1000);
  if (g <= 0) wl_die("G never wrote outside.pid");
  if (getsid(g) != root || getpgid(g) != root) wl_die("G is not in the root's session and group");
  siginfo_t si;
  if (waitid(P_PID, (id_t)g, &si, WEXITED | WNOHANG | WNOWAIT) == 0) wl_die("G is our child");

  wl_ready();
  wl_wait_term();

  wl_expect(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD, "the root has children");
  wl_expect(read_g_pid() == g, "outside.pid changed");
  /* Only a process that is still G: in a new pid namespace this pid number means something
   * else or nothing (and /proc, the host's, shows the real G under that number). */
  char comm[32];
  comm_of(g, comm, sizeof comm);
  if (g != root && g != 1 && strcmp(comm, G_NAME) == 0 && getsid(g) == getsid(0) &&
      getpgid(g) == getpgid(0)) {
    wl_expect(kill(g, SIGTERM) == 0, "kill(G %d, SIGTERM): %m", (int)g);
    /* Not ours to reap; wait a moment until it has exited, so that it is gone with us. */
    t0 = wl_now();
    while (wl_now() - t0 < 2) {
      char path[64], buf[512];
      snprintf(path, sizeof path, "/proc/%d/stat", (int)g);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) break;
      ssize_t n = read(fd, buf, sizeof buf - 1);
      close(fd);
      if (n <= 0) break;
      buf[n] = 0;
      char* rp = strrchr(buf, ')');
      if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X')) break;
      usleep(2000);
    }
  } else {
    wl_note("G (%d) is not visible as our session member from here (comm \"%s\"): not killed",
            (int)g, comm);
  }
  wl_finish();
}
