// Compaction: an incremental checkpoint rewritten whole, in place, and the ancestors it no
// longer needs removed.
//
// The chain is read newest-first (parallel decompression) and written again through the normal
// write pipeline into NAME.tmp, which is renamed over NAME: the checkpoint keeps its name, uuid
// and sequence, so references to it (and a tracker armed after it) stay valid. Only after that
// rename are the ancestors removed, each only if no other checkpoint still depends on it. A crash
// at any point leaves either the old chain or the new full file; at worst an ancestor nobody
// needs, which the next compaction or retention removes.
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "core/util/error.h"
#include "core/util/log.h"
#include "storage/container.h"
#include "storage/image_store.h"
#include "storage/pipeline.h"

namespace crest::storage {
namespace {

using schema::kChunkPages;
using schema::kPageSize;

// Turns the reader's pushed pages into the writer's pulled batches through a small bounded
// queue, so that memory stays a few chunks whatever the size of the chain.
class Bridge : public PageSink, public PageSource {
 public:
  // Reader side (its own thread).
  void on_pages(const PageExtent& run, schema::PageKind kind, const std::byte* data) override {
    if (kind != schema::PageKind::data) {
      special_.push_back({run, kind});
      return;
    }
    for (uint64_t done = 0; done < run.npages;) {
      if (!filling_) filling_ = std::make_unique<Batch>();
      uint64_t n = std::min(run.npages - done, kChunkPages - filling_->npages);
      std::memcpy(filling_->data.data() + filling_->npages * kPageSize, data + done * kPageSize,
                  n * kPageSize);
      filling_->add({run.owner, run.addr + done * kPageSize, n});
      done += n;
      if (filling_->npages == kChunkPages) push(std::move(filling_));
    }
  }
  void finish() {
    if (filling_ && filling_->npages) push(std::move(filling_));
    std::lock_guard lock(mutex_);
    done_ = true;
    cv_.notify_all();
  }
  void abort() {
    std::lock_guard lock(mutex_);
    aborted_ = true;
    cv_.notify_all();
  }

  // Writer side.
  bool fill(PageBatch& batch) override {
    std::unique_ptr<Batch> b;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return !queue_.empty() || done_ || aborted_; });
      if (aborted_ || queue_.empty()) return false;
      b = std::move(queue_.front());
      queue_.pop_front();
      cv_.notify_all();
    }
    std::memcpy(batch.data, b->data.data(), b->npages * kPageSize);
    for (const auto& e : b->extents) batch.add(e.owner, e.addr, e.npages);
    return true;
  }

  const std::vector<std::pair<PageExtent, schema::PageKind>>& special() const { return special_; }

 private:
  struct Batch {
    std::vector<std::byte> data = std::vector<std::byte>(schema::kChunkBytes);
    std::vector<PageExtent> extents;
    uint64_t npages = 0;
    void add(const PageExtent& e) {
      if (!extents.empty() && extents.back().owner == e.owner &&
          extents.back().addr + extents.back().npages * kPageSize == e.addr)
        extents.back().npages += e.npages;
      else
        extents.push_back(e);
      npages += e.npages;
    }
  };
  void push(std::unique_ptr<Batch> b) {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return queue_.size() < 4 || aborted_; });
    if (aborted_) fail(Errc::internal, "compaction aborted");
    queue_.push_back(std::move(b));
    cv_.notify_all();
  }

  std::unique_ptr<Batch> filling_;
  std::vector<std::pair<PageExtent, schema::PageKind>> special_;
  std::deque<std::unique_ptr<Batch>> queue_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false, aborted_ = false;
};

}  // namespace

CompactResult ImageStore::compact(const std::string& ref, const WriteTuning& tuning,
                                  bool remove_ancestors) {
  CompactResult result;
  std::shared_ptr<void> lock = backend_->lock_for_writing();
  std::string name = resolve(ref);
  auto reader = make_chain_reader(*backend_, name);
  auto chain = reader->chain();
  result.checkpoint = name;
  if (chain.size() == 1) return result;  // already whole

  auto writer = make_pipeline_writer(*backend_, lock, name, reader->info().sequence, nullptr,
                                     tuning, reader->info().uuid);
  log::get("storage.compact")->debug("{}: rewriting a chain of {} files", display_path(*backend_, name),
                                     chain.size());
  Bridge bridge;
  std::exception_ptr read_error;
  std::thread producer([&] {
    try {
      reader->read_pages({}, bridge);
      bridge.finish();
    } catch (...) {
      read_error = std::current_exception();
      bridge.abort();
    }
  });
  try {
    writer->write_pages(bridge);
  } catch (...) {
    bridge.abort();
    producer.join();
    throw;
  }
  producer.join();
  if (read_error) std::rethrow_exception(read_error);
  for (const auto& [run, kind] : bridge.special()) writer->record_pages(run, kind);
  schema::CheckpointMeta meta = reader->meta();
  meta.stats["compacted_files"] = static_cast<int64_t>(chain.size());
  reader.reset();
  writer->commit(std::move(meta));
  writer.reset();

  log::get("storage.compact")->debug("{}: committed; removing ancestors", display_path(*backend_, name));
  // Ancestors, newest first: each goes once nothing depends on it any more.
  for (size_t i = 1; remove_ancestors && i < chain.size(); ++i) {
    bool needed = false;
    for (const CheckpointEntry& e : list())
      if (e.readable && e.parent_file == chain[i] && e.name != chain[i]) needed = true;
    if (needed) continue;
    backend_->remove(chain[i]);
    result.removed.push_back(chain[i]);
  }
  result.files_before = chain.size();
  log::get("storage.compact")
      ->info("{}: compacted a chain of {} files; removed {}", display_path(*backend_, name),
             chain.size(), result.removed.size());
  return result;
}

}  // namespace crest::storage
