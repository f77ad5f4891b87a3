// The memory backend: containers live in a map owned by one in-memory ImageStore, with the same
// semantics as the directory backend (names, a writer lock, commit on success only). It lets the
// storage tests, and the engine's tests, run without HDF5 files.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>

#include "core/util/error.h"
#include "storage/container.h"

namespace crest::storage {
namespace {

struct MemoryContainer {
  schema::CheckpointMeta meta;
  std::vector<schema::PageRun> index;
  std::vector<schema::ChunkRecord> chunks;
  std::vector<schema::PageHash> hashes;
  std::vector<std::vector<std::byte>> stored;  // per chunk, as written
  std::vector<schema::ChunkEncoding> encoding;
};

// What one store holds; shared by the backend and the writers and readers it hands out.
struct MemoryState {
  std::mutex mutex;
  std::string location;
  std::map<std::string, std::shared_ptr<const MemoryContainer>> containers;
  std::string latest;
  bool locked = false;
};

class MemoryWriter final : public ContainerWriter {
 public:
  MemoryWriter(std::shared_ptr<MemoryState> state, std::string name)
      : state_(std::move(state)), name_(std::move(name)), c_(std::make_shared<MemoryContainer>()) {}

  void write_chunk(uint64_t index, const std::byte* stored, size_t size,
                   schema::ChunkEncoding encoding) override {
    if (c_->stored.size() <= index) {
      c_->stored.resize(index + 1);
      c_->encoding.resize(index + 1);
    }
    c_->stored[index].assign(stored, stored + size);
    c_->encoding[index] = encoding;
  }

  void commit(const schema::CheckpointMeta& meta, const std::vector<schema::PageRun>& index,
              const std::vector<schema::ChunkRecord>& chunks,
              const std::vector<schema::PageHash>& hashes) override {
    c_->meta = meta;
    c_->meta.info.complete = 1;
    c_->index = index;
    c_->chunks = chunks;
    c_->hashes = hashes;
    c_->stored.resize(chunks.size());
    c_->encoding.resize(chunks.size());
    // Replacing an existing container is how compaction rewrites a checkpoint in place (the
    // directory backend renames over the old file); readers keep the old one alive.
    std::lock_guard lock(state_->mutex);
    state_->containers[name_] = std::move(c_);
  }

 private:
  std::shared_ptr<MemoryState> state_;
  std::string name_;
  std::shared_ptr<MemoryContainer> c_;
};

class MemoryReader final : public ContainerReader {
 public:
  MemoryReader(std::string name, std::string path, std::shared_ptr<const MemoryContainer> c)
      : name_(std::move(name)), path_(std::move(path)), c_(std::move(c)) {}

  const std::string& name() const override { return name_; }
  const schema::CheckpointMeta& meta() const override { return c_->meta; }
  const std::vector<schema::PageRun>& index() const override { return c_->index; }
  const std::vector<schema::ChunkRecord>& chunks() const override { return c_->chunks; }
  const std::vector<schema::PageHash>& hashes() const override { return c_->hashes; }

  void read_chunk(uint64_t index, std::vector<std::byte>& out) override {
    std::string what = path_ + ": chunk " + std::to_string(index);
    if (index >= c_->chunks.size())
      fail(Errc::corrupt, what + " does not exist (the file has " +
                              std::to_string(c_->chunks.size()) + " chunks)");
    const auto& bytes = c_->stored[index];
    if (bytes.empty()) fail(Errc::corrupt, what + " is missing");
    if (bytes.size() != c_->chunks[index].stored_bytes)
      fail(Errc::corrupt, what + ": " + std::to_string(bytes.size()) +
                              " bytes stored, the chunk table says " +
                              std::to_string(c_->chunks[index].stored_bytes));
    if (c_->encoding[index] != c_->chunks[index].encoding())
      fail(Errc::corrupt, what + ": stored with another encoding than the chunk table says");
    out.assign(bytes.begin(), bytes.end());
  }

 private:
  std::string name_;
  std::string path_;
  std::shared_ptr<const MemoryContainer> c_;
};

class MemoryLock {
 public:
  explicit MemoryLock(std::shared_ptr<MemoryState> s) : state_(std::move(s)) {}
  ~MemoryLock() {
    std::lock_guard lock(state_->mutex);
    state_->locked = false;
  }

 private:
  std::shared_ptr<MemoryState> state_;
};

class MemoryBackend final : public Backend {
 public:
  MemoryBackend() : state_(std::make_shared<MemoryState>()) {
    static std::atomic<unsigned> counter{0};
    state_->location = "memory:" + std::to_string(++counter);
  }

  const std::string& location() const override { return state_->location; }

  std::vector<std::string> names() override {
    std::lock_guard lock(state_->mutex);
    std::vector<std::string> out;
    for (const auto& [name, c] : state_->containers) out.push_back(name);
    return out;
  }

  std::unique_ptr<ContainerWriter> create(const std::string& name) override {
    return std::make_unique<MemoryWriter>(state_, name);
  }

  std::unique_ptr<ContainerReader> open(const std::string& name) override {
    std::lock_guard lock(state_->mutex);
    auto it = state_->containers.find(name);
    if (it == state_->containers.end())
      fail(Errc::not_found, state_->location + "/" + name + ": no such checkpoint");
    return std::make_unique<MemoryReader>(name, state_->location + "/" + name, it->second);
  }

  void remove(const std::string& name) override {
    std::lock_guard lock(state_->mutex);
    if (state_->containers.erase(name) == 0)
      fail(Errc::not_found, state_->location + "/" + name + ": no such checkpoint");
    if (state_->latest == name) state_->latest.clear();
  }

  void set_latest(const std::string& name) override {
    std::lock_guard lock(state_->mutex);
    state_->latest = name;
  }

  std::shared_ptr<void> lock_for_writing() override {
    std::lock_guard lock(state_->mutex);
    if (state_->locked) fail(Errc::busy, state_->location + ": another writer is active");
    state_->locked = true;
    return std::make_shared<MemoryLock>(state_);
  }

 private:
  std::shared_ptr<MemoryState> state_;
};

}  // namespace

std::unique_ptr<Backend> make_memory_backend() { return std::make_unique<MemoryBackend>(); }

}  // namespace crest::storage
