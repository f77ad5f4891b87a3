/* Shared protocol of the end-to-end workloads (ZDTM-shaped: set up, signal ready, get
 * checkpointed/killed/restored, verify on request).
 *
 * Invocation: `WORKLOAD DIR`, DIR a private scratch directory for the test.
 *   fd 0  /dev/null
 *   fd 1, 2  DIR/out.log (one description, O_WRONLY|O_APPEND)
 *   fd 3  write end of the harness's "ready" pipe
 * Every other inherited fd is closed by wl_init(). The root makes itself a session leader
 * (setsid) so the tree owns its session and process group and nothing in it points outside.
 *
 * Life cycle of the root:
 *   wl_init()             SIGTERM handler installed (sets wl_term, nothing else; no SA_RESTART,
 *                         so blocking syscalls see EINTR and must handle it)
 *   ...set up state, wl_fork() children, wait for them to be ready (wl_sync_*)...
 *   wl_ready()            one byte to fd 3, fd 3 closed: the pipe is gone from the tree
 *   ...run or block...    dump/kill/restore may happen here, any number of times
 *   SIGTERM               the check request
 *   ...verify with wl_expect(), forward SIGTERM to children, wl_reap() them...
 *   wl_finish()           prints exactly one line, `PASS` or `FAIL: <reason>`, on fd 1 and exits
 *                         0 / 1
 * Children report through their exit status (0 = pass); their diagnostics go to fd 2 as lines
 * starting with "# ", which the harness shows but does not count as verdicts.
 *
 * Verifications must hold at any time after setup (a tree can be dumped and restored twice), so
 * they check invariants, not a frozen snapshot. */
#ifndef CREST_TESTS_WORKLOAD_H
#define CREST_TESTS_WORKLOAD_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define WL_PAGE 4096UL
#define WL_READY_FD 3

/* Set by the SIGTERM handler: the check was requested. */
extern volatile sig_atomic_t wl_term;

/* Parses argv, closes inherited fds, setsid(), installs the SIGTERM handler. */
void wl_init(int argc, char** argv);
const char* wl_dir(void);
/* DIR/name in a static rotating buffer (valid for the next few calls). */
const char* wl_path(const char* name);

/* Root only: tells the harness the state is set up. */
void wl_ready(void);
/* Blocks until SIGTERM arrived (returns at once if it already has). Leaves the signal mask as
 * it found it. */
void wl_wait_term(void);

/* fork() for workloads: the child drops the ready fd, clears wl_term and remembers its role
 * (used in its diagnostics). Returns like fork(); failure to fork fails the workload. */
pid_t wl_fork(const char* role);
bool wl_is_root(void);

/* Diagnostics (stderr, "# role[pid]: ..."). */
void wl_note(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

/* Records a failure when cond is false (the first reason is reported; the rest are noted).
 * Returns cond. */
bool wl_expect(bool cond, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
bool wl_failed(void);

/* Waits for a child and expects it to exit 0 (its own checks passed). Any other status
 * (non-zero exit, killed, gone) is a failure naming `what`. */
bool wl_reap(pid_t pid, const char* what);

/* Ends the process. Root: prints the verdict line and exits 0 (PASS) or 1. Child: exits 0 or 1,
 * noting the reason on stderr. Also checks that the process kept its pid (and for the root its
 * session and process group). */
__attribute__((noreturn)) void wl_finish(void);
/* Fails immediately (setup errors and the like). */
__attribute__((noreturn, format(printf, 1, 2))) void wl_die(const char* fmt, ...);

/* Readiness of children: a pipe created before forking. Each child posts one record (and
 * closes both ends); the parent waits for n records. A child that dies before posting makes
 * the wait fail instead of hanging (EOF once every writer is gone). */
struct wl_sync {
  int rd, wr;
};
void wl_sync_init(struct wl_sync* s);
void wl_sync_post(struct wl_sync* s, const void* rec, size_t len);
/* Reads n records of len bytes into recs (may be NULL when len == 0 ... use len 1 then). */
bool wl_sync_wait(struct wl_sync* s, int n, void* recs, size_t len);

/* Waits (setup only, before wl_ready) until task `pid` sits in one of the given syscalls
 * according to /proc/PID/syscall, so that the checkpoint catches it inside the call. */
bool wl_wait_in_syscall(pid_t pid, long nr1, long nr2);

/* Deterministic data. */
uint64_t wl_mix64(uint64_t x);
void wl_fill(void* buf, size_t len, uint64_t seed);
/* Returns the offset of the first byte that differs from wl_fill(seed), or -1. */
long wl_check(const void* buf, size_t len, uint64_t seed);
/* Same for a region that must read as zero. */
long wl_check_zero(const void* buf, size_t len);

/* I/O helpers that retry on EINTR and short transfers. Return false on error or EOF. */
bool wl_read_full(int fd, void* buf, size_t len);
bool wl_write_full(int fd, const void* buf, size_t len);
/* Bytes buffered in a pipe/FIFO (FIONREAD), -1 on error. */
int wl_pipe_pending(int fd);

/* The mapping of /proc/self/smaps that holds addr: bounds, permissions, name and VmFlags. */
struct wl_vma {
  unsigned long start, end;
  char perms[5];
  char name[256];
  char vmflags[256];
};
bool wl_find_vma(const void* addr, struct wl_vma* out);
/* Whether a VmFlags line holds the mnemonic. */
bool wl_has_vmflag(const char* vmflags, const char* mnemonic);
/* The pid /proc knows `pid` by (a restored tree may run in a new pid namespace while /proc is
 * the host's): from a pidfd's fdinfo "Pid:" line. -1 if unknown. */
pid_t wl_proc_pid(pid_t pid);

/* A System V IPC key tag<<24 | 24 random bits. Keys from pids collide across tests run at once
 * (a tree restored in its own pid namespace keeps its keys while the host reuses its pids):
 * callers create with IPC_EXCL and draw again on EEXIST. */
key_t wl_random_key(unsigned char tag);

double wl_now(void); /* CLOCK_MONOTONIC seconds */
pid_t wl_gettid(void);

#endif
