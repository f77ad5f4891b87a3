// ImageStore: a place that holds the checkpoints of one job — an images directory of HDF5 files
// (the default) or memory (for tests). It names checkpoints, serializes writers, resolves
// incremental chains, and verifies.
//
// Directory layout:
//   ckpt-000001.h5     one file per committed checkpoint, mode 0600, sequence in the name
//   ckpt-000002.h5     an incremental one names its parent (file name + uuid) in its attributes
//   latest -> ckpt-000002.h5   symlink to the newest committed checkpoint, moved after each commit
//   .lock              flock()ed by the one writer at a time
//   ckpt-000003.h5.tmp a checkpoint being written (or abandoned by a crash; removed by the next
//                      writer, never read)
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "storage/store.h"

namespace crest::storage {

class Backend;  // storage/container.h

struct CheckpointEntry {
  std::string name;  // ckpt-000003.h5
  uint64_t sequence = 0;
  std::string uuid;
  std::string parent_uuid;
  std::string parent_file;
  int64_t created_ns = 0;
  bool readable = false;  // false: the file exists but cannot be opened as a complete checkpoint
  std::string error;      // why, when not readable ("kind: message")
};

struct WriteTuning {
  unsigned chunks_in_flight = 0;  // 0: 2 per hardware thread + 2
  int lz4_acceleration = 1;       // LZ4_compress_fast's acceleration
  // The new checkpoint's sequence number is at least this (0: one past the directory's newest).
  // A directory whose checkpoints are copied elsewhere (crestd's node-local staging) numbers on
  // past what the other side holds, so that names never collide there.
  uint64_t min_sequence = 0;
};

struct VerifyReport {
  struct File {
    std::string name;
    uint64_t chunks = 0;
    uint64_t chunks_bad = 0;
    uint64_t bytes_stored = 0;
  };
  std::vector<File> files;          // the chain, newest first
  std::vector<std::string> errors;  // one line each, naming file and problem
  bool ok() const { return errors.empty(); }
};

struct CompactResult {
  std::string checkpoint;            // the compacted checkpoint (same name as before)
  size_t files_before = 1;           // files of its chain before
  std::vector<std::string> removed;  // ancestors removed
};

class ImageStore {
 public:
  // An images directory. With create, a missing directory is made (mode 0700).
  static std::unique_ptr<ImageStore> open_directory(const std::string& dir, bool create = false);
  // A store in memory, for tests: same semantics, nothing on disk.
  static std::unique_ptr<ImageStore> in_memory();

  explicit ImageStore(std::unique_ptr<Backend> backend);
  ~ImageStore();

  const std::string& location() const;

  // Every checkpoint file, oldest first, readable or not.
  std::vector<CheckpointEntry> list();
  // The newest complete, readable checkpoint; nullopt when there is none.
  std::optional<CheckpointEntry> newest();

  // Starts a checkpoint. With a parent (a reference as for open()), it is incremental: pages can
  // be kept in the parent's chain. Takes the directory's writer lock until the writer is gone
  // (Errc::busy if another writer holds it).
  std::unique_ptr<CheckpointWriter> begin(const std::string& parent = "",
                                          const WriteTuning& tuning = {});

  // Opens a checkpoint and its whole chain. ref: a file name, a sequence number ("3"), a uuid or
  // its prefix, or "latest"/"" for the newest complete one. Throws a named Error when the file or
  // an ancestor is missing, incomplete, corrupt, of a newer format, or not a crest image.
  std::unique_ptr<CheckpointReader> open(const std::string& ref = "latest");

  // Checks every chunk checksum of the checkpoint and its ancestors, and that the chain is whole.
  // Never throws for a bad image: problems go into the report.
  VerifyReport verify(const std::string& ref = "latest");

  // Rewrites an incremental checkpoint as a full one in place (same name, uuid and sequence),
  // then removes the ancestors nothing else depends on any more (unless remove_ancestors is
  // false: a caller with a retention policy of its own then decides). Atomic: the old files go
  // only after the new one is committed. A full checkpoint is left as it is.
  CompactResult compact(const std::string& ref = "latest", const WriteTuning& tuning = {},
                        bool remove_ancestors = true);

  // Removes one checkpoint file. Refuses (Errc::refused) if another checkpoint depends on it.
  void remove(const std::string& name);

 private:
  std::string resolve(const std::string& ref);
  std::unique_ptr<Backend> backend_;
  // list() remembers what it read of each container, by the container's stamp: an agent lists
  // a job's directory after every checkpoint, and only new files need opening.
  std::mutex list_mu_;
  std::map<std::string, std::pair<std::string, CheckpointEntry>> listed_;
};

}  // namespace crest::storage
