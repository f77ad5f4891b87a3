#include "agent/crestd/launch.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "core/kernel/features.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace crest::agent {
namespace {

struct CloneArgs {  // struct clone_args, version 2 (88 bytes)
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
      set_tid_size, cgroup;
};
constexpr uint64_t kCloneIntoCgroup = 0x200000000ULL;  // CLONE_INTO_CGROUP (Linux 5.7)

// What the child reports through the error pipe when it cannot exec.
struct ChildFailure {
  int stage;
  int err;
};
const char* kStages[] = {"dup of stdio", "setsid", "setgroups", "setresgid", "setresuid",
                         "chdir to the working directory", "exec of crest-init"};

[[noreturn]] void child_fail(int pipe_fd, int stage) {
  ChildFailure f{stage, errno};
  (void)!::write(pipe_fd, &f, sizeof f);
  ::_exit(126);
}

// Runs in the new process (pid 1 of its namespace): async-signal-safe calls only.
// `join_cgroup`: made without CLONE_INTO_CGROUP (no clone3), it moves itself into the job's
// cgroup first, before it makes anything: the whole tree is in it all the same.
[[noreturn]] void child_main(const LaunchSpec& spec, int err_fd, char* const* argv,
                             char* const* envp, bool join_cgroup) {
  if (join_cgroup) {
    int procs = ::openat(spec.cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    // As with clone3: no usable cgroup, and the job runs without one.
    if (procs >= 0) {
      (void)!::write(procs, "0", 1);
      ::close(procs);
    }
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s)
    if (s != SIGKILL && s != SIGSTOP) ::sigaction(s, &dfl, nullptr);

  // Move the sources out of the way first: one of them may be 0, 1 or 2 already.
  int high[3];
  for (int i = 0; i < 3; ++i) {
    high[i] = ::fcntl(spec.stdio[i], F_DUPFD_CLOEXEC, 10);
    if (high[i] < 0) child_fail(err_fd, 0);
  }
  for (int i = 0; i < 3; ++i)
    if (::dup2(high[i], i) < 0) child_fail(err_fd, 0);
  if (spec.new_session && ::setsid() < 0) child_fail(err_fd, 1);
  if (spec.creds) {
    // Raw system calls: glibc's wrappers would make every thread of the process change its
    // credentials too ("setxid" broadcast), and this child, made by a raw clone3 in a
    // multi-threaded agent, still believes it has the agent's threads: it would wait for them
    // forever.
    const Credentials& c = *spec.creds;
    if (::syscall(SYS_setgroups, c.groups.size(), c.groups.data()) != 0) child_fail(err_fd, 2);
    if (::syscall(SYS_setresgid, c.gid, c.gid, c.gid) != 0) child_fail(err_fd, 3);
    if (::syscall(SYS_setresuid, c.uid, c.uid, c.uid) != 0) child_fail(err_fd, 4);
  }
  if (!spec.cwd.empty() && ::chdir(spec.cwd.c_str()) != 0) child_fail(err_fd, 5);
  ::execve(spec.init_path.c_str(), argv, envp);
  child_fail(err_fd, 6);
}

}  // namespace

std::string default_init_path() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) {
    buf[n] = 0;
    std::string dir = fs::dirname(buf);
    for (const std::string& candidate : {dir + "/crest-init", dir + "/../lib/crest/crest-init"})
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "crest-init";
}

Launched launch_job(const LaunchSpec& spec) {
  if (spec.argv.empty()) fail(Errc::usage, "no command to run");
  std::string init = spec.init_path.empty() ? default_init_path() : spec.init_path;
  if (init.find('/') == std::string::npos) {
    // execve() does not search PATH; do it here, before the fork.
    const char* path = ::getenv("PATH");
    std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
    std::string found;
    size_t start = 0;
    while (start <= dirs.size()) {
      size_t end = dirs.find(':', start);
      if (end == std::string::npos) end = dirs.size();
      std::string candidate = dirs.substr(start, end - start) + "/" + init;
      if (::access(candidate.c_str(), X_OK) == 0) {
        found = candidate;
        break;
      }
      start = end + 1;
    }
    if (found.empty())
      fail(Errc::not_found, "crest-init is not next to this binary nor on PATH; set its path");
    init = found;
  }
  for (int fd : spec.stdio)
    if (::fcntl(fd, F_GETFD) < 0) throw_errno("descriptor " + std::to_string(fd) + " for the job's stdio");

  // Everything the child needs is built here: it may not allocate.
  LaunchSpec s = spec;
  s.init_path = init;
  std::vector<std::string> args{"crest-init", "--"};
  args.insert(args.end(), spec.argv.begin(), spec.argv.end());
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : s.env) envp.push_back(e.data());
  envp.push_back(nullptr);

  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) throw_errno("pipe2");
  UniqueFd rd(pipefd[0]), wr(pipefd[1]);

  int pidfd = -1;
  CloneArgs ca{};
  ca.flags = CLONE_NEWPID | CLONE_PIDFD;
  ca.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  ca.exit_signal = SIGCHLD;
  if (spec.cgroup_fd >= 0) {
    // Born in the job's cgroup, so that the whole tree is in it from its first instruction.
    ca.flags |= kCloneIntoCgroup;
    ca.cgroup = static_cast<uint64_t>(spec.cgroup_fd);
  }
  long r;
  const bool with_clone3 = kernel::have(kernel::Iface::clone3);
  if (with_clone3) {
    r = ::syscall(SYS_clone3, &ca, sizeof ca);
    if (r < 0 && spec.cgroup_fd >= 0) {
      ca.flags &= ~kCloneIntoCgroup;  // no usable cgroup: the job runs without one
      r = ::syscall(SYS_clone3, &ca, sizeof ca);
    }
  } else {
    // clone(): the pidfd comes back where parent_tid points (CLONE_PIDFD, Linux 5.2).
    r = ::syscall(SYS_clone, CLONE_NEWPID | CLONE_PIDFD | SIGCHLD, 0, &pidfd, 0, 0);
  }
  if (r == 0) child_main(s, wr.get(), argv.data(), envp.data(), !with_clone3 && spec.cgroup_fd >= 0);
  if (r < 0) throw_errno("clone3 of the job's pid namespace", errno, Errc::kernel);
  pid_t pid = static_cast<pid_t>(r);
  UniqueFd pfd(pidfd);
  wr.reset();

  ChildFailure f{};
  ssize_t n;
  while ((n = ::read(rd.get(), &f, sizeof f)) < 0 && errno == EINTR) {
  }
  if (n == static_cast<ssize_t>(sizeof f)) {
    int st;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    std::string what = kStages[f.stage >= 0 && f.stage < 7 ? f.stage : 6];
    if (f.stage == 5) what += " " + spec.cwd;
    if (f.stage == 6) what += " (" + init + ")";
    Errc kind = f.err == EACCES || f.err == EPERM ? Errc::refused
                : f.err == ENOENT                 ? Errc::not_found
                                                  : Errc::io;
    throw Error(kind, "cannot start the job: " + what, f.err);
  }
  return Launched{pid, std::move(pfd)};
}

}  // namespace crest::agent
