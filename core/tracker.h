// Dirty-page tracking between checkpoints of one job.
//
// A Tracker is the state a long-lived owner (crestd, for each job it checkpoints periodically)
// keeps from one checkpoint to the next, so that the next one stores only the pages written in
// between. Kinds, best first (chosen at runtime by `automatic`):
//   uffd-wp     userfaultfd write-protect in async mode, read back with PAGEMAP_SCAN (Linux 6.7)
//   soft-dirty  the kernel's soft-dirty bits (kernels built with CONFIG_MEM_SOFT_DIRTY)
//   hash        per-page content hashes of the previous checkpoint (always works, reads all pages)
// A tracker follows one tree; pass it to every dump of that tree (DumpOptions::tracker) together
// with a writer whose parent is the previous checkpoint. Destroying it disarms the tracking.
#pragma once

#include <memory>
#include <string>

namespace crest {

enum class TrackerKind { automatic, uffd_wp, soft_dirty, hash };

class Tracker {
 public:
  static std::unique_ptr<Tracker> create(TrackerKind kind = TrackerKind::automatic);
  static TrackerKind best_available();
  static const char* kind_name(TrackerKind kind);

  virtual ~Tracker() = default;
  virtual TrackerKind kind() const = 0;
  const char* name() const { return kind_name(kind()); }
  // uuid of the checkpoint the tracker is armed after ("" before the first one).
  virtual const std::string& last_checkpoint() const = 0;
};

}  // namespace crest
