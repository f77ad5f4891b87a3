#include "core/kernel/fallbacks.h"

#include "core/kernel/features.h"
#include "core/tracker.h"

namespace crest::kernel {
namespace {

std::string why_missing(Iface id) {
  const auto& i = info(id);
  return std::string(i.what) + (kernel_has(id)
                                    ? " (switched off by CREST_DISABLE)"
                                    : " (not in this kernel; " + std::string(i.since) + ")");
}

}  // namespace

std::vector<Fallback> fallbacks() {
  std::vector<Fallback> out;
  // Memory: present pages and dirty-page tracking.
  if (!have(Iface::pagemap_scan))
    out.push_back({why_missing(Iface::pagemap_scan),
                   "present pages found from /proc/PID/pagemap entries, read in 4 MiB batches",
                   "the kernel formats 8 bytes for every page mapped, holes included: 5-7x the "
                   "ioctl's time (a 4 GiB job: 0.2-0.4 s against 0.03-0.08 s on 2 loaded cores); "
                   "exact all the same"});
  const bool uffd = have(Iface::uffd_wp) && have(Iface::pagemap_scan);
  if (!uffd) {
    std::string missing = !have(Iface::uffd_wp) ? why_missing(Iface::uffd_wp)
                                                : std::string(info(Iface::uffd_wp).what) +
                                                      " (unusable: it needs ioctl PAGEMAP_SCAN)";
    if (Tracker::best_available() == TrackerKind::soft_dirty)
      out.push_back({missing,
                     "incremental checkpoints track written pages with soft-dirty bits "
                     "(clear_refs); untested here: its logic is unit-tested over recorded pagemaps",
                     "no pre-copy: the freeze reads every page written since the last checkpoint; "
                     "reading the bits costs 8 bytes per page mapped"});
    else
      out.push_back({missing + (have(Iface::soft_dirty)
                                    ? ""
                                    : "; no soft-dirty bits either (" +
                                          std::string(info(Iface::soft_dirty).since) + ")"),
                     "incremental checkpoints use the content-hash tracker: every present page is "
                     "read and hashed, and only pages that differ from the parent are stored",
                     "an incremental checkpoint reads and hashes all present memory: in stop-copy "
                     "mode while the job is frozen (a 4 GiB job: 10 s on 2 loaded cores), with "
                     "--cow only for the fork (0.5 s); it stores only the changed pages (5% "
                     "rewritten: 6.1% of a full image)"});
  }
  // Processes, threads and descriptors.
  if (!have(Iface::clone3))
    out.push_back({why_missing(Iface::clone3),
                   "pids and tids chosen through /proc/sys/kernel/ns_last_pid under a node-wide "
                   "lock, then clone()",
                   "a process of the node forked at that instant can take a pid: the task is "
                   "undone and the pid tried again (10 times, about 2 s), then the restore is "
                   "refused naming it; --pidns restores are not exposed to that"});
  if (!have(Iface::pidfd_getfd))
    out.push_back({why_missing(Iface::pidfd_getfd),
                   "descriptors moved in and out of tasks over SCM_RIGHTS with injected "
                   "sendmsg/recvmsg",
                   "a few more injected calls per task; the same open file descriptions"});
  if (!have(Iface::rseq_config))
    out.push_back({why_missing(Iface::rseq_config),
                   "each thread's rseq area found through glibc (__rseq_offset) and proven with "
                   "injected rseq calls that change nothing",
                   "two injected calls per thread; a registration that is not glibc's (another "
                   "library, a static program) is refused by name"});
  return out;
}

std::string full_function_from() {
  return "Linux 6.7 (PAGEMAP_SCAN, userfaultfd WP_ASYNC); older kernels (RHEL 9 and SLES 15: "
         "5.14) use the fallbacks listed when they lack one (README.md, Kernels)";
}

}  // namespace crest::kernel
