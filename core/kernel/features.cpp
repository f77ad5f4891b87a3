#include "core/kernel/features.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <mutex>

#include "core/kernel/compat.h"
#include "core/pagemap.h"
#include "core/util/error.h"
#include "core/util/unique_fd.h"

namespace crest::kernel {
namespace {

constexpr size_t kCount = 6;

// A syscall exists when calling it with bad arguments fails with anything but ENOSYS.
bool syscall_exists(long nr, long a1, long a2 = 0) {
  long r = ::syscall(nr, a1, a2, 0, 0, 0);
  return !(r < 0 && errno == ENOSYS);
}

bool probe_uffd_wp() {
  UniqueFd fd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY)));
  if (!fd) return false;
  uffdio_api api{};
  api.api = UFFD_API;
  if (::ioctl(fd.get(), UFFDIO_API, &api) != 0) return false;
  return (api.features & UFFD_FEATURE_WP_ASYNC) && (api.features & UFFD_FEATURE_WP_UNPOPULATED);
}

bool probe(Iface id) {
  switch (id) {
    case Iface::pagemap_scan: return probe_pagemap_scan();
    case Iface::uffd_wp: return probe_uffd_wp();
    case Iface::clone3: return syscall_exists(SYS_clone3, 0, 0);
    case Iface::pidfd_getfd: return syscall_exists(SYS_pidfd_getfd, -1);
    case Iface::rseq_config:
      // Without a tracee it fails with ESRCH when the request exists, EIO when it does not.
      return ::ptrace(static_cast<enum __ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), 0, 0, 0) < 0 &&
             errno != EIO;
    case Iface::soft_dirty: return probe_soft_dirty();
  }
  return false;
}

struct DisableList {
  std::array<bool, kCount> off{};
  std::string error;  // non-empty when CREST_DISABLE names something unknown
};

const DisableList& disable_list() {
  static const DisableList list = [] {
    DisableList l;
    const char* env = std::getenv("CREST_DISABLE");
    std::string s = env ? env : "";
    size_t pos = 0;
    while (pos <= s.size()) {
      size_t comma = s.find(',', pos);
      if (comma == std::string::npos) comma = s.size();
      std::string key = s.substr(pos, comma - pos);
      pos = comma + 1;
      if (key.empty()) continue;
      bool known = false;
      for (auto& i : interfaces())
        if (key == i.key) l.off[static_cast<size_t>(i.id)] = known = true;
      if (key == "all") {
        l.off.fill(true);
        known = true;
      }
      if (!known && l.error.empty()) {
        l.error = "CREST_DISABLE names '" + key + "', which is not an interface crest knows; known: all";
        for (auto& i : interfaces()) l.error += std::string(", ") + i.key;
      }
    }
    return l;
  }();
  return list;
}

}  // namespace

const std::vector<IfaceInfo>& interfaces() {
  static const std::vector<IfaceInfo> all = {
      {Iface::pagemap_scan, "pagemap_scan", "ioctl PAGEMAP_SCAN", "Linux 6.7"},
      {Iface::uffd_wp, "uffd_wp", "userfaultfd WP_ASYNC + WP_UNPOPULATED", "Linux 6.7"},
      {Iface::clone3, "clone3", "clone3 with set_tid", "Linux 5.5"},
      {Iface::pidfd_getfd, "pidfd_getfd", "pidfd_getfd", "Linux 5.6"},
      {Iface::rseq_config, "rseq_config", "PTRACE_GET_RSEQ_CONFIGURATION", "Linux 5.13"},
      {Iface::soft_dirty, "soft_dirty", "soft-dirty bits", "CONFIG_MEM_SOFT_DIRTY"},
  };
  static_assert(kCount == 6);
  return all;
}

const IfaceInfo& info(Iface id) { return interfaces().at(static_cast<size_t>(id)); }

bool kernel_has(Iface id) {
  static std::array<bool, kCount> known{}, has{};
  static std::mutex mu;
  std::lock_guard lock(mu);
  auto i = static_cast<size_t>(id);
  if (!known[i]) {
    has[i] = probe(id);
    known[i] = true;
  }
  return has[i];
}

void check_disable_list() {
  if (!disable_list().error.empty()) throw Error(Errc::usage, disable_list().error);
}

bool disabled(Iface id) {
  check_disable_list();
  return disable_list().off[static_cast<size_t>(id)];
}

}  // namespace crest::kernel
