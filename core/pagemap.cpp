#include "core/pagemap.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "core/kernel/compat.h"
#include "core/kernel/features.h"
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
  if (return_mask == 0) return_mask = mask | anyof;
  if (kernel::have(kernel::Iface::pagemap_scan))
    return scan_ioctl(start, end, mask, inverted, anyof, return_mask, flags);
  return scan_entries(start, end, mask, inverted, anyof, return_mask, flags);
}

std::vector<PageRange> Pagemap::scan_ioctl(uint64_t start, uint64_t end, uint64_t mask,
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
  read_entries(addr, npages, out.data());
  return out;
}

void Pagemap::read_entries(uint64_t addr, uint64_t npages, uint64_t* out) {
  size_t bytes = npages * 8;
  off_t off = static_cast<off_t>(addr / 4096 * 8);
  size_t done = 0;
  while (done < bytes) {
    ssize_t n = ::pread(fd_.get(), reinterpret_cast<char*>(out) + done, bytes - done,
                        off + static_cast<off_t>(done));
    if (n < 0) throw_errno("cannot read " + proc::path(pid_, "pagemap"), errno, Errc::kernel);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  // Past the end of the address space the kernel returns nothing: no page there.
  std::fill(reinterpret_cast<char*>(out) + done, reinterpret_cast<char*>(out) + bytes, 0);
}

// The fallback: raw entries in batches of 4 MiB (2 GiB of address space per read), one buffer
// per Pagemap. The categories are those PAGEMAP_SCAN computes (fs/proc/task_mmu.c) from the
// same page-table entries.
std::vector<PageRange> Pagemap::scan_entries(uint64_t start, uint64_t end, uint64_t mask,
                                             uint64_t inverted, uint64_t anyof,
                                             uint64_t return_mask, uint64_t flags) {
  if (return_mask == 0) return_mask = mask | anyof;
  constexpr uint64_t kKnown = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE | PAGE_IS_PFNZERO |
                              PAGE_IS_SOFT_DIRTY;
  if (flags != 0)
    fail(Errc::unsupported, "write-protecting pages as they are scanned (PM_SCAN_WP_MATCHING) "
         "needs ioctl PAGEMAP_SCAN (Linux 6.7), missing or disabled here");
  if ((mask | anyof | inverted | return_mask) & ~kKnown)
    fail(Errc::unsupported, "the page categories written and huge are known only to ioctl "
         "PAGEMAP_SCAN (Linux 6.7), missing or disabled here");
  std::vector<PageRange> out;
  constexpr uint64_t kBatch = 512 * 1024;
  const ZeroPfns& zero = (mask | anyof | return_mask) & PAGE_IS_PFNZERO ? zero_pfns() : ZeroPfns{};
  for (uint64_t pos = start & ~4095ull; pos < end;) {
    const uint64_t n = std::min<uint64_t>(kBatch, (end - pos + 4095) / 4096);
    if (buf_.size() < n) buf_.resize(n);
    read_entries(pos, n, buf_.data());
    ranges_from_entries(buf_.data(), n, pos, mask, inverted, anyof, return_mask, zero, out);
    pos += n * 4096;
  }
  // A buffer that grew for one huge mapping is not kept for the rest of the dump.
  if (buf_.size() > kBatch / 4) std::vector<uint64_t>().swap(buf_);
  return out;
}

uint64_t entry_categories(uint64_t e, const ZeroPfns& zero) {
  uint64_t c = 0;
  if (e & kPmPresent) {
    c |= PAGE_IS_PRESENT;
    if (zero.is_zero(e & kPmPfnMask)) c |= PAGE_IS_PFNZERO;
  } else if (e & kPmSwapped) {
    c |= PAGE_IS_SWAPPED;
  }
  if ((e & kPmFileOrShared) && (c & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED))) c |= PAGE_IS_FILE;
  if (e & kPmSoftDirty) c |= PAGE_IS_SOFT_DIRTY;
  return c;
}

void ranges_from_entries(const uint64_t* e, uint64_t n, uint64_t addr, uint64_t mask,
                         uint64_t inverted, uint64_t anyof, uint64_t return_mask,
                         const ZeroPfns& zero, std::vector<PageRange>& out) {
  for (uint64_t i = 0; i < n;) {
    // Runs of identical entries but for the frame number are the common case: one test each.
    const uint64_t cats = entry_categories(e[i], zero);
    const uint64_t flipped = cats ^ inverted;
    const bool match = (flipped & mask) == mask && (anyof == 0 || (flipped & anyof) != 0);
    uint64_t j = i + 1;
    if (!(cats & PAGE_IS_PFNZERO)) {
      const uint64_t bits = e[i] & ~kPmPfnMask & ~kPmExclusive;
      while (j < n && (e[j] & ~kPmPfnMask & ~kPmExclusive) == bits &&
             (!(e[j] & kPmPresent) || !zero.is_zero(e[j] & kPmPfnMask)))
        ++j;
    }
    if (match) {
      const uint64_t s = addr + i * 4096, t = addr + j * 4096, ret = cats & return_mask;
      if (!out.empty() && out.back().end == s && out.back().categories == ret)
        out.back().end = t;
      else
        out.push_back({s, t, ret});
    }
    i = j;
  }
}

void soft_dirty_written(const uint64_t* e, uint64_t n, uint64_t addr, const ZeroPfns& zero,
                        std::vector<PageRange>& out) {
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t pfn = e[i] & kPmPfnMask;
    const bool written =
        (e[i] & kPmSoftDirty) || ((e[i] & kPmPresent) && (pfn == 0 || zero.is_zero(pfn)));
    if (!written) continue;
    const uint64_t s = addr + i * 4096;
    if (!out.empty() && out.back().end == s)
      out.back().end = s + 4096;
    else
      out.push_back({s, s + 4096, PAGE_IS_SOFT_DIRTY});
  }
}

// Faults a fresh private anonymous page for reading and returns its frame: the zero page's.
static uint64_t zero_frame_of(size_t size, bool huge) {
  void* m = ::mmap(nullptr, size * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return 0;
  auto base = reinterpret_cast<uintptr_t>(m);
  auto page = (base + size - 1) & ~(uintptr_t(size) - 1);
  if (huge) ::madvise(reinterpret_cast<void*>(page), size, MADV_HUGEPAGE);
  (void)*reinterpret_cast<volatile char*>(page);
  uint64_t pfn = 0;
  try {
    Pagemap pm(::getpid());
    uint64_t e = pm.entries(page, 1)[0];
    if (e & kPmPresent) pfn = e & kPmPfnMask;
  } catch (const Error&) {
  }
  ::munmap(m, size * 2);
  return pfn;
}

const ZeroPfns& zero_pfns() {
  static const ZeroPfns z = [] {
    ZeroPfns out;
    out.small = zero_frame_of(4096, false);
    uint64_t h = zero_frame_of(2 << 20, true);
    if (h != 0 && h != out.small && (h & 511) == 0) out.huge_first = h;
    return out;
  }();
  return z;
}

bool probe_pagemap_scan() {
  try {
    Pagemap pm(::getpid());
    uint64_t probe = reinterpret_cast<uint64_t>(&probe_pagemap_scan) & ~4095ull;
    pm.scan_ioctl(probe, probe + 4096, PAGE_IS_PRESENT, 0, 0, PAGE_IS_PRESENT, 0);
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
