// kernel::fork_at_pid: a child at the pid asked for, through ns_last_pid; a pid that another
// process holds is tried kLastPidTries times and then refused, naming it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "core/kernel/last_pid.h"
#include "core/util/error.h"

namespace crest {
namespace {

bool can_write_last_pid() { return ::access(kernel::kLastPidPath, W_OK) == 0 && ::geteuid() == 0; }

// A pid that was free a moment ago: that of a child that has just been reaped.
pid_t a_free_pid() {
  pid_t p = ::fork();
  if (p == 0) ::_exit(0);
  int st;
  ::waitpid(p, &st, 0);
  return p;
}

TEST(LastPid, ForksAtThePidAskedFor) {
  if (!can_write_last_pid()) GTEST_SKIP() << "needs root to write " << kernel::kLastPidPath;
  const pid_t want = a_free_pid();
  const pid_t got = kernel::fork_at_pid(want, SIGCHLD);
  if (got == 0) ::_exit(0);
  EXPECT_EQ(got, want);
  int st = 0;
  ASSERT_EQ(::waitpid(got, &st, 0), got);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

TEST(LastPid, RefusesAPidAnotherProcessHoldsNamingIt) {
  if (!can_write_last_pid()) GTEST_SKIP() << "needs root to write " << kernel::kLastPidPath;
  const pid_t holder = ::fork();
  if (holder == 0) {
    ::pause();
    ::_exit(0);
  }
  ASSERT_GT(holder, 0);
  std::string message;
  Errc kind = Errc::internal;
  try {
    const pid_t got = kernel::fork_at_pid(holder, SIGCHLD);
    if (got == 0) ::_exit(0);  // never: the child at another pid exits by itself
    ADD_FAILURE() << "a child was made at the taken pid " << holder << ": " << got;
  } catch (const Error& e) {
    message = e.what();
    kind = e.kind();
  }
  ::kill(holder, SIGKILL);
  ::waitpid(holder, nullptr, 0);
  EXPECT_EQ(kind, Errc::busy);
  EXPECT_NE(message.find("pid " + std::to_string(holder) + " is taken"), std::string::npos) << message;
  // Every child made at a wrong pid on the way was reaped: none is left.
  EXPECT_EQ(::waitpid(-1, nullptr, WNOHANG), -1);
}

}  // namespace
}  // namespace crest
