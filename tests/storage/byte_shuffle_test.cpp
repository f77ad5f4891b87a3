// The byte shuffle on its own: the layout HDF5's shuffle filter defines (byte k of element i at
// k * elements + i), checked against a direct loop, and undone exactly.
#include "storage/byte_shuffle.h"

#include "tests/storage/test_util.h"

namespace crest::test {
namespace {

namespace shuffle = storage::shuffle;

TEST(ByteShuffle, PutsByteKOfEveryElementInPlaneK) {
  for (size_t n : {size_t{128}, size_t{4096}, size_t{schema::kChunkBytes}}) {
    auto in = random_bytes(n, n);
    std::vector<std::byte> out(n);
    shuffle::shuffle8(in.data(), out.data(), n);
    const size_t elements = n / 8;
    for (size_t i = 0; i < elements; ++i)
      for (size_t k = 0; k < 8; ++k)
        ASSERT_EQ(out[k * elements + i], in[i * 8 + k]) << "n " << n << " element " << i
                                                        << " byte " << k;
  }
}

TEST(ByteShuffle, UnshuffleRestoresTheInput) {
  auto in = random_bytes(schema::kChunkBytes, 3);
  std::vector<std::byte> shuffled(in.size()), back(in.size());
  shuffle::shuffle8(in.data(), shuffled.data(), in.size());
  EXPECT_NE(shuffled, in);
  shuffle::unshuffle8(shuffled.data(), back.data(), in.size());
  EXPECT_EQ(back, in);
}

}  // namespace
}  // namespace crest::test
