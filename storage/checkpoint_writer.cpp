// The write pipeline: page batches → zero detection, hashing → chunks packed full → shuffle + LZ4
// → chunks written in order.
//
//   stage 1 (serial, in order)  source.fill() into a free token's buffer
//   stage 2 (parallel)          find all-zero pages and pages unchanged from the parent (by XXH3
//                               content hash), compact the others (data) to the front
//   stage 3 (serial, in order)  give each data page its place: a batch with at least half a
//                               chunk of data is a chunk of its own; fewer data pages are copied
//                               into a pack, filled across batches, so that an incremental that
//                               stores a few pages of each batch still writes full chunks. Number
//                               the chunks and append the batch's index runs
//   stage 4 (parallel)          for each chunk the batch completed (a pack, its own): zero the
//                               tail, XXH3 the 1 MiB chunk, then as a sample of it says pays:
//                               byte-shuffle + LZ4, LZ4, or nothing (stored raw)
//   stage 5 (serial, in order)  append the chunk records and hand the chunks to the writing thread
//   writing thread (in order)   the container write (O_DIRECT to the disk for the directory
//                               backend), then the token or pack goes back to its pool
//
// Fixed pools of tokens and packs, each owning its buffers for the writer's life, bound the memory
// to (tokens + packs) × (1 MiB in + 1 MiB shuffled + 1 MiB out) whatever the image size; stages 1
// and 3 wait for a buffer the writing thread has not given back yet. The pack still open when the
// source ends is encoded and written last.
#include <sys/utsname.h>
#include <tbb/parallel_pipeline.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "core/util/log.h"
#include "storage/byte_shuffle.h"
#include "storage/lz4_chunk.h"
#include "storage/pipeline.h"

#ifndef CREST_VERSION
#define CREST_VERSION "unknown"
#endif

namespace crest::storage {

using schema::kChunkBytes;
using schema::kChunkPages;
using schema::kPageSize;
using schema::PageKind;
using schema::PageRun;

unsigned pipeline_tokens(unsigned requested) {
  if (requested > 0) return requested;
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  return 2 * hw + 2;
}

std::string display_path(const Backend& backend, const std::string& name) {
  return backend.location() + "/" + name;
}

uint64_t chunk_checksum(const std::byte* chunk) { return XXH3_64bits(chunk, kChunkBytes); }

AlignedBuffer::AlignedBuffer(size_t size)
    : ptr(static_cast<std::byte*>(
          std::aligned_alloc(kPageSize, (size + kPageSize - 1) / kPageSize * kPageSize))) {
  if (!ptr) throw std::bad_alloc();
}

void AlignedBuffer::Free::operator()(std::byte* p) const noexcept { std::free(p); }

namespace {

auto logger() { return log::get("storage.pipeline"); }

int64_t now_ns(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Word-wise, 512 bytes per step: a page with data usually fails in the first step, so the cost
// is paid in full only by zero pages, at memory bandwidth.
bool is_zero_page(const std::byte* page) {
  for (size_t off = 0; off < kPageSize; off += 512) {
    uint64_t w[64];
    std::memcpy(w, page + off, sizeof w);
    uint64_t acc = 0;
    for (uint64_t x : w) acc |= x;
    if (acc != 0) return false;
  }
  return true;
}

std::string new_uuid() {
  std::random_device rd;  // /dev/urandom on Linux
  std::array<uint8_t, 16> b{};
  for (size_t i = 0; i < b.size(); i += 4) {
    uint32_t r = rd();
    std::memcpy(&b[i], &r, 4);
  }
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += hex[b[i] >> 4];
    s += hex[b[i] & 15];
  }
  return s;
}

std::string hex_addr(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// A run that drops the pages it covers from what was given before (forget_pages); never in an
// index.
constexpr uint32_t kForgotten = 0xffffffffu;

bool same_kind_and_contiguous(const PageRun& a, const PageRun& b) {
  if (a.owner != b.owner || a.kind != b.kind || a.depth != b.depth) return false;
  if (a.addr + a.npages * kPageSize != b.addr) return false;
  return a.kind != static_cast<uint32_t>(PageKind::data) || a.pos + a.npages == b.pos;
}

// What the parent's chain holds at a page key, by content: the next checkpoint keeps a page
// whose hash matches instead of storing it again.
struct KnownPage {
  uint64_t owner, addr;
  schema::PageHash hash;
  uint32_t depth;  // in the parent's chain
  uint64_t pos;
};

enum class Slot : uint8_t { data, zero, same };

// Adds the time from its construction to its destruction to a stage's total.
class StageTimer {
 public:
  explicit StageTimer(std::atomic<int64_t>& total) : total_(total), t0_(now_ns(CLOCK_MONOTONIC)) {}
  ~StageTimer() { total_ += now_ns(CLOCK_MONOTONIC) - t0_; }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

 private:
  std::atomic<int64_t>& total_;
  int64_t t0_;
};

// Pages LZ4 compresses both ways, plain and shuffled, to choose a chunk's encoding.
constexpr uint64_t kSamplePages = 4;

// One chunk to store: the data pages (compacted, the rest zeroed), their hashes, and how it is
// encoded. A token's own buffer is one; a pack is one filled from several tokens.
struct Chunk {
  AlignedBuffer in{kChunkBytes};
  AlignedBuffer shuffled{kChunkBytes};
  AlignedBuffer out{lz4::encoded_bound(kChunkBytes, kChunkBytes)};
  schema::ChunkRecord record;
  std::array<schema::PageHash, kChunkPages> hash{};  // of the data pages, in order
  uint64_t nonzero = 0;                              // data pages
  uint64_t number = 0;                               // in the file
  size_t stored = 0;
  schema::ChunkEncoding encoding = schema::ChunkEncoding::raw;

  // The bytes write_chunk is given for this chunk's encoding.
  const std::byte* stored_bytes() const {
    return encoding == schema::ChunkEncoding::raw ? in.get() : out.get();
  }
};

struct Token {
  Chunk chunk;  // the batch is filled into chunk.in; its data pages are compacted there
  storage::PageBatch batch;
  std::array<Slot, kChunkPages> slot{};
  std::array<const KnownPage*, kChunkPages> same{};  // for Slot::same
  std::array<uint64_t, kChunkPages> pos{};           // of the data pages, in the file
  Chunk* pack = nullptr;  // a pack this batch completed, stored before the batch's own chunk
  bool own = false;       // the batch's data pages are a chunk of their own
};

class PipelineWriter final : public CheckpointWriter {
 public:
  PipelineWriter(Backend& backend, std::shared_ptr<void> lock, std::string name, uint64_t sequence,
                 std::unique_ptr<CheckpointReader> parent, const WriteTuning& tuning)
      : lock_(std::move(lock)),
        backend_(backend),
        name_(std::move(name)),
        sequence_(sequence),
        parent_(std::move(parent)),
        tuning_(tuning),
        started_ns_(now_ns(CLOCK_MONOTONIC)) {
    tuning_.chunks_in_flight = pipeline_tokens(tuning.chunks_in_flight);
    if (tuning_.lz4_acceleration < 1) tuning_.lz4_acceleration = 1;
    if (parent_) {
      parent_index_ = parent_->page_index();
      index_known_pages();
    }
    out_ = backend_.create(name_);
  }

  const std::string& uuid() const override { return keep_identity_.empty() ? uuid_ : keep_identity_; }
  void keep_identity(const std::string& uuid) { keep_identity_ = uuid; }
  std::string parent_uuid() const override { return parent_ ? parent_->info().uuid : ""; }

  void write_pages(PageSource& source) override {
    check_open();
    // Allocated on first use and kept: later calls reuse the same (already touched) memory.
    if (!pool_) {
      pool_ = std::make_unique<TokenPool<Token>>(tuning_.chunks_in_flight);
      packs_ = std::make_unique<TokenPool<Chunk>>(tuning_.chunks_in_flight);
    }
    pool_->reset();
    packs_->reset();
    open_pack_ = nullptr;
    int64_t t0 = now_ns(CLOCK_MONOTONIC);
    failed_ = true;  // until the pipeline returns normally

    // The chunks are written by a thread of their own (ChunkWrites), in order, while the
    // pipeline goes on; their tokens and packs come back to the pools once written.
    ChunkWrites writes(*this);
    auto fill = [&](tbb::flow_control& fc) -> Token* {
      StageTimer timer(fill_ns_);
      Token* t = pool_->take_waiting();
      t->batch.extents.clear();
      t->batch.npages = 0;
      t->batch.data = t->chunk.in.get();
      if (!source.fill(t->batch)) {
        pool_->give(t);
        fc.stop();
        return nullptr;
      }
      validate(t->batch);
      if (t->batch.data != t->chunk.in.get())
        fail(Errc::internal, "page source replaced the batch buffer");
      return t;
    };
    auto sort = [this](Token* t) -> Token* {
      StageTimer timer(compress_ns_);
      classify(*t);
      return t;
    };
    auto place = [this](Token* t) -> Token* {
      StageTimer timer(store_ns_);
      place_pages(*t);
      return t;
    };
    auto encode = [this](Token* t) -> Token* {
      StageTimer timer(compress_ns_);
      if (t->pack) encode_chunk(*t->pack);
      if (t->own) encode_chunk(t->chunk);
      return t;
    };
    auto store = [&](Token* t) {
      StageTimer timer(store_ns_);
      writes.check();
      if (t->pack) {
        record_chunk(*t->pack);
        writes.push(t->pack, nullptr);
      }
      if (t->own) {
        record_chunk(t->chunk);
        writes.push(&t->chunk, t);  // the token goes back once its chunk is written
      } else {
        pool_->give(t);
      }
    };
    tbb::parallel_pipeline(
        tuning_.chunks_in_flight,
        tbb::make_filter<void, Token*>(tbb::filter_mode::serial_in_order, fill) &
            tbb::make_filter<Token*, Token*>(tbb::filter_mode::parallel, sort) &
            tbb::make_filter<Token*, Token*>(tbb::filter_mode::serial_in_order, place) &
            tbb::make_filter<Token*, Token*>(tbb::filter_mode::parallel, encode) &
            tbb::make_filter<Token*, void>(tbb::filter_mode::serial_in_order, store));
    if (Chunk* last = std::exchange(open_pack_, nullptr)) {
      encode_chunk(*last);
      writes.check();
      record_chunk(*last);
      writes.push(last, nullptr);
    }
    writes.finish();  // every chunk written, or the first write's error thrown
    failed_ = false;
    stats_.pipeline_ns += now_ns(CLOCK_MONOTONIC) - t0;
  }

  void keep_pages(const PageExtent& run) override {
    check_open();
    if (!parent_)
      fail(Errc::missing_ancestor,
           display_path(backend_, name_) + ": keep_pages on a checkpoint without a parent");
    uint64_t cur = run.addr;
    uint64_t end = run.addr + run.npages * kPageSize;
    // First parent run of this owner that ends after `cur`.
    auto it = std::lower_bound(parent_index_.begin(), parent_index_.end(), run,
                               [](const PageRun& r, const PageExtent& key) {
                                 if (r.owner != key.owner) return r.owner < key.owner;
                                 return r.addr + r.npages * kPageSize <= key.addr;
                               });
    std::vector<PageRun> kept;
    while (cur < end) {
      if (it == parent_index_.end() || it->owner != run.owner || it->addr > cur)
        fail(Errc::missing_ancestor, display_path(backend_, name_) + ": parent " + parent_->name() +
                                         " has no page of owner " + std::to_string(run.owner) +
                                         " at " + hex_addr(cur));
      const PageRun& r = *it;
      uint64_t r_end = r.addr + r.npages * kPageSize;
      uint64_t take = (std::min(end, r_end) - cur) / kPageSize;
      uint64_t off = (cur - r.addr) / kPageSize;
      if (r.kind == static_cast<uint32_t>(PageKind::data))
        kept.push_back({run.owner, cur, take, r.kind, r.depth + 1, r.pos + off});
      else
        kept.push_back({run.owner, cur, take, r.kind, 0, 0});
      cur += take * kPageSize;
      ++it;
    }
    // All or nothing: a refused extent leaves the index as it was.
    for (const PageRun& k : kept) add_run(k);
    stats_.pages_kept += run.npages;
  }

  void record_pages(const PageExtent& run, PageKind kind) override {
    check_open();
    if (kind != PageKind::zero && kind != PageKind::cow_parent)
      fail(Errc::usage,
           "record_pages takes zero or cow_parent pages; data goes through write_pages");
    if (run.npages > 0)
      add_run({run.owner, run.addr, run.npages, static_cast<uint32_t>(kind), 0, 0});
  }

  void forget_pages(const PageExtent& run) override {
    check_open();
    if (run.npages > 0) add_run({run.owner, run.addr, run.npages, kForgotten, 0, 0});
  }

  const std::vector<PageRun>& parent_index() const override { return parent_index_; }
  const WriteStats& stats() const override { return stats_; }

  std::string commit(schema::CheckpointMeta meta) override {
    check_open();
    std::vector<PageRun> index = finish_index();
    if (keep_identity_.empty())
      fill_identity(meta.info);
    else
      adopt_identity(meta.info);
    merge_stats(meta.stats, index);
    committed_ = true;  // whatever happens next, this writer is used up
    hashes_.resize(chunks_.size() * kChunkPages);
    logger()->debug("{}: writing the tables, fsync and rename", display_path(backend_, name_));
    out_->commit(meta, index, chunks_, hashes_);
    logger()->debug("{}: in place; moving latest", display_path(backend_, name_));
    backend_.set_latest(name_);
    logger()->info("committed {}: {} pages in, {} chunks, {} bytes stored",
                   display_path(backend_, name_), stats_.pages_in, stats_.chunks,
                   stats_.bytes_stored);
    return name_;
  }

 private:
  void check_open() const {
    if (committed_)
      fail(Errc::internal, display_path(backend_, name_) + ": writer already committed");
    if (failed_)
      fail(Errc::internal, display_path(backend_, name_) + ": an earlier write_pages failed");
  }

  void validate(const PageBatch& b) const {
    uint64_t sum = 0;
    for (const auto& e : b.extents) sum += e.npages;
    if (b.npages > kChunkPages || sum != b.npages)
      fail(Errc::internal, "page source filled a batch inconsistently (" +
                               std::to_string(b.npages) + " pages, extents cover " +
                               std::to_string(sum) + ")");
  }

  // Stage 2: zero pages, pages the parent holds the same, and the data pages compacted to the
  // front of the token's buffer with their hashes.
  void classify(Token& t) const {
    std::byte* in = t.chunk.in.get();
    uint64_t nz = 0, i = 0;
    for (const PageExtent& e : t.batch.extents) {
      for (uint64_t j = 0; j < e.npages; ++j, ++i) {
        std::byte* page = in + i * kPageSize;
        if (is_zero_page(page)) {
          t.slot[i] = Slot::zero;
          continue;
        }
        XXH128_hash_t h = XXH3_128bits(page, kPageSize);
        schema::PageHash ph{h.low64, h.high64};
        if (const KnownPage* k = known(e.owner, e.addr + j * kPageSize); k && k->hash.lo == ph.lo &&
                                                                        k->hash.hi == ph.hi) {
          t.slot[i] = Slot::same;
          t.same[i] = k;
          continue;
        }
        t.slot[i] = Slot::data;
        t.chunk.hash[nz] = ph;
        // Compact: slot nz < i holds a page already accounted for, so the copy never overlaps.
        if (nz != i) std::memcpy(in + nz * kPageSize, page, kPageSize);
        ++nz;
      }
    }
    t.chunk.nonzero = nz;
  }

  // A batch with at least this many data pages is stored as a chunk of its own; fewer are
  // copied into the open pack (a copy of under half a chunk, against a chunk of mostly padding
  // and a row of page hashes per chunk in the file).
  static constexpr uint64_t kOwnChunkPages = kChunkPages / 2;

  // Stage 3: where each data page of the batch goes (its own chunk, or the open pack and, when
  // that fills, a new one), the chunk numbers in the order the chunks will be stored, and the
  // batch's index runs.
  void place_pages(Token& t) {
    t.pack = nullptr;
    t.own = false;
    const uint64_t nz = t.chunk.nonzero;
    if (nz >= kOwnChunkPages) {
      t.pack = std::exchange(open_pack_, nullptr);  // stored first: its number is lower
      t.chunk.number = next_chunk_++;
      t.own = true;
      for (uint64_t k = 0; k < nz; ++k) t.pos[k] = t.chunk.number * kChunkPages + k;
    } else {
      for (uint64_t k = 0; k < nz;) {
        if (!open_pack_) {
          open_pack_ = packs_->take_waiting();
          open_pack_->nonzero = 0;
          open_pack_->number = next_chunk_++;
        }
        Chunk& p = *open_pack_;
        const uint64_t n = std::min(nz - k, kChunkPages - p.nonzero);
        std::memcpy(p.in.get() + p.nonzero * kPageSize, t.chunk.in.get() + k * kPageSize,
                    n * kPageSize);
        std::copy_n(t.chunk.hash.begin() + static_cast<long>(k), n,
                    p.hash.begin() + static_cast<long>(p.nonzero));
        for (uint64_t m = 0; m < n; ++m) t.pos[k + m] = p.number * kChunkPages + p.nonzero + m;
        p.nonzero += n;
        k += n;
        if (p.nonzero == kChunkPages) {
          // A batch of fewer than half a chunk fills at most one pack.
          t.pack = open_pack_;
          open_pack_ = nullptr;
        }
      }
    }
    uint64_t i = 0, slot = 0, zero = 0, same = 0;
    for (const PageExtent& e : t.batch.extents) {
      for (uint64_t j = 0; j < e.npages; ++j, ++i) {
        uint64_t addr = e.addr + j * kPageSize;
        switch (t.slot[i]) {
          case Slot::zero:
            add_run({e.owner, addr, 1, static_cast<uint32_t>(PageKind::zero), 0, 0});
            ++zero;
            break;
          case Slot::same:
            add_run({e.owner, addr, 1, static_cast<uint32_t>(PageKind::data),
                     t.same[i]->depth + 1, t.same[i]->pos});
            ++same;
            break;
          case Slot::data:
            add_run({e.owner, addr, 1, static_cast<uint32_t>(PageKind::data), 0, t.pos[slot++]});
            break;
        }
      }
    }
    stats_.pages_in += t.batch.npages;
    stats_.pages_zero += zero;
    stats_.pages_same += same;
    stats_.pages_kept += same;
    stats_.pages_stored += nz;
  }

  // Stage 4: zero the tail, checksum, and encode as a sample says pays.
  void encode_chunk(Chunk& t) const {
    std::byte* in = t.in.get();
    const uint64_t nz = t.nonzero;
    // Rows past the data are zero, so the chunk (and its checksum) is the same whoever reads it.
    std::memset(in + nz * kPageSize, 0, (kChunkPages - nz) * kPageSize);
    t.record.checksum = chunk_checksum(in);
    t.record.npages = static_cast<uint32_t>(nz);
    using schema::ChunkEncoding;
    const Sampled choice = sample_encoding(t);
    if (choice == Sampled::raw) {
      // The sample did not shrink either way: compressing the chunk would cost the most CPU of
      // the whole write for next to nothing.
      t.encoding = ChunkEncoding::raw;
      t.stored = kChunkBytes;
      t.record.stored_bytes = static_cast<uint32_t>(t.stored);
      t.record.compressed = static_cast<uint32_t>(t.encoding);
      return;
    }
    const bool shuffle = choice == Sampled::shuffle_lz4;
    if (shuffle) shuffle::shuffle8(in, t.shuffled.get(), kChunkBytes);
    size_t size = lz4::encode(shuffle ? t.shuffled.get() : in, kChunkBytes, kChunkBytes,
                              t.out.get(), tuning_.lz4_acceleration);
    t.encoding = size >= kChunkBytes ? ChunkEncoding::raw
                 : shuffle           ? ChunkEncoding::shuffle_lz4
                                     : ChunkEncoding::lz4;
    t.stored = t.encoding == ChunkEncoding::raw ? kChunkBytes : size;
    t.record.stored_bytes = static_cast<uint32_t>(t.stored);
    t.record.compressed = static_cast<uint32_t>(t.encoding);
  }

  // How to encode the chunk, decided on a sample of its data pages compressed both ways (a few
  // percent of the work of compressing the chunk). Byte-shuffling before LZ4: numeric arrays
  // shrink far more shuffled, text and code less; a tie goes to shuffling. Neither, when the
  // sample shrinks by less than 1/kRawBelow either way (random bytes, data compressed or
  // encrypted already): the chunk is stored raw without compressing it. The sample spreads over
  // the chunk, so a chunk of mixed content is stored raw only when every sampled page is
  // incompressible.
  enum class Sampled { shuffle_lz4, lz4, raw };
  static constexpr size_t kRawBelow = 32;
  Sampled sample_encoding(Chunk& t) const {
    const uint64_t pages = std::min<uint64_t>(kSamplePages, t.nonzero);
    const size_t bytes = pages * kPageSize;
    std::byte* sample = t.shuffled.get();  // free until the chunk itself is shuffled
    std::byte* shuffled = sample + bytes;
    // Spread over the chunk, off a power-of-two stride (so that pages alternating in kind, as
    // arrays of records can, are not all sampled from one kind).
    for (uint64_t k = 0; k < pages; ++k) {
      const uint64_t at = std::min(t.nonzero - 1, k * t.nonzero / pages + k);
      std::memcpy(sample + k * kPageSize, t.in.get() + at * kPageSize, kPageSize);
    }
    shuffle::shuffle8(sample, shuffled, bytes);
    const int accel = tuning_.lz4_acceleration;
    size_t plain = lz4::encode(sample, bytes, bytes, t.out.get(), accel);
    size_t with = lz4::encode(shuffled, bytes, bytes, t.out.get(), accel);
    const size_t best = std::min(plain, with);
    if (best + bytes / kRawBelow >= bytes) return Sampled::raw;
    return with <= plain ? Sampled::shuffle_lz4 : Sampled::lz4;
  }

  // Stage 5: the chunk's record and page hashes, in number order (written afterwards by
  // ChunkWrites).
  void record_chunk(const Chunk& c) {
    if (c.number != chunks_.size())
      fail(Errc::internal, "chunk " + std::to_string(c.number) + " stored out of order");
    chunks_.push_back(c.record);
    hashes_.resize((c.number + 1) * kChunkPages);
    std::copy(c.hash.begin(), c.hash.begin() + static_cast<long>(c.nonzero),
              hashes_.begin() + static_cast<long>(c.number * kChunkPages));
    stats_.chunks++;
    if (c.encoding == schema::ChunkEncoding::raw) stats_.chunks_raw++;
    if (c.encoding == schema::ChunkEncoding::shuffle_lz4) stats_.chunks_shuffled++;
    stats_.bytes_stored += c.stored;
  }

  // The container writes of one write_pages, on a thread of their own: a pipeline stage that
  // waits for the disk holds one of TBB's workers (as many as cores), and on two cores the reads
  // and the compression were then left one. Chunks are written in the order pushed; a failed
  // write is kept, the tokens after it given back unwritten, and thrown by the next check() or by
  // finish(). The destructor (a pipeline that threw) waits for the thread too: the tokens and
  // the container must outlive it.
  class ChunkWrites {
   public:
    explicit ChunkWrites(PipelineWriter& w) : w_(w), thread_([this] { run(); }) {}
    ~ChunkWrites() { stop(); }
    ChunkWrites(const ChunkWrites&) = delete;
    ChunkWrites& operator=(const ChunkWrites&) = delete;

    // Writes chunk `c`, then gives back `owner` (the token whose own chunk it is) or, without
    // one, the pack `c` to its pool.
    void push(Chunk* c, Token* owner) {
      {
        std::lock_guard lock(mu_);
        queue_.push_back({c, owner});
      }
      cv_.notify_one();
    }
    void check() {
      std::lock_guard lock(mu_);
      if (error_) std::rethrow_exception(error_);
    }
    void finish() {
      stop();
      if (error_) std::rethrow_exception(error_);
    }

   private:
    void stop() {
      {
        std::lock_guard lock(mu_);
        if (stopping_) return;
        stopping_ = true;
      }
      cv_.notify_one();
      thread_.join();
    }
    void run() {
      for (;;) {
        std::pair<Chunk*, Token*> item;
        {
          std::unique_lock lock(mu_);
          cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
          if (queue_.empty()) return;  // stopping, and everything written
          item = queue_.front();
          queue_.pop_front();
        }
        Chunk* c = item.first;
        bool failed;
        {
          std::lock_guard lock(mu_);
          failed = error_ != nullptr;
        }
        if (!failed) {
          try {
            w_.out_->write_chunk(c->number, c->stored_bytes(), c->stored, c->encoding);
          } catch (...) {
            std::lock_guard lock(mu_);
            error_ = std::current_exception();
          }
        }
        if (item.second)
          w_.pool_->give(item.second);
        else
          w_.packs_->give(c);
      }
    }

    PipelineWriter& w_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::pair<Chunk*, Token*>> queue_;
    bool stopping_ = false;
    std::exception_ptr error_;
    std::thread thread_;  // last: started once everything above is ready
  };

  // The parent chain's data pages by key with their content hashes, for classify() to look up.
  void index_known_pages() {
    for (const PageRun& r : parent_index_) {
      if (r.kind != static_cast<uint32_t>(PageKind::data)) continue;
      const auto& hashes = parent_->hashes(r.depth);
      for (uint64_t i = 0; i < r.npages; ++i) {
        uint64_t pos = r.pos + i;
        if (pos >= hashes.size()) break;  // written without hashes: nothing to compare with
        known_.push_back({r.owner, r.addr + i * kPageSize, hashes[pos], r.depth, pos});
      }
    }
    // parent_index_ is sorted by (owner, addr), so known_ is too.
  }

  const KnownPage* known(uint64_t owner, uint64_t addr) const {
    auto it = std::lower_bound(known_.begin(), known_.end(), std::make_pair(owner, addr),
                               [](const KnownPage& k, const std::pair<uint64_t, uint64_t>& key) {
                                 return k.owner != key.first ? k.owner < key.first
                                                             : k.addr < key.second;
                               });
    return it != known_.end() && it->owner == owner && it->addr == addr ? &*it : nullptr;
  }

  void add_run(const PageRun& r) {
    if (!runs_.empty() && same_kind_and_contiguous(runs_.back(), r)) {
      runs_.back().npages += r.npages;
      return;
    }
    runs_.push_back(r);
  }

  // Sorted by (owner, addr), adjacent compatible runs merged. A page given again replaces what
  // was given before (a pre-copy stores pages while the job runs, then again those written
  // meanwhile), and forgotten pages are dropped: the runs are walked newest first and each keeps
  // only the pages no newer run covers. (add_run merges only consecutive runs, so a run's place
  // in runs_ orders all its pages.)
  std::vector<PageRun> finish_index() {
    std::map<uint64_t, std::map<uint64_t, uint64_t>> covered;  // owner -> disjoint [start, end)
    std::vector<PageRun> pieces;
    pieces.reserve(runs_.size());
    for (size_t i = runs_.size(); i-- > 0;) {
      const PageRun& r = runs_[i];
      if (r.npages == 0) continue;
      const uint64_t end = r.addr + r.npages * kPageSize;
      auto& cov = covered[r.owner];
      auto emit = [&](uint64_t a, uint64_t b) {
        if (a >= b || r.kind == kForgotten) return;
        PageRun piece = r;
        piece.addr = a;
        piece.npages = (b - a) / kPageSize;
        if (r.kind == static_cast<uint32_t>(PageKind::data)) piece.pos += (a - r.addr) / kPageSize;
        pieces.push_back(piece);
      };
      auto it = cov.upper_bound(r.addr);
      if (it != cov.begin() && std::prev(it)->second > r.addr) --it;
      uint64_t cur = r.addr;
      for (; cur < end && it != cov.end() && it->first < end; ++it) {
        emit(cur, it->first);
        cur = std::max(cur, it->second);
      }
      emit(cur, end);
      // Now [r.addr, end) is covered too.
      uint64_t s = r.addr, e = end;
      it = cov.lower_bound(s);
      if (it != cov.begin() && std::prev(it)->second >= s) --it;
      while (it != cov.end() && it->first <= e) {
        s = std::min(s, it->first);
        e = std::max(e, it->second);
        it = cov.erase(it);
      }
      cov.emplace(s, e);
    }
    std::sort(pieces.begin(), pieces.end(), [](const PageRun& a, const PageRun& b) {
      return a.owner != b.owner ? a.owner < b.owner : a.addr < b.addr;
    });
    std::vector<PageRun> out;
    out.reserve(pieces.size());
    for (const PageRun& r : pieces) {
      if (!out.empty() && same_kind_and_contiguous(out.back(), r)) {
        out.back().npages += r.npages;
        continue;
      }
      out.push_back(r);
    }
    return out;
  }

  // A compacted checkpoint is the same checkpoint, whole: it keeps its name, uuid, sequence and
  // time (so trackers and references to it stay valid) and loses its parent.
  void adopt_identity(schema::ImageInfo& info) const {
    info.uuid = keep_identity_;
    info.parent_uuid.clear();
    info.parent_file.clear();
    info.sequence = sequence_;
    info.complete = 1;
  }

  void fill_identity(schema::ImageInfo& info) const {
    info.format = schema::kFormatName;
    info.format_version = schema::kFormatVersion;
    info.uuid = uuid_;
    info.parent_uuid = parent_uuid();
    info.parent_file = parent_ ? parent_->name() : "";
    info.sequence = sequence_;
    info.crest_version = CREST_VERSION;
    info.complete = 1;
    if (info.created_ns == 0) info.created_ns = now_ns(CLOCK_REALTIME);
    utsname u{};
    if (::uname(&u) == 0) {
      if (info.host.empty()) info.host = u.nodename;
      if (info.kernel_release.empty()) info.kernel_release = u.release;
      if (info.kernel_build.empty()) info.kernel_build = u.version;
      if (info.machine.empty()) info.machine = u.machine;
    }
  }

  void merge_stats(schema::Stats& s, const std::vector<PageRun>& index) const {
    uint64_t present = 0;
    for (const PageRun& r : index) present += r.npages;
    auto set = [&s](const char* k, uint64_t v) { s[k] = static_cast<int64_t>(v); };
    set("pages_in", stats_.pages_in);
    set("pages_zero", stats_.pages_zero);
    set("pages_stored", stats_.pages_stored);
    set("pages_kept", stats_.pages_kept);
    set("pages_same", stats_.pages_same);
    set("pages_present", present);
    set("chunks", stats_.chunks);
    set("chunks_raw", stats_.chunks_raw);
    set("chunks_shuffled", stats_.chunks_shuffled);
    set("bytes_stored", stats_.bytes_stored);
    set("bytes_in", stats_.pages_in * kPageSize);
    set("index_runs", index.size());
    s["write_ns"] = stats_.pipeline_ns;
    // Where the pipeline's time went, per stage (compress summed over its parallel workers):
    // the page source's reads, zero detection + hashing + shuffle + LZ4, the container writes.
    s["write_fill_ns"] = fill_ns_.load();
    s["write_compress_ns"] = compress_ns_.load();
    s["write_store_ns"] = store_ns_.load();
    s["writer_open_ns"] = now_ns(CLOCK_MONOTONIC) - started_ns_;
  }

  // Destroyed last: the lock is held until the container (and its .tmp) is gone.
  std::shared_ptr<void> lock_;
  Backend& backend_;
  std::string name_;
  uint64_t sequence_;
  std::string uuid_ = new_uuid();
  std::string keep_identity_;  // compaction: the uuid of the checkpoint being rewritten whole
  std::vector<KnownPage> known_;
  std::vector<schema::PageHash> hashes_;
  std::unique_ptr<CheckpointReader> parent_;
  std::vector<PageRun> parent_index_;
  WriteTuning tuning_;
  int64_t started_ns_;
  std::unique_ptr<ContainerWriter> out_;

  std::unique_ptr<TokenPool<Token>> pool_;
  std::unique_ptr<TokenPool<Chunk>> packs_;
  Chunk* open_pack_ = nullptr;  // being filled by stage 3
  uint64_t next_chunk_ = 0;     // the number stage 3 gives the next chunk
  std::atomic<int64_t> fill_ns_{0}, compress_ns_{0}, store_ns_{0};

  std::vector<PageRun> runs_;
  std::vector<schema::ChunkRecord> chunks_;
  WriteStats stats_;
  bool committed_ = false;
  bool failed_ = false;
};

}  // namespace

std::unique_ptr<CheckpointWriter> make_pipeline_writer(Backend& backend, std::shared_ptr<void> lock,
                                                       std::string name, uint64_t sequence,
                                                       std::unique_ptr<CheckpointReader> parent,
                                                       const WriteTuning& tuning,
                                                       const std::string& keep_uuid) {
  auto w = std::make_unique<PipelineWriter>(backend, std::move(lock), std::move(name), sequence,
                                            std::move(parent), tuning);
  w->keep_identity(keep_uuid);
  return w;
}

}  // namespace crest::storage
