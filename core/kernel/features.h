// The kernel interfaces newer than the enterprise kernels HPC sites run (RHEL 9 and SLES 15 ship
// 5.14), asked about in one place. Each has a fallback elsewhere in the engine, or a refusal that
// names it.
//
// CREST_DISABLE=key,key,... makes crest behave as if the named interfaces were missing: that is
// how CI exercises the fallbacks on a newer kernel, and what a site does when it hits a kernel bug
// in one. An unknown key is an error (a typo must not silently test nothing).
#pragma once

#include <string>
#include <vector>

namespace crest::kernel {

enum class Iface {
  pagemap_scan,  // ioctl(PAGEMAP_SCAN) on /proc/PID/pagemap, Linux 6.7
  uffd_wp,       // userfaultfd WP_ASYNC + WP_UNPOPULATED, Linux 6.7 (6.4)
  clone3,        // clone3() with set_tid, Linux 5.5
  pidfd_getfd,   // pidfd_getfd(), Linux 5.6
  rseq_config,   // PTRACE_GET_RSEQ_CONFIGURATION, Linux 5.13
  soft_dirty,    // soft-dirty bits in pagemap (CONFIG_MEM_SOFT_DIRTY; not a version)
};

struct IfaceInfo {
  Iface id;
  const char* key;    // its name in CREST_DISABLE
  const char* what;   // the interface as the kernel documents it
  const char* since;  // the first upstream kernel that has it, or the config option
};

// Every interface above, in a fixed order.
const std::vector<IfaceInfo>& interfaces();
const IfaceInfo& info(Iface id);

// Whether this kernel has it (probed once per process), whatever CREST_DISABLE says.
bool kernel_has(Iface id);
// Whether CREST_DISABLE names it.
bool disabled(Iface id);
// What the engine asks: the kernel has it and it is not disabled.
inline bool have(Iface id) { return kernel_has(id) && !disabled(id); }

// Throws Errc::usage when CREST_DISABLE names something unknown. Programs call it at start so
// the mistake is reported before any work; have() and disabled() throw the same error otherwise.
void check_disable_list();

}  // namespace crest::kernel
