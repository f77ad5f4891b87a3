// Files of procfs and sysfs. A file under /proc/<pid>/ of a task of the tree (its maps, status,
// a task/<tid>/ file, the directory itself) describes that task: it is reopened for the
// restored task, once it exists, at the same offset. A /proc/<pid>/ file of a process outside
// the tree is refused (that process is not restored). Other procfs and sysfs files describe the
// node (/proc/meminfo, /sys/...): reopened by path, as a program that opens them again would see
// them. Dump and restore side by side.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstring>

#include "core/fds/fd_kind.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

bool on_procfs_or_sysfs(const FdProbe& p) {
  return fs_magic(p) == PROC_SUPER_MAGIC || fs_magic(p) == SYSFS_MAGIC;
}

// "/proc/<digits>" and the rest of a path; false if it is not a task's.
bool split_task_path(const std::string& path, pid_t& pid, std::string& rest) {
  if (path.rfind("/proc/", 0) != 0) return false;
  size_t i = 6, j = i;
  while (j < path.size() && std::isdigit(static_cast<unsigned char>(path[j]))) ++j;
  if (j == i || (j < path.size() && path[j] != '/')) return false;
  pid = static_cast<pid_t>(std::stol(path.substr(i, j - i)));
  rest = path.substr(j);
  return true;
}

class ProcfsKind : public FdKind {
 public:
  const char* name() const override { return "procfs or sysfs file"; }
  bool claims(const FdProbe& p) const override {
    return (S_ISREG(p.st.st_mode) || S_ISDIR(p.st.st_mode)) && on_procfs_or_sysfs(p);
  }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::proc);
    pid_t pid = 0;
    std::string rest;
    if (!split_task_path(probe.link, pid, rest)) return true;  // the node's: reopened by path
    // /proc/<pid>[/task/<tid>]/...: in the numbers of the tree.
    pid_t rpid = ctx.recorded(pid);
    if (rpid == 0) {
      ctx.refuse(probe.where + " is " + probe.link + ", a file of process " + std::to_string(pid) +
                 ", which is not in the tree");
      return false;
    }
    if (rest.rfind("/task/", 0) == 0) {
      size_t end = rest.find('/', 6);
      pid_t tid = static_cast<pid_t>(std::stol(rest.substr(6, end - 6)));
      pid_t rtid = ctx.recorded(tid);
      if (rtid == 0) {
        ctx.refuse(probe.where + " is " + probe.link + ", a file of thread " +
                   std::to_string(tid) + ", which is not in the tree");
        return false;
      }
      rest = "/task/" + std::to_string(rtid) + (end == std::string::npos ? "" : rest.substr(end));
    }
    rec.proc_pid = rpid;
    rec.path = "/proc/" + std::to_string(rpid) + rest;
    return true;
  }
  bool deferred() const override { return true; }
  // Stage 1: only the node's files; a task's are opened by open_late once the task exists.
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      if (f->proc_pid) continue;
      UniqueFd fd = reopen_path(f->path, f->flags, "a file of procfs or sysfs");
      if (!S_ISDIR(f->mode)) seek_to(fd.get(), f->pos, f->path);
      ctx.files[f->id] = std::move(fd);
    }
  }
  UniqueFd open_late(RestoreContext& ctx, const schema::FileRecord& f) const override {
    pid_t rpid = 0;
    std::string rest;
    if (!split_task_path(f.path, rpid, rest))
      fail(Errc::corrupt, "file row " + std::to_string(f.id) + ": " + f.path + " is not a task's");
    auto host = [&](pid_t recorded) -> pid_t {
      for (auto& p : ctx.procs)
        for (size_t i = 0; i < p->threads.size() && i < p->thread_recs.size(); ++i)
          if (p->thread_recs[i]->tid == recorded) return p->threads[i];
      if (auto it = ctx.by_pid.find(recorded); it != ctx.by_pid.end()) return it->second->pid;
      fail(Errc::corrupt, f.path + ": task " + std::to_string(recorded) + " is not restored");
    };
    if (rest.rfind("/task/", 0) == 0) {
      size_t end = rest.find('/', 6);
      pid_t rtid = static_cast<pid_t>(std::stol(rest.substr(6, end - 6)));
      rest = "/task/" + std::to_string(host(rtid)) + (end == std::string::npos ? "" : rest.substr(end));
    }
    const std::string path = "/proc/" + std::to_string(host(rpid)) + rest;
    UniqueFd fd = reopen_path(path, f.flags, "a file of a task of the tree");
    if (!S_ISDIR(f.mode)) seek_to(fd.get(), f.pos, path);
    return fd;
  }
  std::vector<std::string> restored() const override {
    return {"/proc/<pid>/ files and directories of a task of the tree, reopened for the restored "
            "task (offset, flags)", "other procfs and sysfs files reopened by path"};
  }
  std::vector<std::string> refused() const override {
    return {"/proc/<pid>/ files of processes outside the tree"};
  }
};

}  // namespace

const FdKind& procfs_kind() {
  static const ProcfsKind kind;
  return kind;
}

}  // namespace crest::fds
