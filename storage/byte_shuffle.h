// Byte shuffle with 8-byte elements, as HDF5's shuffle filter (id 2) does it for a dataset of
// 8-byte integers: byte k of element i goes to position k * (n / 8) + i. Numeric arrays (doubles,
// small integers, pointers) put similar bytes side by side this way and LZ4 finds far more
// matches; /pages/data is stored as u64 rows so that stock HDF5 undoes it.
//
// Pure functions (SSE2, 16 elements at a time); n must be a multiple of 128.
#pragma once

#include <cstddef>

namespace crest::storage::shuffle {

inline constexpr size_t kElement = 8;

void shuffle8(const std::byte* in, std::byte* out, size_t n);
void unshuffle8(const std::byte* in, std::byte* out, size_t n);

}  // namespace crest::storage::shuffle
