#include "core/kernel/last_pid.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/kernel/features.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace crest::kernel {

bool use_last_pid() { return !have(Iface::clone3); }

LastPidLock::LastPidLock() {
  // One file for the node, where the system keeps its lock files; /tmp where it has none.
  for (const char* dir : {"/run/lock", "/run", "/tmp"}) {
    struct stat st {};
    if (::stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    const std::string path = std::string(dir) + "/crest-ns_last_pid.lock";
    fd_.reset(::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644));
    if (!fd_) throw_errno("cannot open the lock file " + path, errno, Errc::kernel);
    while (::flock(fd_.get(), LOCK_EX) != 0)
      if (errno != EINTR) throw_errno("cannot lock " + path, errno, Errc::kernel);
    saved_ = read_last_pid();
    return;
  }
  fail(Errc::kernel, "no directory for the ns_last_pid lock file (/run/lock, /run, /tmp)");
}

LastPidLock::~LastPidLock() {
  if (saved_ < 0) return;
  const long now = read_last_pid();
  // Back where it was either way: ahead, or behind (the node's next pids then come from below
  // the tree's, not from the pids it needs next).
  if (saved_ != now && now >= 0) {
    UniqueFd fd(::open(kLastPidPath, O_WRONLY | O_CLOEXEC));
    const std::string text = std::to_string(saved_);
    if (fd && ::write(fd.get(), text.data(), text.size()) < 0)
      log::get("core.restore")->warn("cannot put {} back to {}: {}", kLastPidPath, saved_, std::strerror(errno));
  }
}

long read_last_pid() {
  UniqueFd fd(::open(kLastPidPath, O_RDONLY | O_CLOEXEC));
  char buf[32];
  const ssize_t n = fd ? ::read(fd.get(), buf, sizeof buf - 1) : -1;
  if (n <= 0) return -1;
  buf[n] = '\0';
  return std::strtol(buf, nullptr, 10);
}

void wait_before_retry(int attempt) {
  if (attempt <= 0) return;
  const int ms = std::min(10 << std::min(attempt - 1, 6), 400);  // 10, 20, 40 ... 400 ms
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

std::string last_pid_text(pid_t want) { return std::to_string(want - 1); }

void set_last_pid(pid_t want) {
  UniqueFd fd(::open(kLastPidPath, O_WRONLY | O_CLOEXEC));
  if (!fd)
    throw_errno(std::string("cannot open ") + kLastPidPath + " to choose pid " + std::to_string(want) +
                    " (clone3 with set_tid is missing or disabled)",
                errno, Errc::kernel);
  const std::string text = last_pid_text(want);
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
    throw_errno(std::string("cannot write ") + kLastPidPath + " to choose pid " + std::to_string(want) +
                    " (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)",
                errno, Errc::kernel);
}

void refuse_taken_pid(pid_t pid, const std::string& where) {
  fail(Errc::busy, "pid " + std::to_string(pid) + " is taken in " + where + ": another process had it " +
                       "each of the " + std::to_string(kLastPidTries) + " times crest set ns_last_pid in 2 s " +
                       "(clone3 with set_tid is missing or disabled); end that process, or restore with --pidns");
}

pid_t fork_at_pid(pid_t want, unsigned long flags) {
  for (int attempt = 0; attempt < kLastPidTries; ++attempt) {
    wait_before_retry(attempt);
    long r;
    {
      LastPidLock lock;
      set_last_pid(want);
      r = ::syscall(SYS_clone, flags, 0, 0, 0, 0);
      if (r == 0) lock.in_child();
    }
    if (r == 0) {
      if (::syscall(SYS_getpid) != want) ::_exit(kWrongPidExit);
      return 0;
    }
    if (r < 0) throw_errno("clone of a process for pid " + std::to_string(want), errno, Errc::kernel);
    if (r == want) return static_cast<pid_t>(r);
    log::get("core.restore")->debug("pid {}: the clone made pid {} instead", want, r);
    int st;
    while (::waitpid(static_cast<pid_t>(r), &st, __WALL) < 0 && errno == EINTR) {
    }
  }
  refuse_taken_pid(want, "this pid namespace");
}

}  // namespace crest::kernel
