// The storage interface the engine writes checkpoints through and restores them from.
//
// core/ sees only these abstract types (no HDF5 here): a CheckpointWriter takes page batches and
// the metadata of one checkpoint and commits it atomically; a CheckpointReader gives back the
// metadata and streams the pages of a whole incremental chain. storage/image_store.h makes them,
// over an HDF5 images directory or an in-memory store for tests.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "storage/schema.h"

namespace crest::storage {

// A run of pages of one owner, handed in by a PageSource or out to a PageSink.
struct PageExtent {
  uint64_t owner = 0;
  uint64_t addr = 0;
  uint64_t npages = 0;
};

// One unit of work of the write pipeline: up to kChunkPages pages and their bytes.
struct PageBatch {
  std::vector<PageExtent> extents;  // the pages of `data`, in order
  std::byte* data = nullptr;        // room for kChunkPages pages, owned by the pipeline
  uint64_t npages = 0;              // pages filled so far (sum of extents' npages)

  uint64_t room() const { return schema::kChunkPages - npages; }
  std::byte* next_page() const { return data + npages * schema::kPageSize; }
  // Records that `n` pages of `owner` at `addr` were just copied to next_page(). Extends the last
  // extent when the pages continue it. Inline because core/ links only the header-only API.
  void add(uint64_t owner, uint64_t addr, uint64_t n) {
    if (!extents.empty()) {
      PageExtent& last = extents.back();
      if (last.owner == owner && last.addr + last.npages * schema::kPageSize == addr) {
        last.npages += n;
        npages += n;
        return;
      }
    }
    extents.push_back({owner, addr, n});
    npages += n;
  }
};

// Supplies the pages to store. fill() is called from one thread at a time, in order; it adds up
// to batch.room() pages and returns false once it has nothing more (the batch is then ignored).
class PageSource {
 public:
  virtual ~PageSource() = default;
  virtual bool fill(PageBatch& batch) = 0;
};

// Receives pages read back. `data` holds run.npages pages for data runs and is null for zero and
// cow_parent runs. Calls come from one thread at a time (unless the sink says it is concurrent);
// a run may arrive in several pieces.
class PageSink {
 public:
  virtual ~PageSink() = default;
  virtual void on_pages(const PageExtent& run, schema::PageKind kind, const std::byte* data) = 0;
  // A sink that may be called from several threads at once (always for different pages) lets
  // the reader deliver each chunk from the thread that decompressed it.
  virtual bool concurrent() const { return false; }
  // Whether the data pages of `run` are wanted at all: chunks nobody wants are not read.
  virtual bool wants(const PageExtent& /*run*/) const { return true; }
};

// What one write pipeline did; merged into the checkpoint's stats on commit.
struct WriteStats {
  uint64_t pages_in = 0;       // pages handed in by sources
  uint64_t pages_zero = 0;     // of those, all-zero pages (recorded, not stored)
  uint64_t pages_stored = 0;   // pages written to this file
  uint64_t pages_kept = 0;     // pages left in an ancestor (incremental)
  uint64_t pages_same = 0;     // of pages_in, unchanged from the parent by content (kept too)
  uint64_t chunks = 0;
  uint64_t chunks_raw = 0;     // chunks that did not shrink and were stored uncompressed
  uint64_t chunks_shuffled = 0;  // chunks byte-shuffled before LZ4
  uint64_t bytes_stored = 0;   // chunk bytes written
  int64_t pipeline_ns = 0;
};

class CheckpointWriter {
 public:
  // Destroying a writer that was not committed discards everything it wrote.
  virtual ~CheckpointWriter() = default;

  // Streams pages through zero detection, checksumming and parallel compression into the page
  // store. May be called several times. A page key (owner, addr) given again, by any of these
  // calls, replaces what was given before (the bytes stay in the file, unreferenced): a pre-copy
  // stores pages while the job runs and then again those it wrote meanwhile.
  // With a parent, a page whose content equals the parent's page at the same key is kept in the
  // parent's chain instead of being stored again.
  virtual void write_pages(PageSource& source) = 0;
  // Drops pages given before: they are not present in this checkpoint after all.
  virtual void forget_pages(const PageExtent& run) = 0;
  // Pages present and unchanged since the parent checkpoint: their bytes stay in the ancestor
  // that holds them. Throws Errc::missing_ancestor if the parent does not have them all.
  virtual void keep_pages(const PageExtent& run) = 0;
  // Present pages whose bytes need no storage: zero pages, or pages shared copy-on-write with
  // the parent process (restored by inheritance).
  virtual void record_pages(const PageExtent& run, schema::PageKind kind) = 0;

  // The uuid this checkpoint will carry once committed, and its parent's ("" for a full one).
  virtual const std::string& uuid() const = 0;
  virtual std::string parent_uuid() const = 0;
  // The parent checkpoint's page index (empty for a full checkpoint), for callers that diff.
  virtual const std::vector<schema::PageRun>& parent_index() const = 0;
  virtual const WriteStats& stats() const = 0;

  // Writes the metadata, marks the checkpoint complete, makes it durable and visible, and moves
  // the directory's latest pointer. Identity fields of meta.info (uuid, parent, sequence) are
  // filled in by the writer. Returns the checkpoint's name. A crash at any point before the
  // return leaves the previous checkpoint intact and the newest.
  virtual std::string commit(schema::CheckpointMeta meta) = 0;
};

class CheckpointReader {
 public:
  virtual ~CheckpointReader() = default;

  virtual const std::string& name() const = 0;  // e.g. ckpt-000003.h5
  virtual const schema::CheckpointMeta& meta() const = 0;
  const schema::ImageInfo& info() const { return meta().info; }
  // The resolved page index of this checkpoint (every present page, sorted by owner, address).
  virtual const std::vector<schema::PageRun>& page_index() const = 0;
  // The runs of page_index() of one owner, bisected (the reader refuses an index out of order).
  std::span<const schema::PageRun> owner_runs(uint64_t owner) const {
    const auto& index = page_index();
    auto first = std::partition_point(index.begin(), index.end(),
                                      [&](const schema::PageRun& r) { return r.owner < owner; });
    auto last = std::partition_point(first, index.end(),
                                     [&](const schema::PageRun& r) { return r.owner == owner; });
    return {first, last};
  }
  virtual const std::vector<schema::ChunkRecord>& chunks() const = 0;
  // Names of the files of the chain, this one first.
  virtual std::vector<std::string> chain() const = 0;
  // Content hashes of the data rows of the chain's file at `depth` (empty if it has none).
  virtual const std::vector<schema::PageHash>& hashes(uint32_t depth) const = 0;

  // Streams every present page of the given owners (all owners if empty) to the sink, reading
  // the chain newest-first as the index says, decompressing in parallel and verifying every
  // chunk's checksum. Throws Errc::corrupt naming the file and chunk on a mismatch.
  virtual void read_pages(const std::vector<uint64_t>& owners, PageSink& sink) = 0;
  // One stored chunk of the chain's file at `depth`, decompressed into `out` (kChunkBytes) and
  // its checksum verified; Errc::corrupt otherwise. Safe to call while read_pages runs in
  // another thread (a lazy restore serves page faults while other processes are restored).
  virtual void read_chunk(uint32_t depth, uint64_t chunk, std::byte* out) = 0;
};

}  // namespace crest::storage
