// Backends: where checkpoint files physically live. Internal to storage/.
//
// A backend stores "containers" (one per checkpoint) and knows nothing of chains, compression or
// checksums: the page pipeline (checkpoint_writer.cpp / checkpoint_reader.cpp) does that once for
// every backend. Two backends exist: HDF5 files in a directory (h5_container.cpp) and memory
// (memory_container.cpp) for tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "storage/schema.h"

namespace crest::storage {

// Writes one container. Not thread-safe: the pipeline calls it from its serial stage.
class ContainerWriter {
 public:
  // Destroying an uncommitted writer removes what it wrote (the .tmp file).
  virtual ~ContainerWriter() = default;
  // Stores chunk `index` (rows index*kChunkPages ...) as given: the bytes `encoding` made of it
  // (the raw 1 MiB when raw).
  virtual void write_chunk(uint64_t index, const std::byte* stored, size_t size,
                           schema::ChunkEncoding encoding) = 0;
  // Writes metadata, index and chunk table, then `complete`, makes the file durable, renames it
  // into place, syncs the directory. After this returns the container is committed.
  virtual void commit(const schema::CheckpointMeta& meta, const std::vector<schema::PageRun>& index,
                      const std::vector<schema::ChunkRecord>& chunks,
                      const std::vector<schema::PageHash>& hashes) = 0;
};

// Reads one committed container. Opening validates format name, version and `complete`.
class ContainerReader {
 public:
  virtual ~ContainerReader() = default;
  virtual const std::string& name() const = 0;
  virtual const schema::CheckpointMeta& meta() const = 0;
  virtual const std::vector<schema::PageRun>& index() const = 0;
  virtual const std::vector<schema::ChunkRecord>& chunks() const = 0;
  // Page content hashes by data row; empty for files written without them.
  virtual const std::vector<schema::PageHash>& hashes() const = 0;
  // The stored bytes of chunk `index` (as written by write_chunk) into `out` (resized), after
  // checking that they are stored with the encoding the chunk table gives. Not thread-safe; the
  // pipeline calls it from its serial stage.
  virtual void read_chunk(uint64_t index, std::vector<std::byte>& out) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const std::string& location() const = 0;
  // Names of committed containers (never .tmp ones), any order.
  virtual std::vector<std::string> names() = 0;
  virtual std::unique_ptr<ContainerWriter> create(const std::string& name) = 0;
  virtual std::unique_ptr<ContainerReader> open(const std::string& name) = 0;
  virtual void remove(const std::string& name) = 0;
  // Points `latest` at a committed container (atomically and durably).
  virtual void set_latest(const std::string& name) = 0;
  // Takes the writer lock (Errc::busy if held elsewhere); released when the handle is destroyed.
  // Also removes containers abandoned by a crashed writer.
  virtual std::shared_ptr<void> lock_for_writing() = 0;
  // Something that changes whenever the container `name` is replaced or rewritten (a directory
  // entry's inode, size and mtime), so that what was read from it may be remembered; "" when
  // the backend cannot tell (nothing is then remembered).
  virtual std::string stamp(const std::string& name) {
    (void)name;
    return "";
  }
};

std::unique_ptr<Backend> make_directory_backend(const std::string& dir, bool create);
std::unique_ptr<Backend> make_memory_backend();

}  // namespace crest::storage
