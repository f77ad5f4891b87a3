#include "agent/crestd/trust.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/util/error.h"

namespace crest::agent {
namespace {

using schema::FileKind;
using schema::VmaKind;

// The groups a user belongs to (primary first), from the user database.
std::vector<gid_t> groups_of(uid_t uid, gid_t gid) {
  std::vector<gid_t> out{gid};
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) return out;
  int n = 64;
  std::vector<gid_t> list(static_cast<size_t>(n));
  if (::getgrouplist(pw.pw_name, gid, list.data(), &n) < 0) {
    list.resize(static_cast<size_t>(n));
    if (::getgrouplist(pw.pw_name, gid, list.data(), &n) < 0) return out;
  }
  list.resize(static_cast<size_t>(n));
  for (gid_t g : list)
    if (std::find(out.begin(), out.end(), g) == out.end()) out.push_back(g);
  return out;
}

struct Access {
  std::string path;
  int mode;          // R_OK | W_OK | X_OK
  std::string what;  // for the message
};

int access_for_open(uint32_t flags) {
  switch (flags & O_ACCMODE) {
    case O_WRONLY: return W_OK;
    case O_RDWR: return R_OK | W_OK;
    default: return R_OK;
  }
}

std::string mode_name(int mode) {
  std::string s;
  if (mode & R_OK) s += "read";
  if (mode & W_OK) s += s.empty() ? "write" : "/write";
  if (mode & X_OK) s += s.empty() ? "search" : "/search";
  return s;
}

// Asks the kernel, as the user, whether each access is allowed. Returns the index of the first
// refused one and its errno, or -1.
std::pair<long, int> first_denied(const std::vector<Access>& checks, uid_t uid,
                                  const std::vector<gid_t>& groups) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe", errno, Errc::kernel);
  std::vector<const char*> paths;
  for (auto& c : checks) paths.push_back(c.path.c_str());
  pid_t child = ::fork();
  if (child < 0) {
    int e = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    throw_errno("fork", e, Errc::kernel);
  }
  if (child == 0) {
    // Only async-signal-safe calls from here: crestd has other threads.
    long result[2] = {-1, 0};
    // Raw system calls: this thread alone takes the user's credentials (no glibc "setxid"
    // round over threads that a fork of a multi-threaded agent does not have).
    if (::syscall(SYS_setgroups, groups.size(), groups.data()) != 0 ||
        ::syscall(SYS_setresgid, groups[0], groups[0], groups[0]) != 0 ||
        ::syscall(SYS_setresuid, uid, uid, uid) != 0) {
      result[0] = -2;
      result[1] = errno;
    } else {
      for (size_t i = 0; i < checks.size(); ++i) {
        if (::access(paths[i], checks[i].mode) != 0) {
          result[0] = static_cast<long>(i);
          result[1] = errno;
          break;
        }
      }
    }
    (void)!::write(fds[1], result, sizeof result);
    ::_exit(0);
  }
  ::close(fds[1]);
  long result[2] = {-2, EIO};
  ssize_t n;
  do {
    n = ::read(fds[0], result, sizeof result);
  } while (n < 0 && errno == EINTR);
  ::close(fds[0]);
  int st;
  while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  if (n != sizeof result || result[0] == -2)
    throw_errno("cannot take the credentials of uid " + std::to_string(uid) + " to check the image",
                static_cast<int>(result[1]), Errc::kernel);
  return {result[0], static_cast<int>(result[1])};
}

const schema::ProcessRecord* process_of(const schema::CheckpointMeta& meta, int32_t pid) {
  for (auto& p : meta.processes)
    if (p.pid == pid) return &p;
  return nullptr;
}

uint64_t limit_of(const schema::ProcessRecord& p, int resource, bool hard) {
  const size_t i = static_cast<size_t>(resource) * 2 + (hard ? 1 : 0);
  return i < p.rlimits.size() ? p.rlimits[i] : 0;
}

// What a user's process could not have set itself: hard limits above crestd's own (what any job
// it starts gets), a lower oom_score_adj, another loginuid, memory locked beyond its limit.
void check_process_limits(const schema::CheckpointMeta& meta, const schema::ProcessRecord& p,
                          const std::string& who, const std::string& owner, uid_t uid) {
  for (int r = 0; r < RLIM_NLIMITS && static_cast<size_t>(r) * 2 + 1 < p.rlimits.size(); ++r) {
    rlimit mine{};
    if (::getrlimit(static_cast<__rlimit_resource>(r), &mine) != 0) continue;
    if (p.rlimits[static_cast<size_t>(r) * 2 + 1] > mine.rlim_max)
      fail(Errc::refused, "the checkpoint brings back " + who + " with a hard limit " +
                              std::to_string(r) + " above what a job of " + owner + " gets");
  }
  if (p.oom_score_adj < 0)
    fail(Errc::refused, "the checkpoint brings back " + who + " with oom_score_adj " +
                            std::to_string(p.oom_score_adj) + "; a job of " + owner +
                            " may not lower it");
  if (p.loginuid != 0xffffffffu && p.loginuid != uid)
    fail(Errc::refused, "the checkpoint brings back " + who + " with audit loginuid " +
                            std::to_string(p.loginuid) + ", not " + owner + "'s");
  // crest locks memory as root: no more than the process's own limit allowed it.
  uint64_t locked = 0;
  for (auto& v : meta.vmas)
    if (v.pid == p.pid && (v.vmflags & schema::vmflag("lo"))) locked += v.end - v.start;
  if (locked > limit_of(p, RLIMIT_MEMLOCK, false))
    fail(Errc::refused, "the checkpoint brings back " + who + " with " + std::to_string(locked) +
                            " bytes locked in memory, above its RLIMIT_MEMLOCK");
}

}  // namespace

void check_image_for_owner(const schema::CheckpointMeta& meta, uid_t uid, gid_t gid) {
  if (uid == 0) return;
  const std::vector<gid_t> groups = groups_of(uid, gid);
  auto in_groups = [&](uint32_t g) {
    return std::find(groups.begin(), groups.end(), static_cast<gid_t>(g)) != groups.end();
  };
  const std::string owner = "uid " + std::to_string(uid);
  std::vector<Access> checks;
  for (auto& p : meta.processes) {
    std::string who = "process " + std::to_string(p.pid) + " (" + p.comm + ")";
    for (uint32_t u : {p.uid, p.euid, p.suid, p.fsuid})
      if (u != uid)
        fail(Errc::refused, "the checkpoint brings back " + who + " as uid " + std::to_string(u) +
                                "; a job of " + owner + " may only hold processes of " + owner);
    for (uint32_t g : {p.gid, p.egid, p.sgid, p.fsgid})
      if (!in_groups(g))
        fail(Errc::refused, "the checkpoint brings back " + who + " with gid " + std::to_string(g) +
                                ", not a group of " + owner);
    for (uint32_t g : p.groups)
      if (!in_groups(g))
        fail(Errc::refused, "the checkpoint brings back " + who + " in group " + std::to_string(g) +
                                ", not a group of " + owner);
    if (p.cap_prm || p.cap_eff || p.cap_inh || p.cap_amb)
      fail(Errc::refused, "the checkpoint brings back " + who + " with capabilities; a job of " +
                              owner + " has none");
    if (p.flags & schema::kProcessZombie) continue;
    check_process_limits(meta, p, who, owner, uid);
    if (!p.exe.empty()) checks.push_back({p.exe, R_OK | X_OK, who + "'s executable"});
    if (!p.cwd.empty()) checks.push_back({p.cwd, X_OK, who + "'s working directory"});
    if (!p.root.empty()) checks.push_back({p.root, X_OK, who + "'s root directory"});
  }
  for (auto& t : meta.threads) {
    const std::string who = "thread " + std::to_string(t.tid);
    const auto* p = process_of(meta, t.pid);
    // Scheduling the user could not have asked for: real-time beyond RLIMIT_RTPRIO, a nice
    // value below RLIMIT_NICE's floor, deadline scheduling, the real-time I/O class, an I/O
    // flusher. (The limits themselves were checked against crestd's own above.)
    const uint64_t rtprio = p ? limit_of(*p, RLIMIT_RTPRIO, false) : 0;
    const uint64_t nice_floor = p ? limit_of(*p, RLIMIT_NICE, false) : 0;
    if ((t.sched_policy == SCHED_FIFO || t.sched_policy == SCHED_RR) && t.sched_priority > rtprio)
      fail(Errc::refused, "the checkpoint brings back " + who + " with real-time priority " +
                              std::to_string(t.sched_policy) + "/" + std::to_string(t.sched_priority) +
                              ", above its RLIMIT_RTPRIO");
    if (t.sched_policy == 6 /* SCHED_DEADLINE */)
      fail(Errc::refused, "the checkpoint brings back " + who + " with deadline scheduling");
    // Jobs start at nice 0; below that only as far as RLIMIT_NICE lets (to 20 - limit).
    if (t.sched_nice < 0 && t.sched_nice < 20 - static_cast<int64_t>(std::min<uint64_t>(nice_floor, 40)))
      fail(Errc::refused, "the checkpoint brings back " + who + " with nice " +
                              std::to_string(t.sched_nice) + ", below what its RLIMIT_NICE allows");
    if ((t.ioprio >> 13) == 1 /* IOPRIO_CLASS_RT */)
      fail(Errc::refused, "the checkpoint brings back " + who + " in the real-time I/O class");
    if (t.io_flusher)
      fail(Errc::refused, "the checkpoint brings back " + who + " as an I/O flusher");
  }
  for (auto& f : meta.files) {
    // What crest makes again (unlinked files, memfds, removed directories, FIFOs) it makes
    // with the recorded owner and mode, as root: only the user's own, as the user could.
    const bool made = f.contents_owner != 0 || f.deleted;
    if (made && (f.uid != uid || !in_groups(f.gid)))
      fail(Errc::refused, "the checkpoint makes " + f.path + " again owned by " +
                              std::to_string(f.uid) + ":" + std::to_string(f.gid) +
                              "; a job of " + owner + " may only have its own files made");
    switch (static_cast<FileKind>(f.kind)) {
      case FileKind::regular:
      case FileKind::fifo:
      case FileKind::chardev:
        if (f.deleted) {
          if (static_cast<FileKind>(f.kind) == FileKind::chardev)
            fail(Errc::refused, "the checkpoint makes the device node " + f.path + " again; a job "
                                "of " + owner + " may not make device nodes");
          std::string dir = f.path.substr(0, f.path.find_last_of('/') + 1);
          checks.push_back({dir.empty() ? "." : dir, W_OK | X_OK, "the directory of a removed file"});
        } else {
          checks.push_back({f.path, access_for_open(f.flags), "an open file"});
        }
        break;
      case FileKind::directory:
        if (f.deleted) {
          std::string dir = f.path.substr(0, f.path.find_last_of('/') + 1);
          checks.push_back({dir.empty() ? "." : dir, W_OK | X_OK, "the directory of a removed directory"});
        } else {
          checks.push_back({f.path, R_OK | X_OK, "an open directory"});
        }
        break;
      case FileKind::proc:
        // A task's own /proc files are reopened for the restored task (the user's); any other
        // procfs or sysfs file by its path, as the user could.
        if (f.proc_pid == 0) checks.push_back({f.path, access_for_open(f.flags), "an open file"});
        break;
      case FileKind::path: {
        std::string dir = f.path.substr(0, f.path.find_last_of('/') + 1);
        checks.push_back({dir.empty() ? "." : dir, X_OK, "the directory of an O_PATH descriptor"});
        break;
      }
      case FileKind::shm_file: {
        // Made again at its path (replacing what is there), with the directories missing on the
        // way: the nearest directory that exists must be the user's to write in.
        std::string dir = f.path.substr(0, f.path.find_last_of('/') + 1);
        struct stat st {};
        while (dir.size() > 1 && ::stat(dir.c_str(), &st) != 0) {
          dir.pop_back();
          dir = dir.substr(0, dir.find_last_of('/') + 1);
        }
        checks.push_back({dir.empty() ? "." : dir, W_OK | X_OK, "the directory of a shared file on tmpfs"});
        break;
      }
      case FileKind::unlinked: {
        // Recreated in its directory (then unlinked again).
        std::string dir = f.path.substr(0, f.path.find_last_of('/') + 1);
        checks.push_back({dir.empty() ? "." : dir, W_OK | X_OK, "the directory of an unlinked file"});
        break;
      }
      default:
        break;  // pipes, memfds, shared memory, inherited stdio: no path is opened
    }
  }
  for (auto& v : meta.vmas) {
    auto kind = static_cast<VmaKind>(v.kind);
    if ((kind != VmaKind::file_private && kind != VmaKind::file_shared) || v.file_id < 0) continue;
    auto it = std::find_if(meta.files.begin(), meta.files.end(),
                           [&](const schema::FileRecord& f) { return f.id == v.file_id; });
    if (it == meta.files.end() || it->path.empty() || it->path[0] != '/') continue;
    int mode = R_OK;
    if (kind == VmaKind::file_shared &&
        (v.vmflags & (schema::vmflag("sh") | schema::vmflag("mw"))))
      mode |= W_OK;  // mapped through a description open for writing
    checks.push_back({it->path, mode, "a mapped file"});
  }
  auto [index, err] = first_denied(checks, uid, groups);
  if (index >= 0) {
    const Access& a = checks[static_cast<size_t>(index)];
    fail(Errc::refused, "the checkpoint names " + a.what + ", " + a.path + ", which " + owner +
                            " may not " + mode_name(a.mode) + " (" + std::strerror(err) +
                            "); crestd restores only what the job's user could open");
  }
}

}  // namespace crest::agent
