#include "agent/crestd/protocol.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>

#include "core/util/error.h"

namespace crest::agent {

void send_line(int sock, const nlohmann::json& message, const std::vector<int>& fds) {
  std::string line = message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  size_t sent = 0;
  bool with_fds = !fds.empty();
  while (sent < line.size()) {
    iovec iov{line.data() + sent, line.size() - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    if (with_fds) {
      if (fds.size() > kMaxFdsPerMessage) fail(Errc::usage, "too many descriptors for one message");
      std::memset(control, 0, sizeof control);
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot send to crestd's socket");
    }
    sent += static_cast<size_t>(n);
    with_fds = false;  // attached to the first byte only
  }
}

bool json_nesting_exceeds(std::string_view text, size_t max_depth) {
  size_t depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

bool LineReader::pop_line(std::string& line) {
  auto nl = buffer_.find('\n', start_);
  if (nl == std::string::npos) {
    // Nothing whole left: drop what was handed out.
    buffer_.erase(0, start_);
    start_ = 0;
    return false;
  }
  line.assign(buffer_, start_, nl - start_);
  start_ = nl + 1;
  if (start_ == buffer_.size()) {
    buffer_.clear();
    start_ = 0;
  }
  return true;
}

LineReader::Status LineReader::read_some() {
  char buf[16384];
  iovec iov{buf, sizeof buf};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  while ((n = ::recvmsg(sock_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)) < 0 && errno == EINTR) {
  }
  if (n < 0) return errno == EAGAIN ? Status::timeout : Status::error;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds_.emplace_back(fd);
    }
  }
  // A client cannot park descriptors here without bound.
  while (fds_.size() > kMaxFdsPerMessage) fds_.pop_front();
  if (n == 0) return Status::eof;
  buffer_.append(buf, static_cast<size_t>(n));
  return Status::line;
}

LineReader::Status LineReader::next(std::string& line, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    if (pop_line(line)) return Status::line;
    if (over_limit()) return Status::too_long;
    int wait = -1;
    if (timeout_ms >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now())
                      .count();
      wait = static_cast<int>(std::max<int64_t>(left, 0));  // 0: still take what is there
    }
    pollfd p{sock_, POLLIN, 0};
    int pr = ::poll(&p, 1, wait);
    if (pr < 0) {
      if (errno == EINTR) continue;
      return Status::error;
    }
    if (pr == 0) return Status::timeout;
    Status s = read_some();
    if (s == Status::eof || s == Status::error) return s;
  }
}

std::vector<UniqueFd> LineReader::take_fds(size_t n) {
  std::vector<UniqueFd> out;
  while (n-- > 0 && !fds_.empty()) {
    out.push_back(std::move(fds_.front()));
    fds_.pop_front();
  }
  return out;
}

// ---- requests ----------------------------------------------------------------------------------

using nlohmann::json;

std::optional<json> parse_request(const std::string& line) {
  if (line.find_first_not_of(" \t\r") == std::string::npos) return std::nullopt;
  // Checked before parsing: the parser would build the whole tree first.
  if (json_nesting_exceeds(line, kMaxRequestDepth))
    fail(Errc::usage, "request nested deeper than " + std::to_string(kMaxRequestDepth) + " levels");
  auto doc = json::parse(line, nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    fail(Errc::usage, "a request is one JSON object per line");
  return doc;
}

std::string str_field(const json& req, const char* key, bool required) {
  auto it = req.find(key);
  if (it == req.end()) {
    if (required) fail(Errc::usage, std::string("missing '") + key + "'");
    return "";
  }
  if (!it->is_string()) fail(Errc::usage, std::string("'") + key + "' must be a string");
  return it->get<std::string>();
}

bool bool_field(const json& req, const char* key, bool absent) {
  auto it = req.find(key);
  if (it == req.end()) return absent;
  if (!it->is_boolean()) fail(Errc::usage, std::string("'") + key + "' must be true or false");
  return it->get<bool>();
}

std::string job_ref(const json& req) {
  auto it = req.find("job");
  if (it != req.end() && it->is_number_unsigned()) return std::to_string(it->get<uint64_t>());
  return str_field(req, "job");
}

int parse_signal(const json& v) {
  // (Not get<int>() on any number: 4294967311 would become 15.)
  if (v.is_number_integer()) {
    int64_t s = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{NSIG} ? NSIG
                                                                             : v.get<int64_t>();
    if (s >= 1 && s < NSIG) return static_cast<int>(s);
  } else if (v.is_string()) {
    std::string name = v.get<std::string>();
    if (name.rfind("SIG", 0) == 0) name = name.substr(3);
    for (int s = 1; s < NSIG; ++s) {
      const char* a = ::sigabbrev_np(s);
      if (a != nullptr && name == a) return s;
    }
  }
  fail(Errc::usage, "'signal' must be a signal number or name");
}

pid_t pid_field(const json& req) {
  auto it = req.find("pid");
  // Range-checked before the conversion: a pid of 2^32 + 1234 is not process 1234.
  if (it == req.end() || !it->is_number_integer() || it->get<int64_t>() <= 1 ||
      (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t{std::numeric_limits<pid_t>::max()}) ||
      it->get<int64_t>() > std::numeric_limits<pid_t>::max())
    fail(Errc::usage, "'pid' must be a process id");
  return static_cast<pid_t>(it->get<int64_t>());
}

uint32_t id_field(const json& req, const char* key, uint32_t absent) {
  auto it = req.find(key);
  if (it == req.end()) return absent;
  // (uint32_t)-1 means "no change" to the kernel's setresuid, never an id.
  if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<int64_t>() < 0) ||
      it->get<uint64_t>() >= 0xffffffffu)
    fail(Errc::usage, std::string("'") + key + "' must be a user or group id");
  return static_cast<uint32_t>(it->get<uint64_t>());
}

int64_t int_field(const json& req, const char* key, int64_t lo, int64_t hi, const char* what) {
  auto it = req.find(key);
  if (it != req.end() && it->is_number_unsigned() && it->get<uint64_t>() <= static_cast<uint64_t>(hi) &&
      static_cast<int64_t>(it->get<uint64_t>()) >= lo)
    return static_cast<int64_t>(it->get<uint64_t>());
  if (it != req.end() && it->is_number_integer() && !it->is_number_unsigned() &&
      it->get<int64_t>() >= lo && it->get<int64_t>() <= hi)
    return it->get<int64_t>();
  fail(Errc::usage, std::string("'") + key + "' must be " + what);
}

std::vector<std::string> string_list(const json& req, const char* key, bool non_empty) {
  std::vector<std::string> out;
  std::string what = std::string("'") + key + "' must be " +
                     (non_empty ? "a non-empty array of strings" : "an array of strings");
  auto it = req.find(key);
  if (it == req.end()) {
    if (non_empty) fail(Errc::usage, what);
    return out;
  }
  if (!it->is_array() || (non_empty && it->empty())) fail(Errc::usage, what);
  for (const auto& a : *it) {
    if (!a.is_string()) fail(Errc::usage, what);
    out.push_back(a.get<std::string>());
  }
  return out;
}

JobPolicy policy_from(const json& req, const JobPolicy& defaults) {
  JobPolicy p = defaults;
  if (auto it = req.find("policy"); it != req.end()) p.update(*it);
  json top = json::object();
  for (const char* k : {"every", "keep", "auto_restore", "snapshot", "tcp_established", "ext_unix_sk",
                        "time_limit_margin"})
    if (auto it = req.find(k); it != req.end()) top[k] = *it;
  p.update(top);
  return p;
}

// ---- client ------------------------------------------------------------------------------------

Client::Client(UniqueFd sock) : sock_(std::move(sock)), reader_(sock_.get(), 64 << 20) {}

std::string Client::socket_path(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = ::getenv("CREST_SOCKET"); env != nullptr && *env != 0) return env;
  return "/run/crest/crestd.sock";
}

std::optional<Client> Client::try_connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    fail(Errc::usage, "socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) throw_errno("socket");
  for (;;) {
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
    if (errno == EINTR) continue;
    if (errno == ENOENT || errno == ECONNREFUSED || errno == ENOTDIR) return std::nullopt;
    throw_errno("cannot connect to crestd at " + path);
  }
  return Client(std::move(s));
}

Client Client::connect(const std::string& path) {
  auto c = try_connect(path);
  if (!c)
    fail(Errc::not_found, "no crestd listening on " + path +
                              " (start crestd, or pass --socket PATH)");
  return std::move(*c);
}

void Client::send(const nlohmann::json& request, const std::vector<int>& fds) {
  send_line(sock_.get(), request, fds);
}

std::optional<nlohmann::json> Client::next_message(int timeout_ms) {
  if (!queued_.empty()) {
    auto m = std::move(queued_.front());
    queued_.pop_front();
    return m;
  }
  std::string line;
  switch (reader_.next(line, timeout_ms)) {
    case LineReader::Status::line: break;
    case LineReader::Status::timeout: return std::nullopt;
    case LineReader::Status::eof:
      fail(Errc::io, "crestd closed the connection");
    default:
      throw_errno("cannot read from crestd's socket");
  }
  reader_.drop_fds();
  auto doc = nlohmann::json::parse(line, nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    fail(Errc::internal, "crestd sent something that is not a JSON object: " + line.substr(0, 200));
  return doc;
}

nlohmann::json Client::call(const nlohmann::json& request, const std::vector<int>& fds,
                            int timeout_ms) {
  send(request, fds);
  std::deque<nlohmann::json> events;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    int left = -1;
    if (timeout_ms >= 0) {
      left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                  deadline - std::chrono::steady_clock::now())
                                  .count());
      if (left < 0) left = 0;
    }
    std::string line;
    auto status = reader_.next(line, left);
    if (status == LineReader::Status::timeout)
      fail(Errc::busy, "crestd did not answer '" + request.value("op", std::string("?")) +
                           "' in time");
    if (status == LineReader::Status::eof) fail(Errc::io, "crestd closed the connection");
    if (status != LineReader::Status::line) throw_errno("cannot read from crestd's socket");
    auto doc = nlohmann::json::parse(line, nullptr, false);
    if (doc.is_discarded() || !doc.is_object())
      fail(Errc::internal, "crestd sent something that is not a JSON object");
    if (doc.contains("event")) {
      queued_.push_back(std::move(doc));
      continue;
    }
    if (doc.value("ok", false)) return doc;
    throw_reply_error(doc);
  }
}

void throw_reply_error(const nlohmann::json& reply) {
  std::string kind = "internal", message = "crestd refused the request without saying why";
  if (reply.contains("error") && reply["error"].is_object()) {
    kind = reply["error"].value("kind", kind);
    message = reply["error"].value("message", message);
  }
  static const Errc kinds[] = {Errc::io,         Errc::not_found,        Errc::not_image,
                               Errc::truncated,  Errc::corrupt,          Errc::version,
                               Errc::incomplete, Errc::missing_ancestor, Errc::unsupported,
                               Errc::refused,    Errc::busy,             Errc::kernel,
                               Errc::usage,      Errc::internal};
  for (Errc k : kinds)
    if (kind_name(k) == kind) throw Error(k, message);
  throw Error(Errc::internal, kind + ": " + message);
}

nlohmann::json error_reply(std::string_view kind, const std::string& message) {
  return {{"ok", false}, {"error", {{"kind", kind}, {"message", message}}}};
}

EventQueue::EventQueue() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!fd_) throw_errno("eventfd", errno, Errc::kernel);
}

void EventQueue::push(const nlohmann::json& event) {
  std::lock_guard lock(mu_);
  if (closed_) return;
  events_.push_back(event);
  uint64_t one = 1;
  (void)!::write(fd_.get(), &one, sizeof one);
}

std::deque<nlohmann::json> EventQueue::take() {
  uint64_t v;
  (void)!::read(fd_.get(), &v, sizeof v);
  std::lock_guard lock(mu_);
  std::deque<nlohmann::json> out;
  out.swap(events_);
  return out;
}

void EventQueue::close() {
  std::lock_guard lock(mu_);
  closed_ = true;
  events_.clear();
}

}  // namespace crest::agent
