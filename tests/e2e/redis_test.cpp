// A real program with clients outside the tree: Debian's redis-server run alone as the tree, the
// test process its clients (and redis-benchmark, a process of the harness). Skipped, visibly,
// when redis-server (or redis-benchmark) is not installed; .ci/setup installs both.
//
//   Redis.InPlaceKeepsClientConnections  SET two keys; `crest dump --tcp-established` kills
//       redis; while it is gone a client sends a pipelined GET and INCR (dropped by the network
//       lock, sent again by its TCP); `crest restore -d`; the same connection gets both replies
//       once each, then DBSIZE 2; a second connection idle across the checkpoint answers PING;
//       no network lock is left.
//   Redis.LeaveRunningUnderBenchmark  redis-benchmark -l with 4 connections; `crest dump -R
//       --tcp-established` while it runs: it sees a pause, not an error (it goes on, redis
//       answers thousands more of its commands, its log has no error).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"

namespace crest::e2e {
namespace {

using Clock = std::chrono::steady_clock;

std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string p = dir + "/" + name;
    if (!dir.empty() && ::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

uint16_t free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

std::string command(const std::vector<std::string>& args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (auto& a : args) out += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  return out;
}

// One RESP connection of the test process (outside the tree).
class Client {
 public:
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connect(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
      return false;
    }
    return true;
  }
  bool send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) {
        error_ = std::string("send: ") + std::strerror(errno);
        return false;
      }
      off += static_cast<size_t>(n);
    }
    return true;
  }
  // One reply, raw ("+OK\r\n", "$6\r\nvalue1\r\n"...); nullopt on error, EOF or the deadline.
  std::optional<std::string> reply(double seconds) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
      size_t eol = buf_.find("\r\n");
      if (eol != std::string::npos) {
        size_t total = eol + 2;
        if (buf_[0] == '$') {
          long len = std::atol(buf_.c_str() + 1);
          if (len >= 0) total += static_cast<size_t>(len) + 2;
        }
        if (buf_.size() >= total) {
          std::string r = buf_.substr(0, total);
          buf_.erase(0, total);
          return r;
        }
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        error_ = "no reply in time";
        return std::nullopt;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[65536];
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n <= 0) {
        error_ = n == 0 ? "EOF" : std::string("recv: ") + std::strerror(errno);
        return std::nullopt;
      }
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }
  std::string call(const std::vector<std::string>& args, double seconds = 10) {
    if (!send(command(args))) return "(" + error_ + ")";
    auto r = reply(seconds);
    return r ? *r : "(" + error_ + ")";
  }
  // Nothing has come, and the connection is not reset.
  std::string quiet() {
    char c;
    ssize_t n = ::recv(fd_, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    if (n < 0 && errno == EAGAIN && buf_.empty()) return "";
    if (n == 0) return "EOF";
    if (n < 0) return std::strerror(errno);
    return "data";
  }
  const std::string& error() const { return error_; }

 private:
  int fd_ = -1;
  std::string buf_;
  std::string error_;
};

struct Redis {
  std::string server, benchmark;
  uint16_t port = 0;
};

// Starts redis-server as the root of `w`, and waits until it answers PING.
testing::AssertionResult start_redis(WorkloadRun& w, Redis& r) {
  r.port = free_port();
  auto started = w.start_program({r.server, "--port", std::to_string(r.port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", w.dir(),
                                  "--daemonize", "no", "--protected-mode", "no"});
  if (!started) return started;
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline) {
    Client c;
    if (c.connect(r.port) && c.call({"PING"}, 2) == "+PONG\r\n") return testing::AssertionSuccess();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return testing::AssertionFailure() << "redis-server did not answer PING within 20 s\n" << w.diagnostics();
}

long info_field(Client& c, const std::string& section, const std::string& field) {
  std::string info = c.call({"INFO", section});
  size_t at = info.find(field + ":");
  return at == std::string::npos ? -1 : std::atol(info.c_str() + at + field.size() + 1);
}

TEST(Redis, InPlaceKeepsClientConnections) {
  Redis r;
  r.server = find_program("redis-server");
  if (r.server.empty()) GTEST_SKIP() << "redis-server is not installed (.ci/setup's test packages)";
  WorkloadRun w("redis-server", "Redis-inplace");
  ASSERT_TRUE(start_redis(w, r));
  const pid_t root = w.root();
  Client c, idle;
  ASSERT_TRUE(c.connect(r.port) && idle.connect(r.port));
  ASSERT_EQ(c.call({"SET", "key1", "value1"}), "+OK\r\n");
  ASSERT_EQ(c.call({"SET", "counter", "41"}), "+OK\r\n");
  ASSERT_EQ(idle.call({"PING"}), "+PONG\r\n");

  CommandResult dump = w.crest({"dump", "-t", std::to_string(root), "-D", w.images(), "--tcp-established"},
                               Seconds(60));
  ASSERT_TRUE(dump.exited(0)) << "crest dump --tcp-established of redis-server failed\n" << w.diagnostics();
  ASSERT_TRUE(wait_child(root, Seconds(30)).has_value()) << "redis-server still runs after the dump";
  // Redis is gone; its connections are silent, not reset. A pipelined request in flight.
  EXPECT_EQ(c.quiet(), "") << "the client's connection after the dump";
  ASSERT_TRUE(c.send(command({"GET", "key1"}) + command({"INCR", "counter"})));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(c.quiet(), "") << "the client got something while redis was not running";
  EXPECT_EQ(idle.quiet(), "") << "the idle client's connection after the dump";

  forget_pid(root);
  CommandResult restore = w.crest({"restore", "-D", w.images(), "-d"}, Seconds(60));
  ASSERT_TRUE(restore.exited(0)) << "crest restore failed\n" << w.diagnostics();
  auto got = c.reply(30);
  EXPECT_EQ(got.value_or("(" + c.error() + ")"), "$6\r\nvalue1\r\n") << "GET key1, sent while redis was dumped";
  got = c.reply(30);
  EXPECT_EQ(got.value_or("(" + c.error() + ")"), ":42\r\n") << "INCR counter, sent while redis was dumped";
  EXPECT_EQ(c.call({"DBSIZE"}), ":2\r\n") << "the next command on the same connection";
  EXPECT_EQ(c.call({"GET", "counter"}), "$2\r\n42\r\n");
  EXPECT_EQ(idle.call({"PING"}), "+PONG\r\n") << "a connection idle across the checkpoint";
  Client fresh;
  ASSERT_TRUE(fresh.connect(r.port)) << "redis' listener after the restore";
  EXPECT_EQ(fresh.call({"GET", "key1"}), "$6\r\nvalue1\r\n");
  CommandResult unlock = w.crest({"unlock", "-D", w.images()}, Seconds(30));
  EXPECT_TRUE(unlock.exited(0)) << unlock.describe();
  EXPECT_NE(unlock.err.find("no network lock"), std::string::npos)
      << "the restore left its network lock in place\n" << unlock.describe();
}

TEST(Redis, LeaveRunningUnderBenchmark) {
  Redis r;
  r.server = find_program("redis-server");
  r.benchmark = find_program("redis-benchmark");
  if (r.server.empty() || r.benchmark.empty())
    GTEST_SKIP() << "redis-server or redis-benchmark is not installed (.ci/setup's test packages)";
  WorkloadRun w("redis-server", "Redis-benchmark");
  ASSERT_TRUE(start_redis(w, r));
  Client control;
  ASSERT_TRUE(control.connect(r.port));
  const pid_t bench = w.spawn_client("benchmark", {r.benchmark, "-h", "127.0.0.1", "-p",
                                                   std::to_string(r.port), "-c", "4", "-t", "set,get",
                                                   "-l", "-q"});
  ASSERT_GT(bench, 0);
  // Its 4 connections and ours, and some commands done.
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline && (info_field(control, "clients", "connected_clients") < 5 ||
                                     info_field(control, "stats", "total_commands_processed") < 2000))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GE(info_field(control, "clients", "connected_clients"), 5) << w.diagnostics();

  CommandResult dump = w.crest({"dump", "-t", std::to_string(w.root()), "-D", w.images(), "-R",
                                "--tcp-established"},
                               Seconds(60));
  ASSERT_TRUE(dump.exited(0)) << "crest dump -R --tcp-established under redis-benchmark failed\n"
                              << w.diagnostics();
  const long after_dump = info_field(control, "stats", "total_commands_processed");
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  const long later = info_field(control, "stats", "total_commands_processed");
  EXPECT_FALSE(wait_child(bench, Seconds(0)).has_value())
      << "redis-benchmark ended after the dump:\n" << read_text_file(w.dir() + "/benchmark.log");
  EXPECT_GT(later - after_dump, 1000) << "redis answered only " << later - after_dump
                                      << " commands in the second after the dump";
  const std::string log = read_text_file(w.dir() + "/benchmark.log");
  EXPECT_EQ(log.find("rror"), std::string::npos) << "redis-benchmark reported an error:\n" << log;
  EXPECT_EQ(log.find("eset"), std::string::npos) << "redis-benchmark saw a reset:\n" << log;
  ::kill(bench, SIGKILL);
  wait_child(bench, Seconds(10));
  EXPECT_FALSE(wait_child(w.root(), Seconds(0)).has_value()) << "redis-server ended after dump -R";
}

}  // namespace
}  // namespace crest::e2e
