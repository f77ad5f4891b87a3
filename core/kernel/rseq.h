// A thread's rseq registration without PTRACE_GET_RSEQ_CONFIGURATION (Linux 5.13).
//
// glibc 2.35 and later register an rseq area for every thread, inside its thread control block:
// at the thread pointer (fs_base) + __rseq_offset, of length max(__rseq_size, 32), with the
// signature RSEQ_SIG (0x53053053 on x86). Both variables are exported by glibc's dynamic loader
// (ld-linux-x86-64.so.2) the process has mapped, and read from its memory. The guess is then proven by the kernel, with calls
// injected into the thread that cannot change its registration:
//   rseq(area, len, RSEQ_FLAG_UNREGISTER, sig ^ 1): EPERM only when the thread is registered
//     with exactly that area and length (a wrong signature stops the unregistering);
//   rseq(area, len, 0, sig): EBUSY only when the signature is that one too.
// A thread for which no guess is proven is asked whether it has any registration at all:
//   rseq(a scratch area of crest's, 32, 0, sig): EINVAL when it has one elsewhere (refused by
//   name: crest cannot tell where), 0 when it had none (and the registration just made is
//   undone at once: only crest's scratch was written).
#pragma once

#include <sys/types.h>

#include "core/ptrace.h"

namespace crest::kernel {

inline constexpr uint32_t kGlibcRseqSig = 0x53053053;  // glibc's RSEQ_SIG for x86

// The registration of stopped thread `tid`, found as above; throws Errc::refused naming the
// thread when it has one that cannot be determined. Injects through the Injector of ours on the
// thread, or one made for the while.
ptrace::RseqConfig find_rseq(pid_t tid);

}  // namespace crest::kernel
