// Regular files and directories reopened by path: flags and offset; a directory removed while
// open (made again, opened, removed again: the program keeps a removed directory). A file must
// still be the one the job had: renamed, replaced or resized files are refused at dump or
// restore (per --file-changes). Dump and restore side by side.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "core/checkpoint.h"
#include "core/fds/fd_kind.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

using schema::FileKind;

bool opened_for_writing(uint32_t flags) { return (flags & O_ACCMODE) != O_RDONLY; }

class RegularKind : public FdKind {
 public:
  const char* name() const override { return "regular file or directory"; }
  bool claims(const FdProbe& p) const override {
    return S_ISREG(p.st.st_mode) || S_ISDIR(p.st.st_mode);
  }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    if (fs_magic(probe) == PROC_SUPER_MAGIC || fs_magic(probe) == SYSFS_MAGIC) {
      ctx.refuse(probe.where + " is " + probe.link + " on procfs/sysfs; its contents describe this "
                 "node (only a task's own /proc files are reopened for the restored task)");
      return false;
    }
    if (S_ISDIR(probe.st.st_mode)) {
      rec.kind = static_cast<uint32_t>(FileKind::directory);
      if (strip_deleted(rec.path) || probe.st.st_nlink == 0) rec.deleted = 1;
      return true;
    }
    rec.kind = static_cast<uint32_t>(FileKind::regular);
    struct stat now {};
    if (::stat(rec.path.c_str(), &now) != 0 || now.st_dev != probe.st.st_dev ||
        now.st_ino != probe.st.st_ino) {
      ctx.refuse(probe.where + ": " + probe.link + " was renamed or replaced since it was "
                 "opened; the open file is no longer reachable by its path");
      return false;
    }
    // A file on tmpfs (/dev/shm, a tmpfs /tmp) is memory of the job: saved with its contents
    // and made again at its path (objects.cpp), as for the ones it maps shared (memory.cpp).
    // Not the root's stdio from outside the tree: that is its launcher's file.
    if (!probe.root_stdio && fs_magic(probe) == TMPFS_MAGIC) {
      rec.kind = static_cast<uint32_t>(FileKind::shm_file);
      rec.contents_owner = file_owner(rec.dev, rec.ino);
      return true;
    }
    return true;
  }
  // A file on tmpfs saved with the job is made again at restore in place of what is at its path:
  // a process outside the tree that maps or holds it too would keep the old one and no longer
  // share it with the job (as a System V segment attached from outside, refused).
  void finish_dump(DumpContext& ctx) const override {
    std::map<std::pair<uint64_t, uint64_t>, std::string> saved;
    for (const auto& f : ctx.meta.files)
      if (f.kind == static_cast<uint32_t>(FileKind::shm_file)) saved[{f.dev, f.ino}] = f.path;
    if (saved.empty()) return;
    std::set<std::pair<uint64_t, uint64_t>> reported;
    const pid_t self = ::getpid();
    std::error_code ec;
    for (const auto& proc : std::filesystem::directory_iterator("/proc", ec)) {
      const std::string name = proc.path().filename();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      const pid_t pid = static_cast<pid_t>(std::stol(name));
      if (pid == self || ctx.recorded(pid) != 0) continue;
      for (const char* dir : {"/map_files", "/fd"}) {
        std::error_code e2;
        for (const auto& entry : std::filesystem::directory_iterator(proc.path().string() + dir, e2)) {
          struct stat st {};
          if (::stat(entry.path().c_str(), &st) != 0) continue;
          auto key = std::make_pair(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
          auto it = saved.find(key);
          if (it == saved.end() || !reported.insert(key).second) continue;
          ctx.refuse(it->second + " (on tmpfs: saved with the job and made again at restore) is also " +
                     (std::string(dir) == "/fd" ? "held" : "mapped") + " by process " + name +
                     " outside the tree, which would no longer share it with the job; not supported");
        }
      }
    }
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    // The root's stdio that was a regular file handed over by a launcher (crest run's stdout or
    // stderr redirected to a file) is shared with that launcher again, as at launch, when the
    // restorer is given the launcher's descriptor: two descriptions of one file would each
    // write at their own offset, over each other's bytes.
    std::map<int64_t, int> launcher_fds;
    for (auto& p : ctx.meta.processes) {
      if (!(p.flags & schema::kProcessRoot)) continue;
      for (auto& fd : ctx.meta.fds) {
        auto given = ctx.opts.inherited_fds.find(fd.fd);
        if (fd.pid != p.pid || fd.fd > 2 || given == ctx.opts.inherited_fds.end()) continue;
        const auto& f = ctx.file(fd.file_id);
        struct stat st {};
        if (f.kind == static_cast<uint32_t>(FileKind::regular) &&
            ::fstat(given->second, &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == f.dev &&
            st.st_ino == f.ino)
          launcher_fds.emplace(f.id, given->second);
      }
    }
    for (const auto* f : rows) {
      UniqueFd fd;
      if (auto l = launcher_fds.find(f->id); l != launcher_fds.end()) {
        fd.reset(::fcntl(l->second, F_DUPFD_CLOEXEC, 3));
        if (!fd) throw_errno("cannot share the launcher's " + f->path, errno, Errc::kernel);
      } else if (f->deleted) {
        // Its offset is a position in a directory listing: set while it has one.
        Recreated again(*f, "directory");
        fd = reopen_path(again.path(), f->flags, "a directory removed while open");
        seek_to(fd.get(), f->pos, f->path);
        ctx.files[f->id] = std::move(fd);
        continue;
      } else {
        fd = reopen_path(f->path, f->flags, "open in the job");
      }
      seek_to(fd.get(), f->pos, f->path);
      ctx.files[f->id] = std::move(fd);
    }
  }
  std::vector<std::string> restored() const override {
    return {"path", "access mode and status flags", "offset", "close-on-exec",
            "directory removed while open", "owner (F_SETOWN_EX), F_SETSIG, O_ASYNC",
            "locks and leases (locks.cpp)"};
  }
  std::vector<std::string> refused() const override {
    return {"a file renamed or replaced since it was opened",
            "a file on tmpfs saved with the job that a process outside the tree maps or holds too"};
  }
};

}  // namespace

const FdKind& regular_kind() {
  static const RegularKind kind;
  return kind;
}

// Files the job had open or mapped must still be what they were, or the restored job would see
// different bytes than the checkpointed one.
void check_changed_files(RestoreContext& ctx) {
  std::vector<std::string> problems;
  std::set<int64_t> written;
  for (auto& fd : ctx.meta.fds)
    if (opened_for_writing(ctx.file(fd.file_id).flags)) written.insert(fd.file_id);
  for (auto& q : ctx.meta.socket_queues)  // descriptions in flight
    for (int64_t id : q.fds)
      if (id >= 0 && opened_for_writing(ctx.file(id).flags)) written.insert(id);
  for (auto& f : ctx.meta.files) {
    if (f.kind != static_cast<uint32_t>(FileKind::regular)) continue;
    struct stat now {};
    if (::stat(f.path.c_str(), &now) != 0) {
      problems.push_back(f.path + ": the job had it open or mapped; it is gone (" +
                         std::strerror(errno) + ")");
      continue;
    }
    if (static_cast<uint64_t>(now.st_size) == f.size) continue;
    std::string what = f.path + ": " + std::to_string(f.size) + " bytes at the checkpoint, " +
                       std::to_string(now.st_size) + " now";
    switch (ctx.opts.file_changes) {
      case FileChangePolicy::ignore:
        ctx.warnings.push_back(what + " (restored as it is now)");
        break;
      case FileChangePolicy::truncate:
        if (written.count(f.id) && static_cast<uint64_t>(now.st_size) > f.size) {
          if (::truncate(f.path.c_str(), static_cast<off_t>(f.size)) != 0)
            throw_errno("cannot roll " + f.path + " back to its checkpoint size");
          ctx.warnings.push_back(what + ": rolled back to the checkpoint size");
        } else {
          problems.push_back(what);
        }
        break;
      case FileChangePolicy::fail:
        problems.push_back(what);
        break;
    }
  }
  if (problems.empty()) return;
  std::string msg = "files the job uses changed since the checkpoint (restore with "
                    "--file-changes=truncate to roll grown output files back, or =ignore):";
  for (auto& p : problems) msg += "\n  " + p;
  fail(Errc::refused, msg);
}

}  // namespace crest::fds
