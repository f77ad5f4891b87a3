// Lazy restore (crest restore --lazy): the anonymous private memory of the restored processes is
// registered with userfaultfd in missing mode instead of being written; the tree runs at once
// and LazyPages serves each page when it is first touched (UFFDIO_COPY from the image, the chunk
// decompressed once and kept for its neighbours), while a prefetch fills the rest, pages of the
// newest file of the chain first. When every page the image holds is in place, the userfaultfds
// are closed and the job owns ordinary memory again, exactly as an eager restore leaves it.
//
// While pages are missing the job may do anything: the userfaultfds carry fork, mremap,
// MADV_DONTNEED/REMOVE and munmap events, which move, drop or copy the pages still to come, so
// that a page the program freed reads as zero and a forked child gets its own copy.
//
// A page server that dies must not leave the job running on missing pages: a guardian process,
// forked before the tree, holds a copy of every userfaultfd (so no registration ends with the
// server) and the tree's pidfds; if the server ends before it said "done", the guardian stops
// and kills the whole tree (and every process it forked since) and says so on stderr. An image
// chunk that cannot be read kills the job the same way, and wait() reports the failure.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/util/unique_fd.h"
#include "storage/store.h"

namespace crest {

class LazyPages {
 public:
  struct Stats {
    uint64_t pages_total = 0;     // data pages to serve, at the start
    uint64_t pages_faulted = 0;   // served because the job touched them
    uint64_t pages_prefetched = 0;
    uint64_t faults = 0;          // fault messages (data and zero pages)
    int64_t released_ns = 0;      // when the tree was let go (CLOCK_MONOTONIC)
    int64_t resident_ns = 0;      // when the last page was in place
  };

  // Forks the guardian. `reader` must outlive this object.
  explicit LazyPages(storage::CheckpointReader& reader);
  // Waits until everything is resident (or the job is gone); stops at once if the tree was
  // never released (a failed restore kills its tasks).
  ~LazyPages();
  LazyPages(const LazyPages&) = delete;
  LazyPages& operator=(const LazyPages&) = delete;

  // Takes over the userfaultfd of process `pid` (host pid), on which `ranges` are registered for
  // missing pages and hold none of their image pages yet; `owner` is the image's memory owner.
  // Starts serving faults at once (the rest of the restore may touch this memory).
  void add(pid_t pid, UniqueFd uffd, const std::vector<std::pair<uint64_t, uint64_t>>& ranges,
           uint64_t owner);
  // A process of the tree (host pid), killed with its descendants if the serving fails.
  void watch(pid_t pid);
  // The tree runs: start prefetching.
  void released();
  // Blocks until every page is resident or every lazily restored process has ended. Throws if
  // serving failed (the job was killed).
  void wait();
  bool empty() const;
  Stats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace crest
