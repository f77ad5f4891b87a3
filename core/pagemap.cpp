#include "core/pagemap.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "core/kernel/compat.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest {

Pagemap::Pagemap(pid_t pid) : pid_(pid) {
  fd_.reset(::open(proc::path(pid, "pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd_) throw_errno("cannot open " + proc::path(pid, "pagemap"), errno, Errc::kernel);
}

std::vector<PageRange> Pagemap::scan(uint64_t start, uint64_t end, uint64_t mask,
                                     uint64_t inverted, uint64_t anyof, uint64_t return_mask,
                                     uint64_t flags) {
  std::vector<PageRange> out;
  constexpr size_t kVec = 512;
  page_region vec[kVec];
  if (return_mask == 0) return_mask = mask | anyof;
  uint64_t pos = start;
  while (pos < end) {
    pm_scan_arg arg{};
    arg.size = sizeof arg;
    arg.flags = flags;
    arg.start = pos;
    arg.end = end;
    arg.vec = reinterpret_cast<uint64_t>(vec);
    arg.vec_len = kVec;
    arg.category_inverted = inverted;
    arg.category_mask = mask;
    arg.category_anyof_mask = anyof;
    arg.return_mask = return_mask;
    long n = ::ioctl(fd_.get(), PAGEMAP_SCAN, &arg);
    if (n < 0)
      throw_errno("PAGEMAP_SCAN of process " + std::to_string(pid_), errno, Errc::kernel);
    for (long i = 0; i < n; ++i) {
      // The kernel may report a region again after an internal flush: never go backwards.
      uint64_t s = std::max<uint64_t>(vec[i].start, out.empty() ? 0 : out.back().end);
      if (s >= vec[i].end) continue;
      if (!out.empty() && out.back().end == s && out.back().categories == vec[i].categories)
        out.back().end = vec[i].end;
      else
        out.push_back({s, vec[i].end, vec[i].categories});
    }
    // walk_end can lag behind what was reported when the walk ended right after a flush; the
    // walk is complete when fewer regions than asked for came back.
    if (static_cast<size_t>(n) < kVec) break;
    pos = std::max<uint64_t>(arg.walk_end, vec[n - 1].end);
  }
  return out;
}

std::vector<uint64_t> Pagemap::entries(uint64_t addr, uint64_t npages) {
  std::vector<uint64_t> out(npages);
  size_t bytes = npages * 8;
  off_t off = static_cast<off_t>(addr / 4096 * 8);
  size_t done = 0;
  while (done < bytes) {
    ssize_t n = ::pread(fd_.get(), reinterpret_cast<char*>(out.data()) + done, bytes - done,
                        off + static_cast<off_t>(done));
    if (n < 0) throw_errno("cannot read " + proc::path(pid_, "pagemap"), errno, Errc::kernel);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return out;
}

bool probe_pagemap_scan() {
  try {
    Pagemap pm(::getpid());
    uint64_t probe = reinterpret_cast<uint64_t>(&probe_pagemap_scan) & ~4095ull;
    pm.scan(probe, probe + 4096, PAGE_IS_PRESENT);
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace crest

namespace crest {

bool probe_soft_dirty() {
  // A freshly written page is soft-dirty (pagemap bit 55) only when the kernel tracks it; the
  // clear_refs interface accepts "4" either way, so it proves nothing.
  void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) return false;
  *static_cast<volatile char*>(page) = 1;
  bool dirty = false;
  try {
    Pagemap pm(::getpid());
    dirty = (pm.entries(reinterpret_cast<uint64_t>(page), 1)[0] >> 55) & 1;
  } catch (const Error&) {
  }
  ::munmap(page, 4096);
  return dirty;
}

}  // namespace crest
