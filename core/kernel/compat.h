// Kernel ABI pieces crest uses that Debian 12's linux-libc-dev (6.1) does not define yet.
// The kernel ABI is stable; these values are those of the upstream uapi headers of the kernels
// that introduced them (PAGEMAP_SCAN and UFFD_FEATURE_WP_ASYNC: 6.7; WP_UNPOPULATED: 6.4).
#pragma once

#include <linux/fs.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

struct page_region {
  __u64 start;
  __u64 end;
  __u64 categories;
};

#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)

struct pm_scan_arg {
  __u64 size;
  __u64 flags;
  __u64 start;
  __u64 end;
  __u64 walk_end;
  __u64 vec;
  __u64 vec_len;
  __u64 max_pages;
  __u64 category_inverted;
  __u64 category_mask;
  __u64 category_anyof_mask;
  __u64 return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef RSEQ_FLAG_UNREGISTER
#define RSEQ_FLAG_UNREGISTER 1
#endif
#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

// prctl options newer than the 6.1 headers (values from the upstream uapi).
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef PR_TIMER_CREATE_RESTORE_IDS
#define PR_TIMER_CREATE_RESTORE_IDS 77
#define PR_TIMER_CREATE_RESTORE_IDS_OFF 0
#define PR_TIMER_CREATE_RESTORE_IDS_ON 1
#define PR_TIMER_CREATE_RESTORE_IDS_GET 2
#endif
#ifndef PR_SPEC_L1D_FLUSH
#define PR_SPEC_L1D_FLUSH 2
#endif
#ifndef PR_SCHED_CORE
#define PR_SCHED_CORE 62
#define PR_SCHED_CORE_GET 0
#endif
// The private futex hash of a process (Linux 6.16).
inline constexpr int kPrFutexHash = 78;
inline constexpr int kPrFutexHashSetSlots = 1;
inline constexpr int kPrFutexHashGetSlots = 2;
// arch_prctl codes (asm/prctl.h of 6.x).
inline constexpr int kArchGetCpuid = 0x1011;
inline constexpr int kArchSetCpuid = 0x1012;
inline constexpr int kArchGetUntagMask = 0x4001;
inline constexpr int kArchGetXcompPerm = 0x1022;
inline constexpr int kArchShstkStatus = 0x5005;
inline constexpr int kPtraceGetSyscallUserDispatch = 0x4211;
// membarrier: the commands a process registered for (Linux 6.3).
inline constexpr int kMembarrierGetRegistrations = 1 << 9;

// Restart return values a syscall interrupted by a signal or ptrace stop leaves in rax
// (kernel-internal, include/linux/errno.h). They never reach userspace normally.
inline constexpr long kErestartSys = -512;
inline constexpr long kErestartNoIntr = -513;
inline constexpr long kErestartNoHand = -514;
inline constexpr long kErestartRestartBlock = -516;
