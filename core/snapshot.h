// Copy-on-write snapshots: a never-run copy of each frozen process, made by the process itself.
//
// While the tree is frozen, an injected clone3(CLONE_FILES, exit_signal = 0) in each process's
// main thread makes the kernel copy its address space copy-on-write (the cost of a fork's
// page-table copy, not of the memory). The copy is auto-attached to us by fork tracing and stays
// stopped; the job is thawed at once, and the private pages are read from the copies while the
// job runs. The job sees nothing: with CLONE_FILES the copy shares its fd table (no descriptor
// gains a reference) and with exit_signal 0 it is a "clone" child that wait() and waitpid(-1)
// ignore and that sends no SIGCHLD. When the reading is done each copy is killed and its
// parent, stopped for the few microseconds it takes, reaps it by an injected wait4.
#pragma once

#include <sys/types.h>

#include <map>

#include "core/ptrace.h"

namespace crest {

class Snapshots {
 public:
  Snapshots() = default;
  Snapshots(const Snapshots&) = delete;
  Snapshots& operator=(const Snapshots&) = delete;
  ~Snapshots();  // kills whatever copies are left (unreaped), never throws

  // Forks a copy of every process of the frozen tree. syscall_insn: per pid, where to inject.
  void take(const ptrace::FrozenTree& tree, const std::map<pid_t, uint64_t>& syscall_insn);
  pid_t copy_of(pid_t pid) const;
  size_t size() const { return copies_.size(); }
  // Kills the copies and has each process reap its own. `frozen`: the tree is still frozen by
  // us (an error before the thaw), so the processes can be injected into directly.
  void release(bool frozen);

 private:
  std::map<pid_t, pid_t> copies_;  // process -> its copy
  std::map<pid_t, uint64_t> insn_;
};

// Reaps, in the running tree below root, the zombies of snapshot copies whose reader died before
// it could reap them (killed by the kernel when their tracer went, see take()). Each is reaped by
// an injected wait4 in its parent, stopped for a moment. Returns how many.
unsigned reap_stray_copies(pid_t root);

}  // namespace crest
