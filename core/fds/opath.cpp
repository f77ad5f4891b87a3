// O_PATH descriptors: a location in the file system, of any kind of file (a symlink itself when
// opened with O_NOFOLLOW). Nothing is read or written through them; they are reopened with
// O_PATH by path, which must still lead to the same file. Dump and restore side by side.
#include <fcntl.h>
#include <sys/stat.h>

#include "core/fds/fd_kind.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

class PathKind : public FdKind {
 public:
  const char* name() const override { return "O_PATH descriptor"; }
  bool claims(const FdProbe& p) const override { return (p.flags & O_PATH) != 0; }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::path);
    struct stat now {};
    int r = S_ISLNK(probe.st.st_mode) ? ::lstat(rec.path.c_str(), &now) : ::stat(rec.path.c_str(), &now);
    if (r != 0 || now.st_dev != probe.st.st_dev || now.st_ino != probe.st.st_ino) {
      ctx.refuse(probe.where + " (O_PATH) names " + probe.link + ", which was removed, renamed "
                 "or replaced since it was opened");
      return false;
    }
    rec.pos = 0;
    return true;
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      int flags = O_PATH | O_CLOEXEC | static_cast<int>(f->flags & (O_DIRECTORY | O_NOFOLLOW));
      if (S_ISLNK(f->mode)) flags |= O_NOFOLLOW;
      int fd = ::open(f->path.c_str(), flags);
      if (fd < 0) throw_errno("cannot reopen " + f->path + " with O_PATH");
      ctx.files[f->id] = UniqueFd(fd);
    }
  }
  std::vector<std::string> restored() const override {
    return {"path (the same file: device and inode checked at dump)", "O_NOFOLLOW (a symlink)",
            "O_DIRECTORY"};
  }
  std::vector<std::string> refused() const override {
    return {"an O_PATH descriptor whose file was removed, renamed or replaced"};
  }
};

}  // namespace

const FdKind& path_kind() {
  static const PathKind kind;
  return kind;
}

}  // namespace crest::fds
