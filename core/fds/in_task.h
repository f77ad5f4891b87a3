// System calls run by one task of the tree for the restorer (injected), with credentials of the
// task's set for the while and optionally under another root: for objects the kernel stamps
// with whoever made them (a connection's SO_PEERCRED, a socket's cgroup and memory accounting).
#ifndef CREST_CORE_FDS_IN_TASK_H
#define CREST_CORE_FDS_IN_TASK_H

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/context.h"
#include "core/inject.h"
#include "core/kernel/fd_pass.h"
#include "core/kernel/features.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest::fds {

// The first process of the tree that holds a descriptor of files row `file_id` (placeholders
// excluded): the task that makes a socket for it. `who` names the row for the error.
inline RestoredProcess& first_holder(RestoreContext& ctx, int64_t file_id, const std::string& who) {
  for (auto& fd : ctx.meta.fds)
    if (fd.file_id == file_id) {
      auto it = ctx.by_pid.find(fd.pid);
      if (it != ctx.by_pid.end() && it->second->role == RestoredProcess::Role::process) return *it->second;
    }
  fail(Errc::corrupt, who + ": no process holds it");
}


// Credentials a connection is made with.
struct Creds {
  uint32_t euid = 0, egid = 0;
  std::vector<uint32_t> groups;
};

// System calls run by one task of the tree for the restorer, with the task's credentials set
// for the while (it runs as root until restore_credentials), optionally under a private root.
class InTask {
 public:
  InTask(RestoreContext& ctx, RestoredProcess& p) : ctx_(ctx), p_(p) {}
  InTask(const InTask&) = delete;
  InTask& operator=(const InTask&) = delete;
  ~InTask() {
    try {
      as_root();
      leave_root();
    } catch (...) {
    }
  }

  long sys(long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0, uint64_t a4 = 0,
           uint64_t a5 = 0) {
    return p_.inj->raw(nr, a1, a2, a3, a4, a5);
  }
  uint64_t call(const std::string& what, long nr, uint64_t a1 = 0, uint64_t a2 = 0,
                uint64_t a3 = 0, uint64_t a4 = 0, uint64_t a5 = 0) {
    long r = sys(nr, a1, a2, a3, a4, a5);
    if (r < 0)
      throw Error(Errc::kernel, "process " + std::to_string(p_.rec->pid) + ": " + what,
                  static_cast<int>(-r));
    return static_cast<uint64_t>(r);
  }
  uint64_t put(const void* data, size_t len, size_t slot) {
    return ctx_.put(p_, data, len, 8192 + slot * 512);
  }
  void with_creds(const Creds& c) {
    if (c.euid == 0 && c.egid == 0 && c.groups.empty()) return;
    std::vector<gid_t> g(c.groups.begin(), c.groups.end());
    call("setgroups", SYS_setgroups, g.size(), g.empty() ? 0 : put(g.data(), g.size() * sizeof(gid_t), 6));
    call("setresgid", SYS_setresgid, static_cast<uint64_t>(-1), c.egid, static_cast<uint64_t>(-1));
    call("setresuid", SYS_setresuid, static_cast<uint64_t>(-1), c.euid, static_cast<uint64_t>(-1));
    changed_ = true;
  }
  void as_root() {
    if (!changed_) return;
    call("setresuid", SYS_setresuid, static_cast<uint64_t>(-1), 0, static_cast<uint64_t>(-1));
    call("setresgid", SYS_setresgid, static_cast<uint64_t>(-1), 0, static_cast<uint64_t>(-1));
    call("setgroups", SYS_setgroups, 0, 0);
    changed_ = false;
  }
  // Under `root` (as root, before with_creds) and back.
  void enter_root(const std::string& root) {
    const uint64_t slash = ctx_.put_string(p_, "/", 8192 + 7 * 512);
    old_root_ = static_cast<int>(call("open /", SYS_openat, static_cast<uint64_t>(AT_FDCWD), slash,
                                      O_PATH | O_DIRECTORY | O_CLOEXEC));
    const uint64_t dot = ctx_.put_string(p_, ".", 8192 + 7 * 512);
    old_cwd_ = static_cast<int>(call("open .", SYS_openat, static_cast<uint64_t>(AT_FDCWD), dot,
                                     O_PATH | O_DIRECTORY | O_CLOEXEC));
    call("chroot", SYS_chroot, ctx_.put_string(p_, root, 8192 + 7 * 512));
  }
  void leave_root() {
    if (old_root_ < 0) return;
    call("fchdir", SYS_fchdir, static_cast<uint64_t>(old_root_));
    call("chroot .", SYS_chroot, ctx_.put_string(p_, ".", 8192 + 7 * 512));
    call("fchdir", SYS_fchdir, static_cast<uint64_t>(old_cwd_));
    sys(SYS_close, static_cast<uint64_t>(old_root_));
    sys(SYS_close, static_cast<uint64_t>(old_cwd_));
    old_root_ = old_cwd_ = -1;
  }
  // Our copies of many descriptors of the task, which it closes in one injection (a
  // close_range per run of numbers).
  std::vector<UniqueFd> take_all(std::vector<int> remote) {
    std::vector<UniqueFd> ours;
    int err = 0;
    if (!kernel::have(kernel::Iface::pidfd_getfd)) {
      ours = kernel::take_fds(p_.pid, remote);  // all in one hand-over (core/kernel/fd_pass.h)
    } else {
      UniqueFd pidfd = proc::open_pidfd(p_.pid);
      for (int r : remote) {
        ours.push_back(pidfd ? proc::copy_fd(pidfd.get(), r) : UniqueFd());
        if (!ours.back() && err == 0) err = pidfd ? errno : ESRCH;
      }
    }
    std::sort(remote.begin(), remote.end());
    SyscallBatch batch = batch_in(p_);
    for (size_t i = 0; i < remote.size();) {
      size_t j = i + 1;
      while (j < remote.size() && remote[j] == remote[j - 1] + 1) ++j;
      batch.add("close_range (sockets taken)", SYS_close_range, static_cast<uint64_t>(remote[i]),
                static_cast<uint64_t>(remote[j - 1]), 0);
      i = j;
    }
    batch.flush();
    if (err != 0) throw_errno("taking sockets from process " + std::to_string(p_.rec->pid), err, Errc::kernel);
    return ours;
  }
  // Our copies of both ends of a pair the task made, which it closes.
  std::pair<UniqueFd, UniqueFd> take_pair(const int (&remote)[2]) {
    std::vector<UniqueFd> ours = take_all({remote[0], remote[1]});
    return {std::move(ours[0]), std::move(ours[1])};
  }
  // Our copy of the task's descriptor, which it closes.
  UniqueFd take(int remote) {
    UniqueFd pidfd = proc::open_pidfd(p_.pid);
    UniqueFd ours = pidfd ? proc::copy_fd(pidfd.get(), remote) : UniqueFd();
    const int err = errno;
    sys(SYS_close, static_cast<uint64_t>(remote));
    if (!ours) throw_errno("taking a socket from process " + std::to_string(p_.rec->pid), err, Errc::kernel);
    return ours;
  }

 private:
  RestoreContext& ctx_;
  RestoredProcess& p_;
  bool changed_ = false;
  int old_root_ = -1, old_cwd_ = -1;
};

}  // namespace crest::fds

#endif
