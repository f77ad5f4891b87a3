// ptrace primitives and the frozen tree.
//
// A FrozenTree is the RAII owner of a dumped tree's freeze: every thread of every process below a
// root is PTRACE_SEIZEd and PTRACE_INTERRUPTed (never SIGSTOP, which the job could see), with
// fork/clone tracing on so that nothing born during the freeze escapes. Destroying it detaches
// every thread, which resumes the job exactly where it was; kill() ends the job instead.
#pragma once

#include <signal.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace crest::ptrace {

// Options of every tracee crest seizes. TRACESYSGOOD: syscall stops of injected calls are told
// apart from SIGTRAP signals (core/inject.h). The fork/clone events keep a task born during a
// freeze or an injection from running untraced.
inline constexpr long kSeizeOptions =
    PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE;
// Seccomp filters (and strict mode) of a stopped tracee do not apply to the system calls crest
// injects into it while this option is set (needs CAP_SYS_ADMIN). It is set only while the
// tracee is stopped: a tracee that runs under crest runs under its own filters.
inline constexpr long kSuspendSeccomp = PTRACE_O_SUSPEND_SECCOMP;
// Whether this crest may suspend seccomp (probed once; false without CAP_SYS_ADMIN).
bool can_suspend_seccomp();

user_regs_struct get_regs(pid_t tid);
void set_regs(pid_t tid, const user_regs_struct& regs);
std::vector<uint8_t> get_xstate(pid_t tid);
void set_xstate(pid_t tid, const std::vector<uint8_t>& xstate);
uint64_t get_sigmask(pid_t tid);
void set_sigmask(pid_t tid, uint64_t mask);
// Queued signals without dequeuing them: the thread's own queue, or the process-wide one.
std::vector<siginfo_t> peek_signals(pid_t tid, bool shared);
struct RseqConfig {
  uint64_t ptr = 0;
  uint32_t len = 0, sig = 0, flags = 0;
};
RseqConfig get_rseq(pid_t tid);

// Waits for the next ptrace report of tid; returns the raw wait status. Throws on ECHILD/errors.
int wait_report(pid_t tid);
std::string describe_status(int status);

struct FrozenProcess {
  pid_t pid = 0;
  pid_t ppid = 0;
  std::vector<pid_t> threads;  // main thread first
};

class FrozenTree {
 public:
  // Freezes root and every descendant. Throws Errc::refused if a thread is already traced (a
  // debugger), Errc::not_found if root does not exist.
  static FrozenTree freeze(pid_t root);

  FrozenTree(FrozenTree&&) noexcept;
  FrozenTree& operator=(FrozenTree&&) = delete;
  FrozenTree(const FrozenTree&) = delete;
  ~FrozenTree();

  pid_t root() const { return root_; }
  // Top-down (parents before children), root first.
  const std::vector<FrozenProcess>& processes() const { return processes_; }
  // Children that have exited but were not reaped yet: pid -> parent pid. They are part of the
  // tree's state (their parent will wait for them) but have nothing to seize.
  const std::map<pid_t, pid_t>& zombies() const { return zombies_; }
  // Processes stopped by job control (SIGSTOP/SIGTSTP...) when frozen: pid -> signal.
  const std::map<pid_t, int>& job_stopped() const { return job_stopped_; }
  size_t thread_count() const;
  // The cgroup frozen while seizing ("" when the tree is not alone in a cgroup of its own).
  const std::string& cgroup() const { return cgroup_; }

  // Resumes every thread where it was.
  void detach();
  // SIGKILLs every process while still frozen (so nothing runs after the checkpoint) and
  // collects the tracee reports.
  void kill();

 private:
  FrozenTree() = default;
  void seize(pid_t tid);
  void wait_stopped();
  void refuse_vfork_parent(pid_t tid);
  void handle_report(pid_t tid, int status);
  void rescan();
  void order_processes();

  pid_t root_ = 0;
  bool active_ = false;
  std::set<pid_t> seized_;       // every thread we are the tracer of
  std::set<pid_t> unstopped_;    // seized, stop not yet collected
  std::set<pid_t> new_tasks_;    // auto-attached by a fork/clone event
  std::set<pid_t> dead_;         // exited during the freeze
  std::set<pid_t> running_;      // let run for a signal or an event; seccomp not suspended
  std::map<pid_t, int> job_stopped_;
  std::map<pid_t, pid_t> zombies_;
  std::vector<FrozenProcess> processes_;
  std::string cgroup_;
};

}  // namespace crest::ptrace
