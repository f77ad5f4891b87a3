#include "storage/byte_shuffle.h"

#include <emmintrin.h>  // SSE2: part of every x86_64 CPU

namespace crest::storage::shuffle {
namespace {

// 16 elements (128 bytes) in eight SSE registers. Number a byte's place in them by 7 bits: the
// register (3 bits) then the byte in it (4). Elements are then the top 4 bits and bytes of an
// element the low 3; in the shuffled layout, byte planes are the top 3 and elements the low 4.
struct Block {
  __m128i r0, r1, r2, r3, r4, r5, r6, r7;
};

// Interleaves register j with register j + 4, byte by byte: the byte at place p goes to the
// place p rotated left by one bit. Seven rounds are the identity, so four rounds (rotate by 4)
// shuffle a block and three (rotate by 3) undo it.
inline Block rotate(const Block& b) {
  return {_mm_unpacklo_epi8(b.r0, b.r4), _mm_unpackhi_epi8(b.r0, b.r4),
          _mm_unpacklo_epi8(b.r1, b.r5), _mm_unpackhi_epi8(b.r1, b.r5),
          _mm_unpacklo_epi8(b.r2, b.r6), _mm_unpackhi_epi8(b.r2, b.r6),
          _mm_unpacklo_epi8(b.r3, b.r7), _mm_unpackhi_epi8(b.r3, b.r7)};
}

inline __m128i load(const std::byte* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

inline void store(std::byte* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

}  // namespace

void shuffle8(const std::byte* in, std::byte* out, size_t n) {
  const size_t m = n / kElement;  // elements, and the length of each byte plane
  for (size_t i = 0; i < m; i += 16) {
    const std::byte* s = in + i * kElement;
    Block b{load(s),      load(s + 16), load(s + 32), load(s + 48),
            load(s + 64), load(s + 80), load(s + 96), load(s + 112)};
    b = rotate(rotate(rotate(rotate(b))));
    std::byte* d = out + i;
    store(d, b.r0);
    store(d + m, b.r1);
    store(d + 2 * m, b.r2);
    store(d + 3 * m, b.r3);
    store(d + 4 * m, b.r4);
    store(d + 5 * m, b.r5);
    store(d + 6 * m, b.r6);
    store(d + 7 * m, b.r7);
  }
}

void unshuffle8(const std::byte* in, std::byte* out, size_t n) {
  const size_t m = n / kElement;
  for (size_t i = 0; i < m; i += 16) {
    const std::byte* s = in + i;
    Block b{load(s),         load(s + m),     load(s + 2 * m), load(s + 3 * m),
            load(s + 4 * m), load(s + 5 * m), load(s + 6 * m), load(s + 7 * m)};
    b = rotate(rotate(rotate(b)));
    std::byte* d = out + i * kElement;
    store(d, b.r0);
    store(d + 16, b.r1);
    store(d + 32, b.r2);
    store(d + 48, b.r3);
    store(d + 64, b.r4);
    store(d + 80, b.r5);
    store(d + 96, b.r6);
    store(d + 112, b.r7);
  }
}

}  // namespace crest::storage::shuffle
