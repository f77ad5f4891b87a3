#include "core/snapshot.h"

#include <linux/sched.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <cstring>
#include <memory>

#include "core/inject.h"
#include "core/kernel/features.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fault.h"
#include "core/util/log.h"

namespace crest {
namespace {

struct CloneArgs {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
      set_tid_size, cgroup;
};

// Stops one running thread we no longer trace, for an injection; detaches when done.
class Reattached {
 public:
  explicit Reattached(pid_t tid) : tid_(tid) {
    if (::ptrace(PTRACE_SEIZE, tid, nullptr, reinterpret_cast<void*>(ptrace::kSeizeOptions)) != 0)
      throw_errno("PTRACE_SEIZE of " + std::to_string(tid), errno, Errc::kernel);
    if (::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0)
      throw_errno("PTRACE_INTERRUPT of " + std::to_string(tid), errno, Errc::kernel);
    for (;;) {
      int st = ptrace::wait_report(tid);
      if (WIFEXITED(st) || WIFSIGNALED(st)) fail(Errc::not_found, "process exited");
      if (WIFSTOPPED(st) && (st >> 16) == PTRACE_EVENT_STOP) break;
      // A signal on its way in: let it through, we will get the interrupt stop next.
      ::ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(
                                                  (st >> 16) == 0 ? WSTOPSIG(st) : 0)));
    }
    // Stopped for good: calls injected from now on bypass its seccomp filters.
    if (ptrace::can_suspend_seccomp())
      ::ptrace(PTRACE_SETOPTIONS, tid, nullptr,
               reinterpret_cast<void*>(ptrace::kSeizeOptions | ptrace::kSuspendSeccomp));
  }
  ~Reattached() { ::ptrace(PTRACE_DETACH, tid_, nullptr, nullptr); }

 private:
  pid_t tid_;
};

}  // namespace

void Snapshots::take(const ptrace::FrozenTree& tree, const std::map<pid_t, uint64_t>& syscall_insn) {
  insn_ = syscall_insn;
  for (auto& p : tree.processes()) {
    Injector inj(p.pid, syscall_insn.at(p.pid));
    RemoteScratch scratch(inj);
    long r;
    if (kernel::have(kernel::Iface::clone3)) {
      CloneArgs args{};
      args.flags = CLONE_FILES;
      args.exit_signal = 0;
      scratch.put(&args, sizeof args);
      r = inj.raw(SYS_clone3, scratch.addr(), sizeof args);
    } else {
      r = inj.raw(SYS_clone, CLONE_FILES, 0, 0, 0, 0);  // the same: exit signal 0 (low byte)
    }
    if (r < 0)
      throw Error(Errc::kernel, "clone of a snapshot copy of process " + std::to_string(p.pid),
                  static_cast<int>(-r));
    pid_t copy = inj.last_event_child();
    if (copy <= 0) fail(Errc::kernel, "no clone event for the snapshot of " + std::to_string(p.pid));
    copies_[p.pid] = copy;
    fault_point("snapshot-copy-made");
    int st = ptrace::wait_report(copy);  // its first stop: it never runs
    if (!WIFSTOPPED(st))
      fail(Errc::kernel, "snapshot copy of " + std::to_string(p.pid) + ": " + ptrace::describe_status(st));
    // Should crest die before this, the copy, released at the slot's way back, finds that its
    // thread id is not the one the slot was written for and kills itself. Should crest die
    // before it has read the copy, the kernel kills the copy rather than let it run on as a
    // second instance of the process. (The process itself is not traced with
    // EXITKILL: it must outlive its tracer.) What is left is a zombie that no wait() of the job
    // sees; reap_stray_copies() clears it.
    if (::ptrace(PTRACE_SETOPTIONS, copy, nullptr, reinterpret_cast<void*>(PTRACE_O_EXITKILL)) != 0)
      throw_errno("PTRACE_SETOPTIONS of snapshot copy " + std::to_string(copy), errno, Errc::kernel);
  }
}

pid_t Snapshots::copy_of(pid_t pid) const {
  auto it = copies_.find(pid);
  return it == copies_.end() ? 0 : it->second;
}

void Snapshots::release(bool frozen) {
  auto log = log::get("core.snapshot");
  for (auto& [pid, copy] : copies_) {
    pid_t inner = copy;
    try {
      inner = proc::innermost_pid(copy);  // what a wait4 injected into its parent must name
    } catch (const Error&) {
    }
    ::kill(copy, SIGKILL);
    for (;;) {  // our report as its tracer comes first; its parent's zombie stays
      int st = 0;
      pid_t r = ::waitpid(copy, &st, __WALL);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 || WIFEXITED(st) || WIFSIGNALED(st)) break;
      ::ptrace(PTRACE_CONT, copy, nullptr, nullptr);
    }
    try {
      std::unique_ptr<Reattached> stop;
      if (!frozen) stop = std::make_unique<Reattached>(pid);
      Injector inj(pid, insn_.at(pid));
      long r = inj.raw(SYS_wait4, static_cast<uint64_t>(inner), 0, __WALL, 0);
      if (r != inner) log->warn("process {}: reaping its snapshot copy {} returned {}", pid, copy, r);
    } catch (const Error& e) {
      // The process ended meanwhile: its copy went to a reaper with it.
      log->debug("process {}: snapshot copy {} not reaped: {}", pid, copy, e.what());
    }
  }
  copies_.clear();
}

unsigned reap_stray_copies(pid_t root) {
  auto log = log::get("core.snapshot");
  unsigned reaped = 0;
  std::vector<pid_t> todo{root};
  while (!todo.empty()) {
    pid_t pid = todo.back();
    todo.pop_back();
    std::vector<pid_t> kids;
    try {
      kids = proc::children(pid);
    } catch (const Error&) {
      continue;  // gone meanwhile
    }
    for (pid_t kid : kids) {
      try {
        auto st = proc::stat(kid);
        if (st.state != 'Z') {
          todo.push_back(kid);
          continue;
        }
        // What a copy leaves when crest died: a "clone" child (exit signal 0) killed by SIGKILL,
        // named like its parent.
        if (st.exit_signal != 0 || !WIFSIGNALED(st.exit_code) || WTERMSIG(st.exit_code) != SIGKILL ||
            proc::comm(kid) != proc::comm(pid))
          continue;
        Reattached stop(pid);
        Injector inj(pid, find_syscall_insn(pid));
        pid_t inner = proc::innermost_pid(kid);
        long r = inj.raw(SYS_wait4, static_cast<uint64_t>(inner), 0, __WALL | WNOHANG, 0);
        if (r == inner) {
          ++reaped;
          log->info("process {}: reaped {}, a snapshot copy left by a crest that died", pid, kid);
        }
      } catch (const Error& e) {
        log->debug("process {}: child {} left alone: {}", pid, kid, e.what());
      }
    }
  }
  return reaped;
}

Snapshots::~Snapshots() {
  for (auto& [pid, copy] : copies_) ::kill(copy, SIGKILL);
}

}  // namespace crest
