#include "tests/storage/test_util.h"

#include <ftw.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>

namespace crest::test {

using schema::kPageSize;

Page random_page(std::mt19937_64& rng) {
  Page p(kPageSize);
  for (size_t i = 0; i < kPageSize; i += 8) {
    uint64_t v = rng();
    std::memcpy(p.data() + i, &v, 8);
  }
  return p;
}

std::vector<std::byte> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

Page pattern_page(uint64_t seed) {
  Page p(kPageSize);
  for (size_t i = 0; i < kPageSize; i += 8) {
    uint64_t v = seed * 1000003 + i / 64;  // repeats within the page: compresses well
    std::memcpy(p.data() + i, &v, 8);
  }
  return p;
}

Page zero_page() { return Page(kPageSize, std::byte{0}); }

ImageSource::ImageSource(const Image& image, uint64_t max_per_fill) : max_per_fill_(max_per_fill) {
  for (const auto& [key, value] : image) {
    if (value.kind == schema::PageKind::data) pages_.push_back({key, &value.bytes});
  }
}

bool ImageSource::fill(storage::PageBatch& batch) {
  if (next_ == pages_.size()) return false;
  uint64_t n = 0;
  while (next_ < pages_.size() && batch.room() > 0 && n < max_per_fill_) {
    const auto& [key, bytes] = pages_[next_++];
    std::memcpy(batch.next_page(), bytes->data(), kPageSize);
    batch.add(key.first, key.second, 1);
    ++n;
  }
  return true;
}

void CollectSink::on_pages(const PageExtent& run, schema::PageKind kind, const std::byte* data) {
  ++calls;
  if (kind != schema::PageKind::data) ++zero_runs;
  for (uint64_t i = 0; i < run.npages; ++i) {
    PageKey key{run.owner, run.addr + i * kPageSize};
    PageValue v{kind, {}};
    if (kind == schema::PageKind::data) {
      EXPECT_NE(data, nullptr);
      v.bytes.assign(data + i * kPageSize, data + (i + 1) * kPageSize);
    } else {
      EXPECT_EQ(data, nullptr);
    }
    bool inserted = pages.emplace(key, std::move(v)).second;
    EXPECT_TRUE(inserted) << "page delivered twice: owner " << key.first << " addr " << key.second;
  }
}

std::string write_image(storage::ImageStore& store, const Image& image, const std::string& parent,
                        const std::vector<PageExtent>& keep, schema::CheckpointMeta meta) {
  auto w = store.begin(parent);
  // Data pages (zero ones included, as a dumper would hand them in) go through the pipeline;
  // cow_parent pages are recorded; `keep` extents stay in the parent.
  Image data;
  for (const auto& [key, value] : image) {
    if (value.kind == schema::PageKind::cow_parent)
      w->record_pages({key.first, key.second, 1}, value.kind);
    else if (value.kind == schema::PageKind::zero)
      data[key] = {schema::PageKind::data, zero_page()};
    else
      data[key] = value;
  }
  ImageSource source(data);
  w->write_pages(source);
  for (const auto& e : keep) w->keep_pages(e);
  return w->commit(std::move(meta));
}

Image read_image(storage::ImageStore& store, const std::string& ref) {
  auto r = store.open(ref);
  CollectSink sink;
  r->read_pages({}, sink);
  return sink.pages;
}

TempDir::TempDir() {
  char tmpl[] = "crest-storage-test-XXXXXX";
  char* p = ::mkdtemp(tmpl);
  if (p == nullptr) throw std::runtime_error("mkdtemp failed");
  char cwd[4096];
  path_ = std::string(::getcwd(cwd, sizeof cwd)) + "/" + p;
}

TempDir::~TempDir() {
  ::nftw(
      path_.c_str(),
      [](const char* fpath, const struct stat*, int, struct FTW*) { return ::remove(fpath); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

std::string backend_name(const testing::TestParamInfo<BackendKind>& info) {
  return info.param == BackendKind::directory ? "Directory" : "Memory";
}

std::unique_ptr<storage::ImageStore> make_store(BackendKind kind, const TempDir& dir) {
  if (kind == BackendKind::memory) return storage::ImageStore::in_memory();
  return storage::ImageStore::open_directory(dir.path() + "/images", true);
}

Error expect_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected a crest::Error";
  return Error(Errc::internal, "no error thrown");
}

}  // namespace crest::test
