// The chunk codec: LZ4 in the byte format of the registered HDF5 filter 32004, so that stock
// h5dump and h5py (with the LZ4 filter plugin) decode the chunks crest writes directly.
//
// Format (all integers big-endian):
//   u64 original size | u32 block size | per block: u32 compressed size, then the block's bytes.
// Every block holds `block size` original bytes except the last, which holds the rest. A block
// whose compressed size equals its original size is stored raw.
//
// Pure functions without HDF5; h5_lz4_filter.cpp registers them as an HDF5 filter.
#pragma once

#include <cstddef>
#include <cstdint>

namespace crest::storage::lz4 {

inline constexpr unsigned kFilterId = 32004;
inline constexpr size_t kHeaderBytes = 12;      // original size + block size
inline constexpr size_t kBlockHeaderBytes = 4;  // compressed size of one block

// Largest encode() output for `size` input bytes cut in blocks of `block_size`.
size_t encoded_bound(size_t size, size_t block_size);

// Encodes `size` bytes into `out` (room for encoded_bound bytes); returns the bytes written.
// block_size must be > 0 and at most the largest LZ4 input (about 2 GiB).
size_t encode(const std::byte* in, size_t size, size_t block_size, std::byte* out,
              int acceleration);

// The original size a stream announces; false when `size` is too short for a header.
bool original_size(const std::byte* in, size_t size, uint64_t& out);

// Decodes a whole stream into `out`, which must be exactly the announced original size.
// Returns nullptr on success, else a static description of what is wrong with the stream.
const char* decode(const std::byte* in, size_t size, std::byte* out, size_t out_size);

}  // namespace crest::storage::lz4
