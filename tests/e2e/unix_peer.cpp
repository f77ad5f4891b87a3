#include "tests/e2e/unix_peer.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <stdexcept>

namespace crest::e2e {
namespace {

sockaddr_un address(const std::string& path, socklen_t& len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) throw std::runtime_error("UnixPeer: path too long: " + path);
  std::memcpy(a.sun_path, path.data(), path.size());
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return a;
}

int bound(int type, const std::string& path) {
  ::unlink(path.c_str());
  const int s = ::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  socklen_t len;
  sockaddr_un a = address(path, len);
  if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&a), len) != 0 ||
      (type == SOCK_STREAM && ::listen(s, 16) != 0))
    throw std::runtime_error("UnixPeer: cannot bind " + path + ": " + std::strerror(errno));
  return s;
}

}  // namespace

UnixPeer::UnixPeer(std::string log_path, std::string srv_path)
    : log_path_(std::move(log_path)), srv_path_(std::move(srv_path)) {
  receiver_ = bound(SOCK_DGRAM, log_path_);
  listener_ = bound(SOCK_STREAM, srv_path_);
  thread_ = std::thread([this] { run(); });
}

UnixPeer::~UnixPeer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (receiver_ >= 0) ::close(receiver_);
  if (listener_ >= 0) ::close(listener_);
  ::unlink(log_path_.c_str());
  if (!listener_closed_) ::unlink(srv_path_.c_str());
}

std::vector<std::string> UnixPeer::messages() const {
  std::lock_guard lock(mu_);
  return messages_;
}
int UnixPeer::connections() const {
  std::lock_guard lock(mu_);
  return connections_;
}
std::string UnixPeer::error() const {
  std::lock_guard lock(mu_);
  return error_;
}

void UnixPeer::stop_listener() {
  close_listener_ = true;
  for (int i = 0; i < 100 && !listener_closed_; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

// Every datagram waiting; pings answered.
void UnixPeer::receive_all() {
  char buf[65536];
  for (;;) {
    sockaddr_un from{};
    socklen_t flen = sizeof from;
    const ssize_t n = ::recvfrom(receiver_, buf, sizeof buf, MSG_DONTWAIT,
                                 reinterpret_cast<sockaddr*>(&from), &flen);
    if (n < 0) return;
    std::string m(buf, static_cast<size_t>(n));
    {
      std::lock_guard lock(mu_);
      messages_.push_back(m);
    }
    if (m.rfind("ping ", 0) == 0 && flen > offsetof(sockaddr_un, sun_path)) {
      const std::string pong = "pong " + m.substr(5);
      if (::sendto(receiver_, pong.data(), pong.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from),
                   flen) < 0) {
        std::lock_guard lock(mu_);
        if (error_.empty()) error_ = std::string("cannot answer a ping: ") + std::strerror(errno);
      }
    }
  }
}

// Answers each complete line of `pending` on client `fd`.
void UnixPeer::answer(int fd, std::string& pending) {
  for (size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
    const std::string line = pending.substr(0, nl);
    pending.erase(0, nl + 1);
    std::string reply = "?";
    if (line.rfind("req ", 0) == 0) {
      reply = "ans " + line.substr(4);
    } else if (line.rfind("seen? ", 0) == 0) {
      receive_all();
      const std::string what = line.substr(6);
      reply = "no";
      std::lock_guard lock(mu_);
      for (auto& m : messages_)
        if (m.find(what) != std::string::npos) reply = "yes";
    } else if (line == "push") {
      reply = "pushed";
    }
    reply += "\n";
    if (::send(fd, reply.data(), reply.size(), MSG_DONTWAIT | MSG_NOSIGNAL) != static_cast<ssize_t>(reply.size())) {
      std::lock_guard lock(mu_);
      if (error_.empty()) error_ = std::string("cannot answer a client: ") + std::strerror(errno);
    }
  }
}

void UnixPeer::run() {
  std::map<int, std::string> clients;  // fd -> bytes of an unfinished line
  while (!stop_) {
    if (close_listener_ && !listener_closed_) {
      ::close(listener_);
      listener_ = -1;
      ::unlink(srv_path_.c_str());
      listener_closed_ = true;
    }
    std::vector<pollfd> fds{{receiver_, POLLIN, 0}};
    if (listener_ >= 0) fds.push_back({listener_, POLLIN, 0});
    for (auto& [fd, _] : clients) fds.push_back({fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
    receive_all();
    if (listener_ >= 0) {
      for (int c; (c = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0;) {
        clients[c];
        std::lock_guard lock(mu_);
        ++connections_;
      }
    }
    for (auto it = clients.begin(); it != clients.end();) {
      char buf[4096];
      const ssize_t n = ::recv(it->first, buf, sizeof buf, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        ::close(it->first);
        it = clients.erase(it);
        continue;
      }
      if (n > 0) {
        it->second.append(buf, static_cast<size_t>(n));
        answer(it->first, it->second);
      }
      ++it;
    }
  }
  for (auto& [fd, _] : clients) ::close(fd);
}

}  // namespace crest::e2e
