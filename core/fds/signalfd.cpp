// signalfd: its signal mask. The signals it reads are the task's pending signals, restored with
// the task. Dump and restore side by side.
#include <fcntl.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/fds/fd_kind.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

class SignalfdKind : public FdKind {
 public:
  const char* name() const override { return "signalfd"; }
  bool claims(const FdProbe& p) const override { return p.link == "anon_inode:[signalfd]"; }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    auto mask = probe.info.find("sigmask");
    if (mask == probe.info.end()) {
      ctx.refuse(probe.where + ": a signalfd whose fdinfo shows no mask");
      return false;
    }
    rec.kind = static_cast<uint32_t>(schema::FileKind::signalfd);
    rec.sigmask = std::stoull(mask->second, nullptr, 16);
    return true;
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      uint64_t mask = f->sigmask;
      // The raw call takes the kernel's 8-byte mask (glibc's sigset_t is larger).
      UniqueFd fd(static_cast<int>(::syscall(SYS_signalfd4, -1, &mask, sizeof mask, SFD_CLOEXEC)));
      if (!fd) throw_errno("signalfd", errno, Errc::kernel);
      if (::fcntl(fd.get(), F_SETFL, static_cast<int>(f->flags & ~O_ASYNC)) != 0)
        throw_errno("cannot set a signalfd's flags", errno, Errc::kernel);
      ctx.files[f->id] = std::move(fd);
    }
  }
  std::vector<std::string> restored() const override {
    return {"signal mask", "O_NONBLOCK", "the queued signals (the task's)"};
  }
};

}  // namespace

const FdKind& signalfd_kind() {
  static const SignalfdKind kind;
  return kind;
}

}  // namespace crest::fds
