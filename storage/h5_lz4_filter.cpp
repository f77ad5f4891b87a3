// Our own implementation of the registered HDF5 LZ4 filter (id 32004), registered in-process so
// that crest can create datasets with the filter in their pipeline and HDF5 itself can read them
// (H5Dread) without the external plugin. crest's page path never goes through it: chunks are
// encoded by the write pipeline and stored with H5Dwrite_chunk. cd_values[0], when given, is the
// block size in bytes, as for the standard plugin.
#include <lz4.h>

#include "storage/h5_util.h"
#include "storage/lz4_chunk.h"

namespace crest::storage::h5 {
namespace {

// HDF5 owns the buffers, so they are allocated and freed with its allocator. Returning 0 tells
// HDF5 the filter failed; the buffer is then left as it was.
size_t lz4_filter(unsigned flags, size_t cd_nelmts, const unsigned cd_values[], size_t nbytes,
                  size_t* buf_size, void** buf) {
  const auto* in = static_cast<const std::byte*>(*buf);
  if ((flags & H5Z_FLAG_REVERSE) != 0) {
    uint64_t total = 0;
    // The announced size comes from the file: LZ4 expands a block at most 255-fold (and a raw
    // block not at all), so a larger claim is a damaged or forged stream, refused before it sizes
    // an allocation.
    if (!lz4::original_size(in, nbytes, total) || total > 256 * uint64_t{nbytes}) return 0;
    void* out = H5allocate_memory(total, false);
    if (out == nullptr) return 0;
    if (lz4::decode(in, nbytes, static_cast<std::byte*>(out), total) != nullptr) {
      H5free_memory(out);
      return 0;
    }
    H5free_memory(*buf);
    *buf = out;
    *buf_size = total;
    return total;
  }
  size_t block = nbytes;
  if (cd_nelmts > 0 && cd_values[0] > 0) block = cd_values[0];
  if (block > LZ4_MAX_INPUT_SIZE) block = LZ4_MAX_INPUT_SIZE;
  if (block == 0) block = 1;
  size_t cap = lz4::encoded_bound(nbytes, block);
  void* out = H5allocate_memory(cap, false);
  if (out == nullptr) return 0;
  size_t n = lz4::encode(in, nbytes, block, static_cast<std::byte*>(out), 1);
  H5free_memory(*buf);
  *buf = out;
  *buf_size = cap;
  return n;
}

const H5Z_class2_t kLz4Class = {
    H5Z_CLASS_T_VERS, static_cast<H5Z_filter_t>(lz4::kFilterId), 1, 1, "lz4", nullptr, nullptr,
    lz4_filter,
};

}  // namespace

void register_lz4_filter() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  check(H5Zregister(&kLz4Class), Errc::internal, "cannot register the LZ4 HDF5 filter");
}

}  // namespace crest::storage::h5
