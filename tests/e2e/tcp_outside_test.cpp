// TCP connections to peers outside the tree, the cases a workload cannot show from inside: the
// tree is a small python3 program connected to a listener of the test process (skipped, by
// name, without python3).
//
//   TcpOutside.PeerEndedItsSideIsRefused  the test ends its side (the tree's end is in
//       CLOSE_WAIT): `crest dump --tcp-established` is refused naming it, writes no checkpoint,
//       leaves the program running, and removes the lock it had taken (the bytes the program
//       sends every 50 ms come again).
//   TcpOutside.UnlockDropsALockLeftBehind  after `crest dump --tcp-established` killed the tree,
//       a byte the test sends is dropped (not acknowledged, no reset) until `crest unlock -D`
//       removes the lock; then the kernel answers its retransmission with a reset.
//   TcpOutside.KilledDumpLeavesNoLock  `crest dump -R --tcp-established` is killed with SIGKILL
//       while its lock is up (seen in nftables): the lock goes with crest, the program runs on
//       untraced and its bytes come again.
//   TcpOutside.StaleLockIsRemoved  a lock kept for a tree that still runs (what a dump leaves
//       if it dies between keeping its lock and killing its tree, made here by hand) is removed
//       by `crest unlock --stale`, and only that one.
#include <arpa/inet.h>
#include <linux/sockios.h>
#include <nftables/libnftables.h>
#include <signal.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"

namespace crest::e2e {
namespace {

using Clock = std::chrono::steady_clock;

std::string find_python() {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':'))
    if (!dir.empty() && ::access((dir + "/python3").c_str(), X_OK) == 0) return dir + "/python3";
  return "";
}

// A listener of the test process on 127.0.0.1; the tree (python3) connects to it and sleeps.
struct Outside {
  int listener = -1, conn = -1;
  uint16_t port = 0;
  ~Outside() {
    if (conn >= 0) ::close(conn);
    if (listener >= 0) ::close(listener);
  }
  bool listen() {
    listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener, 1) != 0 ||
        ::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      return false;
    port = ntohs(a.sin_port);
    return true;
  }
  bool accept(double seconds) {
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(seconds * 1000)) != 1) return false;
    conn = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    return conn >= 0;
  }
  int unacked() const {
    int n = -1;
    return ::ioctl(conn, SIOCOUTQ, &n) == 0 ? n : -1;
  }
  // Waits until what was sent is acknowledged.
  bool acked_within(double seconds) const {
    const auto until = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < until) {
      if (unacked() == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
};

// python3 connects and sleeps, reading nothing; with `dots`, sends a '.' every 50 ms.
std::vector<std::string> client_program(const std::string& python, uint16_t port, bool dots) {
  return {python, "-c",
          "import socket, time\n"
          "s = socket.create_connection(('127.0.0.1', " + std::to_string(port) + "))\n"
          "for i in range(2400):\n"
          "    time.sleep(0.05)\n" +
              std::string(dots ? "    s.send(b'.')\n" : "")};
}

// Reads what has come; the number of bytes (-1 on an error, errno set).
long drain(int fd) {
  long total = 0;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      total += n;
      continue;
    }
    if (n < 0 && errno == EAGAIN) return total;
    return -1;
  }
}

// nft commands through libnftables; their output, or "ERROR: ..." when they failed.
std::string nft(const std::string& commands) {
  nft_ctx* c = nft_ctx_new(NFT_CTX_DEFAULT);
  if (!c) return "ERROR: nft_ctx_new";
  nft_ctx_buffer_output(c);
  nft_ctx_buffer_error(c);
  const int rc = nft_run_cmd_from_buffer(c, commands.c_str());
  std::string out = rc == 0 ? nft_ctx_get_output_buffer(c) : "ERROR: " + std::string(nft_ctx_get_error_buffer(c));
  nft_ctx_free(c);
  return out;
}

// The names of crest's tables ("crest_…" kept, "crestheld_…" held by a running dump).
std::vector<std::string> crest_tables() {
  std::vector<std::string> out;
  std::istringstream lines(nft("list tables inet\n"));
  std::string word, family, name;
  while (lines >> word >> family >> name)
    if (word == "table" && name.rfind("crest", 0) == 0) out.push_back(name);
  return out;
}

// The process runs: not gone, not a zombie, not stopped, and traced by no one.
testing::AssertionResult runs_untraced(pid_t pid) {
  std::ifstream st("/proc/" + std::to_string(pid) + "/status");
  std::string line, state;
  long tracer = -1;
  while (std::getline(st, line)) {
    if (line.rfind("State:", 0) == 0) state = line.substr(6);
    if (line.rfind("TracerPid:", 0) == 0) tracer = std::stol(line.substr(10));
  }
  if (state.find('S') == std::string::npos && state.find('R') == std::string::npos)
    return testing::AssertionFailure() << "pid " << pid << " is in state '" << state << "'";
  if (tracer != 0) return testing::AssertionFailure() << "pid " << pid << " is traced by " << tracer;
  return testing::AssertionSuccess();
}

TEST(TcpOutside, PeerEndedItsSideIsRefused) {
  const std::string python = find_python();
  if (python.empty()) GTEST_SKIP() << "python3 is not installed";
  WorkloadRun w("python3", "TcpOutside-halfclosed");
  Outside o;
  ASSERT_TRUE(o.listen());
  ASSERT_TRUE(w.start_program(client_program(python, o.port, true)));
  ASSERT_TRUE(o.accept(20)) << "the program did not connect\n" << w.diagnostics();
  ASSERT_EQ(::shutdown(o.conn, SHUT_WR), 0);
  ASSERT_TRUE(o.acked_within(5)) << "our FIN was not acknowledged";

  CommandResult r = w.crest({"dump", "-t", std::to_string(w.root()), "-D", w.images(), "--tcp-established"},
                            Seconds(60));
  ASSERT_FALSE(r.exited(0)) << "a connection whose peer outside ended its side was dumped\n" << w.diagnostics();
  EXPECT_NE(r.err.find("has ended its side"), std::string::npos) << w.diagnostics();
  EXPECT_NE(r.err.find("CLOSE_WAIT"), std::string::npos) << w.diagnostics();
  EXPECT_TRUE(w.checkpoint_files().empty()) << "the refused dump left a checkpoint";
  EXPECT_FALSE(wait_child(w.root(), Seconds(0)).has_value()) << "the refused dump killed the program";
  // The dump had locked the connection before it read its receiving side: the lock must be
  // gone, the program's dots coming again.
  ASSERT_GE(drain(o.conn), 0) << std::strerror(errno);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const long dots = drain(o.conn);
  EXPECT_GT(dots, 0) << "no byte from the program in the 500 ms after the refused dump"
                     << (dots < 0 ? std::string(": ") + std::strerror(errno) : std::string(" (still locked?)"));
}

TEST(TcpOutside, UnlockDropsALockLeftBehind) {
  const std::string python = find_python();
  if (python.empty()) GTEST_SKIP() << "python3 is not installed";
  WorkloadRun w("python3", "TcpOutside-unlock");
  Outside o;
  ASSERT_TRUE(o.listen());
  ASSERT_TRUE(w.start_program(client_program(python, o.port, false)));
  ASSERT_TRUE(o.accept(20)) << "the program did not connect\n" << w.diagnostics();
  ASSERT_EQ(::send(o.conn, "a", 1, MSG_NOSIGNAL), 1);
  ASSERT_TRUE(o.acked_within(5)) << "a byte to the program was not acknowledged";

  const pid_t root = w.root();
  CommandResult r = w.crest({"dump", "-t", std::to_string(root), "-D", w.images(), "--tcp-established"},
                            Seconds(60));
  ASSERT_TRUE(r.exited(0)) << w.diagnostics();
  ASSERT_TRUE(wait_child(root, Seconds(30)).has_value()) << "the program runs on after the dump";
  // The program is gone, its connection locked: a byte is neither acknowledged nor reset.
  ASSERT_EQ(::send(o.conn, "b", 1, MSG_NOSIGNAL), 1);
  EXPECT_FALSE(o.acked_within(1.0)) << "a byte to the killed program was acknowledged";
  char c;
  ssize_t n = ::recv(o.conn, &c, 1, MSG_DONTWAIT);
  EXPECT_TRUE(n < 0 && errno == EAGAIN) << "under the lock recv gave " << n << " (" << std::strerror(errno) << ")";

  CommandResult u = w.crest({"unlock", "-D", w.images()}, Seconds(30));
  ASSERT_TRUE(u.exited(0)) << u.describe();
  EXPECT_NE(u.err.find("removed the network lock"), std::string::npos) << u.describe();
  // The next retransmission meets no socket: a reset.
  bool reset = false;
  const auto until = Clock::now() + std::chrono::seconds(20);
  while (!reset && Clock::now() < until) {
    pollfd p{o.conn, POLLIN, 0};
    ::poll(&p, 1, 100);
    n = ::recv(o.conn, &c, 1, MSG_DONTWAIT);
    reset = n < 0 && errno == ECONNRESET;
  }
  EXPECT_TRUE(reset) << "no reset within 20 s of crest unlock";
}

TEST(TcpOutside, KilledDumpLeavesNoLock) {
  const std::string python = find_python();
  if (python.empty()) GTEST_SKIP() << "python3 is not installed";
  if (nft("list tables\n").rfind("ERROR", 0) == 0) GTEST_SKIP() << "nftables cannot be used here";
  WorkloadRun w("python3", "TcpOutside-killed");
  Outside o;
  ASSERT_TRUE(o.listen());
  ASSERT_TRUE(w.start_program(client_program(python, o.port, true)));
  ASSERT_TRUE(o.accept(20)) << "the program did not connect\n" << w.diagnostics();
  const pid_t root = w.root();
  // Each try kills the dump the moment its lock shows; a dump that ends before is tried again.
  int killed_while_held = 0;
  for (int attempt = 0; attempt < 20 && killed_while_held < 3; ++attempt) {
    CrestProcess c = w.spawn_crest({"dump", "-R", "-t", std::to_string(root), "-D", w.images(),
                                    "--tcp-established"}, false);
    ASSERT_GT(c.pid, 0) << c.err_path;
    std::string held;  // the dump's table, "crestheld_" and its checkpoint's uuid
    int status = 0;
    for (;;) {
      for (auto& t : crest_tables())
        if (t.rfind("crestheld_", 0) == 0) held = t;  // other tests' dumps may run meanwhile
      if (!held.empty()) {
        ::kill(c.pid, SIGKILL);
        break;
      }
      if (::waitpid(c.pid, &status, WNOHANG) == c.pid) {
        c.pid = -1;
        break;
      }
    }
    if (c.pid > 0) ::waitpid(c.pid, &status, 0);
    if (!held.empty()) {
      ++killed_while_held;
      // The lock went with crest, and was not kept for a restore either.
      const auto left = crest_tables();
      const std::string kept = "crest_" + held.substr(10);
      EXPECT_EQ(std::count(left.begin(), left.end(), held), 0) << held << " was left";
      EXPECT_EQ(std::count(left.begin(), left.end(), kept), 0) << kept << " was left";
    }
    // The program runs untraced, its bytes coming again.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(runs_untraced(root)) << w.diagnostics();
    ASSERT_GE(drain(o.conn), 0) << std::strerror(errno);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const long dots = drain(o.conn);
    ASSERT_GT(dots, 0) << "no byte from the program in the 500 ms after crest was killed";
  }
  EXPECT_GT(killed_while_held, 0) << "no dump was caught holding its lock in 20 tries";
}

TEST(TcpOutside, StaleLockIsRemoved) {
  const std::string python = find_python();
  if (python.empty()) GTEST_SKIP() << "python3 is not installed";
  if (nft("list tables\n").rfind("ERROR", 0) == 0) GTEST_SKIP() << "nftables cannot be used here";
  WorkloadRun w("python3", "TcpOutside-stale");
  Outside o;
  ASSERT_TRUE(o.listen());
  ASSERT_TRUE(w.start_program(client_program(python, o.port, true)));
  ASSERT_TRUE(o.accept(20)) << "the program did not connect\n" << w.diagnostics();
  const pid_t root = w.root();
  std::string stat;
  std::getline(std::ifstream("/proc/" + std::to_string(root) + "/stat"), stat);
  std::istringstream fields(stat.substr(stat.rfind(')') + 2));
  std::string field, starttime;
  for (int i = 3; i <= 22 && fields >> field; ++i) starttime = field;  // field 22: starttime
  // The lock a dump keeps for its restore, as if the dump had died before its kill: the
  // program's packets are dropped. Beside it, a lock kept for a tree that is gone (a real one).
  const std::string port = std::to_string(o.port);
  const std::string made = nft(
      "add table inet crest_stale1 { comment \"crest: kept for the tree of pid " + std::to_string(root) +
      " started at " + starttime + "\"; }\n"
      "add chain inet crest_stale1 output { type filter hook output priority -300; policy accept; }\n"
      "add rule inet crest_stale1 output tcp dport " + port + " drop\n"
      "add table inet crest_stale2 { comment \"crest: kept for the tree of pid " + std::to_string(root) +
      " started at 1\"; }\n");
  ASSERT_EQ(made.rfind("ERROR", 0), std::string::npos) << made;
  struct Drop {  // whatever happens below, no table of ours is left
    ~Drop() {
      nft("delete table inet crest_stale1\n");
      nft("delete table inet crest_stale2\n");
    }
  } drop;
  ASSERT_GE(drain(o.conn), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(drain(o.conn), 0) << "bytes came through the lock";

  CommandResult u = w.crest({"unlock", "--stale"}, Seconds(30));
  EXPECT_TRUE(u.exited(0)) << u.describe();
  EXPECT_NE(u.err.find("crest_stale1"), std::string::npos) << u.describe();
  const auto left = crest_tables();
  EXPECT_EQ(std::count(left.begin(), left.end(), "crest_stale1"), 0) << "the stale lock is still there";
  EXPECT_EQ(std::count(left.begin(), left.end(), "crest_stale2"), 1)
      << "a lock kept for a tree that is gone was removed by --stale";
  nft("delete table inet crest_stale2\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // a retransmission or two
  EXPECT_GT(drain(o.conn), 0) << "no byte from the program after the stale lock went";
}

}  // namespace
}  // namespace crest::e2e
