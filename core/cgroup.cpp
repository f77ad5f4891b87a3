#include "core/cgroup.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <sstream>

#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

namespace crest::cgroup {
namespace {

bool below(pid_t pid, pid_t root) {
  for (int depth = 0; pid > 1 && depth < 4096; ++depth) {
    if (pid == root) return true;
    try {
      pid = proc::stat(pid).ppid;
    } catch (const Error&) {
      return false;
    }
  }
  return pid == root;
}

void write_value(const std::string& file, const char* value) {
  UniqueFd fd = fs::open_or_throw(file, O_WRONLY);
  fs::write_all(fd.get(), value, std::strlen(value), file);
}

bool frozen(const std::string& dir) {
  std::string events = fs::read_file(dir + "/cgroup.events");
  return events.find("frozen 1") != std::string::npos;
}

// A system call that leaves errno alone: the watchdog shares our memory, and errno is the
// memory of the thread that made it.
__attribute__((no_sanitize("address", "undefined"))) inline long raw_syscall(long n, long a = 0,
                                                                            long b = 0, long c = 0) {
  long ret;
  asm volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
  return ret;
}

struct WatchdogArgs {
  int read_fd;
  int freeze_fd;
};

// The watchdog's whole life, on a stack of its own in our memory: raw system calls only (no
// libc state, no errno, no sanitizer runtime). Every descriptor but its two is closed first, so
// that it holds no lock, pipe or file of ours; all signals are blocked (by the thread that made
// it). EOF on the pipe: its maker died without saying the cgroup was thawed: thaw it.
__attribute__((no_sanitize("address", "undefined"), noinline)) int crest_freeze_watchdog(
    void* arg) {
  const auto* w = static_cast<const WatchdogArgs*>(arg);
  const long rfd = w->read_fd, ffd = w->freeze_fd;
  const long lo = rfd < ffd ? rfd : ffd, hi = rfd < ffd ? ffd : rfd;
  if (lo > 0) raw_syscall(SYS_close_range, 0, lo - 1, 0);
  if (hi > lo + 1) raw_syscall(SYS_close_range, lo + 1, hi - 1, 0);
  raw_syscall(SYS_close_range, hi + 1, ~0U, 0);
  raw_syscall(SYS_setpgid, 0, 0);  // out of crest's process group: a ^C is not for it
  char c;
  long n;
  do {
    n = raw_syscall(SYS_read, rfd, reinterpret_cast<long>(&c), 1);
  } while (n == -EINTR);
  if (n == 0) raw_syscall(SYS_write, ffd, reinterpret_cast<long>("0"), 1);
  raw_syscall(SYS_exit, 0);
  return 0;
}

}  // namespace

struct Freeze::Watchdog {
  static constexpr size_t kStack = 16 * 1024;
  alignas(16) char stack[kStack];
  WatchdogArgs args{};
  UniqueFd freeze_fd, write_end;
  pid_t pid = -1;

  // Throws when it cannot be made; the cgroup is then frozen without one.
  explicit Watchdog(const std::string& dir) {
    freeze_fd = fs::open_or_throw(dir + "/cgroup.freeze", O_WRONLY);
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe2 for the freeze watchdog", errno, Errc::kernel);
    UniqueFd read_end(p[0]);
    write_end.reset(p[1]);
    args = {read_end.get(), freeze_fd.get()};
    sigset_t all, old;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    // CLONE_VM: no copy of our memory to make (crestd may hold much); exit signal 0: a "clone"
    // child, invisible to anyone's waitpid(-1) — only ours (with __WALL) reaps it.
    pid = ::clone(crest_freeze_watchdog, stack + kStack, CLONE_VM, &args);
    const int err = errno;
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) throw_errno("clone of the freeze watchdog", err, Errc::kernel);
  }
  ~Watchdog() {
    // Thawed: one byte says so; without it, EOF would make the watchdog thaw once more.
    if (write_end) (void)!::write(write_end.get(), "t", 1);
    write_end.reset();
    int st;
    while (::waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {
    }
  }
};

std::string v2_mount() {
  static const std::string mount = [] {
    std::istringstream in(fs::read_file("/proc/self/mounts"));
    std::string dev, where, type, rest;
    while (in >> dev >> where >> type && std::getline(in, rest))
      if (type == "cgroup2") return where;
    return std::string();
  }();
  return mount;
}

std::string of(pid_t pid) {
  std::string mount = v2_mount();
  if (mount.empty()) return "";
  std::string text;
  if (!fs::read_file_if_exists(proc::path(pid, "cgroup"), text)) return "";
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("0::", 0) == 0) return mount + line.substr(3);
  return "";
}

bool owned_by_tree(const std::string& dir, pid_t root) {
  if (dir.empty() || dir == v2_mount() || dir == v2_mount() + "/") return false;
  std::string procs;
  if (!fs::read_file_if_exists(dir + "/cgroup.procs", procs)) return false;
  std::istringstream in(procs);
  pid_t pid;
  bool any = false;
  while (in >> pid) {
    if (!below(pid, root)) return false;
    any = true;
  }
  // Sub-cgroups freeze with it: they must hold nothing else either.
  std::string subtree;
  if (fs::read_file_if_exists(dir + "/cgroup.stat", subtree) &&
      subtree.find("nr_descendants 0") == std::string::npos)
    return false;
  return any;
}

std::string create(const std::string& relative) {
  std::string mount = v2_mount();
  if (mount.empty()) fail(Errc::unsupported, "no cgroup v2 hierarchy is mounted");
  std::string dir = mount;
  std::istringstream parts(relative);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part.empty()) continue;
    dir += "/" + part;
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("cannot create cgroup " + dir);
  }
  return dir;
}

void move(pid_t pid, const std::string& dir) {
  write_value(dir + "/cgroup.procs", std::to_string(pid).c_str());
}

void remove(const std::string& dir) noexcept { ::rmdir(dir.c_str()); }

bool kill_all(const std::string& dir) noexcept {
  UniqueFd fd(::open((dir + "/cgroup.kill").c_str(), O_WRONLY | O_CLOEXEC));
  return fd && ::write(fd.get(), "1", 1) == 1;
}

Freeze::Freeze(std::string dir) : dir_(std::move(dir)) {
  try {
    watchdog_ = std::make_unique<Watchdog>(dir_);
  } catch (const Error& e) {
    log::get("core.freeze")->warn("{}: no watchdog ({}): if crest dies while the cgroup is frozen, "
                                  "nothing thaws it", dir_, e.what());
  }
  write_value(dir_ + "/cgroup.freeze", "1");
  // cgroup.events signals changes with POLLPRI; poll again on every change until frozen.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  UniqueFd events = fs::open_or_throw(dir_ + "/cgroup.events", O_RDONLY);
  while (!frozen(dir_)) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      write_value(dir_ + "/cgroup.freeze", "0");
      fail(Errc::busy, dir_ + ": the cgroup did not freeze within 5 s (a task in uninterruptible "
                              "sleep?)");
    }
    pollfd p{events.get(), POLLPRI, 0};
    ::poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 100)));
    char buf[256];
    ::pread(events.get(), buf, sizeof buf, 0);
  }
}

Freeze::~Freeze() {
  try {
    write_value(dir_ + "/cgroup.freeze", "0");
  } catch (const Error& e) {
    log::get("core.freeze")->error("cannot thaw {}: {}", dir_, e.what());
  }
  watchdog_.reset();  // after the thaw
}

}  // namespace crest::cgroup
