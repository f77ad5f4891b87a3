// The memory side of running without the newer interfaces (issue 15): present pages from raw
// /proc/PID/pagemap entries when PAGEMAP_SCAN is missing, and the soft-dirty tracker's logic over
// recorded entries (this machine's kernel has no soft-dirty bits to exercise it live).
#include "core/pagemap.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/kernel/compat.h"
#include "core/kernel/features.h"
#include "core/util/error.h"

namespace crest {
namespace {

constexpr uint64_t kPage = 4096;

// A mapping of this process with every kind of page the dump distinguishes.
struct Patterned {
  char* anon = nullptr;
  char* file = nullptr;
  size_t anon_pages = 4096, file_pages = 256;
  std::string path;

  Patterned() {
    anon = static_cast<char*>(::mmap(nullptr, anon_pages * kPage, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    EXPECT_NE(anon, MAP_FAILED);
    ::madvise(anon, anon_pages * kPage, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < anon_pages; ++i) {
      if (i % 7 == 0) continue;  // never touched: a hole
      if (i % 5 == 0)
        (void)*static_cast<volatile char*>(anon + i * kPage);  // the zero page
      else
        anon[i * kPage] = static_cast<char>(i | 1);  // written
    }
    ::madvise(anon + 100 * kPage, 50 * kPage, MADV_DONTNEED);  // gone again
    char tmpl[] = "/tmp/crest-pagemap-XXXXXX";
    int fd = ::mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    path = tmpl;
    std::vector<char> data(file_pages * kPage, 'f');
    EXPECT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    file = static_cast<char*>(
        ::mmap(nullptr, file_pages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0));
    EXPECT_NE(file, MAP_FAILED);
    ::close(fd);
    for (size_t i = 0; i < file_pages; ++i) {
      if (i % 3 == 0)
        file[i * kPage] = 'w';  // an anonymous copy
      else if (i % 3 == 1)
        (void)*static_cast<volatile char*>(file + i * kPage);  // page cache
    }
  }
  ~Patterned() {
    ::munmap(anon, anon_pages * kPage);
    ::munmap(file, file_pages * kPage);
    ::unlink(path.c_str());
  }
};

std::string show(const std::vector<PageRange>& v) {
  std::string s;
  for (auto& r : v) {
    char b[96];
    std::snprintf(b, sizeof b, "[%llx,%llx) %llx\n", static_cast<unsigned long long>(r.start),
                  static_cast<unsigned long long>(r.end),
                  static_cast<unsigned long long>(r.categories));
    s += b;
  }
  return s;
}

// The fallback gives exactly what the ioctl gives, for every question the engine asks.
TEST(PagemapFallback, SameRangesAsPagemapScan) {
  if (!kernel::kernel_has(kernel::Iface::pagemap_scan))
    GTEST_SKIP() << "this kernel has no PAGEMAP_SCAN to compare with";
  Patterned p;
  Pagemap pm(::getpid());
  struct Ask {
    uint64_t start, end, mask, inverted, anyof, ret;
  };
  const uint64_t a = reinterpret_cast<uint64_t>(p.anon), ae = a + p.anon_pages * kPage;
  const uint64_t f = reinterpret_cast<uint64_t>(p.file), fe = f + p.file_pages * kPage;
  const uint64_t held = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
  std::vector<Ask> asks = {
      {a, ae, PAGE_IS_PRESENT, 0, 0, PAGE_IS_PRESENT},
      {a, ae, 0, 0, held, held},                        // dump, anonymous
      {f, fe, PAGE_IS_FILE, PAGE_IS_FILE, held, held},  // dump, private file
      {f, fe, PAGE_IS_PRESENT, 0, 0, PAGE_IS_PRESENT | PAGE_IS_FILE},
      {a + 3 * kPage, ae - 5 * kPage, PAGE_IS_PRESENT, 0, 0, PAGE_IS_PRESENT},
  };
  if (::geteuid() == 0) {
    EXPECT_NE(zero_pfns().small, 0u) << "root sees frames: the zero page's is known";
  }
  if (zero_pfns().small != 0)
    asks.push_back({a, ae, PAGE_IS_PRESENT, 0, 0, PAGE_IS_PRESENT | PAGE_IS_PFNZERO});
  for (auto& q : asks) {
    auto want = pm.scan_ioctl(q.start, q.end, q.mask, q.inverted, q.anyof, q.ret, 0);
    auto got = pm.scan_entries(q.start, q.end, q.mask, q.inverted, q.anyof, q.ret, 0);
    EXPECT_FALSE(want.empty());
    EXPECT_EQ(show(got), show(want)) << "mask " << q.mask << " inverted " << q.inverted << " anyof "
                                     << q.anyof << " return " << q.ret;
  }
}

// What raw entries cannot tell is refused by name, never guessed.
TEST(PagemapFallback, RefusesWhatOnlyTheIoctlKnows) {
  Pagemap pm(::getpid());
  const uint64_t at = reinterpret_cast<uint64_t>(&pm) & ~(kPage - 1);
  try {
    pm.scan_entries(at, at + kPage, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN, PM_SCAN_WP_MATCHING);
    FAIL() << "PM_SCAN_WP_MATCHING without the ioctl was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("PAGEMAP_SCAN"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pm.scan_entries(at, at + kPage, PAGE_IS_HUGE, 0, 0, PAGE_IS_HUGE, 0), Error);
}

// Entries as the kernel formats them (Documentation/admin-guide/mm/pagemap.rst).
constexpr uint64_t kPresent = 1ull << 63, kSwap = 1ull << 62, kFile = 1ull << 61,
                   kExcl = 1ull << 56, kSoft = 1ull << 55;

TEST(PagemapFallback, CategoriesOfEntries) {
  ZeroPfns z{0x1234, 0x40000};
  EXPECT_EQ(entry_categories(0, z), 0u);
  EXPECT_EQ(entry_categories(kPresent | kExcl | 0x999, z), uint64_t(PAGE_IS_PRESENT));
  EXPECT_EQ(entry_categories(kPresent | kFile | 0x999, z),
            uint64_t(PAGE_IS_PRESENT | PAGE_IS_FILE));
  EXPECT_EQ(entry_categories(kSwap | (7ull << 5) | 2, z), uint64_t(PAGE_IS_SWAPPED));
  EXPECT_EQ(entry_categories(kSwap | kSoft | 3, z), uint64_t(PAGE_IS_SWAPPED | PAGE_IS_SOFT_DIRTY));
  EXPECT_EQ(entry_categories(kPresent | 0x1234, z), uint64_t(PAGE_IS_PRESENT | PAGE_IS_PFNZERO));
  EXPECT_EQ(entry_categories(kPresent | (0x40000 + 17), z),
            uint64_t(PAGE_IS_PRESENT | PAGE_IS_PFNZERO));
  EXPECT_EQ(entry_categories(kPresent | (0x40000 + 512), z), uint64_t(PAGE_IS_PRESENT));
  EXPECT_EQ(entry_categories(kSoft, z), uint64_t(PAGE_IS_SOFT_DIRTY));  // a hole in a new VMA
  EXPECT_EQ(entry_categories(kFile, z), 0u);  // bit 61 of a hole means nothing

  // The dump's question: pages with contents, swapped ones included, merged when adjacent.
  const uint64_t e[] = {kPresent | 10,         kPresent | 11, kSwap | 5, 0,
                        kPresent | kFile | 12, kPresent | 13};
  std::vector<PageRange> out;
  const uint64_t held = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
  ranges_from_entries(e, 6, 0x10000, PAGE_IS_FILE, PAGE_IS_FILE, held, held, z, out);
  EXPECT_EQ(show(out), "[10000,12000) 8\n[12000,13000) 10\n[15000,16000) 8\n");
}

// The soft-dirty tracker's decision over a recorded pagemap: entries of a private anonymous
// mapping read after clear_refs "4" and a round of the job's activity, as a kernel with
// CONFIG_MEM_SOFT_DIRTY=y reports them.
TEST(SoftDirty, WrittenPagesOfARecordedPagemap) {
  const ZeroPfns z{0x2a00, 0};
  const uint64_t recorded[] = {
      kPresent | kExcl | 0x10001,          // 0 clean since the last checkpoint
      kPresent | kExcl | kSoft | 0x10002,  // 1 written
      kPresent | kExcl | kSoft | 0x10003,  // 2 written
      kSwap | (0x77ull << 5) | 1,          // 3 swapped out, clean (swap entries keep the bit)
      kSwap | kSoft | (0x78ull << 5) | 1,  // 4 written, then swapped out
      0,                                   // 5 a hole: not in the dump at all
      kPresent | 0x2a00,                   // 6 MADV_DONTNEED then read: the zero page, clean
      kSoft,                               // 7 a hole of a VMA mapped since (VM_SOFTDIRTY)
      kPresent | kFile | 0x10009,          // 8 a private file page still the page cache's, clean
      kPresent | kExcl | 0x1000a,          // 9 clean
  };
  std::vector<PageRange> out;
  soft_dirty_written(recorded, 10, 0x7f0000000000, z, out);
  EXPECT_EQ(show(out),
            "[7f0000001000,7f0000003000) 80\n[7f0000004000,7f0000005000) 80\n"
            "[7f0000006000,7f0000008000) 80\n");

  // Frames hidden (no CAP_SYS_ADMIN): the zero page cannot be told apart, so every present page
  // counts as written; swapped clean pages stay clean.
  const uint64_t hidden[] = {kPresent | kExcl, kSwap, kPresent | kSoft, 0};
  out.clear();
  soft_dirty_written(hidden, 4, 0x1000, ZeroPfns{}, out);
  EXPECT_EQ(show(out), "[1000,2000) 80\n[3000,4000) 80\n");
}

// The live bits, where the kernel keeps them (not on the machine this was written on).
TEST(SoftDirty, LiveBitsFollowWrites) {
  if (!kernel::kernel_has(kernel::Iface::soft_dirty))
    GTEST_SKIP() << "this kernel keeps no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)";
  if (zero_pfns().small == 0) GTEST_SKIP() << "page frames are hidden from this user";
  const size_t n = 64;
  auto* m = static_cast<char*>(
      ::mmap(nullptr, n * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(m, MAP_FAILED);
  for (size_t i = 0; i < n; ++i) m[i * kPage] = 1;
  int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "4", 1), 1);
  ::close(fd);
  m[5 * kPage] = 2;
  Pagemap pm(::getpid());
  auto e = pm.entries(reinterpret_cast<uint64_t>(m), n);
  std::vector<PageRange> out;
  soft_dirty_written(e.data(), n, reinterpret_cast<uint64_t>(m), zero_pfns(), out);
  ASSERT_EQ(out.size(), 1u) << show(out);
  EXPECT_EQ(out[0].start, reinterpret_cast<uint64_t>(m) + 5 * kPage);
  ::munmap(m, n * kPage);
}

}  // namespace
}  // namespace crest
