// The options of `crest run` and `crest register`, each in front of a job command that has dashed
// options of its own (mpirun -np 4 --oversubscribe ./app): everything after `--` is the job's
// command, whatever precedes it. A fake crestd in the test (a Unix socket in a temporary
// directory) receives the request crest sends and answers it with an error, so the test sees
// exactly what crest parsed, without starting any job.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/cli/harness.h"

namespace crest::test {
namespace {

using nlohmann::json;

const std::vector<std::string> kJob = {"mpirun", "-np", "4", "--oversubscribe", "-x", "A=1",
                                       "--",     "./app", "--every", "1s", "-q"};

// Listens on DIR/crestd.sock; serve() accepts one connection, reads one request line and answers
// it with an error (kind "refused", so crest exits 1, never 2).
class FakeCrestd {
 public:
  explicit FakeCrestd(const std::string& dir) : path_(dir + "/crestd.sock") {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd_, 4) != 0)
      ADD_FAILURE() << "fake crestd on " << path_ << ": " << std::strerror(errno);
  }
  ~FakeCrestd() {
    if (fd_ >= 0) ::close(fd_);
  }
  FakeCrestd(const FakeCrestd&) = delete;
  FakeCrestd& operator=(const FakeCrestd&) = delete;

  const std::string& path() const { return path_; }

  // Runs crest with `args` while serving one request; returns crest's outcome and the request.
  std::pair<Outcome, json> exchange(const std::vector<std::string>& args) {
    json request;
    std::thread server([&] {
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      std::string line;
      char buf[65536];
      while (line.find('\n') == std::string::npos) {
        ssize_t n = ::recv(c, buf, sizeof buf, 0);  // descriptors sent along are discarded
        if (n <= 0) break;
        line.append(buf, static_cast<size_t>(n));
      }
      if (auto nl = line.find('\n'); nl != std::string::npos) {
        request = json::parse(line.substr(0, nl), nullptr, false);
        std::string reply =
            json{{"ok", false}, {"error", {{"kind", "refused"}, {"message", "fake crestd"}}}}.dump() + "\n";
        (void)!::write(c, reply.data(), reply.size());
      }
      ::close(c);
    });
    Outcome r = run_crest(args);
    if (request.is_null()) {
      // crest never connected (a usage error): unblock accept().
      int c = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
      (void)::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
      ::close(c);
    }
    server.join();
    return {r, request};
  }

 private:
  std::string path_;
  int fd_ = -1;
};

std::vector<std::string> with(std::vector<std::string> head, const std::vector<std::string>& tail) {
  head.insert(head.end(), tail.begin(), tail.end());
  return head;
}

// crest run OPTS --socket S --daemon -- mpirun ...: the request carries the whole job command
// and `fields`; crest exits with the fake's error (1), not a usage error.
void expect_run(FakeCrestd& d, const std::vector<std::string>& opts, const json& fields) {
  auto args = with(with({"run"}, opts), {"--socket", d.path(), "--daemon", "--"});
  args = with(args, kJob);
  auto [r, req] = d.exchange(args);
  std::string shown;
  for (const auto& a : opts) shown += a + " ";
  EXPECT_TRUE(exited_with(r, 1)) << shown << r.describe();
  EXPECT_NE((r.err + r.out).find("fake crestd"), std::string::npos) << shown << r.describe();
  ASSERT_TRUE(req.is_object()) << shown << r.describe();
  EXPECT_EQ(req.value("op", ""), "run") << shown;
  EXPECT_EQ(req["argv"], json(kJob)) << shown << req.dump();
  for (const auto& [k, v] : fields.items()) EXPECT_EQ(req[k], v) << shown << "field " << k << ": " << req.dump();
}

TEST(CliJobOptions, EveryOptionOfRunLeavesTheJobCommandWhole) {
  TempDir dir;
  FakeCrestd d(dir.path());
  std::string img = dir / "img";
  expect_run(d, {}, json::object());
  expect_run(d, {"--every", "30s"}, {{"every", "30s"}});
  expect_run(d, {"--every", "auto"}, {{"every", "auto"}});
  expect_run(d, {"--auto-restore"}, {{"auto_restore", 3}});
  expect_run(d, {"--auto-restore=5"}, {{"auto_restore", 5}});
  expect_run(d, {"--auto-restore=0"}, {{"auto_restore", 0}});
  expect_run(d, {"--every", "30s", "--auto-restore"}, {{"every", "30s"}, {"auto_restore", 3}});
  expect_run(d, {"--auto-restore", "--every", "30s"}, {{"every", "30s"}, {"auto_restore", 3}});
  expect_run(d, {"-D", img}, {{"dir", img}});
  expect_run(d, {"--images-dir", img}, {{"dir", img}});
  expect_run(d, {"--name", "heat"}, {{"name", "heat"}});
  expect_run(d, {"--keep", "2"}, {{"keep", 2}});
  expect_run(d, {"--snapshot", "cow"}, {{"snapshot", "cow"}});
  expect_run(d, {"--snapshot", "stop-copy"}, {{"snapshot", "stop-copy"}});
  expect_run(d, {"--tcp-established"}, {{"tcp_established", true}});
  expect_run(d, {"-q"}, json::object());
  expect_run(d, {"--quiet"}, json::object());
  expect_run(d, {"--json"}, json::object());
  expect_run(d, {"--log-level", "warn"}, json::object());
  expect_run(d, {"--every", "30s", "--auto-restore=2", "-D", img, "--name", "heat", "--keep", "4",
                 "--snapshot", "auto", "--tcp-established", "-q", "--log-level", "error"},
             {{"every", "30s"},
              {"auto_restore", 2},
              {"dir", img},
              {"name", "heat"},
              {"keep", 4},
              {"snapshot", "auto"},
              {"tcp_established", true}});
}

TEST(CliJobOptions, RunWithoutDashDashTakesAPlainCommand) {
  TempDir dir;
  FakeCrestd d(dir.path());
  auto [r, req] = d.exchange({"run", "--socket", d.path(), "--daemon", "--auto-restore", "./app"});
  EXPECT_TRUE(exited_with(r, 1)) << r.describe();
  ASSERT_TRUE(req.is_object()) << r.describe();
  EXPECT_EQ(req["argv"], json({"./app"}));
  EXPECT_EQ(req["auto_restore"], 3);
}

TEST(CliJobOptions, BadAutoRestoreCountsAreUsageErrors) {
  TempDir dir;
  FakeCrestd d(dir.path());
  for (const std::string bad : {"--auto-restore=x", "--auto-restore=-1", "--auto-restore=100001"}) {
    auto [r, req] = d.exchange(with({"run", "--socket", d.path(), "--daemon", bad, "--"}, kJob));
    EXPECT_TRUE(exited_with(r, 2)) << bad << r.describe();
    EXPECT_NE(r.err.find("--auto-restore"), std::string::npos) << bad << r.describe();
  }
}

TEST(CliJobOptions, RunWithNoCommandIsAUsageError) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"run"}, {"run", "--"}, {"run", "--auto-restore", "--"}, {"run", "--every", "1s", "--"}}) {
    Outcome r = run_crest(args);
    EXPECT_TRUE(exited_with(r, 2)) << r.describe();
  }
}

void expect_register(FakeCrestd& d, const std::vector<std::string>& opts, const json& fields,
                     bool pid_first) {
  std::vector<std::string> args{"register"};
  if (pid_first) args.push_back("4321");
  args = with(args, opts);
  args = with(args, {"--socket", d.path()});
  if (!pid_first) args.push_back("4321");
  auto [r, req] = d.exchange(args);
  std::string shown;
  for (const auto& a : opts) shown += a + " ";
  EXPECT_TRUE(exited_with(r, 1)) << shown << r.describe();
  ASSERT_TRUE(req.is_object()) << shown << r.describe();
  EXPECT_EQ(req.value("op", ""), "register") << shown;
  EXPECT_EQ(req["pid"], 4321) << shown << req.dump();
  for (const auto& [k, v] : fields.items()) EXPECT_EQ(req[k], v) << shown << "field " << k << ": " << req.dump();
}

TEST(CliJobOptions, EveryOptionOfRegisterBeforeOrAfterThePid) {
  TempDir dir;
  FakeCrestd d(dir.path());
  std::string img = dir / "img";
  for (bool pid_first : {false, true}) {
    expect_register(d, {}, json::object(), pid_first);
    expect_register(d, {"--every", "30s"}, {{"every", "30s"}}, pid_first);
    expect_register(d, {"--auto-restore"}, {{"auto_restore", 3}}, pid_first);
    expect_register(d, {"--auto-restore=7"}, {{"auto_restore", 7}}, pid_first);
    expect_register(d, {"--every", "30s", "--auto-restore"}, {{"every", "30s"}, {"auto_restore", 3}},
                    pid_first);
    expect_register(d, {"-D", img}, {{"dir", img}}, pid_first);
    expect_register(d, {"--images-dir", img}, {{"dir", img}}, pid_first);
    expect_register(d, {"--name", "heat"}, {{"name", "heat"}}, pid_first);
    expect_register(d, {"--keep", "2"}, {{"keep", 2}}, pid_first);
    expect_register(d, {"--snapshot", "cow"}, {{"snapshot", "cow"}}, pid_first);
    expect_register(d, {"--tcp-established"}, {{"tcp_established", true}}, pid_first);
    expect_register(d, {"--json"}, json::object(), pid_first);
    expect_register(d, {"--log-level", "warn"}, json::object(), pid_first);
  }
}

}  // namespace
}  // namespace crest::test
