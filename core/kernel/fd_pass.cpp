#include "core/kernel/fd_pass.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>

#include "core/inject.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace crest::kernel {
namespace {

constexpr size_t kMaxPerMessage = 253;  // the kernel's SCM_MAX_FD

// Crest's receiving socket and its address, made once.
struct Receiver {
  UniqueFd sock;
  sockaddr_un addr{};
  socklen_t addr_len = 0;
};

Receiver& receiver() {
  static Receiver r = [] {
    Receiver x;
    x.sock.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!x.sock) throw_errno("socket (to receive descriptors from tasks)", errno, Errc::kernel);
    const int on = 1;
    if (::setsockopt(x.sock.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0)
      throw_errno("SO_PASSCRED", errno, Errc::kernel);
    std::random_device rd;
    char name[64];
    const int n = std::snprintf(name, sizeof name, "crest-fds-%d-%08x%08x", ::getpid(), rd(), rd());
    x.addr.sun_family = AF_UNIX;
    std::memcpy(x.addr.sun_path + 1, name, static_cast<size_t>(n));  // abstract: a leading NUL
    x.addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + static_cast<size_t>(n));
    if (::bind(x.sock.get(), reinterpret_cast<sockaddr*>(&x.addr), x.addr_len) != 0)
      throw_errno("bind of the socket that receives descriptors from tasks", errno, Errc::kernel);
    return x;
  }();
  return r;
}

std::mutex take_mutex;  // one transfer at a time through the one receiver

// Takes the next message from `pid` off the receiver: its descriptors, which must be `n`.
std::vector<UniqueFd> receive_from(pid_t pid, size_t n, const std::string& who) {
  Receiver& rx = receiver();
  for (;;) {
    char byte;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * kMaxPerMessage)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    if (::recvmsg(rx.sock.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) < 0)
      throw_errno(who + ": no message with its descriptors came", errno, Errc::kernel);
    std::vector<UniqueFd> got;
    pid_t from = -1;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_CREDENTIALS) {
        ucred cr;
        std::memcpy(&cr, CMSG_DATA(c), sizeof cr);
        from = cr.pid;
      } else if (c->cmsg_type == SCM_RIGHTS) {
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          got.emplace_back(fd);
        }
      }
    }
    if (from != pid) continue;  // not the task's: dropped (its descriptors closed)
    if ((msg.msg_flags & MSG_CTRUNC) || got.size() != n)
      fail(Errc::kernel, who + ": " + std::to_string(got.size()) + " of the " + std::to_string(n) +
                             " descriptors it sent came (crest's RLIMIT_NOFILE?)");
    return got;
  }
}

}  // namespace

std::vector<UniqueFd> take_fds(pid_t pid, const std::vector<int>& fds) {
  const std::string who = "process " + std::to_string(pid) +
                          " (handing descriptors over by SCM_RIGHTS: pidfd_getfd is missing or disabled)";
  std::vector<UniqueFd> out;
  if (fds.empty()) return out;
  std::lock_guard lock(take_mutex);
  Receiver& rx = receiver();
  std::unique_ptr<Injector> own;
  Injector* inj = Injector::on_thread(pid);
  if (!inj) {
    own = std::make_unique<Injector>(pid, find_syscall_insn(pid));
    inj = own.get();
  }
  // In the scratch: the address, the message header, its iovec and byte, the control buffer.
  constexpr size_t kAddrAt = 0, kMsgAt = 128, kIovAt = 192, kByteAt = 208, kControlAt = 256;
  RemoteScratch scratch(*inj, 4096);
  scratch.put(&rx.addr, rx.addr_len, kAddrAt);
  const iovec iov{reinterpret_cast<void*>(scratch.addr() + kByteAt), 1};
  scratch.put(&iov, sizeof iov, kIovAt);
  const long s = inj->raw(SYS_socket, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) throw Error(Errc::kernel, who + ": socket", static_cast<int>(-s));
  struct CloseInTask {
    Injector& inj;
    long fd;
    ~CloseInTask() {
      try {
        inj.raw(SYS_close, static_cast<uint64_t>(fd));
      } catch (...) {
      }
    }
  } close_in_task{*inj, s};
  for (size_t i = 0; i < fds.size(); i += kMaxPerMessage) {
    const size_t n = std::min(kMaxPerMessage, fds.size() - i);
    std::vector<char> control(CMSG_SPACE(sizeof(int) * n), 0);
    auto* c = reinterpret_cast<cmsghdr*>(control.data());
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    std::memcpy(CMSG_DATA(c), fds.data() + i, sizeof(int) * n);
    scratch.put(control.data(), control.size(), kControlAt);
    msghdr msg{};
    msg.msg_name = reinterpret_cast<void*>(scratch.addr() + kAddrAt);
    msg.msg_namelen = rx.addr_len;
    msg.msg_iov = reinterpret_cast<iovec*>(scratch.addr() + kIovAt);
    msg.msg_iovlen = 1;
    msg.msg_control = reinterpret_cast<void*>(scratch.addr() + kControlAt);
    msg.msg_controllen = control.size();
    scratch.put(&msg, sizeof msg, kMsgAt);
    const long r = inj->raw(SYS_sendmsg, static_cast<uint64_t>(s), scratch.addr() + kMsgAt,
                            MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r != 1)
      throw Error(Errc::kernel, who + ": sendmsg of " + std::to_string(n) + " descriptors",
                  r < 0 ? static_cast<int>(-r) : EIO);
    for (auto& fd : receive_from(pid, n, who)) out.push_back(std::move(fd));
  }
  return out;
}

pid_t pid_of_pidfd(int pidfd) {
  std::string text;
  try {
    // thread-self: a thread with a descriptor table of its own (unshare(CLONE_FILES)) asks too.
    text = fs::read_file("/proc/thread-self/fdinfo/" + std::to_string(pidfd));
  } catch (const Error&) {
    return -1;
  }
  const size_t at = text.find("\nPid:");
  if (at == std::string::npos) return -1;
  return static_cast<pid_t>(std::strtol(text.c_str() + at + 5, nullptr, 10));
}

namespace {
std::mutex prefetched_mutex;
std::map<pid_t, std::map<int, UniqueFd>> prefetched_fds;
}  // namespace

Prefetched::Prefetched(pid_t pid, const std::vector<int>& fds) : pid_(pid) {
  // We hold a copy of each at once: the soft descriptor limit is raised to the hard one while
  // they are held (a shell's 1,024 would not take a process of more).
  if (::getrlimit(RLIMIT_NOFILE, &saved_) == 0 && saved_.rlim_cur < saved_.rlim_max) {
    rlimit raised{saved_.rlim_max, saved_.rlim_max};
    raised_ = ::setrlimit(RLIMIT_NOFILE, &raised) == 0;
  }
  auto copies = take_fds(pid, fds);
  std::map<int, UniqueFd> mine;
  for (size_t i = 0; i < fds.size(); ++i) mine[fds[i]] = std::move(copies[i]);
  std::lock_guard lock(prefetched_mutex);
  prefetched_fds[pid] = std::move(mine);
}

Prefetched::~Prefetched() {
  {
    std::lock_guard lock(prefetched_mutex);
    prefetched_fds.erase(pid_);
  }
  if (raised_) ::setrlimit(RLIMIT_NOFILE, &saved_);
}

UniqueFd prefetched(pid_t pid, int fd) {
  std::lock_guard lock(prefetched_mutex);
  auto p = prefetched_fds.find(pid);
  if (p == prefetched_fds.end()) return UniqueFd();
  auto f = p->second.find(fd);
  if (f == p->second.end()) return UniqueFd();
  return UniqueFd(::fcntl(f->second.get(), F_DUPFD_CLOEXEC, 0));
}

}  // namespace crest::kernel
