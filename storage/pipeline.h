// The page pipelines shared by every backend (internal to storage/): the writer that turns page
// batches into checksummed LZ4 chunks, and the chain reader that resolves an incremental chain
// and streams pages back. image_store.cpp wires them to a Backend.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/util/error.h"
#include "storage/container.h"
#include "storage/image_store.h"
#include "storage/store.h"

namespace crest::storage {

// Tokens (chunks in flight) of a pipeline: the bound on its memory.
unsigned pipeline_tokens(unsigned requested);

// "DIR/NAME" for messages: errors always name the file.
std::string display_path(const Backend& backend, const std::string& name);

// XXH3-64 of one whole uncompressed chunk.
uint64_t chunk_checksum(const std::byte* chunk);

// What decode_chunk needs as scratch: room for the LZ4 output and the unshuffled chunk.
inline constexpr size_t kDecodeScratchBytes = 2 * schema::kChunkBytes;

// Decodes the stored bytes of chunk `index` of `file` into `scratch` (kDecodeScratchBytes),
// checks the checksum and returns the original chunk (in scratch, or the stored bytes themselves
// when raw). Throws Errc::corrupt naming file and chunk.
const std::byte* decode_chunk(const schema::ChunkRecord& rec, const std::vector<std::byte>& stored,
                              std::byte* scratch, const std::string& file, uint64_t index);

// Opens `name` and every ancestor, newest first. Errors name the file; a missing or mismatched
// parent is Errc::missing_ancestor.
std::vector<std::unique_ptr<ContainerReader>> open_chain(Backend& backend, const std::string& name);

std::unique_ptr<CheckpointReader> make_chain_reader(Backend& backend, const std::string& name);

std::unique_ptr<CheckpointWriter> make_pipeline_writer(Backend& backend, std::shared_ptr<void> lock,
                                                       std::string name, uint64_t sequence,
                                                       std::unique_ptr<CheckpointReader> parent,
                                                       const WriteTuning& tuning,
                                                       const std::string& keep_uuid = "");

VerifyReport verify_chain(Backend& backend, const std::string& name);

// The buffers of a pipeline's tokens. A pipeline never has more live tokens than the pool has
// buffers, so take() always finds one; stages 1 and 3 run concurrently, hence the mutex.
template <class T>
class TokenPool {
 public:
  explicit TokenPool(size_t n) {
    for (size_t i = 0; i < n; ++i) all_.push_back(std::make_unique<T>());
    reset();
  }
  size_t size() const { return all_.size(); }
  // Makes every buffer free again (after a pipeline that threw left some taken).
  void reset() {
    free_.clear();
    for (auto& t : all_) free_.push_back(t.get());
  }
  T* take() {
    std::lock_guard lock(mutex_);
    if (free_.empty()) fail(Errc::internal, "pipeline ran out of token buffers");
    T* t = free_.back();
    free_.pop_back();
    return t;
  }
  // Waits for a free buffer: for a pipeline whose buffers are given back by another thread
  // after the pipeline is done with them (the writer's chunk writes).
  T* take_waiting() {
    std::unique_lock lock(mutex_);
    freed_.wait(lock, [this] { return !free_.empty(); });
    T* t = free_.back();
    free_.pop_back();
    return t;
  }
  void give(T* t) {
    {
      std::lock_guard lock(mutex_);
      free_.push_back(t);
    }
    freed_.notify_one();
  }

 private:
  std::vector<std::unique_ptr<T>> all_;
  std::vector<T*> free_;
  std::mutex mutex_;
  std::condition_variable freed_;
};

// A page-aligned buffer that is not zero-filled on allocation.
struct AlignedBuffer {
  explicit AlignedBuffer(size_t size);
  std::byte* get() const { return ptr.get(); }
  struct Free {
    void operator()(std::byte* p) const noexcept;
  };
  std::unique_ptr<std::byte, Free> ptr;
};

}  // namespace crest::storage
