// Helpers shared by the storage tests: page images in memory, sources and sinks over them, and a
// temporary images directory. An "image" here is the expected content of a checkpoint: every
// present page of every owner with its bytes (or zero / cow_parent).
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/util/error.h"
#include "storage/image_store.h"

namespace crest::test {

using storage::PageExtent;
using PageKey = std::pair<uint64_t, uint64_t>;  // owner, address
using Page = std::vector<std::byte>;            // kPageSize bytes

struct PageValue {
  schema::PageKind kind = schema::PageKind::data;
  Page bytes;  // data pages only
  bool operator==(const PageValue&) const = default;
};
using Image = std::map<PageKey, PageValue>;

Page random_page(std::mt19937_64& rng);
Page pattern_page(uint64_t seed);  // compressible, non-zero, distinct per seed
std::vector<std::byte> random_bytes(size_t n, uint64_t seed);  // incompressible
Page zero_page();

// Hands the data and zero pages of an image to the writer in address order, in batches.
class ImageSource : public storage::PageSource {
 public:
  explicit ImageSource(const Image& image, uint64_t max_per_fill = schema::kChunkPages);
  bool fill(storage::PageBatch& batch) override;

 private:
  std::vector<std::pair<PageKey, const Page*>> pages_;
  size_t next_ = 0;
  uint64_t max_per_fill_;
};

// Collects everything read_pages delivers; a page delivered twice is a test failure.
class CollectSink : public storage::PageSink {
 public:
  void on_pages(const PageExtent& run, schema::PageKind kind, const std::byte* data) override;
  Image pages;
  uint64_t calls = 0;
  uint64_t zero_runs = 0;
};

// Writes an image as one checkpoint (full, or incremental over `parent`, keeping the pages listed
// in `keep`); returns the committed name.
std::string write_image(storage::ImageStore& store, const Image& image,
                        const std::string& parent = "", const std::vector<PageExtent>& keep = {},
                        schema::CheckpointMeta meta = {});

Image read_image(storage::ImageStore& store, const std::string& ref = "latest");

// A fresh directory under the test binary's working directory, removed with everything in it.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

enum class BackendKind { directory, memory };
std::string backend_name(const testing::TestParamInfo<BackendKind>& info);

// A store of the given kind; for directories, inside `dir`.
std::unique_ptr<storage::ImageStore> make_store(BackendKind kind, const TempDir& dir);

// Runs f and returns the crest::Error it throws (test failure if it throws nothing).
Error expect_error(const std::function<void()>& f);

}  // namespace crest::test
