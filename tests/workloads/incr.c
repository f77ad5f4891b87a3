/* Known page sets written between checkpoints, for the incremental-checkpoint tests
 * (tests/incremental). The script and the regions are in incr_model.h.
 *
 * Control: FIFOs in DIR, made and opened O_RDWR by the root at setup (so no open ever blocks
 * and a restored root reopens them by path):
 *   DIR/cmd     the test writes one byte per command: 's' = go to the next state
 *   DIR/status  the root answers one line per command:
 *                 "setup A=<addr> B=<addr> S=<addr> M=<addr> H=<addr>" (before the ready byte)
 *                 "state <n>[ N=<addr> M=<addr>]"                (after each command)
 * Root and child talk over two pipes made before the fork. Between commands both processes
 * block in ppoll() and touch none of the regions, so a checkpoint (or the test reading their
 * memory) sees a settled state.
 *
 * On SIGTERM each process verifies every page of its regions against the model of its current
 * state (absent and zero pages must read as zeros); the root forwards SIGTERM to the child and
 * reaps it. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "incr_model.h"
#include "workload.h"

#define PG WL_PAGE

static unsigned char* g_region[INCR_NREGIONS];
static int g_state;
static int g_proc; /* 0 root, 1 child */

/* A region between two PROT_NONE guard pages. */
static unsigned char* map_guarded(unsigned pages, int flags) {
  size_t len = ((size_t)pages + 2) * PG;
  unsigned char* base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) wl_die("mmap (guarded reservation): %m");
  unsigned char* r = base + PG;
  if (flags & MAP_SHARED) {
    void* s = mmap(r, (size_t)pages * PG, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (s == MAP_FAILED) wl_die("mmap (shared region): %m");
  } else if (mprotect(r, (size_t)pages * PG, PROT_READ | PROT_WRITE) != 0) {
    wl_die("mprotect: %m");
  }
  return r;
}

/* A 2 MiB aligned region for a transparent huge page, guarded like the others. */
static unsigned char* map_huge(unsigned pages) {
  const size_t huge = 2UL << 20, len = (size_t)pages * PG;
  unsigned char* base =
      mmap(NULL, len + huge + 2 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) wl_die("mmap (huge reservation): %m");
  unsigned char* r = (unsigned char*)(((uintptr_t)base + PG + huge - 1) & ~(uintptr_t)(huge - 1));
  if (mprotect(r, len, PROT_READ | PROT_WRITE) != 0) wl_die("mprotect: %m");
  if (madvise(r, len, MADV_HUGEPAGE) != 0) wl_note("madvise(MADV_HUGEPAGE): %m");
  return r;
}

static unsigned char* page_at(int region, unsigned page) { return g_region[region] + page * PG; }

static void write_page(int region, unsigned page, unsigned version) {
  wl_fill(page_at(region, page), PG, incr_seed(region, page, version));
}

/* Writes every page whose model changed from state `from` to state `to` in this process by a
 * plain store. B changes only through read() (read_into_b), S only by the child's stores, and a
 * moved region keeps its bytes. Before the fork the child's memory is the root's. */
static void apply_stores(int from, int to) {
  int before = g_proc == 1 && from < INCR_FORK_STATE ? 0 : g_proc;
  for (int r = 0; r < INCR_NREGIONS; r++) {
    if (!incr_region_exists(g_proc, r, to) || r == INCR_B) continue;
    if (r == INCR_S && g_proc == 0) continue;
    for (unsigned p = 0; p < incr_region_pages(r); p++) {
      struct incr_page a = incr_model(before, r, p, from);
      struct incr_page b = incr_model(g_proc, r, p, to);
      if (incr_same(a, b) && incr_region_exists(before, r, from)) continue;
      if (b.kind == INCR_DATA)
        write_page(r, p, b.version);
      else if (b.kind == INCR_ZERO)
        memset(page_at(r, p), 0, PG);
      else if (a.kind != INCR_ABSENT && madvise(page_at(r, p), PG, MADV_DONTNEED) != 0)
        wl_die("madvise(MADV_DONTNEED) of %s[%u]: %m", incr_region_name(r), p);
    }
  }
}

/* B pages of state 1 arrive through read(2) only: the kernel writes them. */
static void read_into_b(void) {
  const unsigned first[2] = {2, 6}, count[2] = {3, 2};
  const char* path = wl_path("readdata");
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) wl_die("open %s: %m", path);
  unsigned char* buf = malloc(5 * PG);
  if (!buf) wl_die("malloc");
  size_t off = 0;
  for (int i = 0; i < 2; i++)
    for (unsigned j = 0; j < count[i]; j++, off += PG)
      wl_fill(buf + off, PG, incr_seed(INCR_B, first[i] + j, 2));
  if (!wl_write_full(fd, buf, off)) wl_die("write %s: %m", path);
  free(buf);
  if (lseek(fd, 0, SEEK_SET) != 0) wl_die("lseek: %m");
  for (int i = 0; i < 2; i++) {
    size_t len = count[i] * PG;
    ssize_t n;
    while ((n = read(fd, page_at(INCR_B, first[i]), len)) < 0 && errno == EINTR) {
    }
    if (n != (ssize_t)len) wl_die("read into B[%u]: %zd of %zu bytes (%m)", first[i], n, len);
  }
  close(fd);
  unlink(path);
}

static void move_m(void) {
  unsigned pages = incr_region_pages(INCR_M);
  unsigned char* target = map_guarded(pages, MAP_PRIVATE);
  void* moved = mremap(g_region[INCR_M], pages * PG, pages * PG, MREMAP_MAYMOVE | MREMAP_FIXED,
                       target);
  if (moved != target) wl_die("mremap of M: %m");
  g_region[INCR_M] = target;
}

/* Waits for one byte on fd, or for SIGTERM (returns -1 then). */
static int next_command(int fd) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigprocmask(SIG_BLOCK, &block, &old);
  sigset_t during = old;
  sigdelset(&during, SIGTERM);
  int result = -1;
  while (!wl_term) {
    struct pollfd p = {fd, POLLIN, 0};
    int r = ppoll(&p, 1, NULL, &during);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) wl_die("ppoll: %m");
    unsigned char c;
    ssize_t n = read(fd, &c, 1);
    if (n == 1) {
      result = c;
      break;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    wl_die("command channel closed (%zd): %m", n);
  }
  sigprocmask(SIG_SETMASK, &old, NULL);
  return result;
}

static void verify(void) {
  for (int r = 0; r < INCR_NREGIONS; r++) {
    if (!incr_region_exists(g_proc, r, g_state)) continue;
    for (unsigned p = 0; p < incr_region_pages(r); p++) {
      struct incr_page m = incr_model(g_proc, r, p, g_state);
      long bad = m.kind == INCR_DATA ? wl_check(page_at(r, p), PG, incr_seed(r, p, m.version))
                                     : wl_check_zero(page_at(r, p), PG);
      if (!wl_expect(bad < 0, "state %d: %s[%u] differs at byte %ld (expected %s v%u)", g_state,
                     incr_region_name(r), p, bad,
                     m.kind == INCR_DATA ? "data" : "zeros", m.version))
        return;
    }
  }
}

static void status_line(int fd, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void status_line(int fd, const char* fmt, ...) {
  char line[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0 || n >= (int)sizeof line - 1) wl_die("status line too long");
  line[n++] = '\n';
  if (!wl_write_full(fd, line, (size_t)n)) wl_die("writing the status line: %m");
}

static void child_main(int from_root, int to_root) {
  g_proc = 1;
  for (;;) {
    int c = next_command(from_root);
    if (c < 0) break;
    int to = c;
    apply_stores(g_state, to);
    g_state = to;
    if (!wl_write_full(to_root, "k", 1)) wl_die("ack to the root: %m");
  }
  verify();
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const char* cmd_path = wl_path("cmd");
  const char* status_path = wl_path("status");
  if (mkfifo(cmd_path, 0600) != 0 && errno != EEXIST) wl_die("mkfifo %s: %m", cmd_path);
  if (mkfifo(status_path, 0600) != 0 && errno != EEXIST) wl_die("mkfifo %s: %m", status_path);
  int cmd = open(cmd_path, O_RDWR | O_CLOEXEC);
  int status = open(status_path, O_RDWR | O_CLOEXEC);
  if (cmd < 0 || status < 0) wl_die("open the FIFOs: %m");

  for (int r = 0; r < INCR_NREGIONS; r++)
    if (r != INCR_N && r != INCR_H)
      g_region[r] = map_guarded(incr_region_pages(r), r == INCR_S ? MAP_SHARED : 0);
  g_region[INCR_H] = map_huge(incr_region_pages(INCR_H));
  /* State 0, S included (the root writes it once at setup). */
  for (int r = 0; r < INCR_NREGIONS; r++) {
    if (!incr_region_exists(0, r, 0)) continue;
    for (unsigned p = 0; p < incr_region_pages(r); p++) {
      struct incr_page m = incr_model(0, r, p, 0);
      if (m.kind == INCR_DATA) write_page(r, p, m.version);
    }
  }
  status_line(status, "setup A=%p B=%p S=%p M=%p H=%p", (void*)g_region[INCR_A],
              (void*)g_region[INCR_B], (void*)g_region[INCR_S], (void*)g_region[INCR_M],
              (void*)g_region[INCR_H]);
  wl_ready();

  pid_t child = -1;
  int to_child = -1, from_child = -1;
  for (;;) {
    int c = next_command(cmd);
    if (c < 0) break;
    if (c != 's') wl_die("unknown command 0x%02x", c);
    if (g_state + 1 >= INCR_STATES) wl_die("no state after %d", g_state);
    int to = g_state + 1;
    char extra[128] = "";
    switch (to) {
      case 1:
        apply_stores(g_state, to);
        read_into_b();
        break;
      case INCR_MOVE_STATE: {
        unsigned char* old_m = g_region[INCR_M];
        g_region[INCR_N] = map_guarded(incr_region_pages(INCR_N), MAP_PRIVATE);
        move_m();
        apply_stores(g_state, to);
        snprintf(extra, sizeof extra, " N=%p M=%p Mold=%p", (void*)g_region[INCR_N],
                 (void*)g_region[INCR_M], (void*)old_m);
        break;
      }
      case INCR_FORK_STATE: {
        int down[2], up[2];
        if (pipe2(down, O_CLOEXEC) != 0 || pipe2(up, O_CLOEXEC) != 0) wl_die("pipe: %m");
        child = wl_fork("child");
        if (child == 0) {
          close(cmd);
          close(status);
          close(down[1]);
          close(up[0]);
          g_state = INCR_FORK_STATE - 1;
          child_main(down[0], up[1]);
        }
        close(down[0]);
        close(up[1]);
        to_child = down[1];
        from_child = up[0];
        snprintf(extra, sizeof extra, " child=%d", (int)child);
      }
        /* The child's part first, then the root's. */
        __attribute__((fallthrough));
      default:
        if (child > 0) {
          unsigned char s = (unsigned char)to, ack;
          if (!wl_write_full(to_child, &s, 1) || !wl_read_full(from_child, &ack, 1))
            wl_die("the child did not take state %d: %m", to);
        }
        apply_stores(g_state, to);
        break;
    }
    g_state = to;
    status_line(status, "state %d%s", g_state, extra);
  }
  verify();
  if (child > 0) {
    kill(child, SIGTERM);
    wl_reap(child, "child");
  }
  wl_finish();
}
