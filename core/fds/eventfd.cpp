// eventfd: its counter and semaphore mode (fdinfo eventfd-count, eventfd-semaphore). Made again
// in the restorer with the same mode and the counter written back. Dump and restore side by side.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/fds/fd_kind.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

class EventfdKind : public FdKind {
 public:
  const char* name() const override { return "eventfd"; }
  bool claims(const FdProbe& p) const override { return p.link == "anon_inode:[eventfd]"; }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    auto count = probe.info.find("eventfd-count");
    if (count == probe.info.end()) {
      ctx.refuse(probe.where + ": an eventfd whose fdinfo shows no counter");
      return false;
    }
    rec.kind = static_cast<uint32_t>(schema::FileKind::eventfd);
    rec.count = std::stoull(count->second, nullptr, 16);
    auto sem = probe.info.find("eventfd-semaphore");
    if (sem != probe.info.end() && sem->second == "1") rec.kind_flags = EFD_SEMAPHORE;
    return true;
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      UniqueFd fd(::eventfd(0, EFD_CLOEXEC | (f->kind_flags & EFD_SEMAPHORE)));
      if (!fd) throw_errno("eventfd", errno, Errc::kernel);
      if (f->count != 0 && ::write(fd.get(), &f->count, sizeof f->count) != sizeof f->count)
        throw_errno("cannot give an eventfd its counter back", errno, Errc::kernel);
      if (::fcntl(fd.get(), F_SETFL, static_cast<int>(f->flags & ~O_ASYNC)) != 0)
        throw_errno("cannot set an eventfd's flags", errno, Errc::kernel);
      ctx.files[f->id] = std::move(fd);
    }
  }
  std::vector<std::string> restored() const override {
    return {"counter", "EFD_SEMAPHORE", "O_NONBLOCK", "owner (F_SETOWN_EX), F_SETSIG, O_ASYNC"};
  }
};

}  // namespace

const FdKind& eventfd_kind() {
  static const EventfdKind kind;
  return kind;
}

}  // namespace crest::fds
