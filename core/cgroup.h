// cgroup v2: the freezer of a job's own cgroup, and the cgroups crest makes for jobs it launches.
//
// When a tree is alone in a cgroup of its own (crest run puts jobs in one), freezing the cgroup
// stops every task at once — nothing can fork while crest seizes the threads one by one — and
// combines with ptrace: PTRACE_INTERRUPT stops complete while the cgroup is frozen, and the
// tasks stay ptrace-stopped when it thaws. (The v1 freezer does not combine: its frozen tasks
// report ptrace stops only after the thaw.)
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

namespace crest::cgroup {

// Where the v2 hierarchy is mounted ("" if nowhere).
std::string v2_mount();
// The v2 cgroup of a process, as a directory under v2_mount() ("" if none).
std::string of(pid_t pid);
// Whether every process in the cgroup (and its descendants) is root or below root.
bool owned_by_tree(const std::string& dir, pid_t root);

// Makes DIR (mode 0755) under the v2 hierarchy for a job, and moves a process into it.
std::string create(const std::string& relative);
void move(pid_t pid, const std::string& dir);
// Removes an empty job cgroup; never throws.
void remove(const std::string& dir) noexcept;
// Kills every process in the cgroup at once (cgroup.kill, Linux 5.14); false if it cannot.
bool kill_all(const std::string& dir) noexcept;

// Freezes a cgroup until destroyed.
//
// Nothing in the kernel thaws a cgroup whose freezer died: a crest killed (kill -9) while the
// cgroup is frozen would leave the job frozen for good. So a watchdog process is made first: it
// shares our memory (no copy of it) but not our threads, holds only the read end of a pipe whose
// write end is ours and the cgroup's freeze file, and waits. The destructor thaws, then tells it
// so (one byte) and reaps it; if we die instead, it reads end-of-file and thaws the cgroup.
class Freeze {
 public:
  explicit Freeze(std::string dir);  // throws if it cannot freeze within a few seconds
  Freeze(const Freeze&) = delete;
  Freeze& operator=(const Freeze&) = delete;
  ~Freeze();

  struct Watchdog;

 private:
  std::string dir_;
  std::unique_ptr<Watchdog> watchdog_;
};

}  // namespace crest::cgroup
