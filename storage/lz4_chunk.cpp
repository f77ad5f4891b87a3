#include "storage/lz4_chunk.h"

#include <lz4.h>

#include <algorithm>
#include <cstring>

namespace crest::storage::lz4 {
namespace {

void put_be32(std::byte* p, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<std::byte>(v & 0xff);
}

void put_be64(std::byte* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<std::byte>(v & 0xff);
}

uint32_t get_be32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | std::to_integer<uint32_t>(p[i]);
  return v;
}

uint64_t get_be64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | std::to_integer<uint64_t>(p[i]);
  return v;
}

}  // namespace

size_t encoded_bound(size_t size, size_t block_size) {
  size_t blocks = block_size == 0 ? 0 : (size + block_size - 1) / block_size;
  size_t per_block =
      static_cast<size_t>(LZ4_compressBound(static_cast<int>(std::min(size, block_size))));
  // A block never takes more than max(raw, bound): raw storage is the fallback.
  per_block = std::max(per_block, std::min(size, block_size));
  return kHeaderBytes + blocks * (kBlockHeaderBytes + per_block);
}

size_t encode(const std::byte* in, size_t size, size_t block_size, std::byte* out,
              int acceleration) {
  put_be64(out, size);
  put_be32(out + 8, static_cast<uint32_t>(block_size));
  std::byte* dst = out + kHeaderBytes;
  for (size_t done = 0; done < size;) {
    size_t n = std::min(block_size, size - done);
    int bound = LZ4_compressBound(static_cast<int>(n));
    int c = LZ4_compress_fast(reinterpret_cast<const char*>(in + done),
                              reinterpret_cast<char*>(dst + kBlockHeaderBytes), static_cast<int>(n),
                              bound, acceleration);
    // The format marks a raw block by a compressed size equal to its original size, so a block
    // that does not shrink must be stored raw (and an equal-size LZ4 result would be misread).
    if (c <= 0 || static_cast<size_t>(c) >= n) {
      put_be32(dst, static_cast<uint32_t>(n));
      std::memcpy(dst + kBlockHeaderBytes, in + done, n);
      dst += kBlockHeaderBytes + n;
    } else {
      put_be32(dst, static_cast<uint32_t>(c));
      dst += kBlockHeaderBytes + static_cast<size_t>(c);
    }
    done += n;
  }
  return static_cast<size_t>(dst - out);
}

bool original_size(const std::byte* in, size_t size, uint64_t& out) {
  if (size < kHeaderBytes) return false;
  out = get_be64(in);
  return true;
}

const char* decode(const std::byte* in, size_t size, std::byte* out, size_t out_size) {
  if (size < kHeaderBytes) return "LZ4 stream shorter than its header";
  uint64_t total = get_be64(in);
  uint64_t block_size = get_be32(in + 8);
  if (total != out_size) return "LZ4 stream announces a different original size";
  if (block_size == 0 && total != 0) return "LZ4 stream has a zero block size";
  const std::byte* src = in + kHeaderBytes;
  const std::byte* end = in + size;
  for (uint64_t done = 0; done < total;) {
    uint64_t n = std::min(block_size, total - done);
    if (end - src < static_cast<ptrdiff_t>(kBlockHeaderBytes)) return "LZ4 stream ends early";
    uint64_t c = get_be32(src);
    src += kBlockHeaderBytes;
    if (static_cast<uint64_t>(end - src) < c) return "LZ4 stream ends early";
    if (c == n) {
      std::memcpy(out + done, src, n);
    } else {
      int got = LZ4_decompress_safe(reinterpret_cast<const char*>(src),
                                    reinterpret_cast<char*>(out + done), static_cast<int>(c),
                                    static_cast<int>(n));
      if (got < 0 || static_cast<uint64_t>(got) != n) return "LZ4 block does not decode";
    }
    src += c;
    done += n;
  }
  if (src != end) return "LZ4 stream has trailing bytes";
  return nullptr;
}

}  // namespace crest::storage::lz4
