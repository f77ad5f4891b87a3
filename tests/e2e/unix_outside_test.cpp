// Unix sockets connected to peers outside the tree (--ext-unix-sk), the cases the scenarios of
// e2e_test.cpp (E2E/*.unix_external) do not show: the tree is tests/workloads/unix_external.c or
// a real program, its peers a UnixPeer of the test (tests/e2e/unix_peer.h).
//
//   UnixOutside.RefusedWithoutTheOption  `crest dump` without --ext-unix-sk is refused naming
//       both outside paths and the option, writes nothing and leaves the workload running
//       (it passes its check); `crest check --pid --ext-unix-sk` says it can be checkpointed.
//   UnixOutside.UnreadDataFromTheListenerIsRefused  the listener sent a line the workload has
//       not read: `crest dump --ext-unix-sk` is refused naming it (a new connection cannot hold
//       it), and the workload goes on.
//   UnixOutside.RestoreFailsWhenTheListenerIsGone  after a dump, the listener closes and its
//       socket file goes: `crest restore` fails naming the path, and nothing of the tree runs.
//   UnixOutside.WaitingConnectionIsMadeAgain  python3 connects to a listener of the test that
//       accepts nothing yet and sends a numbered line every 50 ms into the waiting connection;
//       dumped with --ext-unix-sk (the note says what it sent stays on the old connection) and
//       restored: the listener's backlog then holds the old connection (the lines from before
//       the dump, then end-of-file) and a new one from the restored program (the lines after):
//       every number once, in order, across the two.
//   UnixOutside.UnnamedPeerIsRefusedEvenSo  python3 hands one end of a datagram socketpair to
//       the test (SCM_RIGHTS) and keeps the other: `crest dump --ext-unix-sk` is refused, naming
//       an unnamed peer that nothing can reach again.
//   UnixOutside.PythonSysLogHandler  a real program: Python's logging.handlers.SysLogHandler
//       logging a numbered line every 50 ms to the test's fake /dev/log. Refused naming the path
//       without the option; with it dumped, restored detached, and the lines go on: the receiver
//       gets every number once, in order, none lost or repeated across the checkpoint (skipped
//       without python3).
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"
#include "tests/e2e/unix_peer.h"

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

// SIGTERM to the workload: it must pass its own check.
testing::AssertionResult checks_itself(WorkloadRun& w) {
  if (::kill(w.root(), SIGTERM) != 0) return testing::AssertionFailure() << "the workload is gone\n" << w.diagnostics();
  auto st = wait_child(w.root(), Seconds(60));
  if (!st || !WIFEXITED(*st) || WEXITSTATUS(*st) != 0)
    return testing::AssertionFailure() << "the workload " << (st ? describe_wait_status(*st) : "did not end") << "\n"
                                       << w.diagnostics();
  return w.verdict_pass();
}

TEST(UnixOutside, RefusedWithoutTheOption) {
  WorkloadRun w("unix_external", "UnixOutside-refused");
  UnixPeer peer(w.dir() + "/log.sock", w.dir() + "/srv.sock");
  ASSERT_TRUE(w.start(Seconds(60)));
  const std::string root = std::to_string(w.root());
  CommandResult r = w.crest({"dump", "-t", root, "-D", w.images()}, Seconds(60));
  ASSERT_FALSE(r.exited(0)) << "sockets connected outside were dumped without --ext-unix-sk\n" << w.diagnostics();
  ASSERT_TRUE(WIFEXITED(r.wstatus)) << w.diagnostics();
  EXPECT_NE(r.err.find(w.dir() + "/log.sock"), std::string::npos) << "the refusal does not name the receiver\n"
                                                                  << w.diagnostics();
  EXPECT_NE(r.err.find(w.dir() + "/srv.sock"), std::string::npos) << "the refusal does not name the listener\n"
                                                                  << w.diagnostics();
  EXPECT_NE(r.err.find("--ext-unix-sk"), std::string::npos) << "the refusal does not name the option\n"
                                                             << w.diagnostics();
  EXPECT_TRUE(w.checkpoint_files().empty()) << "the refused dump left a checkpoint";
  CommandResult c = w.crest({"check", "--pid", root, "--ext-unix-sk"}, Seconds(60));
  EXPECT_TRUE(c.exited(0)) << "crest check --ext-unix-sk does not accept the tree\n" << c.describe();
  EXPECT_NE(c.out.find("restored as a new connection to " + w.dir() + "/srv.sock"), std::string::npos)
      << c.describe();
  ASSERT_TRUE(checks_itself(w));
  EXPECT_EQ(peer.connections(), 1);
}

TEST(UnixOutside, UnreadDataFromTheListenerIsRefused) {
  WorkloadRun w("unix_external", "UnixOutside-unread");
  UnixPeer peer(w.dir() + "/log.sock", w.dir() + "/srv.sock");
  std::ofstream(w.dir() + "/mode") << "unread\n";
  ASSERT_TRUE(w.start(Seconds(60)));
  CommandResult r = w.crest({"dump", "-t", std::to_string(w.root()), "-D", w.images(), "--ext-unix-sk"},
                            Seconds(60));
  ASSERT_FALSE(r.exited(0)) << "unread data from a listener outside was dumped\n" << w.diagnostics();
  EXPECT_NE(r.err.find("7 bytes that the listener's side (" + w.dir() + "/srv.sock, outside the tree) sent wait unread"),
            std::string::npos)
      << w.diagnostics();
  EXPECT_TRUE(w.checkpoint_files().empty()) << "the refused dump left a checkpoint";
  ASSERT_TRUE(checks_itself(w));
}

TEST(UnixOutside, RestoreFailsWhenTheListenerIsGone) {
  WorkloadRun w("unix_external", "UnixOutside-gone");
  UnixPeer peer(w.dir() + "/log.sock", w.dir() + "/srv.sock");
  ASSERT_TRUE(w.start(Seconds(60)));
  const pid_t root = w.root();
  CommandResult r = w.crest({"dump", "-t", std::to_string(root), "-D", w.images(), "--ext-unix-sk"}, Seconds(60));
  ASSERT_TRUE(r.exited(0)) << w.diagnostics();
  ASSERT_TRUE(wait_no_children(Seconds(30))) << "the dumped tree runs on";
  peer.stop_listener();
  CommandResult show = w.crest({"show", w.images()}, Seconds(60));
  EXPECT_NE(show.out.find(w.dir() + "/srv.sock (stream, a new connection)"), std::string::npos) << show.describe();
  EXPECT_NE(show.out.find(w.dir() + "/log.sock (datagram, connected again)"), std::string::npos) << show.describe();
  CommandResult back = w.crest({"restore", "-D", w.images(), "-d"}, Seconds(60));
  EXPECT_FALSE(back.exited(0)) << "restored with its listener gone\n" << w.diagnostics();
  EXPECT_NE(back.err.find("its listener outside the tree, " + w.dir() + "/srv.sock, cannot be connected to again"),
            std::string::npos)
      << w.diagnostics();
  EXPECT_TRUE(wait_no_children(Seconds(30))) << "something of the failed restore runs on";
  EXPECT_FALSE(process_exists(root)) << "the root runs after the failed restore";
}

// The numbers of the "tick N" lines the receiver got, in order.
std::vector<long> ticks(const UnixPeer& peer) {
  static const std::regex re(R"(tick ([0-9]+))");
  std::vector<long> out;
  for (auto& m : peer.messages()) {
    std::smatch g;
    if (std::regex_search(m, g, re)) out.push_back(std::stol(g[1].str()));
  }
  return out;
}

bool wait_for_ticks(const UnixPeer& peer, size_t n, double seconds) {
  const auto until = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < until) {
    if (ticks(peer).size() >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// Reads what comes on `fd` until end-of-file or for `seconds`.
std::string read_all(int fd, double seconds) {
  std::string out;
  const auto until = Clock::now() + std::chrono::duration<double>(seconds);
  char buf[4096];
  while (Clock::now() < until) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) != 1) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) break;
    if (n > 0) out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

TEST(UnixOutside, WaitingConnectionIsMadeAgain) {
  const std::string python = find_python();
  if (python.empty()) GTEST_SKIP() << "python3 is not installed";
  WorkloadRun w("python3", "UnixOutside-waiting");
  const std::string path = w.dir() + "/backlog.sock";
  const int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  ASSERT_EQ(::listen(listener, 4), 0);
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_listener{listener};
  ASSERT_TRUE(w.start_program({python, "-c",
                               "import socket, sys, time\n"
                               "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                               "s.connect(sys.argv[1])\n"
                               "i = 0\n"
                               "while True:\n"
                               "    s.send(b'line %d\\n' % i)\n"
                               "    i += 1\n"
                               "    time.sleep(0.05)\n",
                               path}));
  // Its connection waits (the listener is readable), a few lines in it.
  pollfd waiting{listener, POLLIN, 0};
  ASSERT_EQ(::poll(&waiting, 1, 30000), 1) << "the program did not connect\n" << w.diagnostics();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const pid_t root = w.root();
  CommandResult r = w.crest({"dump", "-t", std::to_string(root), "-D", w.images(), "--ext-unix-sk"}, Seconds(60));
  ASSERT_TRUE(r.exited(0)) << w.diagnostics();
  EXPECT_NE(r.err.find("what it sent while waiting to be accepted stays on the old connection"), std::string::npos)
      << w.diagnostics();
  ASSERT_TRUE(wait_child(root, Seconds(30)).has_value()) << "the program runs on after the dump";
  CommandResult back = w.crest({"restore", "-D", w.images(), "-d"}, Seconds(60));
  ASSERT_TRUE(back.exited(0)) << w.diagnostics();
  forget_pid(root);
  // The old connection first, then the new one (it may come a moment after the restore).
  auto accept_within = [&](double seconds) {
    pollfd l{listener, POLLIN, 0};
    if (::poll(&l, 1, static_cast<int>(seconds * 1000)) != 1) return -1;
    return ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  };
  const int old_conn = accept_within(10);
  const int new_conn = accept_within(10);
  ASSERT_GE(old_conn, 0) << std::strerror(errno);
  ASSERT_GE(new_conn, 0) << "no second connection waits: the restored program did not connect again";
  const std::string before = read_all(old_conn, 10);
  std::string after = read_all(new_conn, 1.5);
  for (int i = 0; i < 50 && !after.empty() && after.back() != '\n'; i++) after += read_all(new_conn, 0.2);
  ::close(old_conn);
  ::close(new_conn);
  ::kill(root, SIGKILL);
  wait_child(root, Seconds(30));
  std::istringstream lines(before + after);
  std::string line;
  long expect = 0;
  while (std::getline(lines, line)) {
    ASSERT_EQ(line, "line " + std::to_string(expect)) << "old connection: '" << before << "', new one: '" << after << "'";
    ++expect;
  }
  EXPECT_GT(expect, 10) << "too few lines";
  EXPECT_FALSE(after.empty()) << "nothing came on the new connection";
  EXPECT_FALSE(before.empty()) << "nothing came on the old connection";
}

TEST(UnixOutside, UnnamedPeerIsRefusedEvenSo) {
  const std::string python = find_python();
  if (python.empty()) GTEST_SKIP() << "python3 is not installed";
  WorkloadRun w("python3", "UnixOutside-unnamed");
  const std::string path = w.dir() + "/hand.sock";
  const int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  ASSERT_EQ(::listen(listener, 1), 0);
  struct Close {
    int fd;
    ~Close() {
      if (fd >= 0) ::close(fd);
    }
  } close_listener{listener}, close_conn{-1}, close_end{-1};
  ASSERT_TRUE(w.start_program({python, "-c",
                               "import socket, sys, time\n"
                               "a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                               "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                               "s.connect(sys.argv[1])\n"
                               "socket.send_fds(s, [b'x'], [b.fileno()])\n"
                               "b.close()\n"
                               "s.close()\n"
                               "time.sleep(120)\n",
                               path}));
  pollfd p{listener, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 20000), 1) << "the program did not connect\n" << w.diagnostics();
  close_conn.fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(close_conn.fd, 0);
  char byte;
  iovec io{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr m{};
  m.msg_iov = &io;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  p = {close_conn.fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 20000), 1);
  ASSERT_EQ(::recvmsg(close_conn.fd, &m, MSG_CMSG_CLOEXEC), 1) << std::strerror(errno);
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  ASSERT_TRUE(c && c->cmsg_type == SCM_RIGHTS) << "no descriptor came";
  std::memcpy(&close_end.fd, CMSG_DATA(c), sizeof(int));
  ::close(close_conn.fd);
  close_conn.fd = -1;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // its stream socket closed
  CommandResult r = w.crest({"dump", "-t", std::to_string(w.root()), "-D", w.images(), "--ext-unix-sk"},
                            Seconds(60));
  ASSERT_FALSE(r.exited(0)) << "a socketpair end with its peer outside was dumped\n" << w.diagnostics();
  EXPECT_NE(r.err.find("(unnamed), an accepted connection or a socketpair end): nothing can reach it again, "
                       "not even with --ext-unix-sk"),
            std::string::npos)
      << w.diagnostics();
  EXPECT_TRUE(w.checkpoint_files().empty()) << "the refused dump left a checkpoint";
  EXPECT_FALSE(wait_child(w.root(), Seconds(0)).has_value()) << "the refused dump killed the program";
}

TEST(UnixOutside, PythonSysLogHandler) {
  const std::string python = find_python();
  if (python.empty()) GTEST_SKIP() << "python3 is not installed";
  WorkloadRun w("python3", "UnixOutside-syslog");
  UnixPeer peer(w.dir() + "/log.sock", w.dir() + "/srv.sock");
  ASSERT_TRUE(w.start_program({python, "-c",
                               "import logging, logging.handlers, sys, time\n"
                               "h = logging.handlers.SysLogHandler(address=sys.argv[1])\n"
                               "log = logging.getLogger('crest-test')\n"
                               "log.addHandler(h)\n"
                               "log.setLevel(logging.INFO)\n"
                               "i = 0\n"
                               "while True:\n"
                               "    log.info('tick %d', i)\n"
                               "    i += 1\n"
                               "    time.sleep(0.05)\n",
                               w.dir() + "/log.sock"}));
  ASSERT_TRUE(wait_for_ticks(peer, 5, 20)) << "no log lines from the program\n" << w.diagnostics();
  const pid_t root = w.root();
  CommandResult refused = w.crest({"dump", "-t", std::to_string(root), "-D", w.images()}, Seconds(60));
  ASSERT_FALSE(refused.exited(0)) << w.diagnostics();
  EXPECT_NE(refused.err.find("connected to a socket outside the tree (" + w.dir() + "/log.sock); --ext-unix-sk would"),
            std::string::npos)
      << w.diagnostics();
  CommandResult r = w.crest({"dump", "-t", std::to_string(root), "-D", w.images(), "--ext-unix-sk"}, Seconds(60));
  ASSERT_TRUE(r.exited(0)) << w.diagnostics();
  ASSERT_TRUE(wait_child(root, Seconds(30)).has_value()) << "the program runs on after the dump";
  const size_t before = ticks(peer).size();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_EQ(ticks(peer).size(), before) << "log lines came while the program was dumped";
  CommandResult back = w.crest({"restore", "-D", w.images(), "-d"}, Seconds(60));
  ASSERT_TRUE(back.exited(0)) << w.diagnostics();
  forget_pid(root);
  const bool more = wait_for_ticks(peer, before + 10, 20);
  ::kill(root, SIGKILL);
  wait_child(root, Seconds(30));
  ASSERT_TRUE(more) << "no log line from the restored program\n" << w.diagnostics();
  const std::vector<long> got = ticks(peer);
  for (size_t i = 0; i < got.size(); i++)
    ASSERT_EQ(got[i], static_cast<long>(i)) << "line " << i << " of the log is 'tick " << got[i]
                                            << "' (the restore is after line " << before << ")";
}

}  // namespace
}  // namespace crest::e2e
