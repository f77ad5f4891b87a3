// Dirty-page trackers. See tracker.h for the kinds; each keeps per-process state between
// checkpoints and answers, while the tree is frozen, "which pages were written since last time".
#include "core/tracker.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <map>

#include "core/kernel/compat.h"
#include "core/kernel/features.h"
#include "core/proc.h"
#include "core/tracker_impl.h"
#include "core/util/error.h"
#include "core/util/log.h"
#include "core/util/unique_fd.h"

namespace crest {
namespace {

bool private_memory(const schema::VmaRecord& v) {
  auto k = static_cast<schema::VmaKind>(v.kind);
  return k == schema::VmaKind::anon_private || k == schema::VmaKind::file_private;
}

PageRange whole(const schema::VmaRecord& v) { return {v.start, v.end, 0}; }

// userfaultfd write-protect in async mode: the kernel clears a page's write-protect bit on the
// first write without any fault handler; PAGEMAP_SCAN with PM_SCAN_WP_MATCHING reports the
// written pages and protects them again in one pass. The uffd is created inside the task by an
// injected syscall (so its mm is the task's), copied out with pidfd_getfd and closed in the task:
// the job's fd table is untouched, and the registration lives as long as our copy.
class UffdTracker : public TrackerImpl {
 public:
  TrackerKind kind() const override { return TrackerKind::uffd_wp; }
  const std::string& last_checkpoint() const override { return last_; }

  std::vector<PageRange> written(pid_t pid, Injector& inj,
                                 const std::vector<const schema::VmaRecord*>& vmas,
                                 bool& fresh) override {
    auto& t = procs_[pid];
    fresh = !t.uffd;
    if (!t.uffd) t.uffd = create_uffd(pid, inj);
    Pagemap pm(pid);
    std::vector<PageRange> out;
    std::set<std::pair<uint64_t, uint64_t>> now;
    for (auto* v : vmas) {
      if (!private_memory(*v)) continue;
      auto range = std::make_pair(v->start, v->end);
      if (t.untrackable.count(range)) {
        out.push_back(whole(*v));
        now.insert(range);
        continue;
      }
      if (t.registered.count(range)) {
        try {
          auto w = pm.scan(v->start, v->end, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN,
                           PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC);
          out.insert(out.end(), w.begin(), w.end());
          now.insert(range);
          continue;
        } catch (const Error& e) {
          // EPERM: the range is no longer registered (moved by mremap, replaced): start over.
          if (e.sys_errno() != EPERM) throw;
        }
      }
      // New to us (mmap, mremap, a fork, a first checkpoint): all of it counts as written.
      out.push_back(whole(*v));
      if (arm(t.uffd.get(), *v))
        t.registered.insert(range);
      else
        t.untrackable.insert(range);
      now.insert(range);
    }
    // Forget ranges that are gone (their registration went with the VMA).
    for (auto it = t.registered.begin(); it != t.registered.end();)
      it = now.count(*it) ? std::next(it) : t.registered.erase(it);
    return out;
  }

  bool can_precopy() const override { return true; }

  // PAGEMAP_SCAN with PM_SCAN_WP_MATCHING works on a running process: the kernel reports a page
  // written and protects it again under the page-table lock, so a write after the scan marks it
  // written once more and the freeze's scan sees it.
  std::vector<PageRange> precopy(pid_t pid) override {
    auto it = procs_.find(pid);
    if (it == procs_.end() || !it->second.uffd) return {};
    auto& t = it->second;
    Pagemap pm(pid);
    std::vector<PageRange> out;
    for (auto r = t.registered.begin(); r != t.registered.end();) {
      try {
        // Only pages that have contents now: reading one that was written and then freed
        // (MADV_DONTNEED) would map the zero page into the job. Those stay marked written, and
        // the freeze finds them absent.
        auto w = pm.scan(r->first, r->second, PAGE_IS_WRITTEN, 0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                         PAGE_IS_WRITTEN, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC);
        out.insert(out.end(), w.begin(), w.end());
        ++r;
      } catch (const Error& e) {
        // No longer one registered range (unmapped, moved, replaced since): the scan may have
        // re-armed part of it, so the freeze must take all of it.
        if (e.sys_errno() != EPERM && e.sys_errno() != ENOENT && e.sys_errno() != EINVAL) throw;
        r = t.registered.erase(r);
      }
    }
    return out;
  }

  uint64_t written_again(pid_t pid, const std::vector<PageRange>& ranges) override {
    auto it = procs_.find(pid);
    if (it == procs_.end() || !it->second.uffd) return 0;
    Pagemap pm(pid);
    uint64_t pages = 0;
    for (auto& r : ranges) {
      try {
        for (auto& w : pm.scan(r.start, r.end, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
          pages += w.pages();
      } catch (const Error& e) {
        if (e.sys_errno() != EPERM && e.sys_errno() != ENOENT && e.sys_errno() != EINVAL) throw;
      }
    }
    return pages;
  }

  void committed(const std::string& uuid, const std::set<pid_t>& alive) override {
    last_ = uuid;
    for (auto it = procs_.begin(); it != procs_.end();)
      it = alive.count(it->first) ? std::next(it) : procs_.erase(it);
  }
  void invalidate() override { last_.clear(); }

 private:
  struct Process {
    UniqueFd uffd;
    std::set<std::pair<uint64_t, uint64_t>> registered;
    std::set<std::pair<uint64_t, uint64_t>> untrackable;
  };

  static UniqueFd create_uffd(pid_t pid, Injector& inj) {
    auto theirs = inj.call("userfaultfd", SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    UniqueFd pidfd = proc::open_pidfd(pid);
    UniqueFd ours = pidfd ? proc::copy_fd(pidfd.get(), static_cast<int>(theirs)) : UniqueFd();
    int err = errno;
    inj.call("close (userfaultfd)", SYS_close, theirs);
    if (!ours) throw_errno("pidfd_getfd of the userfaultfd of process " + std::to_string(pid), err, Errc::kernel);
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    if (::ioctl(ours.get(), UFFDIO_API, &api) != 0)
      throw_errno("UFFDIO_API(WP_ASYNC|WP_UNPOPULATED)", errno, Errc::kernel);
    return ours;
  }

  // Registers a VMA for write-protect tracking and protects all of it (with WP_UNPOPULATED the
  // pages never touched yet are covered too). False if the kernel will not track this VMA.
  static bool arm(int uffd, const schema::VmaRecord& v) {
    uffdio_register reg{};
    reg.range.start = v.start;
    reg.range.len = v.end - v.start;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (::ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) return false;
    uffdio_writeprotect wp{};
    wp.range = reg.range;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (::ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0)
      throw_errno("UFFDIO_WRITEPROTECT of " + v.name, errno, Errc::kernel);
    return true;
  }

  std::map<pid_t, Process> procs_;
  std::string last_;
};

// Soft-dirty bits (CONFIG_MEM_SOFT_DIRTY, Linux 3.11): pagemap bit 55 marks pages written since
// the last write of "4" to /proc/PID/clear_refs. Read from the raw entries on every kernel (no
// PAGEMAP_SCAN needed); which entries count as written is soft_dirty_written() (pagemap.h),
// tested over recorded entries since this machine's kernel has no soft-dirty bits.
class SoftDirtyTracker : public TrackerImpl {
 public:
  TrackerKind kind() const override { return TrackerKind::soft_dirty; }
  const std::string& last_checkpoint() const override { return last_; }

  std::vector<PageRange> written(pid_t pid, Injector&, const std::vector<const schema::VmaRecord*>& vmas,
                                 bool& fresh) override {
    fresh = !known_.count(pid);
    Pagemap pm(pid);
    std::vector<PageRange> out;
    for (auto* v : vmas) {
      if (!private_memory(*v)) continue;
      if (fresh) {
        out.push_back(whole(*v));
        continue;
      }
      constexpr uint64_t kBatch = 512 * 1024;
      for (uint64_t pos = v->start; pos < v->end;) {
        const uint64_t n = std::min<uint64_t>(kBatch, (v->end - pos) / 4096);
        if (buf_.size() < n) buf_.resize(n);
        pm.read_entries(pos, n, buf_.data());
        soft_dirty_written(buf_.data(), n, pos, zero_pfns(), out);
        pos += n * 4096;
      }
    }
    UniqueFd fd(::open(proc::path(pid, "clear_refs").c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd || ::write(fd.get(), "4", 1) != 1)
      throw_errno("cannot clear the soft-dirty bits of process " + std::to_string(pid), errno, Errc::kernel);
    known_.insert(pid);
    return out;
  }

  void committed(const std::string& uuid, const std::set<pid_t>& alive) override {
    last_ = uuid;
    std::set<pid_t> keep;
    for (pid_t p : known_)
      if (alive.count(p)) keep.insert(p);
    known_ = std::move(keep);
  }
  void invalidate() override { last_.clear(); }

 private:
  std::set<pid_t> known_;
  std::string last_;
  std::vector<uint64_t> buf_;
};

// Content hashes: nothing to arm; every present page is read and compared with the parent
// checkpoint's page hashes by the storage pipeline.
class HashTracker : public TrackerImpl {
 public:
  TrackerKind kind() const override { return TrackerKind::hash; }
  const std::string& last_checkpoint() const override { return last_; }
  std::vector<PageRange> written(pid_t, Injector&, const std::vector<const schema::VmaRecord*>& vmas,
                                 bool& fresh) override {
    fresh = false;
    std::vector<PageRange> out;
    for (auto* v : vmas)
      if (private_memory(*v)) out.push_back(whole(*v));
    return out;
  }
  void committed(const std::string& uuid, const std::set<pid_t>&) override { last_ = uuid; }
  void invalidate() override { last_.clear(); }

 private:
  std::string last_;
};

bool uffd_wp_available() {
  return kernel::have(kernel::Iface::uffd_wp) && kernel::have(kernel::Iface::pagemap_scan);
}

bool soft_dirty_available() { return kernel::have(kernel::Iface::soft_dirty); }

}  // namespace

const char* Tracker::kind_name(TrackerKind kind) {
  switch (kind) {
    case TrackerKind::automatic: return "automatic";
    case TrackerKind::uffd_wp: return "uffd-wp";
    case TrackerKind::soft_dirty: return "soft-dirty";
    case TrackerKind::hash: return "hash";
  }
  return "?";
}

TrackerKind Tracker::best_available() {
  static const TrackerKind best = [] {
    if (uffd_wp_available()) return TrackerKind::uffd_wp;
    if (soft_dirty_available()) return TrackerKind::soft_dirty;
    return TrackerKind::hash;
  }();
  return best;
}

std::unique_ptr<Tracker> Tracker::create(TrackerKind kind) {
  if (kind == TrackerKind::automatic) kind = best_available();
  switch (kind) {
    case TrackerKind::uffd_wp:
      if (!uffd_wp_available())
        fail(Errc::unsupported, "the uffd-wp tracker needs userfaultfd WP_ASYNC and PAGEMAP_SCAN (Linux 6.7)");
      return std::make_unique<UffdTracker>();
    case TrackerKind::soft_dirty:
      if (!soft_dirty_available())
        fail(Errc::unsupported, "this kernel has no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)");
      return std::make_unique<SoftDirtyTracker>();
    default:
      return std::make_unique<HashTracker>();
  }
}

}  // namespace crest
