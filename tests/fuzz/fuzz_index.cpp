// The page index and chunk table of a chain, as a hostile image may hold them: one to three
// checkpoints (an incremental chain) in the memory backend, with fuzzed page runs (owners,
// addresses, counts, kinds, depths, rows), chunk records and chunk bytes. Opening the chain,
// streaming its pages and verifying it either work — every page handed out lies inside a decoded
// chunk and no two runs overlap — or fail with a named crest::Error; never a crash, a hang, or
// memory out of proportion to the input.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "storage/container.h"
#include "storage/lz4_chunk.h"
#include "storage/pipeline.h"

namespace {

using namespace crest;
using namespace crest::storage;
using schema::kChunkBytes;
using schema::kChunkPages;
using schema::kPageSize;

// Counts what it is given and reads every byte of every data page (ASan checks the bounds).
class TouchSink final : public PageSink {
 public:
  void on_pages(const PageExtent& run, schema::PageKind kind, const std::byte* data) override {
    if (kind == schema::PageKind::data) {
      if (data == nullptr || run.npages > kChunkPages) std::abort();
      for (uint64_t i = 0; i < run.npages * kPageSize; i += 512) sum += std::to_integer<int>(data[i]);
      pages += run.npages;
      // Each data run holds no more pages than the chain has rows.
      if (pages > limit) std::abort();
    } else if (data != nullptr) {
      std::abort();
    }
  }
  uint64_t pages = 0, limit = 0;
  unsigned sum = 0;
};

uint64_t pick_u64(FuzzedDataProvider& in) {
  // Mostly small values (runs that line up with chunks), sometimes anything at all.
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: return in.ConsumeIntegralInRange<uint64_t>(0, 8);
    case 1: return in.ConsumeIntegralInRange<uint64_t>(0, 1024);
    case 2: return ~uint64_t{0} - in.ConsumeIntegralInRange<uint64_t>(0, 1024);
    default: return in.ConsumeIntegral<uint64_t>();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  auto backend = make_memory_backend();
  int nfiles = in.ConsumeIntegralInRange<int>(1, 3);
  std::string uuid_before, name_before;
  uint64_t rows = 0;
  std::string name;
  static std::vector<std::byte> chunk(kChunkBytes), enc(lz4::encoded_bound(kChunkBytes, kChunkBytes));
  for (int f = 0; f < nfiles; ++f) {
    name = "ckpt-00000" + std::to_string(f + 1) + ".h5";
    auto w = backend->create(name);
    schema::CheckpointMeta meta;
    meta.info.uuid = "u" + std::to_string(f);
    if (f > 0) {
      bool loop = in.ConsumeIntegralInRange<int>(0, 15) == 0;
      meta.info.parent_file = loop ? name : name_before;
      meta.info.parent_uuid = in.ConsumeBool() ? uuid_before : "other";
    }
    std::vector<schema::ChunkRecord> chunks(in.ConsumeIntegralInRange<size_t>(0, 3));
    for (size_t c = 0; c < chunks.size(); ++c) {
      uint8_t fill = in.ConsumeIntegral<uint8_t>();
      std::memset(chunk.data(), fill, kChunkBytes);
      auto e = static_cast<schema::ChunkEncoding>(in.ConsumeIntegralInRange<uint32_t>(0, 2));
      size_t n = kChunkBytes;
      const std::byte* stored = chunk.data();
      if (e != schema::ChunkEncoding::raw) {
        n = lz4::encode(chunk.data(), kChunkBytes, kChunkBytes, enc.data(), 1);
        stored = enc.data();
      }
      if (in.ConsumeIntegralInRange<int>(0, 7) == 0 && n > 0) n -= 1;  // a short chunk
      w->write_chunk(c, stored, n, e);
      chunks[c].stored_bytes = static_cast<uint32_t>(n);
      chunks[c].compressed = in.ConsumeIntegralInRange<int>(0, 7) == 0
                                 ? in.ConsumeIntegralInRange<uint32_t>(0, 4)
                                 : static_cast<uint32_t>(e);
      chunks[c].npages = static_cast<uint32_t>(
          in.ConsumeBool() ? kChunkPages : in.ConsumeIntegralInRange<uint64_t>(0, 300));
      chunks[c].checksum = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegral<uint64_t>()
                                                                      : chunk_checksum(chunk.data());
    }
    rows += chunks.size() * kChunkPages;
    std::vector<schema::PageRun> index(in.ConsumeIntegralInRange<size_t>(0, 12));
    for (auto& r : index) {
      r.owner = in.ConsumeIntegralInRange<uint64_t>(0, 3);
      r.addr = pick_u64(in) * (in.ConsumeBool() ? kPageSize : 1);
      r.npages = pick_u64(in);
      r.kind = in.ConsumeIntegralInRange<uint32_t>(0, 4);
      r.depth = in.ConsumeIntegralInRange<uint32_t>(0, 3);
      r.pos = pick_u64(in);
    }
    w->commit(meta, index, chunks, {});
    uuid_before = meta.info.uuid;
    name_before = name;
  }
  try {
    auto reader = make_chain_reader(*backend, name);
    // The runs it accepted are in order and do not overlap.
    const schema::PageRun* prev = nullptr;
    for (const auto& r : reader->page_index()) {
      if (r.npages == 0 || r.npages > (~uint64_t{0} - r.addr) / kPageSize) std::abort();
      if (prev != nullptr && (prev->owner > r.owner || (prev->owner == r.owner &&
                                                        prev->addr + prev->npages * kPageSize > r.addr)))
        std::abort();
      prev = &r;
    }
    TouchSink sink;
    sink.limit = rows * reader->page_index().size();
    reader->read_pages({}, sink);
  } catch (const Error&) {
  }
  VerifyReport report = verify_chain(*backend, name);
  (void)report.ok();
  return 0;
}
