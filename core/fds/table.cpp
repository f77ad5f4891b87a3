// The fd table of each process, and what every open file description has whatever its kind:
// close-on-exec per descriptor, sharing between descriptors and processes (kcmp), the owner
// that gets SIGIO/SIGURG (F_SETOWN_EX), the signal sent (F_SETSIG) and O_ASYNC. Each kind's own
// state is in its file of core/fds/ (see fd_kind.h for the stages).
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "core/checkpoint.h"
#include "core/fds/fd_kind.h"
#include "core/locks.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

namespace crest {
namespace fds {

const std::vector<const FdKind*>& fd_kinds() {
  // Order matters: O_PATH descriptors and stdio from outside are told apart before the type of
  // the file is looked at; what nobody else claims is refused by name.
  static const std::vector<const FdKind*> kinds = {
      &path_kind(),     &inherited_kind(), &eventfd_kind(),  &timerfd_kind(), &signalfd_kind(),
      &pidfd_kind(),    &epoll_kind(),     &inotify_kind(),  &unix_socket_kind(),
      &tcp_socket_kind(), &udp_socket_kind(), &unsupported_kind(),
      &pipe_kind(),     &procfs_kind(),    &object_kind(),   &chardev_kind(), &regular_kind()};
  return kinds;
}

bool strip_deleted(std::string& path) {
  static const std::string suffix = " (deleted)";
  if (path.size() > suffix.size() &&
      path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0) {
    path.resize(path.size() - suffix.size());
    return true;
  }
  return false;
}

UniqueFd reopen_path(const std::string& path, uint32_t flags, const std::string& why) {
  // Flags that act at open time only are not repeated; O_ASYNC is set by the task itself later
  // (the kernel records the descriptor number that set it).
  int clean = static_cast<int>(flags) & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_ASYNC);
  int fd = ::open(path.c_str(), clean | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot reopen " + path + " (" + why + ")");
  return UniqueFd(fd);
}

void seek_to(int fd, uint64_t pos, const std::string& what) {
  if (::lseek(fd, static_cast<off_t>(pos), SEEK_SET) < 0)
    throw_errno("cannot seek " + what + " to " + std::to_string(pos));
}

Recreated::Recreated(const schema::FileRecord& f, const char* what) {
  const std::string dir = f.path.substr(0, f.path.find_last_of('/') + 1);
  const mode_t type = f.mode & S_IFMT;
  dir_ = type == S_IFDIR;
  auto make = [&](const std::string& p) {
    if (dir_) return ::mkdir(p.c_str(), f.mode & 07777);
    return ::mknod(p.c_str(), type | (f.mode & 07777), static_cast<dev_t>(f.rdev));
  };
  std::string candidate = f.path;
  for (int attempt = 0; make(candidate) != 0; ++attempt) {
    if (errno != EEXIST || attempt > 100)
      throw_errno(std::string("cannot recreate the removed ") + what + " " + f.path, errno,
                  Errc::io);
    candidate = dir + ".crest-removed-" + std::to_string(::getpid()) + "-" + std::to_string(attempt);
  }
  path_ = candidate;
  // Its owner and mode as they were; the umask does not apply to what was.
  if (::chown(path_.c_str(), f.uid, f.gid) != 0 || ::chmod(path_.c_str(), f.mode & 07777) != 0) {
    int err = errno;
    this->~Recreated();
    throw_errno(std::string("cannot give the recreated ") + what + " " + f.path +
                    " its owner and mode",
                err, Errc::io);
  }
}

Recreated::~Recreated() {
  if (path_.empty()) return;
  if (dir_)
    ::rmdir(path_.c_str());
  else
    ::unlink(path_.c_str());
  path_.clear();
}

std::map<std::string, std::string> read_fdinfo(pid_t pid, int fd, std::vector<std::string>& locks) {
  std::map<std::string, std::string> out;
  std::istringstream in(fs::read_file(proc::path(pid, "fdinfo/" + std::to_string(fd))));
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    std::string value = line.substr(line.find_first_not_of(" \t", colon + 1) == std::string::npos
                                        ? line.size()
                                        : line.find_first_not_of(" \t", colon + 1));
    if (key == "lock")
      locks.push_back(value);
    else
      out.emplace(key, value);
  }
  return out;
}

namespace {

// kcmp orders open file descriptions (0: the same, 1: the first sorts before, 2: after), so the
// descriptions of one inode (all eventfds share one) are kept sorted and found by bisection.
long compare_descriptions(pid_t p1, int fd1, pid_t p2, int fd2) {
  return ::syscall(SYS_kcmp, p1, p2, KCMP_FILE, fd1, fd2);
}

// F_GETOWN_EX and F_GETSIG of a description, through our own copy of it.
void dump_owner(DumpContext& ctx, int pidfd, const FdProbe& probe, schema::FileRecord& rec) {
  UniqueFd copy = proc::copy_fd(pidfd, probe.fd);
  if (!copy) {
    ctx.refuse(probe.where + ": cannot take a copy to read its owner: " + std::strerror(errno));
    return;
  }
  f_owner_ex own{};
  if (::fcntl(copy.get(), F_GETOWN_EX, &own) == 0 && own.pid != 0) {
    pid_t as_tree = 0;
    if (own.type == F_OWNER_PGRP) {
      for (auto& p : ctx.tree.processes())
        if (proc::stat(p.pid).pgrp == own.pid) {
          auto st = proc::status(p.pid);
          auto ns = proc::status_numbers(st, "NSpgid");
          as_tree = ns.empty() ? own.pid : static_cast<pid_t>(ns.back());
          break;
        }
    } else {
      as_tree = ctx.recorded(own.pid);
    }
    if (as_tree == 0)
      ctx.refuse(probe.where + " (" + probe.link + "): its SIGIO owner, " +
                 (own.type == F_OWNER_PGRP ? "process group " : "task ") + std::to_string(own.pid) +
                 ", is outside the tree");
    rec.owner_type = own.type;
    rec.owner_pid = as_tree;
  }
  int sig = ::fcntl(copy.get(), F_GETSIG);
  if (sig > 0) rec.signum = sig;
}

}  // namespace
}  // namespace fds

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
  using namespace fds;
  const pid_t pid = p.pid;
  const pid_t rpid = ctx.recorded(pid);
  const bool is_root = pid == ctx.tree.root();
  UniqueFd pidfd = proc::open_pidfd(pid);
  if (!pidfd) throw_errno("pidfd_open of process " + std::to_string(pid), errno, Errc::kernel);
  // A process sharing its parent's fd table (clone CLONE_FILES) has the very same descriptors:
  // they are restored once, by the parent, and shared again.
  for (auto& rec : ctx.meta.processes)
    if (rec.pid == rpid && (rec.flags & schema::kProcessSharesFiles)) return;

  for (int fd : proc::fds(pid)) {
    FdProbe probe;
    probe.pid = pid;
    probe.fd = fd;
    probe.fd_path = proc::path(pid, "fd/" + std::to_string(fd));
    probe.where = "process " + std::to_string(pid) + ": fd " + std::to_string(fd);
    probe.root_stdio = is_root && fd <= 2;
    probe.pidfd = pidfd.get();
    std::vector<std::string> lock_lines;
    try {
      probe.link = proc::readlink(probe.fd_path);
      probe.info = read_fdinfo(pid, fd, lock_lines);
    } catch (const Error& e) {
      ctx.refuse(probe.where + ": " + e.what());
      continue;
    }
    if (::stat(probe.fd_path.c_str(), &probe.st) != 0) {
      ctx.refuse(probe.where + " (" + probe.link + "): cannot stat: " + std::strerror(errno));
      continue;
    }
    probe.flags = static_cast<uint32_t>(std::stoul(probe.info["flags"], nullptr, 8));
    if (probe.link.rfind("socket:", 0) == 0) {
      UniqueFd copy = proc::copy_fd(pidfd.get(), fd);
      int domain = -1;
      socklen_t len = sizeof domain;
      if (copy && ::getsockopt(copy.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0)
        probe.sock_domain = domain;
      len = sizeof domain;
      if (copy && ::getsockopt(copy.get(), SOL_SOCKET, SO_TYPE, &domain, &len) == 0)
        probe.sock_type = domain;
      len = sizeof domain;
      if (copy && ::getsockopt(copy.get(), SOL_SOCKET, SO_PROTOCOL, &domain, &len) == 0)
        probe.sock_protocol = domain;
    }
    probe.pos = std::stoull(probe.info["pos"]);

    schema::FdRecord fdrec;
    fdrec.pid = rpid;
    fdrec.fd = fd;
    fdrec.fd_flags = (probe.flags & O_CLOEXEC) ? FD_CLOEXEC : 0;
    probe.flags &= ~static_cast<uint32_t>(O_CLOEXEC);

    // The same open file description may already be known (an earlier fd or process).
    auto key = std::make_pair(static_cast<uint64_t>(probe.st.st_dev),
                              static_cast<uint64_t>(probe.st.st_ino));
    int64_t found = -1;
    auto& known = ctx.descriptions[key];
    size_t lo = 0, hi = known.size();
    while (lo < hi) {
      const size_t mid = (lo + hi) / 2;
      auto& [id, opid, ofd] = known[mid];
      const long c = compare_descriptions(pid, fd, opid, ofd);
      if (c == 0) {
        found = id;
        break;
      }
      if (c == 1)
        hi = mid;
      else if (c == 2)
        lo = mid + 1;
      else {
        ctx.refuse(probe.where + ": kcmp cannot compare its file with the others (" +
                   std::to_string(c) + ", " + std::strerror(errno) + ")");
        break;
      }
    }
    const size_t insert_at = lo;
    if (found >= 0) {
      fdrec.file_id = found;
      ctx.meta.fds.push_back(fdrec);
      dump_lock_lines(ctx, p, fd, found, lock_lines);
      continue;
    }

    schema::FileRecord rec;
    rec.path = probe.link;
    rec.flags = probe.flags;
    rec.pos = probe.pos;
    rec.dev = probe.st.st_dev;
    rec.ino = probe.st.st_ino;
    rec.rdev = probe.st.st_rdev;
    rec.mode = probe.st.st_mode;
    rec.uid = probe.st.st_uid;
    rec.gid = probe.st.st_gid;
    rec.size = static_cast<uint64_t>(probe.st.st_size);
    rec.mtime_ns = probe.st.st_mtim.tv_sec * 1000000000ll + probe.st.st_mtim.tv_nsec;

    const FdKind* kind = nullptr;
    for (const FdKind* k : fd_kinds())
      if (k->claims(probe)) {
        kind = k;
        break;
      }
    if (!kind || !kind->dump(ctx, probe, rec)) continue;
    if (static_cast<schema::FileKind>(rec.kind) != schema::FileKind::inherited)
      dump_owner(ctx, pidfd.get(), probe, rec);
    auto& added = ctx.add_file(std::move(rec));
    if (added.contents_owner) plan_file_contents(ctx, added, probe.fd_path);
    known.emplace(known.begin() + static_cast<std::ptrdiff_t>(insert_at), added.id, pid, fd);
    if (!ctx.file_by_inode.count(key)) ctx.file_by_inode[key] = added.id;
    fdrec.file_id = added.id;
    ctx.meta.fds.push_back(fdrec);
    dump_lock_lines(ctx, p, fd, added.id, lock_lines);
  }
}

void finish_dump_fds(DumpContext& ctx) {
  for (const fds::FdKind* k : fds::fd_kinds()) k->finish_dump(ctx);
}

}  // namespace crest

// ---- restore ----------------------------------------------------------------------------------

namespace crest {

int RestoreContext::install_fd(RestoredProcess& p, int our_fd) {
  return static_cast<int>(p.inj->call("pidfd_getfd", SYS_pidfd_getfd,
                                      static_cast<uint64_t>(p.tracer_pidfd_remote),
                                      static_cast<uint64_t>(our_fd), 0));
}

UniqueFd RestoreContext::open_for_mapping(const schema::FileRecord& f, const schema::VmaRecord& v) {
  // A shared mapping's VM_SHARED ("sh") and VM_MAYWRITE ("mw") come from the description it was
  // made through: written by its mode, and for a memfd also by a seal against writing in force
  // at mmap time ("sh" without "mw"). Private mappings take any readable description.
  const bool shared = (v.flags & MAP_SHARED) != 0;
  const bool sh = shared && (v.vmflags & schema::vmflag("sh"));
  const bool mw = shared && (v.vmflags & schema::vmflag("mw"));
  if (f.contents_owner) {
    auto it = objects.find(f.contents_owner);
    if (it == objects.end()) fail(Errc::internal, "memory object of " + f.path + " not created");
    if (!sh)
      return fds::reopen_path("/proc/self/fd/" + std::to_string(it->second.get()), O_RDONLY,
                              "mapped by the job");
    fds::seal_for_mapping(*this, f, mw);
    return UniqueFd(::fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0));
  }
  return fds::reopen_path(f.path, sh || mw ? O_RDWR : O_RDONLY, "mapped by the job");
}

void prepare_files(RestoreContext& ctx) {
  fds::check_changed_files(ctx);
  fds::create_objects(ctx);
  std::set<int64_t> described;  // rows some fd refers to
  for (auto& fd : ctx.meta.fds) described.insert(fd.file_id);
  for (const fds::FdKind* k : fds::fd_kinds()) {
    std::vector<const schema::FileRecord*> rows;
    for (auto& f : ctx.meta.files)
      if (described.count(f.id) && fds::kind_of_row(f) == k) rows.push_back(&f);
    if (!rows.empty()) k->open(ctx, rows);
  }
  for (int64_t id : described)
    if (!ctx.files.count(id) && !fds::kind_of_row(ctx.file(id))->deferred())
      fail(Errc::internal, "file row " + std::to_string(id) + " (" + ctx.file(id).path +
                               ") was not opened by any kind");
}

// Puts our descriptor `ours` into the process at number `num` with the descriptor flags.
static void install_at(RestoreContext& ctx, RestoredProcess& p, int ours, int num, uint32_t fd_flags) {
  Injector& inj = *p.inj;
  int tmp = ctx.install_fd(p, ours);
  if (tmp != num) {
    inj.call("dup3", SYS_dup3, static_cast<uint64_t>(tmp), static_cast<uint64_t>(num),
             (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0);
    inj.call("close", SYS_close, static_cast<uint64_t>(tmp));
  } else {
    inj.call("fcntl(F_SETFD)", SYS_fcntl, static_cast<uint64_t>(num), F_SETFD, fd_flags);
  }
}

void restore_late_fds(RestoreContext& ctx) {
  for (auto& [p, rec] : ctx.late_fds) {
    const auto& f = ctx.file(rec->file_id);
    UniqueFd ours = fds::kind_of_row(f)->open_late(ctx, f);
    install_at(ctx, *p, ours.get(), rec->fd, rec->fd_flags);
  }
}

void restore_fds(RestoreContext& ctx, RestoredProcess& p) {
  if (p.rec->flags & schema::kProcessSharesFiles) return;  // its parent's table, shared by the fork
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
    if (it == ctx.files.end()) {
      if (!fds::kind_of_row(ctx.file(rec->file_id))->deferred())
        fail(Errc::internal, "fd " + std::to_string(num) + ": its file was not prepared");
      ctx.late_fds.emplace_back(&p, rec);  // a description of a task not made yet
      continue;
    }
    install_at(ctx, p, it->second.get(), num, rec->fd_flags);
  }
}

// Owners, signals and O_ASYNC, set by a task that holds the description, through its own
// descriptor: the kernel keeps the credentials of whoever sets an owner (they decide whether
// the signal may be sent), and the number of the descriptor that turned O_ASYNC on (it is the
// si_fd of each SIGIO). Runs after credentials.
void restore_fd_owners(RestoreContext& ctx) {
  for (auto& f : ctx.meta.files) {
    const bool async = (f.flags & O_ASYNC) != 0;
    if (f.owner_pid == 0 && f.signum == 0 && !async) continue;
    const schema::FdRecord* holder = nullptr;
    for (auto& fd : ctx.meta.fds)
      if (fd.file_id == f.id && ctx.by_pid.count(fd.pid) && (!holder || fd.pid < holder->pid))
        holder = &fd;
    if (!holder) continue;  // only mapped, or inherited stdio: nothing holds it to set it on
    RestoredProcess& p = *ctx.by_pid.at(holder->pid);
    Injector& inj = *p.inj;
    const auto fd = static_cast<uint64_t>(holder->fd);
    if (f.signum) inj.call("fcntl(F_SETSIG)", SYS_fcntl, fd, F_SETSIG, static_cast<uint64_t>(f.signum));
    if (f.owner_pid) {
      f_owner_ex own{static_cast<__pid_type>(f.owner_type), f.owner_pid};
      inj.call("fcntl(F_SETOWN_EX)", SYS_fcntl, fd, F_SETOWN_EX, ctx.put(p, &own, sizeof own, 3072));
    }
    if (async) {
      long now = inj.raw(SYS_fcntl, fd, F_GETFL);
      if (now < 0) throw Error(Errc::kernel, "fcntl(F_GETFL) of fd " + std::to_string(fd), static_cast<int>(-now));
      inj.call("fcntl(F_SETFL, O_ASYNC)", SYS_fcntl, fd, F_SETFL,
               static_cast<uint64_t>(now) | O_ASYNC);
    }
  }
}

std::vector<DescriptorKind> descriptor_kinds() {
  std::vector<DescriptorKind> out;
  for (const fds::FdKind* k : fds::fd_kinds()) out.push_back({k->name(), k->restored(), k->refused()});
  return out;
}

namespace fds {

const FdKind* kind_of_row(const schema::FileRecord& f) {
  using schema::FileKind;
  switch (static_cast<FileKind>(f.kind)) {
    case FileKind::regular:
    case FileKind::directory:
      return &regular_kind();
    case FileKind::pipe:
    case FileKind::fifo:
      return &pipe_kind();
    case FileKind::memfd:
    case FileKind::unlinked:
    case FileKind::shmem:
      return &object_kind();
    case FileKind::chardev:
      return &chardev_kind();
    case FileKind::inherited:
      return &inherited_kind();
    case FileKind::proc:
      return &procfs_kind();
    case FileKind::path:
      return &path_kind();
    case FileKind::eventfd:
      return &eventfd_kind();
    case FileKind::timerfd:
      return &timerfd_kind();
    case FileKind::signalfd:
      return &signalfd_kind();
    case FileKind::epoll:
      return &epoll_kind();
    case FileKind::inotify:
      return &inotify_kind();
    case FileKind::pidfd:
      return &pidfd_kind();
    case FileKind::unix_socket:
      return &unix_socket_kind();
    case FileKind::tcp_socket:
      return &tcp_socket_kind();
    case FileKind::udp_socket:
      return &udp_socket_kind();
  }
  fail(Errc::corrupt, "file row " + std::to_string(f.id) + " has unknown kind " +
                          std::to_string(f.kind));
}

}  // namespace fds
}  // namespace crest
