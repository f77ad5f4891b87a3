// Readers of /proc for one process or thread. Each returns parsed values or throws crest::Error
// naming the pid and file; a process that vanished gives Errc::not_found.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/util/unique_fd.h"

namespace crest::proc {

std::string path(pid_t pid, const std::string& leaf);  // "/proc/PID/leaf"

std::vector<pid_t> threads(pid_t pid);   // /proc/PID/task, sorted, main thread first
std::vector<pid_t> children(pid_t pid);  // union of /proc/PID/task/*/children, sorted
bool exists(pid_t pid);

// /proc/PID/stat fields (names as in proc(5)).
struct Stat {
  char state = '?';
  pid_t ppid = 0, pgrp = 0, session = 0;
  int tty_nr = 0;
  pid_t tpgid = 0;  // foreground process group of its controlling terminal
  unsigned flags = 0;
  uint64_t start_code = 0, end_code = 0, start_stack = 0;
  int exit_signal = 0;
  uint64_t start_data = 0, end_data = 0, start_brk = 0;
  uint64_t arg_start = 0, arg_end = 0, env_start = 0, env_end = 0;
  uint64_t starttime = 0;
  int exit_code = 0;  // field 52: the wait status of an exited task (zombie)
};
Stat stat(pid_t pid);

// /proc/PID/status as key -> value (value with the leading tab stripped).
using Status = std::map<std::string, std::string>;
Status status(pid_t pid, pid_t tid = 0);
uint64_t status_hex(const Status& st, const std::string& key);
std::vector<uint64_t> status_numbers(const Status& st, const std::string& key);

// Pids as a tree sees them: a tree in a pid namespace of its own (crest run) numbers its tasks
// differently from us. NSpid lists a task's pid in every namespace from ours down to its own;
// the root's list says how deep the tree's namespace is.
class NamespacePids {
 public:
  explicit NamespacePids(pid_t root);
  bool own_namespace() const { return own_; }
  pid_t of(pid_t pid) const;  // pid (or tid) as the tree sees it; ours if it has no namespace

 private:
  size_t depth_ = 0;
  bool own_ = false;
};
// pid in the innermost of its namespaces (as a parent in the same namespace sees it).
pid_t innermost_pid(pid_t pid);

// pidfd_open(pid); invalid, with errno set, if it fails.
UniqueFd open_pidfd(pid_t pid);
// pidfd_getfd: our copy of descriptor `fd` of the process behind `pidfd`; invalid, with errno
// set, if it fails.
UniqueFd copy_fd(int pidfd, int fd);

struct Mapping {
  uint64_t start = 0, end = 0;
  bool read = false, write = false, exec = false, shared = false;
  uint64_t offset = 0;
  unsigned dev_major = 0, dev_minor = 0;
  uint64_t inode = 0;
  std::string name;                  // path, [heap], [stack], [vdso], "" for anonymous
  std::vector<std::string> vmflags;  // from smaps "VmFlags:" when read with flags
  bool has_flag(const char* f) const;
  uint64_t pages() const { return (end - start) / 4096; }
};
// /proc/PID/maps; with_flags reads /proc/PID/smaps instead to get VmFlags.
std::vector<Mapping> maps(pid_t pid, bool with_flags = false);

// /proc/PID/fdinfo/FD as key -> value.
std::map<std::string, std::string> fdinfo(pid_t pid, int fd);
std::vector<int> fds(pid_t pid);  // sorted
std::string readlink(const std::string& path);  // throws; strips nothing

std::string comm(pid_t pid, pid_t tid = 0);

}  // namespace crest::proc
