// The write pipeline's memory is bounded by its tokens, whatever the image size: 256 MiB go
// through at most chunks_in_flight page buffers, and the process's peak RSS grows by a few
// buffers' worth, not by the image.
#include <cstring>
#include <fstream>
#include <set>

#include "tests/storage/test_util.h"

namespace crest::test {
namespace {

using schema::kPageSize;

uint64_t status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field, 0) == 0) return std::stoull(line.substr(std::strlen(field) + 1));
  return 0;
}

class CountingSource : public storage::PageSource {
 public:
  explicit CountingSource(uint64_t pages) : pages_(pages) {}
  bool fill(storage::PageBatch& batch) override {
    if (next_ == pages_) return false;
    buffers.insert(batch.data);
    ++fills;
    while (next_ < pages_ && batch.room() > 0) {
      std::byte* p = batch.next_page();
      for (size_t i = 0; i < kPageSize; i += 8) {
        uint64_t v = (next_ % 5 == 0) ? 0 : next_ * 2654435761u + i;
        std::memcpy(p + i, &v, 8);
      }
      batch.add(1, next_ * kPageSize, 1);
      ++next_;
    }
    return true;
  }
  std::set<const std::byte*> buffers;
  uint64_t fills = 0;

 private:
  uint64_t pages_, next_ = 0;
};

TEST(BoundedMemory, PipelineUsesOnlyItsTokenBuffers) {
  TempDir dir;
  auto store = storage::ImageStore::open_directory(dir.path(), true);
  storage::WriteTuning tuning;
  tuning.chunks_in_flight = 3;
  constexpr uint64_t kPages = (256ull << 20) / kPageSize;

  // Reset the peak-RSS mark so that VmHWM measures this write alone.
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  uint64_t rss_before = status_kib("VmRSS:");
  auto w = store->begin("", tuning);
  CountingSource src(kPages);
  w->write_pages(src);
  std::string name = w->commit({});
  w.reset();
  uint64_t peak = status_kib("VmHWM:");

  EXPECT_EQ(src.fills, kPages / schema::kChunkPages);
  EXPECT_LE(src.buffers.size(), tuning.chunks_in_flight);
  EXPECT_GE(src.buffers.size(), 1u);
  // 3 tokens × 2 MiB of buffers, plus HDF5, TBB and the index: far below the 256 MiB written.
  EXPECT_LT(peak - std::min(peak, rss_before), 48u * 1024)
      << "peak " << peak << " KiB, before " << rss_before;
  RecordProperty("peak_rss_growth_kib", static_cast<int>(peak - std::min(peak, rss_before)));
  auto r = store->open(name);
  EXPECT_EQ(r->meta().stats.at("pages_in"), static_cast<int64_t>(kPages));
}

}  // namespace
}  // namespace crest::test
