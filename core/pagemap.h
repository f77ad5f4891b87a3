// /proc/PID/pagemap: which pages of a range are present (PAGEMAP_SCAN, Linux 6.7) and the raw
// per-page entries (frame numbers, visible to root).
//
// Without PAGEMAP_SCAN (kernels before 6.7, or CREST_DISABLE=pagemap_scan), scan() computes the
// same categories from the raw entries, read in large batches: present, swapped, file, soft-dirty
// and the zero page. What entries cannot tell (written under uffd-wp, huge) is refused by name.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "core/util/unique_fd.h"

namespace crest {

struct PageRange {
  uint64_t start = 0, end = 0;  // [start, end), page aligned
  uint64_t categories = 0;      // PAGE_IS_* bits asked for in return_mask
  uint64_t pages() const { return (end - start) / 4096; }
};

class Pagemap {
 public:
  explicit Pagemap(pid_t pid);
  pid_t pid() const { return pid_; }

  // Pages of [start, end) whose categories match: (cats ^ inverted) & mask == mask and, if
  // anyof is non-zero, (cats ^ inverted) & anyof != 0. Adjacent pages with equal returned
  // categories are merged into one range.
  std::vector<PageRange> scan(uint64_t start, uint64_t end, uint64_t mask, uint64_t inverted = 0,
                              uint64_t anyof = 0, uint64_t return_mask = 0, uint64_t flags = 0);
  // Raw 64-bit pagemap entries for npages pages from addr.
  std::vector<uint64_t> entries(uint64_t addr, uint64_t npages);
  // The same into out[0, npages): for callers that reuse one buffer.
  void read_entries(uint64_t addr, uint64_t npages, uint64_t* out);

  // scan() with the ioctl only, whatever core/kernel/features.h says (its probe uses it).
  std::vector<PageRange> scan_ioctl(uint64_t start, uint64_t end, uint64_t mask, uint64_t inverted,
                                    uint64_t anyof, uint64_t return_mask, uint64_t flags);
  // scan() from raw entries only (the fallback; also what tests and benchmarks compare).
  std::vector<PageRange> scan_entries(uint64_t start, uint64_t end, uint64_t mask,
                                      uint64_t inverted, uint64_t anyof, uint64_t return_mask,
                                      uint64_t flags);

 private:
  pid_t pid_;
  UniqueFd fd_;
  std::vector<uint64_t> buf_;  // entries, reused across scan_entries() calls
};

// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
inline constexpr uint64_t kPmPresent = 1ull << 63;
inline constexpr uint64_t kPmSwapped = 1ull << 62;
inline constexpr uint64_t kPmFileOrShared = 1ull << 61;
inline constexpr uint64_t kPmExclusive = 1ull << 56;
inline constexpr uint64_t kPmSoftDirty = 1ull << 55;
inline constexpr uint64_t kPmPfnMask = (1ull << 55) - 1;

// The frame numbers of the zero pages, learned once by faulting a fresh private anonymous page
// (and a huge one) for reading and looking at its entry. 0 when frames are hidden (no
// CAP_SYS_ADMIN) or unknown; huge_first..+511 is the huge zero page when THP maps one.
struct ZeroPfns {
  uint64_t small = 0;
  uint64_t huge_first = 0;
  bool is_zero(uint64_t pfn) const {
    return pfn != 0 && (pfn == small || (huge_first != 0 && pfn >= huge_first && pfn < huge_first + 512));
  }
};
const ZeroPfns& zero_pfns();

// The PAGE_IS_* categories PAGEMAP_SCAN would give a page, from its pagemap entry: present,
// swapped, file (bit 61 of a present or swapped page), soft-dirty, zero page. Pure, for tests.
uint64_t entry_categories(uint64_t entry, const ZeroPfns& zero);
// Appends to out the ranges of pages [addr, addr + n pages) that match, as scan() documents,
// merged with a range already at the back of out when adjacent with equal categories. Pure.
void ranges_from_entries(const uint64_t* e, uint64_t n, uint64_t addr, uint64_t mask,
                         uint64_t inverted, uint64_t anyof, uint64_t return_mask,
                         const ZeroPfns& zero, std::vector<PageRange>& out);
// Soft-dirty tracking (the tracker's logic, pure for tests over recorded entries): appends the
// pages of [addr, addr + n pages) written since the bits were last cleared. A page is written
// when its soft-dirty bit is set, or when it maps the zero page (a MADV_DONTNEED then a read
// fault gives a page that is clean but no longer what the last checkpoint saved), or when it is
// present with its frame hidden (then the zero page cannot be told apart: counted as written).
void soft_dirty_written(const uint64_t* e, uint64_t n, uint64_t addr, const ZeroPfns& zero,
                        std::vector<PageRange>& out);

// Probes, uncached: whether the kernel has PAGEMAP_SCAN (6.7+) and keeps soft-dirty bits
// (CONFIG_MEM_SOFT_DIRTY). The engine asks core/kernel/features.h, which caches them and honours
// CREST_DISABLE.
bool probe_pagemap_scan();
bool probe_soft_dirty();

}  // namespace crest
