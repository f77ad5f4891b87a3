// The fd table of each process, and what every open file description has whatever its kind:
// close-on-exec per descriptor, sharing between descriptors and processes (kcmp), the owner
// that gets SIGIO/SIGURG (F_SETOWN_EX), the signal sent (F_SETSIG) and O_ASYNC. Each kind's own
// state is in its file of core/fds/ (see fd_kind.h for the stages).
#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/kcmp.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include <tbb/parallel_for.h>

#include "core/checkpoint.h"
#include "core/fds/fd_kind.h"
#include "core/kernel/fd_pass.h"
#include "core/kernel/features.h"
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
      &tcp_socket_kind(), &udp_socket_kind(), &netlink_socket_kind(), &mqueue_kind(), &unsupported_kind(),
      &pipe_kind(),     &procfs_kind(),    &object_kind(),   &pty_kind(),     &dev_tty_kind(), &chardev_kind(),
      &regular_kind()};
  return kinds;
}

long fs_magic(const FdProbe& p) {
  if (!p.fs_known) {
    struct statfs sfs {};
    p.fs_type = ::statfs(p.fd_path.c_str(), &sfs) == 0 ? static_cast<long>(sfs.f_type) : 0;
    p.fs_known = true;
  }
  return p.fs_type;
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

namespace {

std::map<std::string, std::string> parse_fdinfo(const std::string& text, std::vector<std::string>& locks) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
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

// A process's /proc fd and fdinfo directories, opened once: each descriptor is then looked at
// by its number relative to them, not by a path walked again from /proc for every call.
class ProcFds {
 public:
  explicit ProcFds(pid_t pid)
      : pid_(pid),
        fd_dir_(::open(proc::path(pid, "fd").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC)),
        info_dir_(::open(proc::path(pid, "fdinfo").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
    if (!fd_dir_ || !info_dir_)
      throw_errno("cannot open the descriptor directories of process " + std::to_string(pid),
                  errno, Errc::kernel);
  }
  std::string link(int fd) const {
    char buf[4096];
    const ssize_t n = ::readlinkat(fd_dir_.get(), std::to_string(fd).c_str(), buf, sizeof buf);
    if (n < 0) throw_errno("cannot read link " + proc::path(pid_, "fd/" + std::to_string(fd)));
    return std::string(buf, static_cast<size_t>(n));
  }
  std::map<std::string, std::string> info(int fd, std::vector<std::string>& locks) const {
    UniqueFd f(::openat(info_dir_.get(), std::to_string(fd).c_str(), O_RDONLY | O_CLOEXEC));
    const std::string what = proc::path(pid_, "fdinfo/" + std::to_string(fd));
    if (!f) throw_errno("cannot open " + what);
    std::string text;
    char buf[16384];
    for (;;) {
      const ssize_t n = ::read(f.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno("cannot read " + what);
      if (n == 0) break;
      text.append(buf, static_cast<size_t>(n));
    }
    return parse_fdinfo(text, locks);
  }
  int stat(int fd, struct stat& st) const {
    return ::fstatat(fd_dir_.get(), std::to_string(fd).c_str(), &st, 0);
  }

 private:
  pid_t pid_;
  UniqueFd fd_dir_, info_dir_;
};

}  // namespace

std::map<std::string, std::string> read_fdinfo(pid_t pid, int fd, std::vector<std::string>& locks) {
  return parse_fdinfo(fs::read_file(proc::path(pid, "fdinfo/" + std::to_string(fd))), locks);
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

namespace fds {
namespace {

// What the kinds decide on for descriptor `probe.fd` of `probe.pid` (ours through
// `probe.pidfd`), looked at through `dir`: its /proc link, fdinfo (and its lock lines), a stat of
// it, and for a socket its domain, type and protocol. Returns why it could not be looked at
// ("": it could). Touches nothing shared: descriptors are looked at in parallel.
std::string look(const ProcFds& dir, FdProbe& probe, std::vector<std::string>& lock_lines) {
  const int fd = probe.fd;
  try {
    probe.link = dir.link(fd);
    probe.info = dir.info(fd, lock_lines);
  } catch (const Error& e) {
    return probe.where + ": " + e.what();
  }
  if (dir.stat(fd, probe.st) != 0)
    return probe.where + " (" + probe.link + "): cannot stat: " + std::strerror(errno);
  probe.flags = static_cast<uint32_t>(std::stoul(probe.info["flags"], nullptr, 8));
  if (probe.link.rfind("socket:", 0) == 0) {
    UniqueFd copy = proc::copy_fd(probe.pidfd, fd);
    int value = -1;
    socklen_t len = sizeof value;
    if (copy && ::getsockopt(copy.get(), SOL_SOCKET, SO_DOMAIN, &value, &len) == 0)
      probe.sock_domain = value;
    len = sizeof value;
    if (copy && ::getsockopt(copy.get(), SOL_SOCKET, SO_TYPE, &value, &len) == 0)
      probe.sock_type = value;
    len = sizeof value;
    if (copy && ::getsockopt(copy.get(), SOL_SOCKET, SO_PROTOCOL, &value, &len) == 0)
      probe.sock_protocol = value;
  }
  probe.pos = std::stoull(probe.info["pos"]);
  return "";
}

// The descriptions a descriptor may be one of: those of its inode with its link and, for an
// eventfd, its id (all eventfds, timerfds and epolls share one inode), kept in kcmp order.
std::vector<std::tuple<int64_t, pid_t, int>>& candidates(DumpContext& ctx, const FdProbe& probe) {
  std::string tell_apart;
  if (probe.link.rfind("anon_inode:", 0) == 0) {
    tell_apart = probe.link;
    if (auto id = probe.info.find("eventfd-id"); id != probe.info.end()) tell_apart += " " + id->second;
  }
  return ctx.descriptions_by_kind[{static_cast<uint64_t>(probe.st.st_dev),
                                   static_cast<uint64_t>(probe.st.st_ino), tell_apart}];
}

// The row of a description seen for the first time, as far as every kind has it.
schema::FileRecord new_row(const FdProbe& probe) {
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
  return rec;
}

const FdKind* claiming(const FdProbe& probe) {
  for (const FdKind* k : fd_kinds())
    if (k->claims(probe)) return k;
  return nullptr;
}

// Where descriptor `fd` of `pid` sorts among the known descriptions of its inode: the files row
// of the same description (found), else the place to insert a new one. -2 after a refusal.
int64_t find_description(DumpContext& ctx, const std::vector<std::tuple<int64_t, pid_t, int>>& known,
                         pid_t pid, int fd, const std::string& where, size_t& insert_at) {
  size_t lo = 0, hi = known.size();
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    auto& [id, opid, ofd] = known[mid];
    const long c = compare_descriptions(pid, fd, opid, ofd);
    if (c == 0) return id;
    if (c == 1)
      hi = mid;
    else if (c == 2)
      lo = mid + 1;
    else {
      ctx.refuse(where + ": kcmp cannot compare its file with the others (" + std::to_string(c) +
                 ", " + std::strerror(errno) + ")");
      insert_at = lo;
      return -2;
    }
  }
  insert_at = lo;
  return -1;
}

// Kinds whose description crest can make and send again when no process holds it, only a
// message queued to a Unix socket: made from their own row alone, with nothing to set up by a
// task that holds them. A Unix socket is not among them: one held only in flight may carry
// descriptors in flight in turn, up to cycles only the kernel's garbage collector ends.
bool restorable_in_flight_only(const FdKind* k) {
  return k == &regular_kind() || k == &object_kind() || k == &pipe_kind() ||
         k == &eventfd_kind() || k == &timerfd_kind() || k == &signalfd_kind() ||
         k == &path_kind() || k == &chardev_kind();
}

// A description carried by a queued message that no process of the tree holds: dumped from
// our own copy as a row of its own (files.in_flight). Returns its row, or -1 after a refusal.
int64_t dump_in_flight_only(DumpContext& ctx, FdProbe& probe, std::vector<std::string>& lock_lines,
                            size_t insert_at) {
  const int ours = probe.fd;
  const int self_pidfd = probe.pidfd;
  probe.flags &= ~static_cast<uint32_t>(O_CLOEXEC);  // our copy's, not the description's
  probe.where += " (" + probe.link + ", which no process holds)";
  const FdKind* kind = claiming(probe);
  if (kind == &unix_socket_kind()) {
    ctx.refuse(probe.where + " is a Unix socket held only in flight (it may carry descriptors "
               "in flight in turn, up to cycles only the kernel's garbage collector ends); not "
               "supported");
    return -1;
  }
  if (!kind || !restorable_in_flight_only(kind)) {
    ctx.refuse(probe.where + ", of kind " +
               (kind && kind != &unsupported_kind() ? kind->name() : "not supported") +
               ", is held only in flight; only regular files, pipes, memory objects, eventfds, "
               "timerfds, signalfds, O_PATH descriptors and harmless devices are restored so");
    return -1;
  }
  if (!lock_lines.empty()) {
    ctx.refuse(probe.where + " holds a lock; a description held only in flight cannot take it "
               "again");
    return -1;
  }
  schema::FileRecord rec = new_row(probe);
  if (!kind->dump(ctx, probe, rec)) return -1;
  dump_owner(ctx, self_pidfd, probe, rec);
  if (rec.owner_pid != 0 || rec.signum != 0 || (rec.flags & O_ASYNC)) {
    ctx.refuse(probe.where + " has a SIGIO owner, F_SETSIG or O_ASYNC, which only a process "
               "holding it could set again");
    return -1;
  }
  rec.in_flight = 1;
  auto& added = ctx.add_file(std::move(rec));
  if (added.contents_owner) plan_file_contents(ctx, added, probe.fd_path);
  auto key = std::make_pair(static_cast<uint64_t>(probe.st.st_dev),
                            static_cast<uint64_t>(probe.st.st_ino));
  auto& known = candidates(ctx, probe);
  known.emplace(known.begin() + static_cast<std::ptrdiff_t>(insert_at), added.id, probe.pid, ours);
  ctx.descriptions[key].emplace_back(added.id, probe.pid, ours);
  if (!ctx.file_by_inode.count(key)) ctx.file_by_inode[key] = added.id;
  return added.id;
}

// Every descriptor in flight as a files row: the description a process of the tree holds
// (kcmp against every known one of its inode), else one dumped here, held only in flight. The
// same description carried twice, or by two messages, is one row.
void resolve_in_flight(DumpContext& ctx) {
  if (ctx.in_flight.empty()) return;
  const pid_t self = ::getpid();
  UniqueFd self_pidfd = proc::open_pidfd(self);
  if (!self_pidfd) throw_errno("pidfd_open of crest itself", errno, Errc::kernel);
  const ProcFds ours(self);
  for (auto& msg : ctx.in_flight) {
    auto& q = ctx.meta.socket_queues.at(msg.queue_row);
    for (auto& fd : msg.fds) {
      FdProbe probe;
      probe.pid = self;
      probe.fd = fd.get();
      probe.fd_path = proc::path(self, "fd/" + std::to_string(fd.get()));
      probe.pidfd = self_pidfd.get();
      probe.where = msg.where + ": a descriptor in flight (SCM_RIGHTS)";
      std::vector<std::string> lock_lines;
      if (const std::string err = look(ours, probe, lock_lines); !err.empty()) {
        ctx.refuse(err);
        q.fds.push_back(-1);
        continue;
      }
      size_t insert_at = 0;
      int64_t id = find_description(ctx, candidates(ctx, probe), self, fd.get(), msg.where, insert_at);
      if (id == -1) id = dump_in_flight_only(ctx, probe, lock_lines, insert_at);
      q.fds.push_back(id < 0 ? -1 : id);
    }
  }
}

}  // namespace
}  // namespace fds

void dump_fds(DumpContext& ctx, const ptrace::FrozenProcess& p) {
  using namespace fds;
  const pid_t pid = p.pid;
  const pid_t rpid = ctx.recorded(pid);
  const bool is_root = pid == ctx.tree.root();
  UniqueFd pidfd = proc::open_pidfd(pid);
  if (!pidfd) throw_errno("pidfd_open of process " + std::to_string(pid), errno, Errc::kernel);
  // A process sharing its parent's fd table (clone CLONE_FILES) has the very same descriptors:
  // they are restored once, by the parent, and shared again.
  // (Its record is the last made: searched from the end.)
  for (auto rec = ctx.meta.processes.rbegin(); rec != ctx.meta.processes.rend(); ++rec)
    if (rec->pid == rpid) {
      if (rec->flags & schema::kProcessSharesFiles) return;
      break;
    }

  // First a look at every descriptor, in parallel (what /proc and the socket tell of it, the
  // bulk of the cost); then each is decided on in order: the same description as one seen
  // before, or a new one dumped by its kind.
  struct Looked {
    FdProbe probe;
    std::vector<std::string> lock_lines;
    std::string error;  // why it could not be looked at: refused
  };
  const ProcFds dir(pid);
  const std::vector<int> numbers = proc::fds(pid);
  // Without pidfd_getfd the process hands its descriptors over itself, all at once, before the
  // parallel look (core/kernel/fd_pass.h); after the listing, so its socket for that is not in it.
  std::optional<kernel::Prefetched> handed;
  if (!kernel::have(kernel::Iface::pidfd_getfd)) handed.emplace(pid, numbers);
  std::vector<Looked> looked(numbers.size());
  tbb::parallel_for(size_t{0}, numbers.size(), [&](size_t i) {
    const int fd = numbers[i];
    Looked& l = looked[i];
    FdProbe& probe = l.probe;
    probe.pid = pid;
    probe.fd = fd;
    probe.fd_path = proc::path(pid, "fd/" + std::to_string(fd));
    probe.where = "process " + std::to_string(pid) + ": fd " + std::to_string(fd);
    probe.root_stdio = is_root && fd <= 2;
    probe.pidfd = pidfd.get();
    const std::string err = look(dir, probe, l.lock_lines);
    if (!err.empty()) l.error = err;
  });

  for (Looked& l : looked) {
    if (!l.error.empty()) {
      ctx.refuse(l.error);
      continue;
    }
    FdProbe& probe = l.probe;
    const int fd = probe.fd;
    std::vector<std::string>& lock_lines = l.lock_lines;
    schema::FdRecord fdrec;
    fdrec.pid = rpid;
    fdrec.fd = fd;
    fdrec.fd_flags = (probe.flags & O_CLOEXEC) ? FD_CLOEXEC : 0;
    probe.flags &= ~static_cast<uint32_t>(O_CLOEXEC);

    // The same open file description may already be known (an earlier fd or process).
    auto key = std::make_pair(static_cast<uint64_t>(probe.st.st_dev),
                              static_cast<uint64_t>(probe.st.st_ino));
    auto& known = candidates(ctx, probe);
    size_t insert_at = 0;
    const int64_t found = find_description(ctx, known, pid, fd, probe.where, insert_at);
    if (found >= 0) {
      fdrec.file_id = found;
      ctx.meta.fds.push_back(fdrec);
      dump_lock_lines(ctx, p, fd, found, lock_lines);
      continue;
    }

    schema::FileRecord rec = new_row(probe);
    const FdKind* kind = claiming(probe);
    if (!kind || !kind->dump(ctx, probe, rec)) continue;
    if (static_cast<schema::FileKind>(rec.kind) != schema::FileKind::inherited)
      dump_owner(ctx, pidfd.get(), probe, rec);
    auto& added = ctx.add_file(std::move(rec));
    if (added.contents_owner) plan_file_contents(ctx, added, probe.fd_path);
    known.emplace(known.begin() + static_cast<std::ptrdiff_t>(insert_at), added.id, pid, fd);
    ctx.descriptions[key].emplace_back(added.id, pid, fd);
    if (!ctx.file_by_inode.count(key)) ctx.file_by_inode[key] = added.id;
    fdrec.file_id = added.id;
    ctx.meta.fds.push_back(fdrec);
    dump_lock_lines(ctx, p, fd, added.id, lock_lines);
  }
}

void finish_dump_fds(DumpContext& ctx) {
  // Descriptors in flight first: what they are may complete a pipe, or be a description some
  // kind pairs with others below.
  fds::resolve_in_flight(ctx);
  for (const fds::FdKind* k : fds::fd_kinds()) k->finish_dump(ctx);
}

}  // namespace crest

// ---- restore ----------------------------------------------------------------------------------

namespace crest {
namespace {

// The most descriptors one SCM_RIGHTS message carries (the kernel's SCM_MAX_FD).
constexpr size_t kScmMaxFd = 253;
// Where the injected recvmsg finds its message header, its iovec and byte, and its control
// buffer, in the scratch page.
constexpr size_t kRecvAt = 4096;
constexpr size_t kRecvIovAt = kRecvAt + 64;
constexpr size_t kRecvByteAt = kRecvAt + 80;
constexpr size_t kRecvControlAt = kRecvAt + 128;
// A batch of calls (batch_in) goes after the control buffer.
static_assert(kRecvControlAt + CMSG_SPACE(sizeof(int) * kScmMaxFd) <= kScratchBatchAt);

// Sends `fds` over our end of a datagram socket in one SCM_RIGHTS message (with one byte).
void send_fds(int sock, const int* fds, size_t n, const std::string& who) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kScmMaxFd)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * n);
  std::memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
  if (::sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) != 1)
    throw_errno(who + ": cannot send " + std::to_string(n) + " of its descriptors", errno,
                Errc::kernel);
}

}  // namespace

int RestoreContext::install_fd(RestoredProcess& p, int our_fd) {
  if (!fd_channel)
    return static_cast<int>(p.inj->call("pidfd_getfd", SYS_pidfd_getfd,
                                        static_cast<uint64_t>(p.tracer_pidfd_remote),
                                        static_cast<uint64_t>(our_fd), 0));
  // Without pidfd_getfd: over the restore's socket pair, whose other end every task holds at
  // the number of the restorer's pidfd. Close-on-exec where it lands, as pidfd_getfd's.
  const std::string who = "process " + std::to_string(p.rec->pid);
  send_fds(fd_channel.get(), &our_fd, 1, who);
  const iovec remote_iov{reinterpret_cast<void*>(p.scratch + kRecvByteAt), 1};
  put(p, &remote_iov, sizeof remote_iov, kRecvIovAt);
  msghdr rmsg{};
  rmsg.msg_iov = reinterpret_cast<iovec*>(p.scratch + kRecvIovAt);
  rmsg.msg_iovlen = 1;
  rmsg.msg_control = reinterpret_cast<void*>(p.scratch + kRecvControlAt);
  rmsg.msg_controllen = CMSG_SPACE(sizeof(int));
  const uint64_t at = put(p, &rmsg, sizeof rmsg, kRecvAt);
  const long r = p.inj->raw(SYS_recvmsg, static_cast<uint64_t>(p.tracer_pidfd_remote), at,
                            MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (r != 1) throw Error(Errc::kernel, who + ": recvmsg of a descriptor", r < 0 ? static_cast<int>(-r) : EIO);
  remote_read(p.pid, at, &rmsg, sizeof rmsg);
  alignas(cmsghdr) char got[CMSG_SPACE(sizeof(int))];
  remote_read(p.pid, p.scratch + kRecvControlAt, got, sizeof got);
  const auto* gc = reinterpret_cast<const cmsghdr*>(got);
  if ((rmsg.msg_flags & MSG_CTRUNC) || gc->cmsg_level != SOL_SOCKET || gc->cmsg_type != SCM_RIGHTS ||
      gc->cmsg_len != CMSG_LEN(sizeof(int)))
    fail(Errc::kernel, who + ": the descriptor sent to it did not arrive (RLIMIT_NOFILE?)");
  int fd;
  std::memcpy(&fd, CMSG_DATA(gc), sizeof fd);
  return fd;
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
  std::set<int64_t> described;  // rows some fd, or some message queued in flight, refers to
  for (auto& fd : ctx.meta.fds) described.insert(fd.file_id);
  for (auto& q : ctx.meta.socket_queues)
    for (int64_t id : q.fds) described.insert(id);
  std::map<const fds::FdKind*, std::vector<const schema::FileRecord*>> by_kind;
  for (auto& f : ctx.meta.files)
    if (described.count(f.id)) by_kind[fds::kind_of_row(f)].push_back(&f);
  for (const fds::FdKind* k : fds::fd_kinds()) {  // in the kinds' order
    auto rows = by_kind.find(k);
    if (rows != by_kind.end()) k->open(ctx, rows->second);
  }
  for (int64_t id : described)
    if (!ctx.files.count(id) && !fds::kind_of_row(ctx.file(id))->deferred())
      fail(Errc::internal, "file row " + std::to_string(id) + " (" + ctx.file(id).path +
                               ") was not opened by any kind");
}

namespace {

// A descriptor more than this many free numbers above the one handed over before it is not
// worth the fillers in between: it is put in place on its own.
constexpr size_t kMaxFill = 512;

// Our descriptor for a number of a task, and whether it is close-on-exec there.
struct Handed {
  int ours;
  bool cloexec;
};

// What may be done to the close-on-exec flag of a descriptor a task holds already while others
// are handed to it: nothing (it is off and stays off, or is not ours to change), turn it on, or
// either (it is on, or it does not matter).
enum class Cloexec { keep, set, any };

// Puts our descriptor `ours` into the process at number `num` with the descriptor flags.
void install_at(RestoreContext& ctx, RestoredProcess& p, int ours, int num, uint32_t fd_flags) {
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

// Whether descriptor `fd` of process `pid` is close-on-exec (its fdinfo "flags").
bool cloexec_in(pid_t pid, int fd) {
  const std::string path = proc::path(pid, "fdinfo/" + std::to_string(fd));
  UniqueFd info(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!info) throw_errno("cannot open " + path, errno, Errc::kernel);
  char buf[128];
  const ssize_t n = ::read(info.get(), buf, sizeof buf - 1);
  if (n < 0) throw_errno("cannot read " + path, errno, Errc::kernel);
  buf[n] = '\0';
  const char* flags = std::strstr(buf, "flags:");
  if (!flags) fail(Errc::kernel, path + " has no flags line");
  return (std::strtoul(flags + 6, nullptr, 8) & O_CLOEXEC) != 0;
}

// Close_range over runs of numbers: a run grows over numbers that take part or do not matter,
// ends at a number that must be left alone, and is issued from its first to its last number
// that takes part. Numbers must come in ascending order.
// The calls go into a batch, run by the caller's flush().
class Runs {
 public:
  Runs(SyscallBatch& batch, const char* what, unsigned flags) : batch_(batch), what_(what), flags_(flags) {}
  void take(int num) {
    if (first_ < 0) first_ = num;
    last_ = num;
  }
  void stop() {
    if (first_ < 0) return;
    batch_.add(what_, SYS_close_range, static_cast<uint64_t>(first_), static_cast<uint64_t>(last_),
               flags_);
    first_ = -1;
  }

 private:
  SyscallBatch& batch_;
  const char* what_;
  unsigned flags_;
  int first_ = -1, last_ = -1;
};

// The task takes the message waiting on its end of the socket (descriptor `chan`) by an
// injected recvmsg; its n descriptors must land at `expect`, in order.
void receive_fds(RestoreContext& ctx, RestoredProcess& p, int chan, const int* expect, size_t n,
                 const std::string& who) {
  const uint64_t control_len = CMSG_SPACE(sizeof(int) * n);
  msghdr msg{};
  msg.msg_iov = reinterpret_cast<iovec*>(p.scratch + kRecvIovAt);
  msg.msg_iovlen = 1;
  msg.msg_control = reinterpret_cast<void*>(p.scratch + kRecvControlAt);
  msg.msg_controllen = control_len;
  const uint64_t at = ctx.put(p, &msg, sizeof msg, kRecvAt);
  const long r = p.inj->raw(SYS_recvmsg, static_cast<uint64_t>(chan), at, MSG_DONTWAIT);
  if (r != 1)
    throw Error(Errc::kernel, who + ": recvmsg of " + std::to_string(n) + " of its descriptors",
                r < 0 ? static_cast<int>(-r) : EIO);
  remote_read(p.pid, at, &msg, sizeof msg);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kScmMaxFd)];
  remote_read(p.pid, p.scratch + kRecvControlAt, control, control_len);
  const auto* c = reinterpret_cast<const cmsghdr*>(control);
  if ((msg.msg_flags & MSG_CTRUNC) || msg.msg_controllen < CMSG_LEN(sizeof(int) * n) ||
      c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
      c->cmsg_len != CMSG_LEN(sizeof(int) * n))
    fail(Errc::kernel, who + ": received fewer than the " + std::to_string(n) +
                           " descriptors sent to it");
  int got[kScmMaxFd];
  std::memcpy(got, CMSG_DATA(c), sizeof(int) * n);
  for (size_t i = 0; i < n; ++i)
    if (got[i] != expect[i])
      fail(Errc::internal, who + ": a descriptor for fd " + std::to_string(expect[i]) +
                               " landed at " + std::to_string(got[i]) +
                               "; its table is not what crest expected");
}

// Hands `ours` to p, to land at `slots` in order, through a datagram socket whose end in p
// takes number `chan` (its lowest free one) meanwhile.
void send_through_socket(RestoreContext& ctx, RestoredProcess& p, int chan,
                         const std::vector<int>& ours, const std::vector<int>& slots,
                         const std::string& who) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw_errno("socketpair (to hand descriptors over)", errno, Errc::kernel);
  UniqueFd mine(sv[0]), theirs(sv[1]);
  const int got = ctx.install_fd(p, theirs.get());
  if (got != chan)
    fail(Errc::internal, who + ": its first free descriptor is " + std::to_string(got) + ", not " +
                             std::to_string(chan) + "; its table is not what crest expected");
  const iovec iov{reinterpret_cast<void*>(p.scratch + kRecvByteAt), 1};
  ctx.put(p, &iov, sizeof iov, kRecvIovAt);
  for (size_t i = 0; i < ours.size(); i += kScmMaxFd) {
    const size_t n = std::min(kScmMaxFd, ours.size() - i);
    send_fds(mine.get(), ours.data() + i, n, who);
    receive_fds(ctx, p, chan, slots.data() + i, n, who);
  }
  p.inj->call("close (descriptor channel)", SYS_close, static_cast<uint64_t>(chan));
}

// Hands `give` (number -> our descriptor) to p, whose table holds exactly the numbers of
// `held`, in few injected calls whatever their count. The kernel puts the descriptors of a
// received SCM_RIGHTS message at the lowest free numbers, in order: so every free number up to
// the last one given is taken in ascending order, up to 253 by one injected recvmsg — a given
// number by its description, any other by a filler (an eventfd) that is closed again after,
// one close_range per run of fillers. Received descriptors are not close-on-exec; the flag is
// set by one close_range(CLOSE_RANGE_CLOEXEC) per run of numbers, runs broken only by
// descriptors whose flag is off. The socket's end in the task takes the lowest free number
// while the rest is handed over; the descriptor due there comes last, by pidfd_getfd.
void hand_over(RestoreContext& ctx, RestoredProcess& p, const std::map<int, Handed>& give,
               const std::map<int, Cloexec>& held) {
  Injector& inj = *p.inj;
  const std::string who = "process " + std::to_string(p.rec->pid);
  int chan = 0;
  while (held.count(chan)) ++chan;
  auto held_within = [&](int lo, int hi) {  // held numbers in [lo, hi]
    return static_cast<size_t>(std::distance(held.lower_bound(lo), held.upper_bound(hi)));
  };
  // Given numbers with too many free ones below them are far: put in place one by one. Those
  // after a far one are farther still.
  int last = -1;
  std::vector<std::pair<int, Handed>> far;
  for (auto& [num, h] : give) {
    const size_t free_below = static_cast<size_t>(num - last - 1) - held_within(last + 1, num - 1) -
                              (chan > last && chan < num ? 1 : 0);
    if (!far.empty() || free_below > kMaxFill)
      far.emplace_back(num, h);
    else
      last = num;
  }

  if (last >= 0) {
    UniqueFd filler;
    std::vector<int> ours, slots;  // in the order they land
    for (int num = 0; num <= last; ++num) {
      if (held.count(num) || num == chan) continue;
      auto g = give.find(num);
      if (g == give.end() && !filler) {
        filler.reset(::eventfd(0, EFD_CLOEXEC));
        if (!filler)
          throw_errno("eventfd (a filler of free descriptor numbers)", errno, Errc::kernel);
      }
      ours.push_back(g != give.end() ? g->second.ours : filler.get());
      slots.push_back(num);
    }
    if (!slots.empty()) send_through_socket(ctx, p, chan, ours, slots, who);
    if (auto g = give.find(chan); g != give.end()) {
      // The lowest free number (again, once the socket's end is closed): pidfd_getfd puts it
      // there, close-on-exec.
      if (ctx.install_fd(p, g->second.ours) != chan)
        fail(Errc::internal, who + ": fd " + std::to_string(chan) + " did not land in place");
      if (!g->second.cloexec)
        inj.call("fcntl(F_SETFD)", SYS_fcntl, static_cast<uint64_t>(chan), F_SETFD, 0);
    }

    SyscallBatch batch = batch_in(p);
    Runs cloexec(batch, "close_range(CLOSE_RANGE_CLOEXEC)", CLOSE_RANGE_CLOEXEC);
    Runs fillers(batch, "close_range (fillers)", 0);
    for (int num = 0; num <= last; ++num) {
      auto h = held.find(num);
      auto g = give.find(num);
      if (h != held.end()) {
        fillers.stop();
        if (h->second == Cloexec::keep) cloexec.stop();
        if (h->second == Cloexec::set) cloexec.take(num);
      } else if (g != give.end()) {
        fillers.stop();
        if (!g->second.cloexec)
          cloexec.stop();
        else if (num != chan)
          cloexec.take(num);
      } else if (num != chan) {
        fillers.take(num);
      }
    }
    fillers.stop();
    for (auto h = held.upper_bound(last); h != held.end(); ++h) {
      if (h->second == Cloexec::keep) cloexec.stop();
      if (h->second == Cloexec::set) cloexec.take(h->first);
    }
    cloexec.stop();
    batch.flush();
  } else {
    for (auto& [num, how] : held)
      if (how == Cloexec::set)
        inj.call("fcntl(F_SETFD)", SYS_fcntl, static_cast<uint64_t>(num), F_SETFD, FD_CLOEXEC);
  }
  for (auto& [num, h] : far) install_at(ctx, p, h.ours, num, h.cloexec ? FD_CLOEXEC : 0);
}

}  // namespace

void restore_late_fds(RestoreContext& ctx) {
  // Every deferred description is made first (the kinds make theirs all at once, by the tasks
  // that hold them), once per row: the descriptors of a row, in one process or several (a
  // pidfd or a task's /proc file dup'ed, or inherited by a child), share it as they did. Then
  // each process takes its share in one hand-over.
  std::map<RestoredProcess*, std::map<int, Handed>> give;
  for (auto& [p, rec] : ctx.late_fds)
    give[p][rec->fd] = {fds::late_description(ctx, rec->file_id), (rec->fd_flags & FD_CLOEXEC) != 0};
  for (auto& q : ctx.procs) {
    auto it = give.find(q.get());
    if (it == give.end()) continue;
    RestoredProcess* p = it->first;
    const auto& mine = it->second;
    std::map<int, bool> want_cloexec;
    for (auto* fd : ctx.rows_of(ctx.meta.fds, p->rec->pid))
      want_cloexec[fd->fd] = (fd->fd_flags & FD_CLOEXEC) != 0;
    // Its table now: its own descriptors with their flags, and the restorer's pidfd.
    std::map<int, Cloexec> held;
    for (int fd : proc::fds(p->pid)) {
      if (mine.count(fd))
        fail(Errc::internal, "process " + std::to_string(p->rec->pid) + ": fd " +
                                 std::to_string(fd) + " is taken before its description is given");
      auto w = want_cloexec.find(fd);
      held[fd] = (fd == p->tracer_pidfd_remote || (w != want_cloexec.end() && w->second))
                     ? Cloexec::any
                     : Cloexec::keep;
    }
    hand_over(ctx, *p, mine, held);
  }
  // Every task has its share, and every message queued in flight its descriptions (the Unix
  // sockets' refill ran inside, when their first socket was asked for): ours go.
  ctx.late_files.clear();
}

void restore_fds(RestoreContext& ctx, RestoredProcess& p) {
  if (p.rec->flags & schema::kProcessSharesFiles) return;  // its parent's table, shared by the fork
  std::map<int, Handed> give;
  for (auto* fdp : ctx.rows_of(ctx.meta.fds, p.rec->pid)) {
    const schema::FdRecord& fd = *fdp;
    auto it = ctx.files.find(fd.file_id);
    if (it == ctx.files.end()) {
      if (!fds::kind_of_row(ctx.file(fd.file_id))->deferred())
        fail(Errc::internal, "fd " + std::to_string(fd.fd) + ": its file was not prepared");
      ctx.late_fds.emplace_back(&p, &fd);  // a description of a task not made yet
      continue;
    }
    give[fd.fd] = {it->second.get(), (fd.fd_flags & FD_CLOEXEC) != 0};
  }
  // What the clone gave: what is the wanted description at its number is kept, the rest closed
  // (one close_range per run). The root took its own descriptors, with their flags, before it
  // first stopped (clone_root, core/restore.cpp); any other process has its creator's table,
  // flags and all, so a kept descriptor's flag is read.
  const bool root = (p.rec->flags & schema::kProcessRoot) != 0;
  const pid_t self = ::getpid();
  std::map<int, Cloexec> held;
  SyscallBatch batch = batch_in(p);
  Runs closing(batch, "close_range (what the clone gave)", 0);
  for (int fd : proc::fds(p.pid)) {
    auto g = give.find(fd);
    if (fd == p.tracer_pidfd_remote) {
      held[fd] = Cloexec::any;
    } else if (g != give.end() &&
               (root || fds::compare_descriptions(p.pid, fd, self, g->second.ours) == 0)) {
      const bool on = root ? g->second.cloexec : cloexec_in(p.pid, fd);
      if (on && !g->second.cloexec)
        batch.add("fcntl(F_SETFD)", SYS_fcntl, static_cast<uint64_t>(fd), F_SETFD, 0);
      held[fd] = !g->second.cloexec ? Cloexec::keep : on ? Cloexec::any : Cloexec::set;
      give.erase(g);
    } else {
      closing.take(fd);
      continue;
    }
    closing.stop();
  }
  closing.stop();
  batch.flush();
  if (root && !give.empty())
    fail(Errc::internal, "the root does not hold fd " + std::to_string(give.begin()->first) +
                             ", which it took when it was cloned");
  hand_over(ctx, p, give, held);
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

int late_description(RestoreContext& ctx, int64_t id) {
  // A reference into the map stays good while open_late adds other rows (a Unix socket's
  // refill asks for the descriptions its messages carry).
  UniqueFd& ours = ctx.late_files[id];
  if (!ours) {
    const auto& f = ctx.file(id);
    UniqueFd made = kind_of_row(f)->open_late(ctx, f);
    ours = std::move(made);
  }
  return ours.get();
}

int in_flight_description(RestoreContext& ctx, int64_t id) {
  if (auto it = ctx.files.find(id); it != ctx.files.end()) return it->second.get();
  if (!kind_of_row(ctx.file(id))->deferred())
    fail(Errc::internal, "file row " + std::to_string(id) + " (" + ctx.file(id).path +
                             "), carried by a queued message, was not opened");
  return late_description(ctx, id);
}

UniqueFd dup_made(const std::map<int64_t, UniqueFd>& made, int64_t id, const std::string& what) {
  auto it = made.find(id);
  if (it == made.end()) fail(Errc::internal, what + " row " + std::to_string(id) + " was not made");
  UniqueFd dup(::fcntl(it->second.get(), F_DUPFD_CLOEXEC, 3));
  if (!dup) throw_errno("dup of a " + what, errno, Errc::kernel);
  return dup;
}

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
    case FileKind::shm_file:
      return &object_kind();
    case FileKind::chardev:
      return &chardev_kind();
    case FileKind::pty_master:
    case FileKind::pty_slave:
      return &pty_kind();
    case FileKind::dev_tty:
      return &dev_tty_kind();
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
    case FileKind::netlink_socket:
      return &netlink_socket_kind();
    case FileKind::mqueue:
      return &mqueue_kind();
  }
  fail(Errc::corrupt, "file row " + std::to_string(f.id) + " has unknown kind " +
                          std::to_string(f.kind));
}

}  // namespace fds
}  // namespace crest
