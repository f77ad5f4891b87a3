// AIO contexts (io_setup): a context is known to its program only by its ring, a special mapping
// ("/[aio]") whose address is the context's id. Dump and restore side by side.
//
// Dump: the ring's header (capacity, head, tail). A ring holding completed events that the
// program has not reaped yet is refused: the kernel keeps its own copy of the tail, which a new
// context cannot be given. Requests still in flight are not visible from outside the kernel; a
// frozen tree's requests complete into the ring, and are refused that way at the next dump.
//
// Restore: io_setup in the task with a request count that gives a ring of the same capacity
// (found by trying in crest itself: the kernel rounds the count up to whole pages), mremap of the
// ring to its old address (the kernel moves the context's id with it), then as many empty reads
// submitted and reaped as the old ring had passed through, so that head and tail are where the
// program left them.
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "core/context.h"
#include "core/util/error.h"
#include "core/util/unique_fd.h"

namespace crest {
namespace {

struct AioRingHeader {  // struct aio_ring's fixed part (fs/aio.c)
  uint32_t id, nr, head, tail, magic, compat_features, incompat_features, header_length;
};
constexpr uint32_t kAioRingMagic = 0xa10a10a1;

// Capacity and mapping size of a ring io_setup(n) makes here.
bool probe_ring(unsigned n, uint32_t& nr, uint64_t& size) {
  aio_context_t ctx = 0;
  if (::syscall(SYS_io_setup, n, &ctx) != 0) return false;
  const auto* ring = reinterpret_cast<const AioRingHeader*>(ctx);
  nr = ring->nr;
  // The ring's mapping ends with the page its last event is in.
  size = (sizeof(AioRingHeader) + uint64_t{nr} * sizeof(io_event) + 4095) / 4096 * 4096;
  ::syscall(SYS_io_destroy, ctx);
  return true;
}

// The smallest io_setup() count that makes a ring of `nr` events here.
unsigned setup_count_for(uint32_t nr, uint64_t size) {
  unsigned lo = 1, hi = nr;
  uint32_t got = 0;
  uint64_t got_size = 0;
  while (lo < hi) {
    unsigned mid = lo + (hi - lo) / 2;
    if (!probe_ring(mid, got, got_size))
      throw_errno("io_setup(" + std::to_string(mid) + ") to size an AIO ring", errno, Errc::kernel);
    if (got >= nr)
      hi = mid;
    else
      lo = mid + 1;
  }
  if (!probe_ring(lo, got, got_size) || got != nr || got_size != size)
    fail(Errc::unsupported, "no io_setup() count makes an AIO ring of " + std::to_string(nr) +
                                " events and " + std::to_string(size) + " bytes on this kernel");
  return lo;
}

}  // namespace

void dump_aio_ring(DumpContext& ctx, const ptrace::FrozenProcess& p, schema::VmaRecord& v) {
  const std::string where = "process " + std::to_string(p.pid) + ": AIO context at " +
                            std::to_string(v.start);
  AioRingHeader h{};
  try {
    remote_read(p.pid, v.start, &h, sizeof h);
  } catch (const Error& e) {
    ctx.refuse(where + ": cannot read its ring: " + e.what());
    return;
  }
  if (h.magic != kAioRingMagic || h.nr == 0) {
    ctx.refuse(where + ": its ring header is not one this crest knows");
    return;
  }
  if (h.head != h.tail) {
    ctx.refuse(where + ": " + std::to_string((h.tail + h.nr - h.head) % h.nr) +
               " completed events are waiting to be reaped (io_getevents); crest restores an "
               "AIO context only with an empty ring");
    return;
  }
  ctx.meta.aio.push_back({v.pid, v.start, v.end - v.start, h.nr, h.head, h.tail});
}

void restore_aio_ring(RestoreContext& ctx, RestoredProcess& p, const schema::VmaRecord& v) {
  const schema::AioRecord* rec = nullptr;
  for (auto& a : ctx.meta.aio)
    if (a.pid == p.rec->pid && a.ring == v.start) rec = &a;
  if (!rec) fail(Errc::corrupt, "the AIO ring at " + std::to_string(v.start) + " has no aio row");
  Injector& inj = *p.inj;
  const unsigned count = setup_count_for(rec->nr_events, rec->size);

  // Scratch layout: [0] the new context id, [64] iocbs, [2048] iocb pointers, [3072] events.
  const uint64_t scratch = p.scratch + 4096;
  aio_context_t zero = 0;
  remote_write(p.pid, scratch, &zero, sizeof zero);
  inj.call("io_setup", SYS_io_setup, count, scratch);
  aio_context_t made = 0;
  remote_read(p.pid, scratch, &made, sizeof made);
  if (made != v.start)
    inj.call("mremap (AIO ring)", SYS_mremap, made, rec->size, rec->size,
             MREMAP_MAYMOVE | MREMAP_FIXED, v.start);

  if (rec->tail == 0) return;
  // Move head and tail to where they were: empty reads of /dev/zero, submitted and reaped.
  UniqueFd zero_fd(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
  if (!zero_fd) throw_errno("cannot open /dev/zero", errno, Errc::io);
  const int theirs = ctx.install_fd(p, zero_fd.get());
  constexpr uint32_t kBatch = 16;
  for (uint32_t done = 0; done < rec->tail;) {
    const uint32_t n = std::min(kBatch, rec->tail - done);
    iocb cbs[kBatch]{};
    uint64_t ptrs[kBatch];
    for (uint32_t i = 0; i < n; ++i) {
      cbs[i].aio_lio_opcode = IOCB_CMD_PREAD;
      cbs[i].aio_fildes = static_cast<uint32_t>(theirs);
      cbs[i].aio_buf = scratch + 3072;
      cbs[i].aio_nbytes = 0;
      ptrs[i] = scratch + 64 + i * sizeof(iocb);
    }
    remote_write(p.pid, scratch + 64, cbs, n * sizeof(iocb));
    remote_write(p.pid, scratch + 2048, ptrs, n * sizeof(uint64_t));
    long sub = inj.raw(SYS_io_submit, v.start, n, scratch + 2048);
    if (sub != static_cast<long>(n))
      throw Error(Errc::kernel, "io_submit to move the AIO ring at " + std::to_string(v.start),
                  sub < 0 ? static_cast<int>(-sub) : EAGAIN);
    long got = inj.raw(SYS_io_getevents, v.start, n, n, scratch + 3072, 0);
    if (got != static_cast<long>(n))
      throw Error(Errc::kernel, "io_getevents to move the AIO ring at " + std::to_string(v.start),
                  got < 0 ? static_cast<int>(-got) : EAGAIN);
    done += n;
  }
  inj.call("close", SYS_close, static_cast<uint64_t>(theirs));
}

}  // namespace crest
