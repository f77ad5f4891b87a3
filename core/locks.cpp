// File locks and leases: flock() locks and OFD locks (they belong to an open file description),
// POSIX record locks (they belong to a process: its fd table), and leases (of a description).
// Dump and restore side by side.
//
// Dump: each descriptor's fdinfo lists the locks taken through its description ("lock:" lines,
// the format of /proc/locks) — POSIX ones only for the process whose fdinfo it is, which owns
// them. Requests still blocked waiting for a lock are not locks: the waiter's restarted system
// call asks again after the restore.
//
// Restore: once every process exists with its final fd table (closing any descriptor of a file
// drops its owner's POSIX locks on it, so nothing may close one afterwards), each lock is taken
// again by an injected flock/fcntl in a task holding the description, before credentials change
// (a lease needs the file's owner or CAP_LEASE). A lease that was being broken is taken and then
// broken again by an open from crest; its holder is told again, as the kernel tells it.
#include "core/locks.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sstream>

#include "core/util/error.h"
#include "core/util/log.h"

namespace crest {
namespace {

using schema::LockKind;

bool parse_lock(const std::string& line, schema::LockRecord& out, std::string& why) {
  // "1: POSIX  ADVISORY  WRITE 4177 fe:00:10952926 10 29" / "2: LEASE  BREAKING  READ ..."
  std::istringstream in(line);
  std::string id, kind, mode, type, pid, inode, start, end;
  if (!(in >> id >> kind >> mode >> type >> pid >> inode >> start >> end)) {
    why = "cannot parse \"" + line + "\"";
    return false;
  }
  if (kind == "FLOCK")
    out.kind = static_cast<uint32_t>(LockKind::flock);
  else if (kind == "POSIX")
    out.kind = static_cast<uint32_t>(LockKind::posix);
  else if (kind == "OFDLCK")
    out.kind = static_cast<uint32_t>(LockKind::ofd);
  else if (kind == "LEASE")
    out.kind = static_cast<uint32_t>(LockKind::lease);
  else {
    why = "a " + kind + " lock (\"" + line + "\") is not supported";
    return false;
  }
  if (mode != "ADVISORY" && mode != "ACTIVE" && mode != "BREAKING") {
    why = "a " + mode + " " + kind + " lock is not supported";
    return false;
  }
  out.breaking = mode == "BREAKING" ? 1 : 0;
  out.type = type == "WRITE" ? F_WRLCK : type == "READ" ? F_RDLCK : F_UNLCK;
  out.start = std::stoll(start);
  out.len = end == "EOF" ? 0 : std::stoll(end) - out.start + 1;
  return true;
}

}  // namespace

void dump_lock_lines(DumpContext& ctx, const ptrace::FrozenProcess& p, int fd, int64_t file_id,
                     const std::vector<std::string>& lines) {
  for (const auto& line : lines) {
    schema::LockRecord lock;
    std::string why;
    if (!parse_lock(line, lock, why)) {
      ctx.refuse("process " + std::to_string(p.pid) + ": fd " + std::to_string(fd) + ": " + why);
      continue;
    }
    lock.pid = ctx.recorded(p.pid);
    lock.fd = fd;
    lock.file_id = file_id;
    bool known = false;
    for (auto& l : ctx.meta.locks) {
      bool same_owner = lock.kind == static_cast<uint32_t>(LockKind::posix) ? l.pid == lock.pid
                                                                            : l.file_id == file_id;
      if (l.kind == lock.kind && same_owner && l.type == lock.type && l.start == lock.start &&
          l.len == lock.len)
        known = true;
    }
    if (!known) ctx.meta.locks.push_back(lock);
  }
}

void restore_locks(RestoreContext& ctx) {
  for (const auto& l : ctx.meta.locks) {
    auto it = ctx.by_pid.find(l.pid);
    if (it == ctx.by_pid.end())
      fail(Errc::corrupt, "a lock of process " + std::to_string(l.pid) + ", which is not restored");
    RestoredProcess& p = *it->second;
    const auto fd = static_cast<uint64_t>(l.fd);
    const std::string what = "process " + std::to_string(l.pid) + ": fd " + std::to_string(l.fd) +
                             " (" + ctx.file(l.file_id).path + ")";
    auto take = [&](const char* call, long nr, uint64_t a1, uint64_t a2, uint64_t a3) {
      long r = p.inj->raw(nr, a1, a2, a3);
      if (r < 0)
        throw Error(Errc::kernel, what + ": cannot take its lock again (" + call + ")",
                    static_cast<int>(-r));
    };
    switch (static_cast<LockKind>(l.kind)) {
      case LockKind::flock:
        take("flock", SYS_flock, fd, (l.type == F_WRLCK ? LOCK_EX : LOCK_SH) | LOCK_NB, 0);
        break;
      case LockKind::posix:
      case LockKind::ofd: {
        struct flock fl {};
        fl.l_type = static_cast<short>(l.type);
        fl.l_whence = SEEK_SET;
        fl.l_start = l.start;
        fl.l_len = l.len;
        const bool ofd = l.kind == static_cast<uint32_t>(LockKind::ofd);
        take(ofd ? "fcntl(F_OFD_SETLK)" : "fcntl(F_SETLK)", SYS_fcntl, fd,
             ofd ? F_OFD_SETLK : F_SETLK, ctx.put(p, &fl, sizeof fl, 3072));
        break;
      }
      case LockKind::lease: {
        // While breaking, the kernel shows the type the lease is going to: a write lease being
        // downgraded shows READ; one being given up shows UNLCK (a read lease is taken then).
        const int type = !l.breaking ? l.type : l.type == F_RDLCK ? F_WRLCK : F_RDLCK;
        take("fcntl(F_SETLEASE)", SYS_fcntl, fd, F_SETLEASE, static_cast<uint64_t>(type));
        if (l.breaking) {
          const std::string self = "/proc/" + std::to_string(p.pid) + "/fd/" + std::to_string(l.fd);
          int how = (l.type == F_RDLCK ? O_RDONLY : O_WRONLY) | O_NONBLOCK | O_CLOEXEC;
          int r = ::open(self.c_str(), how);
          if (r >= 0) ::close(r);  // no break happened: the lease is not breaking after all
          else if (errno != EWOULDBLOCK)
            throw_errno(what + ": cannot start breaking its lease again", errno, Errc::kernel);
        }
        break;
      }
    }
  }
}

}  // namespace crest
