// Files: the fd table of each process and the open file descriptions it refers to — regular
// files and directories (flags, offset), files unlinked while open and memfds (contents saved),
// harmless character devices, and stdio inherited from outside the tree. Pipes and FIFOs are in
// pipes.cpp. Every other kind of descriptor is refused by name. Dump and restore side by side.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>

#include "core/checkpoint.h"
#include "core/context.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace crest {
namespace {

using schema::FileKind;

bool same_description(pid_t p1, int fd1, pid_t p2, int fd2) {
  return ::syscall(SYS_kcmp, p1, p2, KCMP_FILE, fd1, fd2) == 0;
}

// Character devices that carry no state worth saving: reopened by path.
bool stateless_chardev(dev_t rdev) {
  if (major(rdev) != 1) return false;
  switch (minor(rdev)) {
    case 3:  // null
    case 5:  // zero
    case 7:  // full
    case 8:  // random
    case 9:  // urandom
      return true;
  }
  return false;
}

bool is_tty(dev_t rdev) {
  unsigned maj = major(rdev);
  return maj == 4 || maj == 5 || (maj >= 136 && maj <= 143);
}

// What an fd that crest cannot restore is, for the refusal message.
std::string unsupported_kind(const std::string& link) {
  if (link.rfind("socket:", 0) == 0) return "a socket";
  static const std::pair<const char*, const char*> anon[] = {
      {"[eventfd]", "an eventfd"},       {"[eventpoll]", "an epoll instance"},
      {"[timerfd]", "a timerfd"},        {"[signalfd]", "a signalfd"},
      {"inotify", "an inotify instance"}, {"[fanotify]", "a fanotify instance"},
      {"[io_uring]", "an io_uring instance"}, {"[pidfd]", "a pidfd"},
      {"[userfaultfd]", "a userfaultfd"}, {"[perf_event]", "a perf event"},
      {"bpf", "a BPF object"},           {"[memfd_secret]", "a secret memory area"}};
  if (link.rfind("anon_inode:", 0) == 0) {
    for (auto& [needle, what] : anon)
      if (link.find(needle) != std::string::npos) return what;
    return "an anonymous-inode file (" + link.substr(11) + ")";
  }
  return "";
}

}  // namespace

schema::FileRecord& DumpContext::add_file(schema::FileRecord rec) {
  rec.id = static_cast<int64_t>(meta.files.size());
  meta.files.push_back(std::move(rec));
  return meta.files.back();
}

schema::FileRecord* DumpContext::file(int64_t id) {
  if (id < 0 || id >= static_cast<int64_t>(meta.files.size())) return nullptr;
  return &meta.files[static_cast<size_t>(id)];
}

void dump_fds(DumpContext& ctx, const ptrace::FrozenProcess& p) {
  const pid_t pid = p.pid;
  const pid_t rpid = ctx.recorded(pid);
  const bool is_root = pid == ctx.tree.root();

  for (int fd : proc::fds(pid)) {
    const std::string fd_path = proc::path(pid, "fd/" + std::to_string(fd));
    const std::string where = "process " + std::to_string(pid) + ": fd " + std::to_string(fd);
    std::string link;
    struct stat st {};
    try {
      link = proc::readlink(fd_path);
    } catch (const Error& e) {
      ctx.refuse(where + ": " + e.what());
      continue;
    }
    if (::stat(fd_path.c_str(), &st) != 0) {
      ctx.refuse(where + " (" + link + "): cannot stat: " + std::strerror(errno));
      continue;
    }
    auto info = proc::fdinfo(pid, fd);
    uint32_t flags = static_cast<uint32_t>(std::stoul(info["flags"], nullptr, 8));
    uint64_t pos = std::stoull(info["pos"]);

    schema::FdRecord fdrec;
    fdrec.pid = rpid;
    fdrec.fd = fd;
    fdrec.fd_flags = (flags & O_CLOEXEC) ? FD_CLOEXEC : 0;
    flags &= ~static_cast<uint32_t>(O_CLOEXEC);

    // The same open file description may already be known (an earlier fd or process).
    auto key = std::make_pair(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
    int64_t found = -1;
    for (auto& [id, opid, ofd] : ctx.descriptions[key])
      if (same_description(opid, ofd, pid, fd)) {
        found = id;
        break;
      }
    if (found >= 0) {
      fdrec.file_id = found;
      ctx.meta.fds.push_back(fdrec);
      continue;
    }

    schema::FileRecord rec;
    rec.path = link;
    rec.flags = flags;
    rec.pos = pos;
    rec.dev = st.st_dev;
    rec.ino = st.st_ino;
    rec.rdev = st.st_rdev;
    rec.mode = st.st_mode;
    rec.size = static_cast<uint64_t>(st.st_size);
    rec.mtime_ns = st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec;
    bool stdio = is_root && fd <= 2;

    std::string refusal = unsupported_kind(link);
    if (!refusal.empty()) {
      if (stdio && link.rfind("socket:", 0) == 0) {
        rec.kind = static_cast<uint32_t>(FileKind::inherited);
        rec.inherited_fd = fd;
      } else {
        ctx.refuse(where + " is " + refusal + " (" + link + "); not supported yet");
        continue;
      }
    } else if (link.rfind("pipe:", 0) == 0) {
      rec.kind = static_cast<uint32_t>(FileKind::pipe);
      if (stdio) rec.inherited_fd = fd;  // decided in finish_files: inherited if the peer is outside
    } else if (S_ISFIFO(st.st_mode)) {
      rec.kind = static_cast<uint32_t>(FileKind::fifo);
    } else if (S_ISDIR(st.st_mode)) {
      rec.kind = static_cast<uint32_t>(FileKind::directory);
    } else if (S_ISCHR(st.st_mode)) {
      if (stateless_chardev(st.st_rdev)) {
        rec.kind = static_cast<uint32_t>(FileKind::chardev);
      } else if (stdio && is_tty(st.st_rdev)) {
        rec.kind = static_cast<uint32_t>(FileKind::inherited);
        rec.inherited_fd = fd;
      } else {
        ctx.refuse(where + " is the device " + link + "; devices other than /dev/null, zero, "
                   "full, random and urandom are not supported");
        continue;
      }
    } else if (S_ISREG(st.st_mode)) {
      struct statfs sfs {};
      if (::statfs(fd_path.c_str(), &sfs) == 0 &&
          (sfs.f_type == PROC_SUPER_MAGIC || sfs.f_type == SYSFS_MAGIC)) {
        ctx.refuse(where + " is " + link + " on procfs/sysfs; its contents describe this node");
        continue;
      }
      if (link.rfind("/memfd:", 0) == 0) {
        rec.kind = static_cast<uint32_t>(FileKind::memfd);
      } else if (st.st_nlink == 0) {
        rec.kind = static_cast<uint32_t>(FileKind::unlinked);
      } else {
        struct stat now {};
        if (::stat(link.c_str(), &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
          ctx.refuse(where + ": " + link + " was renamed or replaced since it was opened; the "
                     "open file is no longer reachable by its path");
          continue;
        }
        rec.kind = static_cast<uint32_t>(FileKind::regular);
      }
    } else {
      ctx.refuse(where + " (" + link + ") is a kind of file crest does not handle");
      continue;
    }

    if (rec.kind == static_cast<uint32_t>(FileKind::memfd) ||
        rec.kind == static_cast<uint32_t>(FileKind::unlinked)) {
      if (rec.kind == static_cast<uint32_t>(FileKind::unlinked) && rec.path.size() > 10 &&
          rec.path.compare(rec.path.size() - 10, 10, " (deleted)") == 0)
        rec.path.resize(rec.path.size() - 10);
      // Seals live on the inode; read them through a descriptor of our own.
      int own = ::open(fd_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (own >= 0) {
        int seals = ::fcntl(own, F_GET_SEALS);
        if (seals > 0) rec.seals = static_cast<uint32_t>(seals);
        ::close(own);
      }
    }
    auto& added = ctx.add_file(std::move(rec));
    if (added.kind == static_cast<uint32_t>(FileKind::memfd) ||
        added.kind == static_cast<uint32_t>(FileKind::unlinked))
      plan_file_contents(ctx, added, fd_path);
    ctx.descriptions[key].emplace_back(added.id, pid, fd);
    if (!ctx.file_by_inode.count(key)) ctx.file_by_inode[key] = added.id;
    fdrec.file_id = added.id;
    ctx.meta.fds.push_back(fdrec);
  }
}

}  // namespace crest

// ---- restore ----------------------------------------------------------------------------------

namespace crest {
namespace {

bool opened_for_writing(uint32_t flags) { return (flags & O_ACCMODE) != O_RDONLY; }

UniqueFd open_path(const std::string& path, uint32_t flags, const char* why) {
  int clean = static_cast<int>(flags) & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY);
  int fd = ::open(path.c_str(), clean | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot reopen " + path + " (" + why + ")");
  return UniqueFd(fd);
}

void seek(int fd, uint64_t pos, const std::string& what) {
  if (::lseek(fd, static_cast<off_t>(pos), SEEK_SET) < 0)
    throw_errno("cannot seek " + what + " to " + std::to_string(pos));
}

// Writes a file object's saved contents at their offsets.
class FileSink : public storage::PageSink {
 public:
  FileSink(int fd, uint64_t size, std::string what) : fd_(fd), size_(size), what_(std::move(what)) {}
  void on_pages(const storage::PageExtent& run, schema::PageKind kind, const std::byte* data) override {
    if (kind != schema::PageKind::data) return;  // holes and zero pages read as zeros
    uint64_t end = std::min(size_, run.addr + run.npages * 4096);
    if (end <= run.addr) return;
    size_t len = end - run.addr, done = 0;
    while (done < len) {
      ssize_t n = ::pwrite(fd_, data + done, len - done, static_cast<off_t>(run.addr + done));
      if (n < 0) throw_errno("cannot write the contents of " + what_);
      done += static_cast<size_t>(n);
    }
  }

 private:
  int fd_;
  uint64_t size_;
  std::string what_;
};

// Recreates a memfd, shared memory object or unlinked file with its saved contents.
UniqueFd create_object(RestoreContext& ctx, const schema::FileRecord& f) {
  auto kind = static_cast<FileKind>(f.kind);
  UniqueFd fd;
  std::string created_path;
  if (kind == FileKind::memfd || kind == FileKind::shmem) {
    std::string name = kind == FileKind::shmem ? "crest-shmem" : f.path;
    if (name.rfind("/memfd:", 0) == 0) name = name.substr(7);
    if (name.size() > 10 && name.compare(name.size() - 10, 10, " (deleted)") == 0)
      name.resize(name.size() - 10);
    unsigned flags = MFD_CLOEXEC | (f.seals ? MFD_ALLOW_SEALING : 0);
    fd.reset(static_cast<int>(::syscall(SYS_memfd_create, name.substr(0, 249).c_str(), flags)));
    if (!fd) throw_errno("memfd_create for " + f.path, errno, Errc::kernel);
  } else {
    // Recreate it under its name (then unlink it, as it was), or unnamed in its directory.
    std::string dir = f.path.substr(0, f.path.find_last_of('/') + 1);
    int r = ::open(f.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, f.mode & 07777);
    if (r >= 0) {
      created_path = f.path;
    } else {
      r = ::open(dir.empty() ? "." : dir.c_str(), O_RDWR | O_TMPFILE | O_CLOEXEC, f.mode & 07777);
      if (r < 0)
        throw_errno("cannot recreate the unlinked file " + f.path + " in " + dir, errno, Errc::io);
    }
    fd.reset(r);
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(f.size)) != 0)
    throw_errno("cannot size " + f.path, errno, Errc::io);
  FileSink sink(fd.get(), f.size, f.path);
  ctx.reader.read_pages({f.contents_owner}, sink);
  if (!created_path.empty()) ::unlink(created_path.c_str());
  if (f.seals && ::fcntl(fd.get(), F_ADD_SEALS, static_cast<int>(f.seals)) != 0)
    throw_errno("cannot seal " + f.path, errno, Errc::kernel);
  return fd;
}

// Files the job had open or mapped must still be what they were, or the restored job would see
// different bytes than the checkpointed one. Returns the problems (per the policy).
std::vector<std::string> check_changed_files(RestoreContext& ctx) {
  std::vector<std::string> problems;
  std::set<int64_t> written;
  for (auto& fd : ctx.meta.fds)
    if (opened_for_writing(ctx.file(fd.file_id).flags)) written.insert(fd.file_id);
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
  return problems;
}

}  // namespace

UniqueFd RestoreContext::open_for_mapping(const schema::FileRecord& f, bool writable) {
  if (f.contents_owner) {
    auto it = objects.find(f.contents_owner);
    if (it == objects.end()) fail(Errc::internal, "memory object of " + f.path + " not created");
    return UniqueFd(::fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0));
  }
  return open_path(f.path, writable ? O_RDWR : O_RDONLY, "mapped by the job");
}

int RestoreContext::install_fd(RestoredProcess& p, int our_fd) {
  return static_cast<int>(p.inj->call("pidfd_getfd", SYS_pidfd_getfd,
                                      static_cast<uint64_t>(p.tracer_pidfd_remote),
                                      static_cast<uint64_t>(our_fd), 0));
}

void prepare_files(RestoreContext& ctx) {
  auto problems = check_changed_files(ctx);
  if (!problems.empty()) {
    std::string msg = "files the job uses changed since the checkpoint (restore with "
                      "--file-changes=truncate to roll grown output files back, or =ignore):";
    for (auto& p : problems) msg += "\n  " + p;
    fail(Errc::refused, msg);
  }
  std::set<int64_t> described;  // rows some fd refers to
  for (auto& fd : ctx.meta.fds) described.insert(fd.file_id);
  // The root's stdio that was a regular file handed over by a launcher (crest run's stdout or
  // stderr redirected to a file) is shared with that launcher again, as at launch, when the
  // restorer is given the launcher's descriptor: two descriptions of one file would each write
  // at their own offset, over each other's bytes.
  std::map<int64_t, int> launcher_fds;
  for (auto& p : ctx.meta.processes) {
    if (!(p.flags & schema::kProcessRoot)) continue;
    for (auto& fd : ctx.meta.fds) {
      auto given = ctx.opts.inherited_fds.find(fd.fd);
      if (fd.pid != p.pid || fd.fd > 2 || given == ctx.opts.inherited_fds.end()) continue;
      const auto& f = ctx.file(fd.file_id);
      struct stat st {};
      if (f.kind == static_cast<uint32_t>(FileKind::regular) && ::fstat(given->second, &st) == 0 &&
          S_ISREG(st.st_mode) && st.st_dev == f.dev && st.st_ino == f.ino)
        launcher_fds.emplace(f.id, given->second);
    }
  }

  for (auto& f : ctx.meta.files) {
    auto kind = static_cast<FileKind>(f.kind);
    if (f.contents_owner && !ctx.objects.count(f.contents_owner))
      ctx.objects[f.contents_owner] = create_object(ctx, f);
    if (!described.count(f.id)) continue;
    UniqueFd fd;
    switch (kind) {
      case FileKind::regular:
      case FileKind::directory:
      case FileKind::chardev:
        if (auto l = launcher_fds.find(f.id); l != launcher_fds.end()) {
          fd.reset(::fcntl(l->second, F_DUPFD_CLOEXEC, 3));
          if (!fd) throw_errno("cannot share the launcher's " + f.path, errno, Errc::kernel);
        } else {
          fd = open_path(f.path, f.flags, "open in the job");
        }
        break;
      case FileKind::memfd:
      case FileKind::unlinked:
      case FileKind::shmem: {
        // A description of its own on the recreated object, with the recorded access mode.
        std::string self = "/proc/self/fd/" + std::to_string(ctx.objects.at(f.contents_owner).get());
        fd = open_path(self, f.flags, "recreated");
        break;
      }
      case FileKind::inherited: {
        int source = f.inherited_fd;
        if (auto it = ctx.opts.inherited_fds.find(source); it != ctx.opts.inherited_fds.end())
          source = it->second;
        int ours = ::fcntl(source, F_DUPFD_CLOEXEC, 3);
        if (ours < 0) {
          ctx.warnings.push_back("fd " + std::to_string(f.inherited_fd) +
                                 " (stdio from outside the job) is not open in the restorer: "
                                 "the job gets /dev/null instead");
          ours = ::open("/dev/null", O_RDWR | O_CLOEXEC);
        }
        fd.reset(ours);
        break;
      }
      case FileKind::pipe:
      case FileKind::fifo:
        continue;  // restore_pipes
    }
    if (kind == FileKind::regular || kind == FileKind::directory || kind == FileKind::memfd ||
        kind == FileKind::unlinked)
      seek(fd.get(), f.pos, f.path);
    ctx.files[f.id] = std::move(fd);
  }
  restore_pipes(ctx);
}

void restore_fds(RestoreContext& ctx, RestoredProcess& p) {
  Injector& inj = *p.inj;
  std::map<int, const schema::FdRecord*> want, parent_has;
  for (auto& fd : ctx.meta.fds) {
    if (fd.pid == p.rec->pid) want[fd.fd] = &fd;
    if (p.rec->ppid && fd.pid == p.rec->ppid && !(p.rec->flags & schema::kProcessRoot))
      parent_has[fd.fd] = &fd;
  }
  // What the fork gave us: keep what is the same description at the same number, close the rest.
  std::set<int> kept;
  for (int fd : proc::fds(p.pid)) {
    if (fd == p.tracer_pidfd_remote) continue;
    auto w = want.find(fd);
    auto h = parent_has.find(fd);
    if (w != want.end() && h != parent_has.end() && w->second->file_id == h->second->file_id) {
      kept.insert(fd);
      inj.call("fcntl(F_SETFD)", SYS_fcntl, static_cast<uint64_t>(fd), F_SETFD, w->second->fd_flags);
      continue;
    }
    inj.call("close", SYS_close, static_cast<uint64_t>(fd));
  }
  for (auto& [num, rec] : want) {
    if (kept.count(num)) continue;
    auto it = ctx.files.find(rec->file_id);
    if (it == ctx.files.end())
      fail(Errc::internal, "fd " + std::to_string(num) + ": its file was not prepared");
    int tmp = ctx.install_fd(p, it->second.get());
    if (tmp != num) {
      inj.call("dup3", SYS_dup3, static_cast<uint64_t>(tmp), static_cast<uint64_t>(num),
               (rec->fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0);
      inj.call("close", SYS_close, static_cast<uint64_t>(tmp));
    } else {
      inj.call("fcntl(F_SETFD)", SYS_fcntl, static_cast<uint64_t>(num), F_SETFD, rec->fd_flags);
    }
  }
}

}  // namespace crest
