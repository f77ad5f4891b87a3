#include "core/proc.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <sstream>

#include "core/kernel/fd_pass.h"
#include "core/kernel/features.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

namespace crest::proc {
namespace {

std::vector<pid_t> numeric_entries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw_errno("cannot list " + dir);
  std::vector<pid_t> out;
  while (dirent* e = ::readdir(d)) {
    pid_t v = 0;
    auto [p, ec] = std::from_chars(e->d_name, e->d_name + std::strlen(e->d_name), v);
    if (ec == std::errc() && *p == '\0') out.push_back(v);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t to_u64(std::string_view s, int base = 10) {
  uint64_t v = 0;
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  std::from_chars(s.data(), s.data() + s.size(), v, base);
  return v;
}

// "Key:<blanks>value" lines (status, fdinfo) as key -> value; the first of a repeated key wins.
std::map<std::string, std::string> key_values(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    auto value = line.substr(colon + 1);
    auto first = value.find_first_not_of(" \t");
    out.emplace(line.substr(0, colon), first == std::string::npos ? "" : value.substr(first));
  }
  return out;
}

}  // namespace

std::string path(pid_t pid, const std::string& leaf) {
  return "/proc/" + std::to_string(pid) + "/" + leaf;
}

bool exists(pid_t pid) { return ::access(path(pid, "").c_str(), F_OK) == 0; }

std::vector<pid_t> threads(pid_t pid) {
  auto tids = numeric_entries(path(pid, "task"));
  auto main = std::find(tids.begin(), tids.end(), pid);
  if (main != tids.end()) std::rotate(tids.begin(), main, main + 1);
  return tids;
}

std::vector<pid_t> children(pid_t pid) {
  std::vector<pid_t> out;
  for (pid_t tid : numeric_entries(path(pid, "task"))) {
    std::string text;
    if (!fs::read_file_if_exists(path(pid, "task/" + std::to_string(tid) + "/children"), text))
      continue;  // the thread exited meanwhile
    std::istringstream in(text);
    pid_t child;
    while (in >> child) out.push_back(child);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Stat stat(pid_t pid) {
  std::string text = fs::read_file(path(pid, "stat"));
  auto close = text.rfind(')');
  if (close == std::string::npos) fail(Errc::kernel, "malformed " + path(pid, "stat"));
  std::istringstream in(text.substr(close + 2));
  // Field 3 (state) is the first after the comm; index fields by their proc(5) number.
  std::vector<std::string> f(3);
  std::string tok;
  while (in >> tok) f.push_back(tok);
  auto num = [&](size_t i) -> uint64_t { return i < f.size() ? to_u64(f[i]) : 0; };
  Stat s;
  s.state = f.size() > 3 && !f[3].empty() ? f[3][0] : '?';
  s.ppid = static_cast<pid_t>(num(4));
  s.pgrp = static_cast<pid_t>(num(5));
  s.session = static_cast<pid_t>(num(6));
  s.tty_nr = static_cast<int>(num(7));
  s.tpgid = static_cast<pid_t>(static_cast<int>(num(8)));
  s.flags = static_cast<unsigned>(num(9));
  s.start_code = num(26);
  s.end_code = num(27);
  s.start_stack = num(28);
  s.starttime = num(22);
  s.exit_signal = static_cast<int>(num(38));
  s.start_data = num(45);
  s.end_data = num(46);
  s.start_brk = num(47);
  s.arg_start = num(48);
  s.arg_end = num(49);
  s.env_start = num(50);
  s.env_end = num(51);
  s.exit_code = static_cast<int>(num(52));
  return s;
}

Status status(pid_t pid, pid_t tid) {
  return key_values(
      fs::read_file(tid ? path(pid, "task/" + std::to_string(tid) + "/status") : path(pid, "status")));
}

uint64_t status_hex(const Status& st, const std::string& key) {
  auto it = st.find(key);
  return it == st.end() ? 0 : to_u64(it->second, 16);
}

std::vector<uint64_t> status_numbers(const Status& st, const std::string& key) {
  std::vector<uint64_t> out;
  auto it = st.find(key);
  if (it == st.end()) return out;
  std::istringstream in(it->second);
  uint64_t v;
  while (in >> v) out.push_back(v);
  return out;
}

bool Mapping::has_flag(const char* f) const {
  return std::find(vmflags.begin(), vmflags.end(), f) != vmflags.end();
}

std::vector<Mapping> maps(pid_t pid, bool with_flags) {
  std::string text = fs::read_file(path(pid, with_flags ? "smaps" : "maps"));
  std::vector<Mapping> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("VmFlags:", 0) == 0) {
      if (out.empty()) continue;
      std::istringstream fl(line.substr(8));
      std::string flag;
      while (fl >> flag) out.back().vmflags.push_back(flag);
      continue;
    }
    // A mapping line starts with a hex range; smaps detail lines start with a capital word.
    if (!std::isxdigit(static_cast<unsigned char>(line[0])) || line.find('-') > 16) continue;
    auto first_space = line.find(' ');
    if (first_space == std::string::npos || line.find(':') < first_space) continue;
    Mapping m;
    char perms[8] = {};
    unsigned long long start, end, offset, inode;
    unsigned maj, min;
    int consumed = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx %7s %llx %x:%x %llu %n", &start, &end, perms, &offset,
                    &maj, &min, &inode, &consumed) < 7)
      fail(Errc::kernel, "malformed line in " + path(pid, "maps") + ": " + line);
    m.start = start;
    m.end = end;
    m.read = perms[0] == 'r';
    m.write = perms[1] == 'w';
    m.exec = perms[2] == 'x';
    m.shared = perms[3] == 's';
    m.offset = offset;
    m.dev_major = maj;
    m.dev_minor = min;
    m.inode = inode;
    if (consumed > 0 && static_cast<size_t>(consumed) < line.size()) m.name = line.substr(consumed);
    out.push_back(std::move(m));
  }
  return out;
}

std::map<std::string, std::string> fdinfo(pid_t pid, int fd) {
  return key_values(fs::read_file(path(pid, "fdinfo/" + std::to_string(fd))));
}

std::vector<int> fds(pid_t pid) {
  auto v = numeric_entries(path(pid, "fd"));
  return {v.begin(), v.end()};
}

std::string readlink(const std::string& p) {
  char buf[4096];
  ssize_t n = ::readlink(p.c_str(), buf, sizeof buf);
  if (n < 0) throw_errno("cannot read link " + p);
  return std::string(buf, static_cast<size_t>(n));
}

std::string comm(pid_t pid, pid_t tid) {
  std::string text =
      fs::read_file(tid ? path(pid, "task/" + std::to_string(tid) + "/comm") : path(pid, "comm"));
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

NamespacePids::NamespacePids(pid_t root) {
  auto ns = status_numbers(status(root), "NSpid");
  own_ = ns.size() > 1 && ns.back() == 1;
  depth_ = ns.size();
}

pid_t NamespacePids::of(pid_t pid) const {
  if (!own_) return pid;
  auto ns = status_numbers(status(pid), "NSpid");
  return ns.size() >= depth_ ? static_cast<pid_t>(ns[depth_ - 1]) : pid;
}

pid_t innermost_pid(pid_t pid) {
  auto ns = status_numbers(status(pid), "NSpid");
  return ns.empty() ? pid : static_cast<pid_t>(ns.back());
}

UniqueFd open_pidfd(pid_t pid) { return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))); }

UniqueFd copy_fd(int pidfd, int fd) {
  if (kernel::have(kernel::Iface::pidfd_getfd))
    return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, fd, 0)));
  // Without it: handed over by the task itself (core/kernel/fd_pass.h).
  const pid_t pid = kernel::pid_of_pidfd(pidfd);
  if (pid <= 0) {
    errno = EBADF;
    return UniqueFd();
  }
  if (pid == ::getpid()) return UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 0));  // our own
  if (UniqueFd copy = kernel::prefetched(pid, fd)) return copy;
  try {
    auto copies = kernel::take_fds(pid, {fd});
    return std::move(copies.at(0));
  } catch (const Error& e) {
    log::get("core.proc")->debug("{}", e.what());
    errno = e.sys_errno() ? e.sys_errno() : EIO;
    return UniqueFd();
  }
}

}  // namespace crest::proc
