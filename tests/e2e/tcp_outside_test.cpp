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
#include <arpa/inet.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
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

}  // namespace
}  // namespace crest::e2e
