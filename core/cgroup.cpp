#include "core/cgroup.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
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

}  // namespace

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

Freeze::Freeze(std::string dir) : dir_(std::move(dir)) {
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
}

}  // namespace crest::cgroup
