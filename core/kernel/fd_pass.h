// Descriptors out of a stopped task without pidfd_getfd (Linux 5.6): the task sends them to
// crest over SCM_RIGHTS, by injected calls. It makes a datagram socket (closed again at once)
// and sends them, up to 253 a message, to an abstract socket crest binds once (a random name),
// which takes the sender's credentials with each message (SO_PASSCRED): a message from any other
// process than the task is dropped. The copies are of the same open file descriptions, as
// pidfd_getfd's are; like pidfd_getfd's they are close-on-exec here.
//
// proc::copy_fd() comes here when pidfd_getfd is missing or disabled. The engine's callers that
// look at many descriptors of a process at once (from several threads: the dump's first look)
// take them all before, in one Prefetched, which copy_fd() then answers from.
//
// Descriptors into a task go over a socket pair of the restore instead (fds/table.cpp).
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <map>
#include <vector>

#include "core/util/unique_fd.h"

namespace crest::kernel {

// Our copies of descriptors `fds` of process `pid` (stopped under our ptrace), in order. Must be
// called on the tracer's thread. Throws naming the process on failure.
std::vector<UniqueFd> take_fds(pid_t pid, const std::vector<int>& fds);

// The process behind one of our pidfds (its fdinfo's "Pid:"), or -1.
pid_t pid_of_pidfd(int pidfd);

// Copies of descriptors of a process, taken at once and held while this lives; copy_fd() of that
// process is answered from them (any thread may ask).
class Prefetched {
 public:
  Prefetched(pid_t pid, const std::vector<int>& fds);
  Prefetched(const Prefetched&) = delete;
  Prefetched& operator=(const Prefetched&) = delete;
  ~Prefetched();

 private:
  pid_t pid_;
  rlimit saved_{};
  bool raised_ = false;
};

// A copy of descriptor `fd` of `pid` from a live Prefetched (invalid if none holds it).
UniqueFd prefetched(pid_t pid, int fd);

}  // namespace crest::kernel
