// The chunk codec on its own: the HDF5 LZ4 filter format, raw blocks, several blocks, and damaged
// streams refused with a reason.
#include "storage/lz4_chunk.h"

#include <lz4.h>

#include <cstring>

#include "tests/storage/test_util.h"

namespace crest::test {
namespace {

namespace lz4 = storage::lz4;

std::vector<std::byte> encode(const std::vector<std::byte>& in, size_t block) {
  std::vector<std::byte> out(lz4::encoded_bound(in.size(), block));
  out.resize(lz4::encode(in.data(), in.size(), block, out.data(), 1));
  return out;
}

uint32_t be32(const std::byte* p) {
  return (std::to_integer<uint32_t>(p[0]) << 24) | (std::to_integer<uint32_t>(p[1]) << 16) |
         (std::to_integer<uint32_t>(p[2]) << 8) | std::to_integer<uint32_t>(p[3]);
}

std::vector<std::byte> compressible(size_t n) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i / 16) % 7);
  return v;
}

TEST(Lz4Chunk, HeaderIsBigEndianSizeAndBlockSize) {
  auto in = compressible(schema::kChunkBytes);
  auto out = encode(in, schema::kChunkBytes);
  ASSERT_GE(out.size(), 16u);
  EXPECT_LT(out.size(), in.size() / 10);
  uint64_t orig = 0;
  ASSERT_TRUE(lz4::original_size(out.data(), out.size(), orig));
  EXPECT_EQ(orig, schema::kChunkBytes);
  EXPECT_EQ(be32(out.data()), 0u);  // high half of the u64
  EXPECT_EQ(be32(out.data() + 4), schema::kChunkBytes);
  EXPECT_EQ(be32(out.data() + 8), schema::kChunkBytes);
  EXPECT_EQ(be32(out.data() + 12), out.size() - 16);  // one block
  std::vector<std::byte> back(in.size());
  EXPECT_EQ(lz4::decode(out.data(), out.size(), back.data(), back.size()), nullptr);
  EXPECT_EQ(back, in);
}

TEST(Lz4Chunk, IncompressibleBlockIsStoredRaw) {
  auto in = random_bytes(65536, 1);
  auto out = encode(in, 65536);
  ASSERT_EQ(out.size(), 16u + 65536u);
  EXPECT_EQ(be32(out.data() + 12), 65536u);  // compressed size == block size: raw
  EXPECT_EQ(std::memcmp(out.data() + 16, in.data(), in.size()), 0);
  std::vector<std::byte> back(in.size());
  EXPECT_EQ(lz4::decode(out.data(), out.size(), back.data(), back.size()), nullptr);
  EXPECT_EQ(back, in);
}

TEST(Lz4Chunk, SeveralBlocksWithAShortLastOne) {
  auto in = compressible(100000);
  auto rnd = random_bytes(20000, 2);
  std::copy(rnd.begin(), rnd.end(), in.begin() + 30000);  // one block raw, the others not
  auto out = encode(in, 12288);
  std::vector<std::byte> back(in.size());
  EXPECT_EQ(lz4::decode(out.data(), out.size(), back.data(), back.size()), nullptr);
  EXPECT_EQ(back, in);
}

TEST(Lz4Chunk, DamagedStreamsAreRefused) {
  auto in = compressible(schema::kChunkBytes);
  auto out = encode(in, schema::kChunkBytes);
  std::vector<std::byte> back(in.size());
  EXPECT_NE(lz4::decode(out.data(), 8, back.data(), back.size()), nullptr);  // header cut
  EXPECT_NE(lz4::decode(out.data(), out.size() - 1, back.data(), back.size()),
            nullptr);  // body cut
  EXPECT_NE(lz4::decode(out.data(), out.size(), back.data(), back.size() - 1),
            nullptr);  // wrong size
  auto extra = out;
  extra.push_back(std::byte{0});
  EXPECT_NE(lz4::decode(extra.data(), extra.size(), back.data(), back.size()),
            nullptr);  // trailing
  auto bad = out;
  for (size_t i = 16; i < bad.size(); i += 3) bad[i] = std::byte{0xff};  // garbage
  EXPECT_NE(lz4::decode(bad.data(), bad.size(), back.data(), back.size()), nullptr);
}

}  // namespace
}  // namespace crest::test
