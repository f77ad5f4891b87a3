/* An executable memfd: the workload copies its own binary (/proc/self/exe) into a memfd
 * (MFD_CLOEXEC, MFD_EXEC where the kernel knows it), reopens it O_RDONLY through
 * /proc/self/fd/N and closes the original read-write fd, so only a read-only description is
 * left. Exec refuses a file with a writable description (ETXTBSY); the memfd_create() fd itself
 * is a pseudo file that does not count as a writer, but a writable reopen (as a restore might
 * use to fill the memfd) does.
 * On request: the fd is O_RDONLY and FD_CLOEXEC, executable, as large as the binary; a child
 * forked now runs execveat(fd, "", AT_EMPTY_PATH) with the argument --probe, which makes the
 * copy exit at once with code 73: the exec works (no ETXTBSY, so no writable description of the
 * memfd exists anywhere; no ENOEXEC) and runs the memfd's own contents. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

#define PROBE_ARG "--probe"
#define PROBE_CODE 73

extern char** environ;

int main(int argc, char** argv) {
  if (argc == 2 && strcmp(argv[1], PROBE_ARG) == 0) _exit(PROBE_CODE);
  wl_init(argc, argv);

  int exe = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  if (exe < 0) wl_die("open /proc/self/exe: %m");
  int rw = memfd_create("crest-wl-exec", MFD_CLOEXEC | MFD_EXEC);
  if (rw < 0 && errno == EINVAL) rw = memfd_create("crest-wl-exec", MFD_CLOEXEC);
  if (rw < 0) wl_die("memfd_create: %m");
  off_t size = 0;
  char buf[65536];
  for (;;) {
    ssize_t n = read(exe, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) wl_die("read /proc/self/exe: %m");
    if (n == 0) break;
    if (!wl_write_full(rw, buf, (size_t)n)) wl_die("write memfd: %m");
    size += n;
  }
  close(exe);
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", rw);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) wl_die("reopen %s: %m", path);
  close(rw);

  wl_ready();
  wl_wait_term();

  int fl = fcntl(fd, F_GETFL);
  wl_expect(fl >= 0 && (fl & O_ACCMODE) == O_RDONLY, "memfd access mode 0%o, expected O_RDONLY",
            fl & O_ACCMODE);
  wl_expect(fcntl(fd, F_GETFD) == FD_CLOEXEC, "memfd lost FD_CLOEXEC");
  struct stat st;
  long long got = fstat(fd, &st) == 0 ? (long long)st.st_size : -1;
  wl_expect(got == (long long)size, "memfd size %lld, expected %lld", got, (long long)size);
  wl_expect(fstat(fd, &st) == 0 && (st.st_mode & S_IXUSR), "memfd not executable (mode 0%o)",
            (unsigned)st.st_mode);

  int p[2];
  if (!wl_expect(pipe2(p, O_CLOEXEC) == 0, "pipe: %m")) wl_finish();
  pid_t child = wl_fork("exec");
  if (child == 0) {
    char* args[] = {(char*)"memfd-probe", (char*)PROBE_ARG, NULL};
    syscall(SYS_execveat, fd, "", args, environ, AT_EMPTY_PATH);
    int err = errno;
    (void)!write(p[1], &err, sizeof err);
    _exit(1);
  }
  close(p[1]);
  int err = 0;
  ssize_t n;
  while ((n = read(p[0], &err, sizeof err)) < 0 && errno == EINTR) {
  }
  close(p[0]);
  wl_expect(n == 0, "execveat of the memfd failed: %s", strerror(err));
  int status = 0;
  pid_t r;
  while ((r = waitpid(child, &status, 0)) < 0 && errno == EINTR) {
  }
  wl_expect(r == child && WIFEXITED(status) && WEXITSTATUS(status) == PROBE_CODE,
            "the exec'd memfd ended with status 0x%x, expected exit %d", status, PROBE_CODE);
  wl_finish();
}
