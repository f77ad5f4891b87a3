// Interoperability with stock HDF5 tools: h5py + the system LZ4 filter plugin read back exactly
// the page bytes crest wrote (chunks shuffled and compressed, compressed only, and raw), h5dump
// reads the image, HDF5 itself decodes our chunks through its shuffle filter and our in-process
// LZ4 filter, and our decoder reads chunks that the plugin's encoder wrote.
#include <hdf5.h>

#include <cstdlib>
#include <cstring>
#include <fstream>

#include "tests/storage/test_util.h"

namespace crest::test {
namespace {

using schema::kPageSize;
using schema::PageKind;

std::string quote(const std::string& s) { return "'" + s + "'"; }

// Lines of text: LZ4 does better on them unshuffled.
Page text_page(uint64_t seed) {
  std::string text;
  for (uint64_t line = 0; text.size() < kPageSize; ++line)
    text += "step " + std::to_string(seed * 100 + line) + ": residual below tolerance, next\n";
  Page p(kPageSize);
  std::memcpy(p.data(), text.data(), kPageSize);
  return p;
}

// Runs a shell command with the plugin path set; returns its exit status and output.
int run(const std::string& cmd, std::string& output) {
  std::string full = "HDF5_PLUGIN_PATH=" + quote(CREST_HDF5_PLUGIN_DIR) + " " + cmd + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  output.clear();
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) output.append(buf, n);
  int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class StockTools : public testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    std::mt19937_64 rng(5);
    // Chunk 0: numbers (shuffled, then LZ4); chunk 1: random (raw, both filters skipped);
    // chunk 2: part-filled with text (LZ4 alone).
    for (uint64_t i = 0; i < 256; ++i)
      image_[{1, i * kPageSize}] = {PageKind::data, pattern_page(i)};
    for (uint64_t i = 256; i < 512; ++i)
      image_[{1, i * kPageSize}] = {PageKind::data, random_page(rng)};
    for (uint64_t i = 512; i < 600; ++i)
      image_[{1, i * kPageSize}] = {i % 4 ? PageKind::data : PageKind::zero,
                                    i % 4 ? text_page(i) : Page{}};
    store_ = storage::ImageStore::open_directory(dir_.path(), true);
    name_ = write_image(*store_, image_);
    path_ = dir_.path() + "/" + name_;
  }

  // Row of /pages/data for every data page, from the index.
  std::vector<std::pair<uint64_t, const Page*>> rows() {
    std::vector<std::pair<uint64_t, const Page*>> out;
    auto r = store_->open(name_);
    for (const auto& run : r->page_index()) {
      if (run.kind != static_cast<uint32_t>(PageKind::data)) continue;
      for (uint64_t i = 0; i < run.npages; ++i)
        out.push_back({run.pos + i, &image_.at({run.owner, run.addr + i * kPageSize}).bytes});
    }
    return out;
  }

  TempDir dir_;
  std::unique_ptr<storage::ImageStore> store_;
  Image image_;
  std::string name_, path_;
};

TEST_F(StockTools, H5pyReadsThePageBytes) {
  ASSERT_STRNE(CREST_TEST_PYTHON, "") << "no python3 with h5py was found at configure time "
                                         "(Debian: python3-h5py, hdf5-filter-plugin)";
  std::string expected = dir_.path() + "/expected.bin";
  {
    std::ofstream out(expected, std::ios::binary);
    for (const auto& [row, page] : rows()) {
      out.write(reinterpret_cast<const char*>(&row), 8);
      out.write(reinterpret_cast<const char*>(page->data()), kPageSize);
    }
  }
  auto r = store_->open(name_);
  ASSERT_EQ(r->chunks().size(), 3u);
  // Every encoding is part of the check.
  EXPECT_EQ(r->chunks()[0].encoding(), schema::ChunkEncoding::shuffle_lz4);
  EXPECT_EQ(r->chunks()[1].encoding(), schema::ChunkEncoding::raw);
  EXPECT_EQ(r->chunks()[2].encoding(), schema::ChunkEncoding::lz4);
  std::string out;
  int rc =
      run(std::string(CREST_TEST_PYTHON) + " " + quote(CREST_TEST_SOURCE_DIR "/read_with_h5py.py") +
              " " + quote(path_) + " " + quote(expected),
          out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find(std::to_string(rows().size()) + " rows compared, 0 differ"), std::string::npos)
      << out;
}

TEST_F(StockTools, H5dumpReadsTheImage) {
  std::string out;
  int rc = run(std::string(CREST_H5DUMP) + " -p -H " + quote(path_), out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("pages"), std::string::npos) << out;
  EXPECT_NE(out.find("ATTRIBUTE \"format\""), std::string::npos) << out;
  EXPECT_NE(out.find("FILTER_ID 32004"), std::string::npos) << out;
  EXPECT_NE(out.find("SHUFFLE"), std::string::npos) << out;
  // Decoding a compressed chunk with the plugin, too: the first row of chunk 0.
  rc = run(std::string(CREST_H5DUMP) + " -d /pages/data -s 0,0 -c 1,8 " + quote(path_), out);
  EXPECT_EQ(rc, 0) << out;
}

TEST_F(StockTools, Hdf5DecodesThroughItsShuffleAndOurRegisteredFilter) {
  // Reading /pages/data with plain H5Dread: HDF5 runs filter 32004 (ours, registered in-process)
  // and its own shuffle on the chunks whose filter mask says so. Rows are little-endian u64.
  hid_t f = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hid_t d = H5Dopen2(f, "pages/data", H5P_DEFAULT);
  hid_t fs = H5Dget_space(d);
  std::vector<uint8_t> row(kPageSize);
  hsize_t count[2] = {1, kPageSize / 8};
  hid_t ms = H5Screate_simple(2, count, nullptr);
  for (const auto& [pos, page] : rows()) {
    hsize_t start[2] = {pos, 0};
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, nullptr, count, nullptr);
    ASSERT_GE(H5Dread(d, H5T_STD_U64LE, ms, fs, H5P_DEFAULT, row.data()), 0) << pos;
    ASSERT_EQ(std::memcmp(row.data(), page->data(), kPageSize), 0) << "row " << pos;
  }
  H5Sclose(ms);
  H5Sclose(fs);
  H5Dclose(d);
  H5Fclose(f);
}

TEST_F(StockTools, OurFilterDecodesThePluginsMultiBlockChunks) {
  ASSERT_STRNE(CREST_TEST_PYTHON, "");
  std::string file = dir_.path() + "/plugin.h5";
  std::string out;
  ASSERT_EQ(run(std::string(CREST_TEST_PYTHON) + " " +
                    quote(CREST_TEST_SOURCE_DIR "/read_with_h5py.py") + " --write " + quote(file),
                out),
            0)
      << out;
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hid_t d = H5Dopen2(f, "lz4", H5P_DEFAULT);
  std::vector<uint8_t> all(3 * 256 * kPageSize);
  ASSERT_GE(H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, all.data()), 0);
  for (size_t i = 0; i < all.size(); ++i)
    ASSERT_EQ(all[i], static_cast<uint8_t>((i * 7) % 251)) << i;
  // The chunk really is in the filter's format with several 64 KiB blocks.
  hsize_t offset[2] = {0, 0};
  hsize_t size = 0;
  ASSERT_GE(H5Dget_chunk_storage_size(d, offset, &size), 0);
  std::vector<uint8_t> raw(size);
  uint32_t mask = 1;
  ASSERT_GE(H5Dread_chunk(d, H5P_DEFAULT, offset, &mask, raw.data()), 0);
  EXPECT_EQ(mask, 0u);
  EXPECT_EQ((raw[8] << 24) | (raw[9] << 16) | (raw[10] << 8) | raw[11], 65536);
  H5Dclose(d);
  H5Fclose(f);
}

}  // namespace
}  // namespace crest::test
