/* Linux native AIO (raw io_setup/io_submit/io_getevents/io_destroy syscalls). data.dat (64 KiB
 * pattern) in DIR, open O_RDONLY; io_setup(128) gives the context, which is the address of the
 * kernel's completion ring mapped into the process ("[aio]" in /proc/self/maps). A read is
 * submitted and its event reaped before ready, so the ring is empty at the checkpoint; the
 * context value, the ring size (nr) and the ring header are recorded.
 * On request: a mapping named [aio] still starts at the context address; the ring header there
 * has the AIO magic, the same nr and head == tail (empty). With the SAME context: one read
 * (8 KiB at 20 KiB) is submitted; its completion appears in the ring memory itself (tail moves,
 * the io_event there names the iocb and cookie), then io_getevents returns it with the right
 * data cookie, obj and res, the buffer holds the file's bytes, and head catches up with tail;
 * then four reads at once complete with their own cookies and data; io_destroy succeeds and
 * the [aio] mapping is gone. */
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define FILE_LEN (64 * 1024)
#define SEED 0xa10ULL
#define AIO_RING_MAGIC 0xa10a10a1u

/* The kernel's ring header (fs/aio.c struct aio_ring), followed by io_event[nr]. */
struct aio_ring {
  unsigned id;
  unsigned nr;
  unsigned head;
  unsigned tail;
  unsigned magic;
  unsigned compat_features;
  unsigned incompat_features;
  unsigned header_length;
  struct io_event io_events[];
};

static long io_setup_(unsigned nr, aio_context_t* ctx) { return syscall(SYS_io_setup, nr, ctx); }
static long io_destroy_(aio_context_t ctx) { return syscall(SYS_io_destroy, ctx); }
static long io_submit_(aio_context_t ctx, long n, struct iocb** iocbs) {
  return syscall(SYS_io_submit, ctx, n, iocbs);
}
static long io_getevents_(aio_context_t ctx, long min, long max, struct io_event* ev,
                          struct timespec* ts) {
  return syscall(SYS_io_getevents, ctx, min, max, ev, ts);
}

static char g_ref[FILE_LEN];

static void prep_read(struct iocb* cb, int fd, void* buf, size_t len, off_t off, uint64_t cookie) {
  memset(cb, 0, sizeof *cb);
  cb->aio_data = cookie;
  cb->aio_lio_opcode = IOCB_CMD_PREAD;
  cb->aio_fildes = (uint32_t)fd;
  cb->aio_buf = (uint64_t)(uintptr_t)buf;
  cb->aio_nbytes = len;
  cb->aio_offset = off;
}

/* Finds the /proc/self/maps line starting at addr; copies its name. */
static bool maps_name_at(unsigned long addr, char* name, size_t len) {
  FILE* f = fopen("/proc/self/maps", "re");
  if (!f) return false;
  char line[1024];
  bool found = false;
  while (fgets(line, sizeof line, f)) {
    unsigned long s, e;
    int pos = 0;
    if (sscanf(line, "%lx-%lx %*s %*s %*s %*s%n", &s, &e, &pos) < 2 || s != addr) continue;
    const char* n = line + pos;
    while (*n == ' ') n++;
    snprintf(name, len, "%.200s", n);
    name[strcspn(name, "\n")] = 0;
    found = true;
    break;
  }
  fclose(f);
  return found;
}

/* One read submitted, watched in the ring, reaped with io_getevents. */
static void check_one_read(aio_context_t ctx, struct aio_ring* ring, int fd) {
  static char buf[8192];
  memset(buf, 0, sizeof buf);
  struct iocb cb;
  struct iocb* cbs[1] = {&cb};
  const uint64_t cookie = 0xfeed0002;
  prep_read(&cb, fd, buf, sizeof buf, 20 * 1024, cookie);
  unsigned tail0 = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
  long r = io_submit_(ctx, 1, cbs);
  if (!wl_expect(r == 1, "io_submit on the restored context: %ld (%m)", r)) return;

  /* The completion lands in the ring memory (a buffered read completes at once or soon). */
  double deadline = wl_now() + 5;
  unsigned tail = tail0;
  while ((tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE)) == tail0 && wl_now() < deadline) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  if (wl_expect(tail != tail0, "the ring's tail did not move after a completed submit")) {
    wl_expect(tail == (tail0 + 1) % ring->nr, "ring tail moved from %u to %u, expected +1", tail0,
              tail);
    const struct io_event* ev = &ring->io_events[tail0 % ring->nr];
    wl_expect(ev->data == cookie && ev->obj == (uint64_t)(uintptr_t)&cb,
              "event in the ring: data %llx obj %llx, expected %llx/%p",
              (unsigned long long)ev->data, (unsigned long long)ev->obj, (unsigned long long)cookie,
              (void*)&cb);
  }

  struct io_event ev;
  struct timespec ts = {5, 0};
  r = io_getevents_(ctx, 1, 1, &ev, &ts);
  if (!wl_expect(r == 1, "io_getevents: %ld (%m), expected 1 event", r)) return;
  wl_expect(ev.data == cookie, "event data cookie %llx, expected %llx", (unsigned long long)ev.data,
            (unsigned long long)cookie);
  wl_expect(ev.obj == (uint64_t)(uintptr_t)&cb, "event obj %llx, expected %p",
            (unsigned long long)ev.obj, (void*)&cb);
  wl_expect(ev.res == (int64_t)sizeof buf, "event res %lld, expected %zu", (long long)ev.res,
            sizeof buf);
  wl_expect(memcmp(buf, g_ref + 20 * 1024, sizeof buf) == 0, "the aio read returned wrong data");
  wl_expect(ring->head == ring->tail, "ring head %u != tail %u after reaping", ring->head,
            ring->tail);
}

static void check_batch(aio_context_t ctx, int fd) {
  enum { N = 4, LEN = 4096 };
  static char bufs[N][LEN];
  struct iocb cbs[N];
  struct iocb* ptrs[N];
  for (int i = 0; i < N; i++) {
    memset(bufs[i], 0, LEN);
    prep_read(&cbs[i], fd, bufs[i], LEN, (off_t)(i * 3 + 1) * LEN, 0xb0000 + (uint64_t)i);
    ptrs[i] = &cbs[i];
  }
  long r = io_submit_(ctx, N, ptrs);
  if (!wl_expect(r == N, "io_submit of %d reads: %ld (%m)", N, r)) return;
  struct io_event evs[N];
  int got = 0;
  double deadline = wl_now() + 5;
  while (got < N && wl_now() < deadline) {
    struct timespec ts = {1, 0};
    r = io_getevents_(ctx, 1, N - got, evs + got, &ts);
    if (r < 0 && errno != EINTR) break;
    if (r > 0) got += (int)r;
  }
  if (!wl_expect(got == N, "%d of %d batched reads completed", got, N)) return;
  bool seen[N] = {false};
  for (int k = 0; k < N; k++) {
    uint64_t i = evs[k].data - 0xb0000;
    if (!wl_expect(i < N && !seen[i], "unexpected event cookie %llx",
                   (unsigned long long)evs[k].data)) {
      continue;
    }
    seen[i] = true;
    wl_expect(evs[k].obj == (uint64_t)(uintptr_t)&cbs[i] && evs[k].res == LEN,
              "batched read %d: obj %llx res %lld", (int)i, (unsigned long long)evs[k].obj,
              (long long)evs[k].res);
    wl_expect(memcmp(bufs[i], g_ref + (i * 3 + 1) * LEN, LEN) == 0,
              "batched read %d returned wrong data", (int)i);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);

  wl_fill(g_ref, FILE_LEN, SEED);
  int wfd = open(wl_path("data.dat"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (wfd < 0 || !wl_write_full(wfd, g_ref, FILE_LEN)) wl_die("create data.dat: %m");
  close(wfd);
  int fd = open(wl_path("data.dat"), O_RDONLY | O_CLOEXEC);
  if (fd < 0) wl_die("open data.dat: %m");

  aio_context_t ctx = 0;
  if (io_setup_(128, &ctx) != 0) wl_die("io_setup: %m");
  const aio_context_t ctx0 = ctx;
  struct aio_ring* ring = (struct aio_ring*)(uintptr_t)ctx;
  if (ring->magic != AIO_RING_MAGIC) wl_die("ring magic %#x at the context address", ring->magic);
  const unsigned nr0 = ring->nr;
  const unsigned hdr0 = ring->header_length;

  static char buf[4096];
  struct iocb cb;
  struct iocb* cbs[1] = {&cb};
  prep_read(&cb, fd, buf, sizeof buf, 8192, 0xfeed0001);
  if (io_submit_(ctx, 1, cbs) != 1) wl_die("io_submit: %m");
  struct io_event ev;
  struct timespec ts = {5, 0};
  if (io_getevents_(ctx, 1, 1, &ev, &ts) != 1) wl_die("io_getevents: %m");
  if (ev.data != 0xfeed0001 || ev.res != (int64_t)sizeof buf ||
      memcmp(buf, g_ref + 8192, sizeof buf) != 0) {
    wl_die("the setup read completed wrongly");
  }
  if (ring->head != ring->tail) wl_die("ring not empty after reaping");
  wl_note("aio context %#llx, ring nr %u, head %u", (unsigned long long)ctx, nr0, ring->head);

  wl_ready();
  wl_wait_term();

  wl_expect(ctx == ctx0, "context variable changed");
  char name[256] = "";
  if (wl_expect(maps_name_at((unsigned long)ctx, name, sizeof name),
                "no mapping starts at the aio context %#llx", (unsigned long long)ctx)) {
    wl_expect(strstr(name, "[aio]") != NULL, "mapping at the context is '%s', not [aio]", name);
  }
  wl_expect(ring->magic == AIO_RING_MAGIC && ring->nr == nr0 && ring->header_length == hdr0,
            "ring header magic %#x nr %u header %u, expected %#x/%u/%u", ring->magic, ring->nr,
            ring->header_length, AIO_RING_MAGIC, nr0, hdr0);
  wl_expect(ring->head == ring->tail, "ring not empty: head %u tail %u", ring->head, ring->tail);

  if (!wl_failed()) {
    check_one_read(ctx, ring, fd);
    check_batch(ctx, fd);
  }
  long r = io_destroy_(ctx);
  wl_expect(r == 0, "io_destroy: %m");
  if (r == 0) {
    wl_expect(!maps_name_at((unsigned long)ctx, name, sizeof name),
              "the [aio] mapping is still there after io_destroy");
  }
  wl_finish();
}
