// Helper for crash_test.cpp: writes one checkpoint into an images directory and exits 0. The
// test SIGKILLs it at random moments. Run as its own program (fork + exec) because a forked copy
// of a process that already runs TBB worker threads and HDF5 cannot safely use either.
//
//   crest-storage-crash-writer DIR PAGES SEED [incremental]
//
// Owner 1 gets PAGES pages (mixed random and compressible, from SEED); owner 2 has 64 pages that
// an incremental checkpoint keeps from its parent.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "core/util/error.h"
#include "storage/image_store.h"

namespace {

using crest::schema::kPageSize;

class Generated : public crest::storage::PageSource {
 public:
  Generated(uint64_t owner, uint64_t base, uint64_t pages, uint64_t seed)
      : owner_(owner), base_(base), pages_(pages), rng_(seed) {}
  bool fill(crest::storage::PageBatch& batch) override {
    if (next_ == pages_) return false;
    while (next_ < pages_ && batch.room() > 0) {
      std::byte* p = batch.next_page();
      bool random = (next_ / 64) % 3 == 0;
      for (size_t i = 0; i < kPageSize; i += 8) {
        uint64_t v = random ? rng_() : next_ * 31 + i / 128;
        std::memcpy(p + i, &v, 8);
      }
      batch.add(owner_, base_ + next_ * kPageSize, 1);
      ++next_;
    }
    return true;
  }

 private:
  uint64_t owner_, base_, pages_, next_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s DIR PAGES SEED [incremental]\n", argv[0]);
    return 2;
  }
  try {
    auto store = crest::storage::ImageStore::open_directory(argv[1], true);
    bool incremental = argc > 4 && std::string(argv[4]) == "incremental" && store->newest();
    auto w = store->begin(incremental ? "latest" : "");
    Generated main_pages(1, 0x10000000, std::strtoull(argv[2], nullptr, 10),
                         std::strtoull(argv[3], nullptr, 10));
    w->write_pages(main_pages);
    if (incremental) {
      w->keep_pages({2, 0x20000000, 64});
    } else {
      Generated small(2, 0x20000000, 64, 1);
      w->write_pages(small);
    }
    std::printf("%s\n", w->commit({}).c_str());
    return 0;
  } catch (const crest::Error& e) {
    std::fprintf(stderr, "%s: %s\n", std::string(crest::kind_name(e.kind())).c_str(), e.what());
    return 1;
  }
}
