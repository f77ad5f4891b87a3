// An HDF5 file driver for the checkpoint writer: POSIX I/O like HDF5's sec2 driver, except that
// raw data (the page chunks) bypasses the page cache with O_DIRECT.
//
// Why: every buffered byte of an image is first copied into page-cache pages that are fresh
// memory for each checkpoint (on this class of VM, the slowest memory there is: buffered writes
// with the final fsync ran at a quarter of the disk's O_DIRECT bandwidth), and then written back.
// With O_DIRECT the chunk goes from the pipeline's own buffers (page aligned, reused for every
// chunk) straight to the device.
//
// How: the file access list also asks HDF5 to place every object of kDirectThreshold bytes or more
// at a kDirectAlign boundary (H5Pset_alignment), so a chunk starts on a block. Of each raw-data
// write that starts aligned from an aligned buffer, the whole blocks go through an O_DIRECT
// descriptor and the partial last block (and everything else: metadata, small chunks) through an
// ordinary one; the two never write the same block. The file is ordinary HDF5: readers open it
// with the default driver.
//
// Where O_DIRECT is not supported (tmpfs refuses it with EINVAL) or a direct write is refused,
// the driver falls back to buffered writes for the rest of the file and says so once (debug log).
#pragma once

#include <hdf5.h>

#include <cstdint>

namespace crest::storage::h5 {

inline constexpr uint64_t kDirectAlign = 4096;
inline constexpr uint64_t kDirectThreshold = 16 * 1024;

// Sets the driver (and the alignment it needs) on a file access property list.
void use_direct_driver(hid_t fapl);

// Bytes written through the O_DIRECT descriptor and through the buffered one, raw data and
// metadata together, for the file's statistics (all zero for a file of another driver).
struct DirectCounters {
  uint64_t direct_bytes = 0;
  uint64_t buffered_bytes = 0;
  int64_t direct_ns = 0;  // in the write calls
  int64_t buffered_ns = 0;
  bool direct = false;  // O_DIRECT was in use (until a fallback)
};
DirectCounters direct_counters(hid_t file);

}  // namespace crest::storage::h5
