// pidfds of processes of the tree (its own processes included): reopened with pidfd_open once
// the process exists again (a deferred kind). A pidfd of a process outside the tree, or of one
// that has ended, is refused: nothing can name that process again. Dump and restore side by side.
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/fds/fd_kind.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

constexpr uint32_t kPidfdThread = O_EXCL;  // PIDFD_THREAD (Linux 6.9)

class PidfdKind : public FdKind {
 public:
  const char* name() const override { return "pidfd"; }
  bool claims(const FdProbe& p) const override {
    return p.link == "anon_inode:[pidfd]" || p.link.rfind("pidfd:", 0) == 0;
  }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    auto pid = probe.info.find("Pid");
    const pid_t target = pid == probe.info.end() ? -1 : static_cast<pid_t>(std::stol(pid->second));
    if (target <= 0) {
      ctx.refuse(probe.where + ": a pidfd of a process that has ended");
      return false;
    }
    rec.proc_pid = ctx.recorded(target);
    if (rec.proc_pid == 0) {
      ctx.refuse(probe.where + ": a pidfd of process " + std::to_string(target) +
                 ", which is not in the tree");
      return false;
    }
    rec.kind = static_cast<uint32_t>(schema::FileKind::pidfd);
    rec.kind_flags = probe.flags & kPidfdThread;
    return true;
  }
  bool deferred() const override { return true; }
  void open(RestoreContext&, const std::vector<const schema::FileRecord*>&) const override {}
  UniqueFd open_late(RestoreContext& ctx, const schema::FileRecord& f) const override {
    pid_t host = 0;
    for (auto& p : ctx.procs)
      for (size_t i = 0; i < p->threads.size() && i < p->thread_recs.size(); ++i)
        if (p->thread_recs[i]->tid == f.proc_pid) host = p->threads[i];
    if (host == 0) fail(Errc::corrupt, "a pidfd of task " + std::to_string(f.proc_pid) + ", which is not restored");
    UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_open, host, f.kind_flags & kPidfdThread)));
    if (!fd) throw_errno("pidfd_open of task " + std::to_string(f.proc_pid), errno, Errc::kernel);
    if (::fcntl(fd.get(), F_SETFL, static_cast<int>(f.flags & O_NONBLOCK)) != 0)
      throw_errno("cannot set a pidfd's flags", errno, Errc::kernel);
    return fd;
  }
  std::vector<std::string> restored() const override {
    return {"the process (of the tree) it refers to", "PIDFD_NONBLOCK", "PIDFD_THREAD"};
  }
  std::vector<std::string> refused() const override {
    return {"a pidfd of a process outside the tree, or of one that has ended"};
  }
};

}  // namespace

const FdKind& pidfd_kind() {
  static const PidfdKind kind;
  return kind;
}

}  // namespace crest::fds
