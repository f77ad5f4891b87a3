// crestd's control protocol: line-delimited JSON over a Unix stream socket.
//
// A client sends one request per line, a JSON object with an "op"; the daemon answers each with
// one line, {"ok": true, ...} or {"ok": false, "error": {"kind", "message"}}, in order. After a
// `run` or `watch` request, the daemon also sends event lines, {"event": ..., "job": ...}, on
// the same connection, interleaved with replies (events never carry "ok"). Descriptors travel
// as SCM_RIGHTS ancillary data with the request line they belong to (`run` sends the job's
// stdin, stdout and stderr). The ops, their fields and replies are listed in README.md
// ("crestd's protocol") and implemented in server.cpp.
#pragma once

#include <sys/types.h>

#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/crestd/policy.h"
#include "core/util/unique_fd.h"

namespace crest::agent {

inline constexpr int kProtocolVersion = 1;
inline constexpr size_t kMaxFdsPerMessage = 8;
// The deepest nesting of arrays and objects a request may have. Real requests are 3 deep (a
// policy object inside the request); the cap keeps a hostile line ("[[[[…" 100,000 deep) from
// ever reaching the JSON parser, whose tree it would be, and from every recursive walk of it.
inline constexpr size_t kMaxRequestDepth = 32;

// Whether the JSON text nests arrays/objects deeper than max_depth (brackets inside strings do
// not count). Linear, no allocation; run on each request line before it is parsed.
bool json_nesting_exceeds(std::string_view text, size_t max_depth);

// Sends one JSON line, with descriptors attached if any. Throws Errc::io.
void send_line(int sock, const nlohmann::json& message, const std::vector<int>& fds = {});

// Reads lines from a socket, keeping descriptors that arrive with them (at most
// kMaxFdsPerMessage are kept; more are closed).
class LineReader {
 public:
  enum class Status { line, eof, timeout, too_long, error };
  LineReader(int sock, size_t max_line) : sock_(sock), max_(max_line) {}

  // Waits up to timeout_ms (-1: forever) for a whole line.
  Status next(std::string& line, int timeout_ms);
  // One recvmsg() (call it when poll() says the socket is readable): `line` when data came
  // (whole lines may now be ready), eof, or error.
  Status read_some();
  // The next whole line already received, if any.
  bool pop_line(std::string& line);
  // Bytes received that do not form a whole line yet.
  size_t pending() const { return buffer_.size() - start_; }
  bool over_limit() const {
    return pending() > max_ && buffer_.find('\n', start_) == std::string::npos;
  }
  // Descriptors received so far, oldest first; taking them transfers ownership.
  std::vector<UniqueFd> take_fds(size_t n);
  size_t fds_pending() const { return fds_.size(); }
  void drop_fds() { fds_.clear(); }

 private:
  int sock_;
  size_t max_;
  // Received bytes; those before start_ were handed out already (dropped lazily, so that many
  // short lines in one read cost linear time, not quadratic).
  std::string buffer_;
  size_t start_ = 0;
  std::deque<UniqueFd> fds_;
};

// A client connection to crestd (the CLI verbs, crest run, the tests).
class Client {
 public:
  // The socket to use: --socket, else $CREST_SOCKET, else the default.
  static std::string socket_path(const std::string& flag);
  // Connects; throws Errc::not_found ("no crestd listening on PATH") when nothing listens.
  static Client connect(const std::string& path);
  // As connect, but nullopt when nothing listens there.
  static std::optional<Client> try_connect(const std::string& path);

  // Sends a request and returns the reply's fields. An error reply is thrown as the crest::Error
  // it describes; events that arrive first are queued for next_event().
  nlohmann::json call(const nlohmann::json& request, const std::vector<int>& fds = {},
                      int timeout_ms = -1);
  // Sends without waiting for the reply (the reply is then read by next_message()).
  void send(const nlohmann::json& request, const std::vector<int>& fds = {});
  // The next event or reply, queued first; nullopt on timeout. Throws Errc::io when the daemon
  // closed the connection.
  std::optional<nlohmann::json> next_message(int timeout_ms);
  int fd() const { return sock_.get(); }

 private:
  explicit Client(UniqueFd sock);
  UniqueFd sock_;
  LineReader reader_;
  std::deque<nlohmann::json> queued_;
};

// Where a job's events wait for the one thread that passes them on (a connection of crestd,
// crest run's main loop). push() is called on the agent's threads and never blocks: it queues
// and pokes an eventfd to poll() on. Once closed, events are dropped. Held by shared_ptr by the
// listeners, so an event for a reader that has gone is dropped, never sent to freed memory.
class EventQueue {
 public:
  EventQueue();
  void push(const nlohmann::json& event);
  std::deque<nlohmann::json> take();  // everything queued, oldest first
  void close();
  int fd() const { return fd_.get(); }

 private:
  std::mutex mu_;
  std::deque<nlohmann::json> events_;
  UniqueFd fd_;
  bool closed_ = false;
};

// ---- requests ----------------------------------------------------------------------------------
// Decoding what a client sent, field by field (server.cpp acts on it; tests/fuzz/fuzz_request
// feeds these hostile input). Every problem is Errc::usage naming the field; nothing here
// throws anything but crest::Error.

// The request on one line: nullopt for a blank line; Errc::usage unless it is one JSON object.
std::optional<nlohmann::json> parse_request(const std::string& line);
// A string field; "" when absent and not required.
std::string str_field(const nlohmann::json& req, const char* key, bool required = true);
// A boolean field; `absent` when it is not there.
bool bool_field(const nlohmann::json& req, const char* key, bool absent);
// The job a request names: "job", a name or a number.
std::string job_ref(const nlohmann::json& req);
// A signal by number (1 to NSIG-1) or name ("TERM", "SIGTERM").
int parse_signal(const nlohmann::json& v);
// "pid": a process id other than 0 and 1.
pid_t pid_field(const nlohmann::json& req);
// A user or group id field ("uid", "gid"); `absent` when it is not there.
uint32_t id_field(const nlohmann::json& req, const char* key, uint32_t absent);
// An integer field within [lo, hi] (no float, no wrap-around of a larger number); Errc::usage
// naming `what` otherwise (also when it is missing).
int64_t int_field(const nlohmann::json& req, const char* key, int64_t lo, int64_t hi, const char* what);
// An array of strings ("argv", "env"); empty when absent (and not required to be non-empty).
std::vector<std::string> string_list(const nlohmann::json& req, const char* key, bool non_empty);
// The job policy a register or run request asks for: `defaults`, overridden by its "policy"
// object and its top-level shortcuts (every, keep, auto_restore, snapshot, ...).
JobPolicy policy_from(const nlohmann::json& req, const JobPolicy& defaults);

// Turns an error reply into the Error it describes (kind by name; unknown names: internal).
[[noreturn]] void throw_reply_error(const nlohmann::json& reply);
nlohmann::json error_reply(std::string_view kind, const std::string& message);

}  // namespace crest::agent
