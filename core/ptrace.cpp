#include "core/ptrace.h"

#include <elf.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <linux/kcmp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>

#include "core/kernel/compat.h"
#include "core/kernel/features.h"
#include "core/kernel/rseq.h"
#include "core/cgroup.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

namespace crest::ptrace {
namespace {

std::string tid_str(pid_t tid) { return "thread " + std::to_string(tid); }

long pt(enum __ptrace_request req, pid_t tid, void* addr, void* data, const char* what) {
  long r = ::ptrace(req, tid, addr, data);
  if (r < 0) throw_errno(std::string(what) + " of " + tid_str(tid), errno, Errc::kernel);
  return r;
}

constexpr std::chrono::seconds kStopTimeout{10};

long stopped_options() { return kSeizeOptions | (can_suspend_seccomp() ? kSuspendSeccomp : 0); }

}  // namespace

bool can_suspend_seccomp() {
  // PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN and a tracer that is not under seccomp itself.
  static const bool can = [] {
    try {
      auto st = proc::status(::getpid());
      return ((proc::status_hex(st, "CapEff") >> 21) & 1) && st["Seccomp"] == "0";
    } catch (const Error&) {
      return false;
    }
  }();
  return can;
}

user_regs_struct get_regs(pid_t tid) {
  user_regs_struct regs{};
  pt(PTRACE_GETREGS, tid, nullptr, &regs, "PTRACE_GETREGS");
  return regs;
}

void set_regs(pid_t tid, const user_regs_struct& regs) {
  pt(PTRACE_SETREGS, tid, nullptr, const_cast<user_regs_struct*>(&regs), "PTRACE_SETREGS");
}

std::vector<uint8_t> get_xstate(pid_t tid) {
  std::vector<uint8_t> buf(16384);
  iovec iov{buf.data(), buf.size()};
  pt(PTRACE_GETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov,
     "PTRACE_GETREGSET(NT_X86_XSTATE)");
  buf.resize(iov.iov_len);
  return buf;
}

void set_xstate(pid_t tid, const std::vector<uint8_t>& xstate) {
  std::vector<uint8_t> copy = xstate;
  iovec iov{copy.data(), copy.size()};
  pt(PTRACE_SETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov,
     "PTRACE_SETREGSET(NT_X86_XSTATE)");
}

uint64_t get_sigmask(pid_t tid) {
  uint64_t mask = 0;
  pt(PTRACE_GETSIGMASK, tid, reinterpret_cast<void*>(sizeof mask), &mask, "PTRACE_GETSIGMASK");
  return mask;
}

void set_sigmask(pid_t tid, uint64_t mask) {
  pt(PTRACE_SETSIGMASK, tid, reinterpret_cast<void*>(sizeof mask), &mask, "PTRACE_SETSIGMASK");
}

std::vector<siginfo_t> peek_signals(pid_t tid, bool shared) {
  std::vector<siginfo_t> out;
  for (;;) {
    __ptrace_peeksiginfo_args args{};
    args.off = out.size();
    args.nr = 32;
    args.flags = shared ? PTRACE_PEEKSIGINFO_SHARED : 0;
    siginfo_t batch[32];
    long n = pt(PTRACE_PEEKSIGINFO, tid, &args, batch, "PTRACE_PEEKSIGINFO");
    if (n <= 0) break;
    out.insert(out.end(), batch, batch + n);
  }
  return out;
}

RseqConfig get_rseq(pid_t tid) {
  if (!kernel::have(kernel::Iface::rseq_config)) return kernel::find_rseq(tid);
  struct {  // struct ptrace_rseq_configuration
    uint64_t ptr;
    uint32_t len, sig, flags, pad;
  } conf{};
  long n = ::ptrace(static_cast<enum __ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), tid,
                    reinterpret_cast<void*>(sizeof conf), &conf);
  if (n < 0) throw_errno("PTRACE_GET_RSEQ_CONFIGURATION of " + tid_str(tid), errno, Errc::kernel);
  return RseqConfig{conf.ptr, conf.len, conf.sig, conf.flags};
}

int wait_report(pid_t tid) {
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(tid, &status, __WALL);
    if (r == tid) return status;
    if (r < 0 && errno == EINTR) continue;
    throw_errno("waitpid of " + tid_str(tid), errno, Errc::kernel);
  }
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by ") + ::sigabbrev_np(WTERMSIG(status));
  if (WIFSTOPPED(status)) {
    const char* sig = ::sigabbrev_np(WSTOPSIG(status));
    return "stopped by SIG" + std::string(sig ? sig : "?") + " event " + std::to_string(status >> 16);
  }
  return "status " + std::to_string(status);
}

// ---- FrozenTree ------------------------------------------------------------------------------

FrozenTree::FrozenTree(FrozenTree&& o) noexcept
    : root_(o.root_),
      active_(std::exchange(o.active_, false)),
      seized_(std::move(o.seized_)),
      unstopped_(std::move(o.unstopped_)),
      new_tasks_(std::move(o.new_tasks_)),
      dead_(std::move(o.dead_)),
      running_(std::move(o.running_)),
      job_stopped_(std::move(o.job_stopped_)),
      zombies_(std::move(o.zombies_)),
      processes_(std::move(o.processes_)),
      cgroup_(std::move(o.cgroup_)) {}

FrozenTree::~FrozenTree() {
  if (active_) detach();
}

size_t FrozenTree::thread_count() const {
  size_t n = 0;
  for (auto& p : processes_) n += p.threads.size();
  return n;
}

void FrozenTree::seize(pid_t tid) {
  if (seized_.count(tid) || dead_.count(tid)) return;
  if (::ptrace(PTRACE_SEIZE, tid, nullptr, reinterpret_cast<void*>(stopped_options())) < 0) {
    int err = errno;
    if (err == ESRCH) {  // gone before we got to it
      dead_.insert(tid);
      return;
    }
    if (err == EPERM) {
      // A task that has exited cannot be seized: a zombie, a thread being reaped, or one gone
      // since. It ended before the freeze got to it, as it might have a moment earlier: dead to
      // the freeze (rescan() records a zombie process as one). Only the root's end is an error.
      char state = 'X';
      try {
        state = proc::stat(tid).state;
      } catch (const Error&) {
      }
      if (state == 'Z' || state == 'X') {
        if (tid == root_)
          fail(Errc::not_found, "process " + std::to_string(tid) + " has exited (a zombie)");
        dead_.insert(tid);
        return;
      }
      pid_t tracer = 0;
      try {
        tracer = static_cast<pid_t>(std::stoi(proc::status(tid).at("TracerPid")));
      } catch (...) {
      }
      if (tracer != 0)
        fail(Errc::refused, "thread " + std::to_string(tid) + " is already traced by pid " +
                                std::to_string(tracer) + " (" + proc::comm(tracer) +
                                "): a traced task (a debugger, strace) cannot be checkpointed");
    }
    throw_errno("PTRACE_SEIZE of " + tid_str(tid), err, Errc::kernel);
  }
  seized_.insert(tid);
  active_ = true;
  if (::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) < 0 && errno != ESRCH)
    throw_errno("PTRACE_INTERRUPT of " + tid_str(tid), errno, Errc::kernel);
  unstopped_.insert(tid);
}

// Collects a stop from every seized thread.
void FrozenTree::wait_stopped() {
  // Most threads stop within microseconds; one in uninterruptible sleep (a hung NFS server,
  // a vfork parent) stops only when it leaves it. Poll, so that such a thread makes the freeze
  // fail with its name after a while instead of hanging crest.
  auto deadline = std::chrono::steady_clock::now() + kStopTimeout;
  long idle_us = 10;
  bool vfork_checked = false;
  while (!unstopped_.empty()) {
    bool progressed = false;
    for (pid_t tid : std::vector<pid_t>(unstopped_.begin(), unstopped_.end())) {
      int st = 0;
      pid_t r = ::waitpid(tid, &st, __WALL | WNOHANG);
      if (r == 0) continue;
      if (r < 0) {
        if (errno == EINTR) continue;
        throw_errno("waitpid of " + tid_str(tid), errno, Errc::kernel);
      }
      progressed = true;
      handle_report(tid, st);
    }
    if (progressed) {
      idle_us = 10;
      continue;
    }
    // A parent in vfork() waits, unstoppable, until its child calls exec or exits: say so at
    // once rather than at the deadline.
    if (!vfork_checked && std::chrono::steady_clock::now() > deadline - kStopTimeout + std::chrono::milliseconds(100)) {
      vfork_checked = true;
      for (pid_t tid : unstopped_) refuse_vfork_parent(tid);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      pid_t tid = *unstopped_.begin();
      std::string state = "?", wchan;
      try {
        state = std::string(1, proc::stat(tid).state);
        wchan = fs::read_file(proc::path(tid, "wchan"));
      } catch (const Error&) {
      }
      fail(Errc::busy, "thread " + std::to_string(tid) + " did not stop within " +
                           std::to_string(kStopTimeout.count()) + " s (state " + state +
                           (wchan.empty() ? "" : ", waiting in " + wchan) +
                           "); try again when it is not in uninterruptible sleep");
    }
    ::usleep(static_cast<useconds_t>(idle_us));
    idle_us = std::min(idle_us * 2, 2000L);
  }
}

// Fails with a named refusal if tid is a parent waiting in vfork() for a child that still shares
// its address space.
void FrozenTree::refuse_vfork_parent(pid_t tid) {
  pid_t tgid = tid;
  std::vector<pid_t> kids;
  try {
    tgid = static_cast<pid_t>(std::stoi(proc::status(tid).at("Tgid")));
    kids = proc::children(tgid);
  } catch (const std::exception&) {
    return;
  }
  for (pid_t kid : kids)
    if (::syscall(SYS_kcmp, tgid, kid, KCMP_VM, 0, 0) == 0)
      fail(Errc::unsupported,
           "process " + std::to_string(tgid) + " waits in vfork() for its child " +
               std::to_string(kid) + ", which runs on its memory until it calls exec or exits; "
               "that state cannot be checkpointed (try again once the child has done so)");
}

// One ptrace report of a thread being frozen: a stop collected, or something to let through
// first — a fork or clone event (the new task is auto-attached; let the syscall finish, then
// interrupt again), a signal about to be delivered (deliver it — the job would have received it
// anyway — and interrupt again), or its death.
void FrozenTree::handle_report(pid_t tid, int st) {
  if (WIFEXITED(st) || WIFSIGNALED(st)) {
    running_.erase(tid);
    unstopped_.erase(tid);
    seized_.erase(tid);
    dead_.insert(tid);
    return;
  }
  if (!WIFSTOPPED(st)) return;
  int event = st >> 16;
  int sig = WSTOPSIG(st);
  if (running_.erase(tid))  // stopped again: its injected calls may bypass seccomp once more
    pt(PTRACE_SETOPTIONS, tid, nullptr, reinterpret_cast<void*>(stopped_options()),
       "PTRACE_SETOPTIONS");
  if (event == PTRACE_EVENT_STOP) {
    if (!new_tasks_.count(tid) && sig != SIGTRAP) job_stopped_[tid] = sig;
    new_tasks_.erase(tid);
    unstopped_.erase(tid);
    return;
  }
  if (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_VFORK || event == PTRACE_EVENT_CLONE) {
    unsigned long child = 0;
    pt(PTRACE_GETEVENTMSG, tid, nullptr, &child, "PTRACE_GETEVENTMSG");
    auto c = static_cast<pid_t>(child);
    seized_.insert(c);
    new_tasks_.insert(c);
    unstopped_.insert(c);
  }
  // Signal-delivery stop (event 0) or an event: let it proceed, then stop it again. While it runs
  // (a signal handler, the rest of a fork), its seccomp filters apply as without crest.
  long deliver = event == 0 ? sig : 0;
  if (can_suspend_seccomp() && !running_.count(tid)) {
    pt(PTRACE_SETOPTIONS, tid, nullptr, reinterpret_cast<void*>(kSeizeOptions), "PTRACE_SETOPTIONS");
    running_.insert(tid);
  }
  pt(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(deliver), "PTRACE_CONT");
  if (::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) < 0 && errno != ESRCH)
    throw_errno("PTRACE_INTERRUPT of " + tid_str(tid), errno, Errc::kernel);
}

// Seizes every thread of every process reachable from the root that is not seized yet; returns
// when a whole pass found nothing new.
void FrozenTree::rescan() {
  for (;;) {
    size_t before = seized_.size() + dead_.size();
    std::deque<pid_t> todo{root_};
    std::set<pid_t> visited;
    while (!todo.empty()) {
      pid_t pid = todo.front();
      todo.pop_front();
      if (!visited.insert(pid).second) continue;
      std::vector<pid_t> tids;
      try {
        if (pid != root_) {
          auto st = proc::stat(pid);
          // A zombie leader with live threads is not a zombie process; dump refuses it.
          if ((st.state == 'Z' || st.state == 'X') && proc::threads(pid).size() <= 1) {
            zombies_[pid] = st.ppid;
            continue;
          }
        }
        tids = proc::threads(pid);
        // Never seize a parent blocked in vfork(): it cannot stop, nor be let go unstopped.
        refuse_vfork_parent(pid);
      } catch (const Error& e) {
        if (e.kind() == Errc::unsupported) throw;
        if (pid == root_ && seized_.empty()) throw;
        continue;  // exited while we looked
      }
      for (pid_t tid : tids) seize(tid);
      wait_stopped();
      try {
        for (pid_t child : proc::children(pid)) todo.push_back(child);
      } catch (const Error&) {
      }
    }
    wait_stopped();
    if (seized_.size() + dead_.size() == before) break;
  }
}

void FrozenTree::order_processes() {
  // Group live threads by process (Tgid) and order processes top-down from the root.
  std::map<pid_t, FrozenProcess> by_pid;
  for (pid_t tid : seized_) {
    pid_t tgid = tid;
    try {
      // A thread's own /proc/TID entry is hidden from listings but readable.
      tgid = static_cast<pid_t>(std::stoi(proc::status(tid).at("Tgid")));
    } catch (const std::exception&) {
      continue;  // gone
    }
    auto& p = by_pid[tgid];
    p.pid = tgid;
    if (tid == tgid)
      p.threads.insert(p.threads.begin(), tid);
    else
      p.threads.push_back(tid);
  }
  for (auto& [pid, p] : by_pid) p.ppid = proc::stat(pid).ppid;
  processes_.clear();
  std::deque<pid_t> todo{root_};
  while (!todo.empty()) {
    pid_t pid = todo.front();
    todo.pop_front();
    auto it = by_pid.find(pid);
    if (it == by_pid.end()) continue;
    processes_.push_back(it->second);
    for (auto& [cpid, c] : by_pid)
      if (c.ppid == pid && cpid != root_) todo.push_back(cpid);
  }
}

FrozenTree FrozenTree::freeze(pid_t root) {
  if (root <= 0 || !proc::exists(root))
    fail(Errc::not_found, "no process with pid " + std::to_string(root));
  FrozenTree tree;
  tree.root_ = root;
  try {
    // A tree alone in its cgroup is frozen as a whole first: nothing forks or runs while its
    // threads are seized one by one. The cgroup thaws at the end of this block; the threads stay
    // in their ptrace stops.
    std::unique_ptr<cgroup::Freeze> whole;
    std::string dir = cgroup::of(root);
    if (cgroup::owned_by_tree(dir, root)) {
      whole = std::make_unique<cgroup::Freeze>(dir);
      tree.cgroup_ = dir;
    }
    tree.rescan();
    tree.order_processes();
    if (tree.processes_.empty() || tree.processes_.front().pid != root)
      fail(Errc::not_found, "process " + std::to_string(root) + " exited while being frozen");
  } catch (...) {
    if (tree.active_) tree.detach();
    throw;
  }
  log::get("core.freeze")->debug("froze {} processes, {} threads below pid {}",
                                 tree.processes_.size(), tree.thread_count(), root);
  return tree;
}

void FrozenTree::detach() {
  std::set<pid_t> dying;
  for (pid_t tid : seized_) {
    if (::ptrace(PTRACE_DETACH, tid, nullptr, nullptr) == 0) continue;
    if (errno == ESRCH)
      dying.insert(tid);
    else
      log::get("core.freeze")->warn("detach of thread {} failed: {}", tid, std::strerror(errno));
  }
  seized_.clear();
  active_ = false;
  // Not in a ptrace stop any more: killed while we held it (SIGKILL is the one thing that ends a
  // ptrace stop). Its exit is reported to us, its tracer, first, and its parent learns of it
  // only once we have collected it: without this the job's init would wait for it forever. A
  // leader's report comes after all its threads', hence the rounds.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!dying.empty() && std::chrono::steady_clock::now() < deadline) {
    for (auto it = dying.begin(); it != dying.end();) {
      int st = 0;
      pid_t r = ::waitpid(*it, &st, __WALL | WNOHANG);
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) {
        ++it;
        continue;
      }
      if (r > 0 && WIFSTOPPED(st)) {  // a stop that slipped in before the kill: let it go
        ::ptrace(PTRACE_DETACH, *it, nullptr, nullptr);
        ++it;
        continue;
      }
      it = dying.erase(it);  // collected, or not ours any more
    }
    if (!dying.empty()) ::usleep(1000);
  }
  for (pid_t tid : dying)
    log::get("core.freeze")->warn("thread {} was killed while frozen and has not exited", tid);
}

void FrozenTree::kill() {
  // A tree alone in its cgroup dies at once. Process by process, a crest killed halfway
  // through the loop (its own SIGKILL is delivered as one of these calls returns) would leave
  // the processes it had not reached detached and running on, after their checkpoint was
  // committed: so a vfork()ed child of crest sends them, and goes on with it should crest die.
  if (!cgroup_.empty() && cgroup::owned_by_tree(cgroup_, root_) && !cgroup::kill_all(cgroup_))
    log::get("core.freeze")->debug("{}: no cgroup.kill; killing process by process", cgroup_);
  const pid_t killer = ::vfork();
  if (killer <= 0) {  // the child, or crest itself if there is none
    for (auto& p : processes_) ::kill(p.pid, SIGKILL);
    if (killer == 0) ::_exit(0);
  } else {
    int st = 0;
    while (::waitpid(killer, &st, 0) < 0 && errno == EINTR) {
    }
  }
  // Non-leader threads report their exit first; a leader's report waits for its whole group.
  std::vector<pid_t> order;
  for (auto& p : processes_)
    for (size_t i = 1; i < p.threads.size(); ++i) order.push_back(p.threads[i]);
  for (auto& p : processes_) order.push_back(p.pid);
  for (pid_t tid : order) {
    if (!seized_.count(tid)) continue;
    for (;;) {
      int st = 0;
      pid_t r = ::waitpid(tid, &st, __WALL);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 || WIFEXITED(st) || WIFSIGNALED(st)) break;
      // A stop slipped in before the kill took effect: let it go on to die.
      ::ptrace(PTRACE_CONT, tid, nullptr, nullptr);
    }
    seized_.erase(tid);
  }
  seized_.clear();
  active_ = false;
}

}  // namespace crest::ptrace
