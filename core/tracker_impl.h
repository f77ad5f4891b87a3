// The trackers' side seen by dump.cpp (internal to core/).
#pragma once

#include <sys/types.h>

#include <set>
#include <string>
#include <vector>

#include "core/inject.h"
#include "core/pagemap.h"
#include "core/tracker.h"
#include "storage/schema.h"

namespace crest {

class TrackerImpl : public Tracker {
 public:
  // While the tree is frozen, for one process (host pid) and its private VMAs: the pages written
  // since the tracker was last armed, and arms it again. `fresh` is set when the process has no
  // history with this tracker (its first checkpoint, a new VMA set...): then every page counts
  // as written. VMAs the tracker cannot follow come back whole in the result.
  virtual std::vector<PageRange> written(pid_t pid, Injector& inj,
                                         const std::vector<const schema::VmaRecord*>& vmas,
                                         bool& fresh) = 0;
  // Pre-copy, while the process runs (no injection): the pages written since the tracker was
  // last armed, in the ranges it follows, armed again in the same pass. A range it cannot scan
  // any more is dropped, so the freeze reports it whole. Only for trackers that can_precopy().
  virtual bool can_precopy() const { return false; }
  virtual std::vector<PageRange> precopy(pid_t pid) {
    (void)pid;
    return {};
  }
  // While the process runs, without arming anything: how many pages of `ranges` were written
  // since the tracker last armed them. A pre-copy asks it of what it has just read, to learn
  // whether the job rewrites its pages faster than they can be read. 0 when it cannot tell.
  virtual uint64_t written_again(pid_t pid, const std::vector<PageRange>& ranges) {
    (void)pid;
    (void)ranges;
    return 0;
  }
  // Checkpoints to take without a pre-copy: set when one found most of what it read written
  // again by the freeze (a job that rewrites the same pages all the time gains nothing from it
  // and pays a second round of write-protect faults); tried again after that many.
  unsigned precopy_skip = 0;
  // Pages the last checkpoint read into its memory buffer while the tree was frozen (0 when it
  // used none): what the next one is likely to read when it takes no pre-copy, so its buffer is
  // made ready before the freeze.
  uint64_t last_frozen_pages = 0;
  // The checkpoint whose pages the armed state is relative to; processes not in `alive` are
  // forgotten. Called after a commit.
  virtual void committed(const std::string& uuid, const std::set<pid_t>& alive) = 0;
  // A dump failed after arming: the next one cannot be incremental.
  virtual void invalidate() = 0;
};

}  // namespace crest
