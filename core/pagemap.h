// /proc/PID/pagemap: which pages of a range are present (PAGEMAP_SCAN, Linux 6.7) and the raw
// per-page entries (frame numbers, visible to root).
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

 private:
  pid_t pid_;
  UniqueFd fd_;
};

// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
inline constexpr uint64_t kPmPresent = 1ull << 63;
inline constexpr uint64_t kPmSwapped = 1ull << 62;
inline constexpr uint64_t kPmFileOrShared = 1ull << 61;
inline constexpr uint64_t kPmPfnMask = (1ull << 55) - 1;

// Probes, uncached: whether the kernel has PAGEMAP_SCAN (6.7+) and keeps soft-dirty bits
// (CONFIG_MEM_SOFT_DIRTY). The engine asks core/kernel/features.h, which caches them and honours
// CREST_DISABLE.
bool probe_pagemap_scan();
bool probe_soft_dirty();

}  // namespace crest
