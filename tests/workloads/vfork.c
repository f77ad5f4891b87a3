/* A process inside vfork(2) at checkpoint time:
 *   R ── C (in vfork, waiting for its child to exit or exec) ── V (vforked: shares C's memory,
 *                                                               blocked in sigsuspend)
 * V only calls async-signal-safe functions and ends with _exit. C cannot learn V's pid before
 * vfork returns, so the root finds V as C's only child in /proc/C/task/C/children (V also sent
 * its pid through a pipe at setup, to compare).
 * On request: C has not returned from vfork (flag in memory shared with the root) and sleeps in
 * state D; C's only child is V; the root SIGTERMs V, whose handler runs and which writes a
 * marker into the memory it shares with C and _exits 0; C's vfork then returns V's pid, C sees
 * the marker (so V and C still share their memory), reaps V (exit 0) and exits 0. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define MARKER 0x5eed1234

struct shared {
  volatile int c_returned; /* C is past vfork */
};

/* Written by V after the request, read by C: same memory while V lives. */
static volatile int g_v_marker;

/* The reverse: our namespace's pid of /proc's `host` (last field of NSpid), -1 if unknown. */
static pid_t ns_pid(pid_t host) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)host);
  FILE* f = fopen(path, "re");
  if (!f) return -1;
  pid_t r = -1;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "NSpid:", 6) != 0) continue;
    char* last = strrchr(line, '\t');
    if (last) r = (pid_t)atoi(last + 1);
    break;
  }
  fclose(f);
  return r;
}

static char proc_state(pid_t host) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)host);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char* rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' ? rp[2] : 0;
}

static void child_c(struct shared* sh, int pipe_wr) {
  pid_t v = vfork();
  if (v < 0) wl_die("vfork: %m");
  if (v == 0) {
    /* V: async-signal-safe calls only, on C's stack and memory. */
    pid_t me = getpid();
    if (write(pipe_wr, &me, sizeof me) != (ssize_t)sizeof me) _exit(2);
    close(pipe_wr);
    wl_wait_term(); /* sigprocmask + sigsuspend; our copy of the SIGTERM handler sets wl_term */
    g_v_marker = MARKER;
    _exit(0);
  }
  sh->c_returned = 1;
  close(pipe_wr);
  wl_expect(g_v_marker == MARKER, "V's marker 0x%x not in C's memory", (unsigned)g_v_marker);
  wl_expect(wl_term == 1, "V's SIGTERM handler did not set wl_term in the shared memory");
  int st = 0;
  pid_t r;
  while ((r = waitpid(v, &st, 0)) < 0 && errno == EINTR) {
  }
  wl_expect(r == v && WIFEXITED(st) && WEXITSTATUS(st) == 0,
            "waitpid(V %d) returned %d status 0x%x", (int)v, (int)r, st);
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct shared* sh =
      mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED) wl_die("mmap: %m");
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) wl_die("pipe: %m");

  pid_t c = wl_fork("C");
  if (c == 0) {
    close(p[0]);
    child_c(sh, p[1]);
  }
  close(p[1]);
  pid_t v = 0;
  if (!wl_read_full(p[0], &v, sizeof v)) wl_die("V never reported its pid");
  close(p[0]);
  if (!wl_wait_in_syscall(v, SYS_rt_sigsuspend, SYS_rt_sigsuspend)) {
    wl_die("V (%d) never blocked in sigsuspend", (int)v);
  }
  if (sh->c_returned) wl_die("C returned from vfork during setup");

  wl_ready();
  wl_wait_term();

  wl_expect(sh->c_returned == 0, "C returned from vfork before V exited");
  pid_t host_c = wl_proc_pid(c);
  char state = host_c > 0 ? proc_state(host_c) : 0;
  wl_expect(state == 'D', "C: state '%c', expected 'D' (waiting for the vfork child)",
            state ? state : '?');

  /* V as C's child, the way a program that did not get the pipe would find it. */
  pid_t found = -1;
  int nchildren = 0;
  char path[96], buf[256];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)host_c, (int)host_c);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (wl_expect(fd >= 0, "open %s: %m", path)) {
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    char* save = NULL;
    for (char* tok = strtok_r(buf, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
      nchildren++;
      found = ns_pid((pid_t)atoi(tok));
    }
  }
  wl_expect(nchildren == 1, "C has %d children, expected 1 (V)", nchildren);
  wl_expect(found == v, "C's child is %d, V reported %d", (int)found, (int)v);

  if (kill(found > 0 && nchildren == 1 ? found : v, SIGTERM) != 0) {
    wl_expect(false, "kill(V, SIGTERM): %m");
  }
  /* C ends once V has exited; if V does not react, fail instead of hanging. */
  double t0 = wl_now();
  int st = 0;
  pid_t r;
  while ((r = waitpid(c, &st, WNOHANG)) == 0 && wl_now() - t0 < 5) usleep(2000);
  if (r == 0) {
    wl_expect(false, "C did not finish within 5 s of SIGTERM to V");
    kill(v, SIGKILL);
    kill(c, SIGKILL);
    r = waitpid(c, &st, 0);
  }
  wl_expect(r == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "C (pid %d): status 0x%x", (int)c, st);
  wl_finish();
}
