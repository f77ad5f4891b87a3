// Bad input: every damaged, foreign or partial file gives one named, one-line crest::Error that
// names the file (and the chunk, for damaged page data) — from open(), read_pages(), list() and
// verify() — never a crash.
#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <fstream>

#include "tests/storage/test_util.h"

namespace crest::test {
namespace {

using schema::kPageSize;
using schema::PageKind;

class BadInput : public testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    store_ = storage::ImageStore::open_directory(images_, true);
    std::mt19937_64 rng(3);
    // Chunk 0 compressible, chunk 1 random (stored raw), chunk 2 compressible.
    for (uint64_t i = 0; i < 256; ++i)
      image_[{1, i * kPageSize}] = {PageKind::data, pattern_page(i)};
    for (uint64_t i = 256; i < 512; ++i)
      image_[{1, i * kPageSize}] = {PageKind::data, random_page(rng)};
    for (uint64_t i = 512; i < 700; ++i)
      image_[{1, i * kPageSize}] = {PageKind::data, pattern_page(i)};
    name_ = write_image(*store_, image_);
    path_ = images_ + "/" + name_;
  }

  // The error of opening `ref`, checked to be one line naming `file`.
  Error open_error(const std::string& ref, const std::string& file) {
    Error e = expect_error([&] { store_->open(ref); });
    check_line(e, file);
    return e;
  }

  static void check_line(const Error& e, const std::string& file) {
    std::string what = e.what();
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    EXPECT_NE(what.find(file), std::string::npos) << what;
  }

  void set_u32_attr(const char* name, uint32_t value) {
    hid_t f = H5Fopen(path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    ASSERT_GE(a, 0);
    EXPECT_GE(H5Awrite(a, H5T_NATIVE_UINT32, &value), 0);
    H5Aclose(a);
    H5Fclose(f);
  }

  // File offset and stored size of chunk `index` of /pages/data, or the first chunk of another
  // (1-D) dataset.
  std::pair<haddr_t, hsize_t> chunk_location(uint64_t index, const char* dataset = "pages/data") {
    hid_t f = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, dataset, H5P_DEFAULT);
    hsize_t offset[2] = {index * schema::kChunkPages, 0};
    unsigned mask = 0;
    haddr_t addr = 0;
    hsize_t size = 0;
    EXPECT_GE(H5Dget_chunk_info_by_coord(d, offset, &mask, &addr, &size), 0);
    H5Dclose(d);
    H5Fclose(f);
    return {addr, size};
  }

  void flip_byte(off_t at) {
    int fd = ::open(path_.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    unsigned char b = 0;
    ASSERT_EQ(::pread(fd, &b, 1, at), 1);
    b ^= 0x5a;
    ASSERT_EQ(::pwrite(fd, &b, 1, at), 1);
    ::close(fd);
  }

  TempDir dir_;
  std::string images_ = dir_.path() + "/images";
  std::unique_ptr<storage::ImageStore> store_;
  Image image_;
  std::string name_, path_;
};

TEST_F(BadInput, TruncatedFile) {
  off_t size = 0;
  {
    std::ifstream in(path_, std::ios::ate | std::ios::binary);
    size = in.tellg();
  }
  for (off_t cut : {size / 2, size - 1}) {
    ASSERT_EQ(::truncate(path_.c_str(), cut), 0);
    Error e = open_error(name_, path_);
    EXPECT_EQ(e.kind(), Errc::truncated) << e.what();
  }
  auto list = store_->list();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_FALSE(list[0].readable);
  EXPECT_EQ(list[0].error.rfind("truncated: ", 0), 0u) << list[0].error;
  EXPECT_FALSE(store_->newest().has_value());
  auto report = store_->verify(name_);
  EXPECT_FALSE(report.ok());
}

TEST_F(BadInput, FlippedByteInCompressedChunk) {
  auto [addr, size] = chunk_location(2);
  ASSERT_GT(size, 16u);
  ASSERT_LT(size, schema::kChunkBytes);  // compressed
  flip_byte(static_cast<off_t>(addr + size / 2));
  auto r = store_->open(name_);  // metadata is fine
  CollectSink sink;
  Error e = expect_error([&] { r->read_pages({}, sink); });
  EXPECT_EQ(e.kind(), Errc::corrupt);
  check_line(e, path_);
  EXPECT_NE(std::string(e.what()).find("chunk 2"), std::string::npos) << e.what();

  auto report = store_->verify(name_);
  ASSERT_EQ(report.errors.size(), 1u);
  EXPECT_NE(report.errors[0].find("chunk 2"), std::string::npos) << report.errors[0];
  EXPECT_EQ(report.errors[0].rfind("corrupt: ", 0), 0u) << report.errors[0];
  ASSERT_EQ(report.files.size(), 1u);
  EXPECT_EQ(report.files[0].chunks, 3u);
  EXPECT_EQ(report.files[0].chunks_bad, 1u);
}

TEST_F(BadInput, FlippedByteInThePageIndex) {
  // Tables are chunked with Fletcher32: HDF5 itself refuses the damaged chunk.
  auto [addr, size] = chunk_location(0, "pages/index");
  ASSERT_GT(size, 16u);
  flip_byte(static_cast<off_t>(addr + size / 2));
  Error e = open_error(name_, path_);
  EXPECT_EQ(e.kind(), Errc::corrupt);
  EXPECT_NE(std::string(e.what()).find("table pages/index"), std::string::npos) << e.what();
  auto list = store_->list();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_FALSE(list[0].readable);
}

TEST_F(BadInput, FlippedByteInRawChunkIsChecksumMismatch) {
  auto [addr, size] = chunk_location(1);
  ASSERT_EQ(size, schema::kChunkBytes);  // random pages: stored raw
  flip_byte(static_cast<off_t>(addr + 12345));
  CollectSink sink;
  Error e = expect_error([&] { store_->open(name_)->read_pages({}, sink); });
  EXPECT_EQ(e.kind(), Errc::corrupt);
  check_line(e, path_);
  std::string what = e.what();
  EXPECT_NE(what.find("chunk 1: checksum mismatch (stored 0x"), std::string::npos) << what;
  EXPECT_NE(what.find("computed 0x"), std::string::npos) << what;
  // Only the damaged chunk is refused: other owners' pages in other chunks still read.
  EXPECT_FALSE(store_->verify(name_).ok());
}

TEST_F(BadInput, MissingAncestor) {
  std::string child = write_image(*store_, {{{1, 0x100000}, {PageKind::data, pattern_page(1)}}},
                                  name_, {{1, 0, 10}});
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  Error e = open_error(child, name_);
  EXPECT_EQ(e.kind(), Errc::missing_ancestor) << e.what();
  EXPECT_NE(std::string(e.what()).find(child), std::string::npos) << e.what();
  auto report = store_->verify(child);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.errors[0].rfind("missing-ancestor: ", 0), 0u) << report.errors[0];
  EXPECT_NE(report.errors[0].find(name_), std::string::npos) << report.errors[0];
}

TEST_F(BadInput, AncestorReplacedByAnotherCheckpoint) {
  std::string child = write_image(*store_, {}, name_, {{1, 0, 10}});
  // Another store's first checkpoint, put where the parent was: same name, other uuid.
  TempDir other;
  auto store2 = storage::ImageStore::open_directory(other.path(), true);
  std::string n = write_image(*store2, image_);
  ASSERT_EQ(::rename((other.path() + "/" + n).c_str(), path_.c_str()), 0);
  Error e = open_error(child, name_);
  EXPECT_EQ(e.kind(), Errc::missing_ancestor);
  EXPECT_NE(std::string(e.what()).find("uuid"), std::string::npos) << e.what();
}

TEST_F(BadInput, NewerFormatVersion) {
  const uint32_t newer = schema::kFormatVersion + 1;
  set_u32_attr("format_version", newer);
  Error e = open_error(name_, path_);
  EXPECT_EQ(e.kind(), Errc::version);
  EXPECT_NE(std::string(e.what()).find("written by format version " + std::to_string(newer) +
                                       ", this crest reads version " +
                                       std::to_string(schema::kFormatVersion) + " only"),
            std::string::npos)
      << e.what();
}

TEST_F(BadInput, OlderFormatVersion) {
  // Version 1 stored rows without the shuffle filter; reading them as version 2 would give
  // wrong bytes, so they are refused by name.
  set_u32_attr("format_version", 1);
  Error e = open_error(name_, path_);
  EXPECT_EQ(e.kind(), Errc::version);
  EXPECT_NE(std::string(e.what()).find("written by format version 1"), std::string::npos)
      << e.what();
}

TEST_F(BadInput, IncompleteCheckpoint) {
  set_u32_attr("complete", 0);
  Error e = open_error(name_, path_);
  EXPECT_EQ(e.kind(), Errc::incomplete);
  // newest() skips it, and a writer does not reuse its name.
  EXPECT_FALSE(store_->newest().has_value());
  EXPECT_EQ(write_image(*store_, image_), "ckpt-000002.h5");
}

TEST_F(BadInput, NotAnHdf5File) {
  std::string path = images_ + "/ckpt-000007.h5";
  std::ofstream(path) << "this is not an HDF5 file, just text that happens to be here\n";
  Error e = open_error("ckpt-000007.h5", path);
  EXPECT_EQ(e.kind(), Errc::not_image) << e.what();
  std::ofstream(images_ + "/empty.h5").flush();
  EXPECT_EQ(open_error("empty.h5", "empty.h5").kind(), Errc::not_image);
  // The good checkpoint is still the newest; list shows the others as unreadable.
  EXPECT_EQ(store_->newest()->name, name_);
  size_t unreadable = 0;
  for (const auto& entry : store_->list()) unreadable += entry.readable ? 0 : 1;
  EXPECT_EQ(unreadable, 2u);
}

TEST_F(BadInput, Hdf5FileThatIsNotACrestImage) {
  std::string path = images_ + "/foreign.h5";
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hsize_t dims[1] = {4};
  hid_t s = H5Screate_simple(1, dims, nullptr);
  int data[4] = {1, 2, 3, 4};
  hid_t d = H5Dcreate2(f, "x", H5T_NATIVE_INT, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  H5Dclose(d);
  H5Sclose(s);
  H5Fclose(f);
  Error e = open_error("foreign.h5", path);
  EXPECT_EQ(e.kind(), Errc::not_image);
  EXPECT_NE(std::string(e.what()).find("format"), std::string::npos) << e.what();
}

TEST_F(BadInput, VerifyNamesEveryProblemWithoutThrowing) {
  auto [addr, size] = chunk_location(1);
  flip_byte(static_cast<off_t>(addr + 1));
  flip_byte(static_cast<off_t>(addr + size - 1));
  auto report = store_->verify("latest");
  ASSERT_EQ(report.errors.size(), 1u);  // one line per bad chunk
  EXPECT_NE(report.errors[0].find(path_), std::string::npos);
  auto none = store_->verify("ckpt-000099.h5");
  EXPECT_FALSE(none.ok());
}

}  // namespace
}  // namespace crest::test
