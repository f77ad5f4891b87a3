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
                   "reads 8 bytes per page of private mappings (2 MiB per GiB mapped, holes "
                   "included): a few ms per GiB more at each dump; exact all the same"});
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
                     "incremental checkpoints read all memory while the job is frozen (frozen time "
                     "as a full checkpoint's; stored bytes as small as with uffd-wp)"});
  }
  return out;
}

std::string full_function_from() {
  return "Linux 6.7 (PAGEMAP_SCAN, userfaultfd WP_ASYNC); older kernels (RHEL 9 and SLES 15: "
         "5.14) use the fallbacks listed when they lack one (README.md, Kernels)";
}

}  // namespace crest::kernel
