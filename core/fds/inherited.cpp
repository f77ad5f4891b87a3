// Stdio the job inherited from outside its tree — a terminal, a launcher's pipe or socket:
// nothing of it is saved; the restored root gets what the restorer is given for that number
// (RestoreOptions::inherited_fds) or the restorer's own descriptor of the same number.
// (A pipe is decided inherited by pipe.cpp once both ends are known.)
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "core/checkpoint.h"
#include "core/fds/fd_kind.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

bool is_tty(dev_t rdev) {
  unsigned maj = major(rdev);
  return maj == 4 || maj == 5 || (maj >= 136 && maj <= 143);
}

class InheritedKind : public FdKind {
 public:
  const char* name() const override { return "stdio from outside the tree"; }
  bool claims(const FdProbe& p) const override {
    return p.root_stdio && (p.link.rfind("socket:", 0) == 0 ||
                            (S_ISCHR(p.st.st_mode) && is_tty(p.st.st_rdev)));
  }
  bool dump(DumpContext&, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::inherited);
    rec.inherited_fd = probe.fd;
    return true;
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      int source = f->inherited_fd;
      if (auto it = ctx.opts.inherited_fds.find(source); it != ctx.opts.inherited_fds.end())
        source = it->second;
      int ours = ::fcntl(source, F_DUPFD_CLOEXEC, 3);
      if (ours < 0) {
        ctx.warnings.push_back("fd " + std::to_string(f->inherited_fd) +
                               " (stdio from outside the job) is not open in the restorer: "
                               "the job gets /dev/null instead");
        ours = ::open("/dev/null", O_RDWR | O_CLOEXEC);
      }
      ctx.files[f->id] = UniqueFd(ours);
    }
  }
  std::vector<std::string> restored() const override {
    return {"reconnected to the restorer's descriptor of the same number (or the one given)"};
  }
};

}  // namespace

const FdKind& inherited_kind() {
  static const InheritedKind kind;
  return kind;
}

}  // namespace crest::fds
