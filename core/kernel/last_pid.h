// Choosing a task's pid without clone3's set_tid (Linux 5.5): the kernel gives a new task the
// first free pid after its pid namespace's ns_last_pid (/proc/sys/kernel/ns_last_pid), so crest
// sets that to one below the pid it wants, then clones, and checks what it got. Another process
// of the namespace may take the pid between the two: the clone is then undone and tried again,
// and after kTries the pid is refused by name.
//
// The kernel applies a write of ns_last_pid to the pid namespace of the task that writes (not
// the one the /proc file was opened in): for a tree in a pid namespace of its own, a task of
// that namespace writes it (an injected write, or the namespace's init before the root is
// made). Crest restores pick only the pid in the innermost namespace of a task (set_tid too is
// given one level): the pids of the levels above are whatever the kernel hands out.
//
// Two crest restores on one node set the same ns_last_pid when they restore into the host's pid
// namespace: a LastPidLock (flock on a node-wide file) keeps each write and clone together.
#pragma once

#include <sys/types.h>

#include <string>

#include "core/util/unique_fd.h"

namespace crest::kernel {

// How often a pid is tried before it is refused: over about 2 s (wait_before_retry), as long as
// a short-lived process of a busy node that took it meanwhile lives.
inline constexpr int kLastPidTries = 10;
// The path the kernel offers the cursor at, in every pid namespace.
inline constexpr const char* kLastPidPath = "/proc/sys/kernel/ns_last_pid";
// Exit status of a clone that found itself at another pid than the one wanted.
inline constexpr int kWrongPidExit = 124;

// Whether the engine creates tasks at their pids through ns_last_pid (clone3 missing or
// disabled).
bool use_last_pid();

// An exclusive flock on the node's lock file for ns_last_pid, held while alive. It also puts the
// cursor back where it was: left at a pid of the tree, every process the node forks meanwhile
// would take the pids the tree needs next.
class LastPidLock {
 public:
  LastPidLock();
  LastPidLock(const LastPidLock&) = delete;
  LastPidLock& operator=(const LastPidLock&) = delete;
  ~LastPidLock();
  // In a child the clone made: the cursor is its parent's to put back.
  void in_child() { saved_ = -1; }
  // The cursor was moved on purpose: leave it.
  void keep_cursor() { saved_ = -1; }

 private:
  UniqueFd fd_;
  long saved_ = -1;  // the cursor when locked
};

// ns_last_pid of the caller's pid namespace, or -1.
long read_last_pid();

// How long to wait before try `attempt` (from 1): a pid taken by a short-lived process of the
// node may be free again.
void wait_before_retry(int attempt);

// Writes `want - 1` to ns_last_pid of the caller's own pid namespace. Throws naming the file.
void set_last_pid(pid_t want);

// The text written to make the next pid `want` ("want-1").
std::string last_pid_text(pid_t want);

// The refusal when `pid` stayed taken: Errc::busy, naming the pid and `where` (the namespace).
[[noreturn]] void refuse_taken_pid(pid_t pid, const std::string& where);

// Forks the calling process (a raw clone: safe in a multithreaded process) as a child with pid
// `want` in the caller's pid namespace, by ns_last_pid under the node's lock, tried kTries
// times. `flags`: clone flags, exit signal in the low byte. Returns 0 in the child (which has
// checked its pid), the child's pid in the parent. A child that got another pid exits at once
// with kWrongPidExit and is reaped here.
pid_t fork_at_pid(pid_t want, unsigned long flags);

}  // namespace crest::kernel
