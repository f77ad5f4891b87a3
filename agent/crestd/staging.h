// Node-local staging: a job's checkpoints are committed on node-local storage (tmpfs or a local
// disk) and copied to its images directory on shared storage by crestd in the background.
//
// The two directories hold the same checkpoint files under the same names: a file is copied as
// it is (its parent is named by file name and uuid, so the chain holds on either side). On the
// shared side a copy is written as NAME.tmp under the directory's writer lock (the `.lock` the
// store's writers flock), fsynced, renamed into place and the directory fsynced: exactly how a
// checkpoint is committed there, so a half-copied file is never listed as a checkpoint, and a
// copy interrupted by a crash is removed by the next writer (or the next flush) like any
// abandoned checkpoint. A checkpoint is flushed only after its parent, and it is "safe" once its
// shared copy is committed and its chain there verifies (every chunk checksum).
//
// What remains to flush is not remembered anywhere: it is what the local directory holds that
// the shared one does not (pending_flushes), so a crestd that restarts, or died in the middle of
// a copy, simply carries on.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "storage/image_store.h"

namespace crest::agent {

// The local checkpoints still to be copied, in the order to copy them (by sequence):
//   - a local checkpoint the shared side does not have, newer than every checkpoint there (an
//     older one was superseded by a checkpoint written to shared storage directly, or removed
//     there by retention), and
//   - one the shared side has under the same name and uuid but with another parent (compacted
//     locally into a full checkpoint since it was copied).
// Unreadable local files are skipped. A name the shared side holds with another uuid is a
// conflict: reported in `conflict`, never overwritten.
struct PendingFlushes {
  std::vector<storage::CheckpointEntry> items;
  std::string conflict;
};
PendingFlushes pending_flushes(const std::vector<storage::CheckpointEntry>& local,
                               const std::vector<storage::CheckpointEntry>& shared);

struct FlushResult {
  uint64_t bytes = 0;
  double copy_ms = 0;    // the copy, throttled, with its fsync and rename
  double verify_ms = 0;  // the chain verified on shared storage
};

// Copies the committed checkpoint `name` from `local_dir` to `shared_dir` (paths crestd may use,
// e.g. pinned_path()s), at most bytes_per_s (0: unlimited), then verifies the chain of the copy
// on shared storage through `shared`. The copy goes through NAME.tmp under shared_dir/.lock
// (Errc::busy if another writer holds it); abandoned *.tmp files found under the lock are
// removed. Its parent must be on shared storage already (Errc::missing_ancestor otherwise). A
// copy that does not verify is removed again (Errc::corrupt). `latest` on shared storage is moved
// to it when it is the newest there. `stop` set: the copy is abandoned (Errc::busy), its .tmp
// removed.
FlushResult flush_checkpoint(storage::ImageStore& shared, const std::string& local_dir,
                             const std::string& shared_dir, const std::string& name,
                             uint64_t bytes_per_s, const std::atomic<bool>& stop);

// Removes the local copies no longer needed: those on shared storage (same name, uuid and parent)
// or superseded there (older than its newest, and not there), that are neither among the newest
// `keep` local checkpoints at least as new as shared storage's newest nor an ancestor of one.
// keep 0: every copied one goes. Returns what was removed.
std::vector<std::string> drop_flushed_local(storage::ImageStore& local,
                                            const std::vector<storage::CheckpointEntry>& shared,
                                            unsigned keep);

// The highest sequence number of the entries (0 when none).
uint64_t max_sequence(const std::vector<storage::CheckpointEntry>& entries);

// Points dir/latest at `name` (atomically: a link made beside it and renamed over it).
void point_latest(const std::string& dir, const std::string& name);

}  // namespace crest::agent
