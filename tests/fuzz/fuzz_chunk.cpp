// The chunk decoder: the stored bytes of one chunk of /pages/data as a hostile image may hold
// them, decoded as the chunk table says (raw, LZ4, shuffled + LZ4) and checked against its
// checksum; and the LZ4 stream codec on its own, with any announced size. Any input is decoded
// or refused with a named Errc::corrupt; and what encode() makes decodes back to the input.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "storage/byte_shuffle.h"
#include "storage/lz4_chunk.h"
#include "storage/pipeline.h"

namespace {

using namespace crest;
using namespace crest::storage;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static AlignedBuffer scratch(kDecodeScratchBytes);
  FuzzedDataProvider in(data, size);
  int mode = in.ConsumeIntegralInRange<int>(0, 2);
  if (mode == 0) {
    // A chunk as the reader meets it: its record and its stored bytes.
    schema::ChunkRecord rec;
    rec.compressed = in.ConsumeIntegralInRange<uint32_t>(0, 4);
    rec.npages = in.ConsumeIntegral<uint32_t>();
    rec.checksum = in.ConsumeIntegral<uint64_t>();
    auto bytes = in.ConsumeRemainingBytes<uint8_t>();
    std::vector<std::byte> stored(bytes.size());
    if (!bytes.empty()) std::memcpy(stored.data(), bytes.data(), bytes.size());
    rec.stored_bytes = static_cast<uint32_t>(stored.size());
    try {
      const std::byte* out = decode_chunk(rec, stored, scratch.get(), "fuzz.h5", 0);
      // Accepted: the checksum matched what came out.
      if (chunk_checksum(out) != rec.checksum) std::abort();
    } catch (const Error& e) {
      if (e.kind() != Errc::corrupt) std::abort();
    }
    return 0;
  }
  if (mode == 1) {
    // An LZ4 stream with whatever original size it announces, into a buffer of the size the
    // caller expects (decode must not write past it).
    size_t out_size = in.ConsumeIntegralInRange<size_t>(0, 1 << 20);
    auto bytes = in.ConsumeRemainingBytes<uint8_t>();
    std::vector<std::byte> out(out_size);
    (void)lz4::decode(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size(), out.data(),
                      out_size);
    return 0;
  }
  // Round trip: encode with any block size, then decode; shuffle then unshuffle.
  size_t block = in.ConsumeIntegralInRange<size_t>(1, 1 << 20);
  int accel = in.ConsumeIntegralInRange<int>(1, 64);
  auto bytes = in.ConsumeRemainingBytes<uint8_t>();
  const auto* src = reinterpret_cast<const std::byte*>(bytes.data());
  std::vector<std::byte> enc(lz4::encoded_bound(bytes.size(), block));
  size_t n = lz4::encode(src, bytes.size(), block, enc.data(), accel);
  if (n > enc.size()) std::abort();
  std::vector<std::byte> dec(bytes.size());
  if (lz4::decode(enc.data(), n, dec.data(), dec.size()) != nullptr) std::abort();
  if (!bytes.empty() && std::memcmp(dec.data(), src, bytes.size()) != 0) std::abort();
  size_t whole = bytes.size() / 128 * 128;
  if (whole > 0) {
    std::vector<std::byte> sh(whole), back(whole);
    shuffle::shuffle8(src, sh.data(), whole);
    shuffle::unshuffle8(sh.data(), back.data(), whole);
    if (std::memcmp(back.data(), src, whole) != 0) std::abort();
  }
  return 0;
}
