/* Two children in SECCOMP_MODE_STRICT (only read, write, exit and rt_sigreturn allowed), each
 * serving requests from the root over a pipe pair opened before entering strict mode:
 *   E  echo server: reply = f(request, number of requests served so far); 'X' ends it with a
 *      raw exit(0) syscall (glibc's _exit uses exit_group, which strict mode forbids)
 *   K  same server; 'G' makes it call getpid, which strict mode answers with SIGKILL
 * Each has served two requests during setup (its counter is state the restore must keep).
 * On request: /proc/CHILD/status shows Seccomp 1 (strict) for both; both answer new requests
 * correctly (counter continues at 2); K dies by SIGKILL on a forbidden syscall (the mode still
 * denies); E exits 0 when asked. */
#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

struct req {
  uint32_t op;
  uint32_t x;
};

static uint32_t answer(uint32_t x, uint32_t served) {
  return (x * 2654435761u) ^ (served * 40503u + 17u);
}

/* The server loop: nothing but read, write and exit once in strict mode. */
__attribute__((noreturn)) static void server(int cmd, int reply) {
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0) != 0) {
    wl_note("PR_SET_SECCOMP: %m");
    _exit(2);
  }
  uint32_t served = 0;
  const char ready = 'R';
  if (write(reply, &ready, 1) != 1) syscall(SYS_exit, 3);
  for (;;) {
    struct req r;
    ssize_t n = read(cmd, &r, sizeof r);
    if (n < 0 && errno == EINTR) continue;
    if (n != (ssize_t)sizeof r) syscall(SYS_exit, 4);
    if (r.op == 'Q') {
      uint32_t a = answer(r.x, served++);
      if (write(reply, &a, sizeof a) != (ssize_t)sizeof a) syscall(SYS_exit, 5);
    } else if (r.op == 'X') {
      syscall(SYS_exit, 0);
    } else if (r.op == 'G') {
      syscall(SYS_getpid); /* SIGKILL here */
      syscall(SYS_exit, 6);
    } else {
      syscall(SYS_exit, 7);
    }
  }
}

struct child {
  const char* name;
  pid_t pid;
  int cmd;   /* root writes */
  int reply; /* root reads */
  uint32_t served;
};

/* Value of "key:" in /proc/PID/status, -1 if missing. */
static long status_field(pid_t pid, const char* key) {
  pid_t host = wl_proc_pid(pid);
  if (host <= 0) return -1;
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)host);
  FILE* f = fopen(path, "re");
  if (!f) return -1;
  long v = -1;
  size_t klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
      v = strtol(line + klen + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return v;
}

static bool read_timeout(int fd, void* buf, size_t len, int ms) {
  struct pollfd pfd = {fd, POLLIN, 0};
  int r;
  while ((r = poll(&pfd, 1, ms)) < 0 && errno == EINTR) {
  }
  return r == 1 && wl_read_full(fd, buf, len);
}

static bool ask(struct child* c, uint32_t x) {
  struct req r = {'Q', x};
  uint32_t a = 0;
  if (!wl_expect(wl_write_full(c->cmd, &r, sizeof r), "%s: request: %m", c->name)) return false;
  if (!wl_expect(read_timeout(c->reply, &a, sizeof a, 5000), "%s: no reply", c->name)) {
    return false;
  }
  uint32_t want = answer(x, c->served++);
  return wl_expect(a == want, "%s: reply 0x%x to 0x%x, expected 0x%x", c->name, a, x, want);
}

static void start(struct child* c, const char* name) {
  int to[2], from[2];
  if (pipe2(to, O_CLOEXEC) != 0 || pipe2(from, O_CLOEXEC) != 0) wl_die("pipe: %m");
  c->name = name;
  c->pid = wl_fork(name);
  if (c->pid == 0) {
    close(to[1]);
    close(from[0]);
    server(to[0], from[1]);
  }
  close(to[0]);
  close(from[1]);
  c->cmd = to[1];
  c->reply = from[0];
  c->served = 0;
  char ready;
  if (!read_timeout(c->reply, &ready, 1, 5000) || ready != 'R') {
    wl_die("%s did not enter strict mode", name);
  }
  if (!ask(c, 0x1234) || !ask(c, 0xabcdef)) wl_die("%s does not serve requests", name);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  struct child e, k;
  start(&e, "E");
  start(&k, "K");
  if (status_field(e.pid, "Seccomp") != SECCOMP_MODE_STRICT) wl_die("E not in strict mode");

  wl_ready();
  wl_wait_term();

  struct child* both[2] = {&e, &k};
  for (int i = 0; i < 2; i++) {
    struct child* c = both[i];
    long mode = status_field(c->pid, "Seccomp");
    wl_expect(mode == SECCOMP_MODE_STRICT, "%s: Seccomp %ld in /proc/PID/status, expected %d",
              c->name, mode, SECCOMP_MODE_STRICT);
    long nfilters = status_field(c->pid, "Seccomp_filters");
    wl_expect(nfilters == 0, "%s: %ld seccomp filters, expected 0", c->name, nfilters);
    for (uint32_t x = 1; x <= 3; x++) ask(c, x * 0x01010101u + (uint32_t)i);
  }

  /* A forbidden syscall still kills. */
  struct req g = {'G', 0};
  wl_expect(wl_write_full(k.cmd, &g, sizeof g), "K: request: %m");
  int st = 0;
  pid_t r;
  while ((r = waitpid(k.pid, &st, 0)) < 0 && errno == EINTR) {
  }
  wl_expect(r == k.pid && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
            "K after a forbidden getpid: status 0x%x, expected SIGKILL", st);

  struct req x = {'X', 0};
  wl_expect(wl_write_full(e.cmd, &x, sizeof x), "E: request: %m");
  wl_reap(e.pid, "E");
  wl_finish();
}
