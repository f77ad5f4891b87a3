// The restore of a checkpoint, tracer-driven: crest is the tracer of every task it creates and
// rebuilds each one by injected system calls; no restorer blob runs inside the tasks.
//
// Stages (each leaves the tree in the state the next one needs):
//   1. validate: same kernel build (the vdso is moved, not saved), CPU state fits, pids free or a
//      pid namespace, files the job had open unchanged (or the chosen policy applied).
//   2. files: every open file description, pipe and memory object is recreated in crest itself
//      (files.cpp, pipes.cpp); tasks take copies of them with pidfd_getfd.
//   3. tree, top-down: the root is cloned by crest with its original pid (clone3 set_tid); every
//      other process is forked *by its restored parent* by an injected clone3, after the parent's
//      memory and fds are final, so it inherits copy-on-write memory and shared descriptions as
//      it did when it was born. Each process: memory (memory.cpp), fds (files.cpp), process state
//      (task.cpp), its children, then its threads (task.cpp).
//   4. credentials, queued signals, registers; then every thread of every process is detached
//      at once and the job runs.
//   5. in place: wait for the root and report its status (the CLI mirrors it); detached: return.
// If any stage fails, everything created so far is killed.
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "core/checkpoint.h"
#include "core/context.h"
#include "core/lazy.h"
#include "core/fds/fd_kind.h"
#include "core/kernel/features.h"
#include "core/kernel/last_pid.h"
#include "core/locks.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace crest {
namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

uint64_t cpu_xsave_mask() {
  uint32_t eax, edx;
  asm volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

void validate_host(const schema::ImageInfo& info) {
  utsname u{};
  ::uname(&u);
  if (info.machine != u.machine)
    fail(Errc::refused, "the image is of a " + info.machine + " machine; this one is " + u.machine);
  if (info.kernel_release != u.release || info.kernel_build != u.version)
    fail(Errc::refused, "the image was taken on kernel " + info.kernel_release + " (" +
                            info.kernel_build + "); this node runs " + u.release + " (" + u.version +
                            "): the vdso cannot be moved between kernel builds");
  uint64_t have = cpu_xsave_mask();
  if ((info.xsave_mask & ~have) != 0) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "0x%llx, this CPU has 0x%llx",
                  static_cast<unsigned long long>(info.xsave_mask),
                  static_cast<unsigned long long>(have));
    fail(Errc::refused, std::string("the image needs CPU register state this CPU lacks (XCR0 ") +
                            buf + ")");
  }
}

// Without a pid namespace every pid and tid must be free here. Pids of a tree killed a moment
// ago may still be held by zombies that init has not reaped yet: give them a little time. A
// live process gets less, as long as a short-lived one lives: on a busy node (and with the
// default pid_max of 32768 the cursor comes round often) a compiler or a shell started since
// the job died may hold a pid of it for a moment.
void check_pids_free(const schema::CheckpointMeta& meta) {
  std::vector<pid_t> want;
  for (auto& t : meta.threads) want.push_back(t.tid);
  for (auto& p : meta.processes)
    if (p.flags & schema::kProcessZombie) want.push_back(p.pid);
  // A pid this crest holds itself (its own, or a thread's) frees no matter how long it waits.
  // Without clone3 that is what a crest killed while it restored leaves: ns_last_pid aimed at
  // the tree's pids, so the next processes of the node, this crest among them, took them. The
  // cursor goes past the tree's pids, so that the next try starts clear of them.
  const std::vector<pid_t> own = proc::threads(::getpid());
  for (pid_t pid : want) {
    if (std::find(own.begin(), own.end(), pid) == own.end()) continue;
    std::string why = "; run the restore again, or restore with --pidns";
    if (kernel::use_last_pid()) {
      const pid_t last = *std::max_element(want.begin(), want.end());
      kernel::LastPidLock lock;
      if (kernel::read_last_pid() < last) {
        kernel::set_last_pid(last + 1);
        lock.keep_cursor();
        why = " (a crest killed while restoring without clone3 leaves the node's next pid among "
              "the tree's); the node's next pid is now past the tree's: run the restore again, "
              "or restore with --pidns";
      }
    }
    fail(Errc::busy, "pid " + std::to_string(pid) + " of the checkpoint is this crest's own" + why);
  }
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::seconds(5);
  const auto live_deadline = start + std::chrono::seconds(2);
  for (;;) {
    std::vector<std::string> taken;
    bool only_zombies = true;
    for (pid_t pid : want) {
      if (!proc::exists(pid)) continue;
      std::string state = "?";
      std::string name = "?";
      try {
        auto st = proc::stat(pid);
        state = std::string(1, st.state);
        name = proc::comm(pid);
      } catch (const Error&) {
        continue;  // gone between the two looks
      }
      if (state != "Z") only_zombies = false;
      taken.push_back(std::to_string(pid) + " (" + name + (state == "Z" ? ", a zombie" : "") + ")");
    }
    if (taken.empty()) return;
    const auto now = std::chrono::steady_clock::now();
    if (now > deadline || (!only_zombies && now > live_deadline)) {
      std::string list;
      for (auto& t : taken) list += (list.empty() ? "" : ", ") + t;
      fail(Errc::busy, "pids of the checkpoint are taken on this node: " + list +
                           "; restore with --pidns, or end those processes");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(only_zombies ? 20 : 100));
  }
}

// Kills everything a failed restore created. Disarmed once the tree is released.
class CreatedTasks {
 public:
  void add(pid_t pid) { pids_.push_back(pid); }
  void disarm() { pids_.clear(); }
  ~CreatedTasks() {
    // Every thread is a tracee of ours and must be collected (threads before their leader,
    // whose exit is reported last), or a killed multithreaded process never ends.
    std::vector<pid_t> threads, leaders;
    for (auto it = pids_.rbegin(); it != pids_.rend(); ++it) {
      try {
        for (pid_t tid : proc::threads(*it))
          if (tid != *it) threads.push_back(tid);
      } catch (const Error&) {
      }
      leaders.push_back(*it);
    }
    for (pid_t pid : leaders) ::kill(pid, SIGKILL);
    for (auto* list : {&threads, &leaders})
      for (pid_t tid : *list) {
        int st;
        while (::waitpid(tid, &st, __WALL) < 0 && errno == EINTR) {
        }
      }
  }

 private:
  std::vector<pid_t> pids_;
};

struct clone_args_v2 {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
      set_tid_size, cgroup;
};

// One step of what the root does with its descriptors before it first stops.
struct FdStep {
  enum Kind : uint8_t { close_range, dup3, setfd } kind;
  unsigned a, b;  // close_range: first and last; dup3: from, to; setfd: the descriptor
  int flags;      // dup3: O_CLOEXEC or 0; setfd: FD_CLOEXEC or 0
};

// The root is a clone of crest, with a copy of every descriptor crest holds: those prepared for
// it, and everything else. Rather than have the tracer close and install them one injected call
// each, the root puts its table in order itself before it stops, in steps planned here (after
// the clone nothing may be allocated): close everything but what it is to take and the
// restorer's pidfd (`keep`), copy each description to its number with its close-on-exec flag,
// then close what is left. Copying is a parallel move: a number to fill may hold a description
// still to be copied elsewhere, which waits until it is (or, in a cycle, moves aside first).
// Descriptors of deferred kinds come later (restore_late_fds); restore_fds finds the rest in
// place.
std::vector<FdStep> plan_root_fds(const RestoreContext& ctx, const schema::ProcessRecord& root,
                                  int keep) {
  std::map<int, std::pair<int, bool>> want;  // number -> our descriptor, close-on-exec
  for (auto& fd : ctx.meta.fds)
    if (fd.pid == root.pid)
      if (auto it = ctx.files.find(fd.file_id); it != ctx.files.end())
        want[fd.fd] = {it->second.get(), (fd.fd_flags & FD_CLOEXEC) != 0};
  if (want.count(keep)) fail(Errc::internal, "the restorer's pidfd is at a number the root uses");
  std::vector<FdStep> steps;
  auto close_all_but = [&](const std::set<int>& kept) {
    unsigned from = 0;
    for (int n : kept) {
      if (static_cast<unsigned>(n) > from)
        steps.push_back({FdStep::close_range, from, static_cast<unsigned>(n) - 1, 0});
      from = static_cast<unsigned>(n) + 1;
    }
    steps.push_back({FdStep::close_range, from, ~0u, 0});
  };
  std::set<int> live{keep};
  for (auto& [num, w] : want) live.insert(w.first);
  close_all_but(live);

  std::map<int, int> users;  // our descriptor -> numbers still to take it
  std::map<int, int> at;     // our descriptor -> where it is now
  std::map<int, int> held;   // a number -> our descriptor there, while it is still to be copied
  std::set<int> pending;     // numbers still to fill
  for (auto& [num, w] : want) {
    if (w.first == num) {  // in place already: only its flag
      steps.push_back({FdStep::setfd, static_cast<unsigned>(num), 0, w.second ? FD_CLOEXEC : 0});
      continue;
    }
    pending.insert(num);
    ++users[w.first];
    at[w.first] = w.first;
    held[w.first] = w.first;
  }
  std::deque<int> ready;
  for (int num : pending)
    if (!held.count(num)) ready.push_back(num);
  int spare = 0;
  while (!pending.empty()) {
    if (ready.empty()) {
      // Every number left to fill holds a description still to be copied: a cycle. One of
      // them moves aside, to a number nothing uses.
      const int num = *pending.begin();
      const int ours = held.at(num);
      while (live.count(spare) || want.count(spare)) ++spare;
      steps.push_back({FdStep::dup3, static_cast<unsigned>(num), static_cast<unsigned>(spare), 0});
      held.erase(num);
      held[spare] = ours;
      at[ours] = spare++;
      ready.push_back(num);
    }
    const int num = ready.front();
    ready.pop_front();
    const auto [ours, cloexec] = want.at(num);
    steps.push_back({FdStep::dup3, static_cast<unsigned>(at.at(ours)), static_cast<unsigned>(num),
                     cloexec ? O_CLOEXEC : 0});
    pending.erase(num);
    if (--users[ours] == 0) {
      const int freed = at[ours];
      held.erase(freed);
      if (pending.count(freed)) ready.push_back(freed);
    }
  }
  std::set<int> final_numbers{keep};
  for (auto& [num, w] : want) final_numbers.insert(num);
  close_all_but(final_numbers);
  return steps;
}

// Runs in the root between its clone and its first stop: raw system calls only (a fork of a
// multithreaded process). Returns 0, or the errno of the step that failed.
int take_root_fds(const std::vector<FdStep>& steps) {
  for (const FdStep& s : steps) {
    long r = 0;
    switch (s.kind) {
      case FdStep::close_range:
        r = ::syscall(SYS_close_range, s.a, s.b, 0u);
        break;
      case FdStep::dup3:
        r = ::syscall(SYS_dup3, s.a, s.b, s.flags);
        break;
      case FdStep::setfd:
        r = ::syscall(SYS_fcntl, s.a, F_SETFD, s.flags);
        break;
    }
    if (r < 0) return errno;
  }
  return 0;
}

// The root: a clone of crest with the root's pid, which takes its descriptors (`fd_steps`) and
// stops itself for us to trace. Should crest die before it traces the root with
// PTRACE_O_EXITKILL, the root must die too: otherwise it would stay, half made, and its
// PTRACE_TRACEME would hand it to whoever adopted it. So it asks for SIGKILL at its parent's
// death, and then waits for crest to answer over a socket pair: an answer proves crest outlived the
// request (any later death kills the root), end of file means crest died, maybe before the
// request, and the root leaves. (Neither getppid(), 0 from inside a new pid namespace, nor a
// pidfd of crest, readable only once its last thread is reaped, which comes after the root was
// given to a new parent, can tell that in time.)
// The restore gives the process its own parent-death signal back (restore_process_state).
pid_t clone_root(pid_t pid, bool new_pidns, const std::vector<FdStep>& fd_steps) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0)
    throw_errno("socketpair for the new root", errno, Errc::kernel);
  UniqueFd ours(pair[0]), roots(pair[1]);
  long r;
  const bool last_pid = kernel::use_last_pid();
  if (!last_pid) {
    pid_t tids[1] = {pid};
    clone_args_v2 args{};
    args.flags = new_pidns && pid == 1 ? CLONE_NEWPID : 0;
    args.exit_signal = SIGCHLD;
    args.set_tid = reinterpret_cast<uint64_t>(tids);
    args.set_tid_size = 1;
    r = ::syscall(SYS_clone3, &args, sizeof args);
  } else if (new_pidns) {
    // Pid 1 of a new namespace is the first task made in it; any other pid was aimed at by the
    // namespace's init (run_namespace_init) before this clone.
    r = ::syscall(SYS_clone, (pid == 1 ? CLONE_NEWPID : 0) | SIGCHLD, 0, 0, 0, 0);
  } else {
    r = kernel::fork_at_pid(pid, SIGCHLD);
  }
  if (r == 0) {
    if (last_pid && ::syscall(SYS_getpid) != pid) ::_exit(kernel::kWrongPidExit);
    ::syscall(SYS_close, pair[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    char c = 0;
    if (::write(pair[1], &c, 1) != 1 || ::read(pair[1], &c, 1) != 1) ::_exit(126);
    ::syscall(SYS_close, pair[1]);
    // An exit status is all it can tell: the errno of the step that failed.
    if (int err = take_root_fds(fd_steps)) ::_exit(err);
    ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
    ::raise(SIGSTOP);
    ::_exit(127);  // never reached: the tracer replaces this task's whole state
  }
  if (r < 0) {
    int err = errno;
    if (err == EEXIST)
      fail(Errc::busy, "pid " + std::to_string(pid) + " is taken on this node; restore with --pidns");
    throw_errno(std::string(last_pid ? "clone" : "clone3") + " of the root with pid " +
                    std::to_string(pid),
                err, Errc::kernel);
  }
  // The root's request, then the answer; end of file, or a root gone before the answer: it
  // ended first, and its status tells why.
  roots.reset();
  char c = 0;
  ssize_t n;
  while ((n = ::read(ours.get(), &c, 1)) < 0 && errno == EINTR) {
  }
  if (n == 1) (void)::send(ours.get(), &c, 1, MSG_NOSIGNAL);
  return static_cast<pid_t>(r);
}

// A tiny init for a fresh pid namespace whose root is not pid 1: reaps orphans and leaves when
// the root has ended (the kernel then ends the namespace), with the root's status when the root
// became its child (detached restore). Runs in a fork of a multithreaded process: only
// async-signal-safe calls.
// Without clone3's set_tid, the init first aims its namespace's next pid at the root's
// (`last_pid`: the text for ns_last_pid, written by a task of the namespace, core/kernel/
// last_pid.h) and tells through `ready_fd` (0, or the errno of its failure).
[[noreturn]] void run_namespace_init(int go_fd, const char* last_pid, int ready_fd) {
  if (ready_fd >= 0) {
    int err = 0;
    int fd = static_cast<int>(::syscall(SYS_openat, AT_FDCWD, kernel::kLastPidPath, O_WRONLY | O_CLOEXEC));
    if (fd < 0 || ::write(fd, last_pid, std::strlen(last_pid)) < 0) err = errno;
    if (fd >= 0) ::close(fd);
    (void)!::write(ready_fd, &err, sizeof err);
  }
  // Nothing of crest's may stay open here: this init lives as long as the job, and a copy of a
  // description the job uses (a pipe's write end, a file holding a flock) would change what the
  // job sees when it closes its own.
  if (go_fd > 0) ::syscall(SYS_close_range, 0, go_fd - 1, 0);
  ::syscall(SYS_close_range, go_fd + 1, ~0u, 0);
  pid_t root = 0;
  if (::read(go_fd, &root, sizeof root) != sizeof root) ::_exit(1);
  ::close(go_fd);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  ::sigprocmask(SIG_BLOCK, &chld, nullptr);
  int sfd = ::signalfd(-1, &chld, SFD_CLOEXEC);
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, root, 0));
  if (pidfd < 0) ::_exit(0);  // the root is already gone
  for (;;) {
    int st;
    pid_t r;
    while ((r = ::waitpid(-1, &st, WNOHANG)) > 0)
      if (r == root) ::_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    pollfd fds[2] = {{pidfd, POLLIN, 0}, {sfd, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) continue;
    if (fds[1].revents) {
      signalfd_siginfo info;
      (void)!::read(sfd, &info, sizeof info);
    }
    if (fds[0].revents) {
      r = ::waitpid(root, &st, WNOHANG);
      if (r == root) ::_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
      if (r < 0) ::_exit(0);  // ended as the restorer's child: the restorer reports it
    }
  }
}

void restore_process_tree(RestoreContext& ctx, RestoredProcess& p, CreatedTasks& created,
                          const RestoredProcess* parent);

// The restorer's thread and the tasks it injects into, on the CPU the restorer is on, while
// descriptors are handed over (thousands of injected calls). Each injected call is a round trip
// of ptrace stops with a wakeup each way, and a wakeup on another CPU (on a VM, often a halted
// vCPU) costs more than the call itself: on a 2-vCPU VM, 25-45 us per call on one CPU, up to
// 125 us across two. Best effort: a task that may not run on this CPU (its cpuset) is left
// where it is. Every affinity changed is put back as it was read when the stage ends
// (release), before the task makes threads or children that would inherit it; restore_sched
// gives each thread its recorded one later still.
class SharedCpu {
 public:
  SharedCpu() {
    const int cpu = ::sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE || ::sched_getaffinity(0, sizeof own_, &own_) != 0) return;
    CPU_ZERO(&one_);
    CPU_SET(cpu, &one_);
    pinned_ = ::sched_setaffinity(0, sizeof one_, &one_) == 0;
  }
  SharedCpu(const SharedCpu&) = delete;
  SharedCpu& operator=(const SharedCpu&) = delete;
  ~SharedCpu() {
    try {
      release();
    } catch (const Error& e) {
      log::get("core.restore")->warn("{}", e.what());
    }
  }

  void add(pid_t tid) {
    if (!pinned_) return;
    cpu_set_t was;
    if (::sched_getaffinity(tid, sizeof was, &was) != 0) return;
    if (::sched_setaffinity(tid, sizeof one_, &one_) == 0) tasks_.emplace_back(tid, was);
  }

  // Puts every affinity back: a task left on one CPU would be a task not restored as it was.
  void release() {
    if (!pinned_) return;
    pinned_ = false;
    int err = 0;
    pid_t failed = 0;
    for (auto& [tid, was] : tasks_)
      if (::sched_setaffinity(tid, sizeof was, &was) != 0 && !err) {
        err = errno;
        failed = tid;
      }
    tasks_.clear();
    if (::sched_setaffinity(0, sizeof own_, &own_) != 0 && !err) err = errno;
    if (err)
      throw_errno(failed ? "cannot give thread " + std::to_string(failed) + " its CPU affinity back"
                         : std::string("cannot give the restorer its CPU affinity back"),
                  err, Errc::kernel);
  }

 private:
  bool pinned_ = false;
  cpu_set_t own_{}, one_{};
  std::vector<std::pair<pid_t, cpu_set_t>> tasks_;
};

// Waits until a released process is in its group stop again; one whose stop signal is not
// taken (a stop signal of the terminal family in an orphaned process group is discarded) is
// stopped with SIGSTOP.
void wait_stopped(pid_t pid, int sig) {
  for (int i = 0; i < 2000; ++i) {
    try {
      if (proc::stat(pid).state == 'T') return;
    } catch (const Error&) {
      return;  // gone: nothing to wait for
    }
    if (i == 200 && sig != SIGSTOP) ::kill(pid, SIGSTOP);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  log::get("core.restore")->warn("process {} did not stop again", pid);
}

// Without clone3's set_tid: the task made by an injected clone() at another pid than the one
// aimed at (another process took it meanwhile) is undone: killed, and reaped by its parent.
void undo_wrong_child(pid_t host, pid_t got, RestoredProcess& parent) {
  ::kill(host, SIGKILL);
  for (;;) {
    int st = ptrace::wait_report(host);
    if (WIFEXITED(st) || WIFSIGNALED(st)) break;
  }
  long r = parent.inj->raw(SYS_wait4, static_cast<uint64_t>(got), 0, __WALL, 0);
  if (r != got && r != -ECHILD)  // ECHILD: its parent ignores SIGCHLD, the kernel reaped it
    throw Error(Errc::kernel, "process " + std::to_string(parent.rec->pid) +
                                  " could not reap a task made at the wrong pid " + std::to_string(got),
                r < 0 ? static_cast<int>(-r) : ECHILD);
}

// Forks a task with the record's pid by an injected clone3 in `creator`'s main thread: a child
// of the creator, or (CLONE_PARENT) of the creator's parent, `parent`. Without clone3's set_tid,
// by ns_last_pid and an injected clone().
RestoredProcess& fork_child(RestoreContext& ctx, RestoredProcess& creator, RestoredProcess& parent,
                            const schema::ProcessRecord& child, CreatedTasks& created,
                            uint64_t flags = 0) {
  const uint64_t exit_signal = (flags & CLONE_PARENT) ? 0 : static_cast<uint64_t>(child.exit_signal);
  pid_t host = 0;
  if (!kernel::use_last_pid()) {
    pid_t tid[1] = {child.pid};
    clone_args_v2 args{};
    args.flags = flags;
    args.exit_signal = exit_signal;
    args.set_tid = creator.scratch + 256;
    args.set_tid_size = 1;
    ctx.put(creator, tid, sizeof tid, 256);
    ctx.put(creator, &args, sizeof args, 128);
    long r = creator.inj->raw(SYS_clone3, creator.scratch + 128, sizeof args);
    if (r < 0) {
      if (r == -EEXIST)
        fail(Errc::busy, "pid " + std::to_string(child.pid) + " is taken on this node; restore with --pidns");
      throw Error(Errc::kernel, "clone3 of process " + std::to_string(child.pid) + " in process " +
                                    std::to_string(creator.rec->pid),
                  static_cast<int>(-r));
    }
    host = creator.inj->last_event_child();
    if (host <= 0) fail(Errc::kernel, "no fork event for the clone3 of " + std::to_string(child.pid));
    created.add(host);
    int st = ptrace::wait_report(host);  // its first stop (auto-attached)
    if (!WIFSTOPPED(st))
      fail(Errc::kernel, "new process " + std::to_string(child.pid) + ": " + ptrace::describe_status(st));
  } else {
    for (int attempt = 0;; ++attempt) {
      if (attempt == kernel::kLastPidTries) kernel::refuse_taken_pid(child.pid, pid_namespace_name(ctx));
      kernel::wait_before_retry(attempt);
      long r;
      {
        std::optional<kernel::LastPidLock> lock;
        if (!ctx.opts.pid_namespace) lock.emplace();
        aim_next_pid(ctx, creator, *creator.inj, child.pid);
        r = creator.inj->raw(SYS_clone, flags | exit_signal, 0, 0, 0, 0);
      }
      if (r < 0)
        throw Error(Errc::kernel, "clone of process " + std::to_string(child.pid) + " in process " +
                                      std::to_string(creator.rec->pid),
                    static_cast<int>(-r));
      host = creator.inj->last_event_child();
      if (host <= 0) fail(Errc::kernel, "no fork event for the clone of " + std::to_string(child.pid));
      int st = ptrace::wait_report(host);  // its first stop (auto-attached)
      if (!WIFSTOPPED(st))
        fail(Errc::kernel, "new process " + std::to_string(child.pid) + ": " + ptrace::describe_status(st));
      if (r == child.pid) {
        created.add(host);
        break;
      }
      undo_wrong_child(host, static_cast<pid_t>(r), parent);
    }
  }
  auto rp = std::make_unique<RestoredProcess>();
  rp->rec = &child;
  rp->pid = host;
  rp->threads.push_back(host);
  rp->tracer_pidfd_remote = creator.tracer_pidfd_remote;
  // The fork copied the creator's scratch page (with its syscall instruction) at the same place.
  rp->scratch = creator.scratch;
  rp->scratch_size = creator.scratch_size;
  auto& ref = *rp;
  ctx.procs.push_back(std::move(rp));
  ctx.by_pid[child.pid] = &ref;
  return ref;
}

// A checkpoint of a shell's job (--shell-job): restored only with --shell-job, in the
// restorer's session (with its controlling terminal, if it has one). Returns the process group
// (as recorded) to make the foreground of the terminal on the restorer's stdin, 0 for none.
pid_t check_shell_job(const schema::CheckpointMeta& meta, const RestoreOptions& opts) {
  pid_t fg = 0;
  bool any = false;
  for (auto& p : meta.processes) {
    if (p.tty == 0) continue;
    any = true;
    if (p.tty_fg && (p.flags & schema::kProcessRoot)) fg = p.pgid;
  }
  if (!any) return 0;
  if (!opts.shell_job)
    fail(Errc::unsupported, "the checkpoint is of a shell's job (dumped with --shell-job): its "
                            "processes had a controlling terminal outside the tree; restore it "
                            "with --shell-job from a terminal");
  return fg;
}

// The job's process group becomes the foreground of the restorer's terminal, as it was.
void shell_job_foreground(RestoreContext& ctx, pid_t pgid) {
  auto it = ctx.by_pid.find(pgid);
  pid_t sid = ::tcgetsid(0);
  if (sid < 0 || sid != ::getsid(0)) {
    ctx.warnings.push_back("--shell-job: the job was the foreground of its terminal, but the "
                           "restorer's stdin is not its controlling terminal; the job runs in "
                           "the background");
    return;
  }
  if (it == ctx.by_pid.end()) {
    ctx.warnings.push_back("--shell-job: the job's process group " + std::to_string(pgid) +
                           " has no process of the tree; the terminal's foreground is left");
    return;
  }
  sigset_t ttou, old;
  sigemptyset(&ttou);
  sigaddset(&ttou, SIGTTOU);
  ::pthread_sigmask(SIG_BLOCK, &ttou, &old);
  int rc = ::tcsetpgrp(0, it->second->pid);
  int err = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (rc != 0)
    throw_errno("--shell-job: cannot make the job the foreground of the terminal", err,
                Errc::kernel);
}

// Tasks that hold a session or a process group while the tree is made (core/context.h Role):
// a zombie of the image (it ends before the release) or a helper with the id of a leader that
// is gone (it ends and its parent reaps it).
RestoredProcess& make_placeholder(RestoreContext& ctx, RestoredProcess& creator,
                                  RestoredProcess& parent, const schema::ProcessRecord& rec,
                                  RestoredProcess::Role role, CreatedTasks& created, bool clone_parent) {
  auto& h = fork_child(ctx, creator, parent, rec, created, clone_parent ? CLONE_PARENT : 0);
  h.role = role;
  h.parent = &parent;
  h.inj = std::make_unique<Injector>(h.pid, h.scratch, Injector::Guard::none);
  h.inj->forget_saved_state();
  if (rec.sid == rec.pid) h.inj->call("setsid", SYS_setsid);
  if (rec.pgid == rec.pid && rec.sid != rec.pid) h.inj->call("setpgid", SYS_setpgid, 0, 0);
  else if (h.inj->raw(SYS_getpgid, 0) != rec.pgid)
    h.inj->call("setpgid", SYS_setpgid, 0, static_cast<uint64_t>(rec.pgid));
  return h;
}

const schema::ProcessRecord* record_of(const RestoreContext& ctx, pid_t pid) {
  const auto& rows = ctx.rows_of(ctx.meta.processes, pid);
  return rows.empty() ? nullptr : rows.front();
}

// Whether some task made so far is in process group `pgid` (it exists to be joined).
bool group_exists(const RestoreContext& ctx, pid_t pgid) {
  if (auto leader = ctx.by_pid.find(pgid); leader != ctx.by_pid.end() && leader->second->rec->pgid == pgid)
    return true;  // (its leader made: the common case, without a walk of every task)
  for (auto& q : ctx.procs)
    if (q->rec->pgid == pgid) return true;
  return false;
}

// Children of p, made in an order that lets each find its session and group: session leaders
// first, then group leaders, then the others; by pid within each.
void restore_children(RestoreContext& ctx, RestoredProcess& p, CreatedTasks& created) {
  std::vector<const schema::ProcessRecord*> children;
  for (auto* c : ctx.rows_by<&schema::ProcessRecord::ppid>(ctx.meta.processes, p.rec->pid))
    if (!(c->flags & schema::kProcessRoot)) children.push_back(c);
  auto rank = [](const schema::ProcessRecord* c) {
    return c->sid == c->pid ? 0 : c->pgid == c->pid ? 1 : 2;
  };
  std::sort(children.begin(), children.end(), [&](auto* a, auto* b) {
    return rank(a) != rank(b) ? rank(a) < rank(b) : a->pid < b->pid;
  });
  for (auto* c : children) {
    const std::string who = "process " + std::to_string(c->pid);
    // A child in a session other than p's was born in it: it is made by a task of that session
    // that is a child of p too (the session's leader, or a helper with its id), with
    // CLONE_PARENT so that p is still its parent.
    RestoredProcess* creator = &p;
    bool clone_parent = false;
    if (c->sid != c->pid && c->sid != p.rec->sid) {
      auto holder = ctx.by_pid.find(c->sid);
      if (holder == ctx.by_pid.end()) {
        if (record_of(ctx, c->sid))
          fail(Errc::unsupported, who + " is in session " + std::to_string(c->sid) +
                                      ", whose leader is a process of the tree that is not a "
                                      "sibling of it; that cannot be recreated");
        auto& rec = ctx.helper_records.emplace_back();
        rec.pid = rec.sid = rec.pgid = c->sid;
        rec.ppid = p.rec->pid;
        rec.exit_signal = SIGCHLD;
        rec.comm = "crest-helper";
        make_placeholder(ctx, p, p, rec, RestoredProcess::Role::helper, created, false);
        holder = ctx.by_pid.find(c->sid);
      } else if (holder->second->rec->ppid != p.rec->pid) {
        fail(Errc::unsupported, who + " is in session " + std::to_string(c->sid) + ", whose "
                                    "leader is not a child of its parent; that cannot be recreated");
      }
      creator = holder->second;
      clone_parent = true;
      if (c->flags & (schema::kProcessSharesFiles | schema::kProcessSharesFs))
        fail(Errc::unsupported, who + " shares its fd table or cwd with its parent but is in "
                                    "another session; that cannot be recreated");
      if (creator->rec->exit_signal != c->exit_signal)
        fail(Errc::unsupported, who + " ends with signal " + std::to_string(c->exit_signal) +
                                    ", not its session holder's; that cannot be recreated");
    }
    // A group of its session that no task has yet, and whose leader is not in the tree: a
    // helper with the leader's id makes it, in that session.
    if (c->pgid != c->pid && !group_exists(ctx, c->pgid)) {
      if (record_of(ctx, c->pgid))
        fail(Errc::unsupported, who + " joins process group " + std::to_string(c->pgid) +
                                    ", whose leader is made after it; that cannot be recreated");
      auto& rec = ctx.helper_records.emplace_back();
      rec.pid = rec.pgid = c->pgid;
      rec.sid = c->sid;
      rec.ppid = p.rec->pid;
      rec.exit_signal = SIGCHLD;
      rec.comm = "crest-helper";
      make_placeholder(ctx, *creator, p, rec, RestoredProcess::Role::helper, created, clone_parent);
    }
    if (c->flags & schema::kProcessZombie) {
      make_placeholder(ctx, *creator, p, *c, RestoredProcess::Role::zombie, created, clone_parent);
      continue;
    }
    uint64_t flags = clone_parent ? CLONE_PARENT : 0;
    if (c->flags & schema::kProcessSharesFiles) flags |= CLONE_FILES;
    if (c->flags & schema::kProcessSharesFs) flags |= CLONE_FS;
    auto& child = fork_child(ctx, *creator, p, *c, created, flags);
    child.parent = &p;
    restore_process_tree(ctx, child, created, &p);
  }
}

// Ends the placeholders: a zombie the way it ended (so that its parent's wait collects the same
// status), a helper with 0, reaped by its parent at once. Their parents are still stopped: the
// SIGCHLD they get is taken out again at their release.
void finish_placeholders(RestoreContext& ctx) {
  for (auto it = ctx.procs.begin(); it != ctx.procs.end();) {
    RestoredProcess& h = **it;
    if (h.role == RestoredProcess::Role::process) {
      ++it;
      continue;
    }
    const pid_t host = h.pid;
    const int st = h.role == RestoredProcess::Role::zombie ? h.rec->exit_status : 0;
    if (WIFSIGNALED(st)) {
      // Die of the same signal: default action, unblocked, no core file.
      struct { uint64_t handler, flags, restorer, mask; } dfl{0, 0, 0, 0};
      h.inj->call("rt_sigaction", SYS_rt_sigaction, static_cast<uint64_t>(WTERMSIG(st)),
                  ctx.put(h, &dfl, sizeof dfl, 3072), 0, 8);
      rlimit64 none{0, 0};
      h.inj->call("prlimit64", SYS_prlimit64, 0, RLIMIT_CORE, ctx.put(h, &none, sizeof none, 3072), 0);
      ptrace::set_sigmask(host, 0);
      ::syscall(SYS_tgkill, host, host, WTERMSIG(st));
    } else {
      ptrace::set_regs(host, [&] {
        auto r = ptrace::get_regs(host);
        r.rip = h.scratch;
        r.rax = SYS_exit_group;
        r.rdi = static_cast<uint64_t>(WEXITSTATUS(st));
        r.orig_rax = static_cast<uint64_t>(-1);
        return r;
      }());
    }
    // Let it go: it runs only to its end. Our report of its death comes first; its parent's
    // (restored, still stopped) wait finds it later.
    ::ptrace(PTRACE_CONT, host, nullptr, nullptr);
    for (;;) {
      int ws = ptrace::wait_report(host);
      if (WIFEXITED(ws) || WIFSIGNALED(ws)) break;
      int sig = WIFSTOPPED(ws) && (ws >> 16) == 0 ? WSTOPSIG(ws) : 0;
      ::ptrace(PTRACE_CONT, host, nullptr, reinterpret_cast<void*>(static_cast<long>(sig)));
    }
    if (h.role == RestoredProcess::Role::helper) {
      long r = h.parent->inj->raw(SYS_wait4, static_cast<uint64_t>(h.rec->pid), 0, __WALL, 0);
      if (r != h.rec->pid)
        throw Error(Errc::kernel, "process " + std::to_string(h.parent->rec->pid) +
                                      " could not reap crest's helper " + std::to_string(h.rec->pid),
                    r < 0 ? static_cast<int>(-r) : ECHILD);
    }
    ctx.by_pid.erase(h.rec->pid);
    it = ctx.procs.erase(it);  // no longer a task to release
  }
}

void restore_process_tree(RestoreContext& ctx, RestoredProcess& p, CreatedTasks& created,
                          const RestoredProcess* parent) {
  p.inj = std::make_unique<Injector>(p.pid, find_syscall_insn(p.pid), Injector::Guard::none);
  try {
    log::get("core.restore")->debug("process {}: writing its memory", p.rec->pid);
    restore_memory(ctx, p, parent);
    log::get("core.restore")->debug("process {}: descriptors and state", p.rec->pid);
    {
      SharedCpu cpu;
      cpu.add(p.pid);
      restore_fds(ctx, p);
      cpu.release();
    }
    restore_process_state(ctx, p);
    restore_time_namespace(ctx, p);
  } catch (Error& e) {
    e.with_context("process " + std::to_string(p.rec->pid));
    throw;
  }
  restore_children(ctx, p, created);
  try {
    restore_threads(ctx, p);
  } catch (Error& e) {
    e.with_context("process " + std::to_string(p.rec->pid));
    throw;
  }
}

}  // namespace

const schema::FileRecord& RestoreContext::file(int64_t id) const {
  if (id < 0 || id >= static_cast<int64_t>(meta.files.size()))
    fail(Errc::corrupt, "the image refers to file row " + std::to_string(id) + " that does not exist");
  return meta.files[static_cast<size_t>(id)];
}

uint64_t RestoreContext::put(RestoredProcess& p, const void* data, size_t len, size_t offset) {
  if (offset + len > p.scratch_size) fail(Errc::internal, "scratch page overflow");
  remote_write(p.pid, p.scratch + offset, data, len);
  return p.scratch + offset;
}

uint64_t RestoreContext::put_string(RestoredProcess& p, const std::string& s, size_t offset) {
  return put(p, s.c_str(), s.size() + 1, offset);
}

std::string pid_namespace_name(const RestoreContext& ctx) {
  return ctx.opts.pid_namespace ? "the job's new pid namespace" : "this node's pid namespace";
}

void aim_next_pid(RestoreContext& ctx, RestoredProcess& p, Injector& inj, pid_t want) {
  if (!ctx.opts.pid_namespace) {
    kernel::set_last_pid(want);
    return;
  }
  // The kernel applies the write to the writer's own pid namespace: p writes it.
  const std::string who = "process " + std::to_string(p.rec->pid);
  const std::string text = kernel::last_pid_text(want);
  const uint64_t path = ctx.put_string(p, kernel::kLastPidPath, 512);
  const uint64_t buf = ctx.put(p, text.data(), text.size(), 640);
  const long fd = inj.raw(SYS_openat, static_cast<uint64_t>(AT_FDCWD), path, O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    throw Error(Errc::kernel, who + ": cannot open " + kernel::kLastPidPath + " to choose pid " +
                                  std::to_string(want), static_cast<int>(-fd));
  const long n = inj.raw(SYS_write, static_cast<uint64_t>(fd), buf, text.size());
  inj.raw(SYS_close, static_cast<uint64_t>(fd));
  if (n != static_cast<long>(text.size()))
    throw Error(Errc::kernel, who + ": cannot write " + kernel::kLastPidPath + " to choose pid " +
                                  std::to_string(want), n < 0 ? static_cast<int>(-n) : EIO);
}

namespace {

// The restorer holds a descriptor of every description of the tree at once, and places them at
// the job's numbers: its soft descriptor limit is raised to its hard one while it restores (a
// root shell's 1,024 would fail a job of more), and put back after. The processes made get their
// own limits back from the image (finish_process).
class RaisedFileLimit {
 public:
  RaisedFileLimit() {
    if (::getrlimit(RLIMIT_NOFILE, &saved_) != 0 || saved_.rlim_cur >= saved_.rlim_max) return;
    rlimit raised{saved_.rlim_max, saved_.rlim_max};
    raised_ = ::setrlimit(RLIMIT_NOFILE, &raised) == 0;
  }
  ~RaisedFileLimit() {
    if (raised_) ::setrlimit(RLIMIT_NOFILE, &saved_);
  }
  RaisedFileLimit(const RaisedFileLimit&) = delete;
  RaisedFileLimit& operator=(const RaisedFileLimit&) = delete;

 private:
  rlimit saved_{};
  bool raised_ = false;
};

}  // namespace

RestoreResult restore(storage::CheckpointReader& reader, const RestoreOptions& opts_in) {
  auto log = log::get("core.restore");
  const int64_t t0 = now_ns();
  const uint64_t injections0 = Injector::injections_so_far();
  RaisedFileLimit file_limit;
  const auto& meta = reader.meta();
  RestoreOptions opts = opts_in;
  if (meta.processes.empty()) fail(Errc::corrupt, reader.name() + ": the checkpoint holds no process");
  const schema::ProcessRecord* root = nullptr;
  for (auto& p : meta.processes)
    if (p.flags & schema::kProcessRoot) root = &p;
  if (!root) fail(Errc::corrupt, reader.name() + ": the checkpoint has no root process");

  validate_host(meta.info);
  if (meta.info.pid_namespace && !opts.pid_namespace) {
    if (opts.progress) opts.progress("the job ran in its own pid namespace: restoring into a new one");
    opts.pid_namespace = true;
  }
  if (!opts.pid_namespace) check_pids_free(meta);

  // Lazy: the page server's guardian is forked first, before anything of the tree exists (and
  // before this thread enters a new pid namespace); the image is checked as it is served.
  std::shared_ptr<LazyPages> lazy;
  if (opts.lazy) {
    opts.verify_first = false;
    lazy = std::make_shared<LazyPages>(reader);
  }
  if (opts.verify_first) {
    if (opts.progress) opts.progress("verifying " + reader.name() + " and its chain");
    // Decompress and checksum every page the restore will need; deliver nowhere.
    struct Discard : storage::PageSink {
      void on_pages(const storage::PageExtent&, schema::PageKind, const std::byte*) override {}
      bool concurrent() const override { return true; }
    } discard;
    reader.read_pages({}, discard);
  }
  const int64_t t_verified = now_ns();

  pid_t shell_fg = check_shell_job(meta, opts);

  // The highest descriptor number of the tree, and the restorer's descriptor limit (raised to
  // its hard limit above): it needs one number above the tree's for its pidfd (below), so a tree
  // that used its whole limit cannot come back here. Refused before anything is made.
  int max_fd = 2;
  for (auto& f : meta.fds) max_fd = std::max(max_fd, f.fd);
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0) throw_errno("getrlimit(RLIMIT_NOFILE)");
  const uint64_t fd_limit = nofile.rlim_cur == RLIM_INFINITY ? uint64_t{1} << 30 : nofile.rlim_cur;
  if (static_cast<uint64_t>(max_fd) + 2 > fd_limit)
    fail(Errc::unsupported,
         reader.name() + ": the tree has descriptor " + std::to_string(max_fd) +
             "; the restorer needs one more number, and RLIMIT_NOFILE here allows " +
             std::to_string(fd_limit) + " (raise the hard limit: ulimit -Hn, LimitNOFILE=)");

  // The restorer holds one descriptor (a pipe or socket pair: two) of every open description
  // of the tree at once, however many processes hold them: a tree of many processes may hold
  // more than one process may. Refused before anything is made, naming the limit.
  std::set<int64_t> descriptions;
  for (auto& f : meta.fds) descriptions.insert(f.file_id);
  auto too_many = [&](const std::string& seen) {
    return reader.name() + ": the tree holds " + std::to_string(descriptions.size()) +
           " open file descriptions" + seen + "; the restorer holds each while it restores, and "
           "RLIMIT_NOFILE here allows " + std::to_string(fd_limit) +
           " (raise the hard limit: ulimit -Hn, LimitNOFILE=)";
  };
  if (descriptions.size() + 64 > fd_limit) fail(Errc::unsupported, too_many(""));

  RestoreContext ctx(meta, reader, opts);
  ctx.lazy = lazy.get();
  if (opts.progress) opts.progress("recreating files, pipes and memory objects");
  try {
    prepare_files(ctx);
  } catch (const Error& e) {
    if (e.sys_errno() != EMFILE) throw;
    fail(Errc::unsupported, too_many(" (with the pipes' and sockets' other ends: more)"));
  }

  // The restorer's pidfd, inherited by every task it creates so that tasks can take copies of
  // the restorer's descriptors (pidfd_getfd works across pid namespaces where pidfd_open of the
  // restorer's pid would not). Placed at a number the root does not use: 64 above its highest,
  // or as far as the limit allows.
  UniqueFd self_pidfd = proc::open_pidfd(::getpid());
  if (!self_pidfd) throw_errno("pidfd_open of the restorer", errno, Errc::kernel);
  if (!kernel::have(kernel::Iface::pidfd_getfd)) {
    // Without pidfd_getfd the tasks take our descriptors from a socket pair instead, whose end
    // they hold where the pidfd would be (RestoreContext::install_fd). A seqpacket pair: the
    // root's end reads as readable (end of file) once crest is gone, as the pidfd would.
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      throw_errno("socketpair (to hand descriptors to the tasks)", errno, Errc::kernel);
    ctx.fd_channel.reset(sv[0]);
    self_pidfd.reset(sv[1]);
  }
  const int place =
      static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(max_fd) + 64, fd_limit - 1));
  UniqueFd pidfd_high(::fcntl(self_pidfd.get(), F_DUPFD, place));
  if (!pidfd_high && (errno == EMFILE || errno == EINVAL))
    fail(Errc::unsupported, reader.name() + ": no descriptor number above the tree's highest (" +
                                std::to_string(max_fd) + ") is free under RLIMIT_NOFILE " +
                                std::to_string(fd_limit) + " (raise the hard limit)");
  if (!pidfd_high) throw_errno("placing the restorer's pidfd", errno, Errc::kernel);
  const std::vector<FdStep> root_fd_steps = plan_root_fds(ctx, *root, pidfd_high.get());

  CreatedTasks created;
  UniqueFd init_go;
  UniqueFd own_pidns;
  // System V objects: made in a fresh IPC namespace that the init and the root are born in.
  prepare_sysv(ctx);
  enter_sysv_namespace(ctx);
  struct LeaveIpc {
    RestoreContext& c;
    bool on = true;
    void leave() {
      if (on) leave_sysv_namespace(c);
      on = false;
    }
    ~LeaveIpc() {
      try {
        leave();
      } catch (...) {
      }
    }
  } leave_ipc{ctx};
  if (opts.pid_namespace && root->pid != 1) {
    // A fresh namespace needs a pid 1 before the root can have its own pid in it. unshare()
    // makes our next children land in a new namespace; it also stops this thread from creating
    // threads until we setns() back, which we do right after creating the root.
    own_pidns.reset(::open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC));
    if (!own_pidns) throw_errno("cannot open /proc/self/ns/pid", errno, Errc::kernel);
    if (::unshare(CLONE_NEWPID) != 0) throw_errno("unshare(CLONE_NEWPID)", errno, Errc::kernel);
    int go[2];
    if (::pipe2(go, O_CLOEXEC) != 0) throw_errno("pipe2", errno, Errc::kernel);
    // Without set_tid the init aims the namespace's next pid at the root's, and says when.
    const std::string last_pid = kernel::last_pid_text(root->pid);
    int ready[2] = {-1, -1};
    if (kernel::use_last_pid() && ::pipe2(ready, O_CLOEXEC) != 0) throw_errno("pipe2", errno, Errc::kernel);
    UniqueFd ready_read(ready[0]), ready_write(ready[1]);
    pid_t init = ::fork();
    if (init == 0) {
      ::close(go[1]);
      run_namespace_init(go[0], last_pid.c_str(), ready[1]);
    }
    ::close(go[0]);
    if (init < 0) throw_errno("fork of the pid namespace's init", errno, Errc::kernel);
    created.add(init);
    init_go.reset(go[1]);
    if (ready_read) {
      ready_write.reset();
      int err = -1;
      if (::read(ready_read.get(), &err, sizeof err) != sizeof err) err = EIO;
      if (err != 0)
        throw_errno(std::string("the new pid namespace's init could not write its ") +
                        kernel::kLastPidPath + " for the root's pid " + std::to_string(root->pid),
                    err, Errc::kernel);
    }
  }

  if (opts.progress) opts.progress("creating the tree: " + std::to_string(meta.processes.size()) +
                                   " processes, " + std::to_string(meta.threads.size()) + " threads");
  pid_t root_host = clone_root(root->pid, opts.pid_namespace, root_fd_steps);
  created.add(root_host);
  leave_ipc.leave();
  if (own_pidns && ::setns(own_pidns.get(), CLONE_NEWPID) != 0)
    throw_errno("setns back to the restorer's pid namespace", errno, Errc::kernel);
  int st = ptrace::wait_report(root_host);
  if (WIFEXITED(st) && WEXITSTATUS(st) == kernel::kWrongPidExit && kernel::use_last_pid())
    kernel::refuse_taken_pid(root->pid, pid_namespace_name(ctx));
  if (WIFEXITED(st) && WEXITSTATUS(st) != 127)
    throw Error(Errc::kernel, "the new root could not put its descriptors in place",
                WEXITSTATUS(st));
  if (!WIFSTOPPED(st)) fail(Errc::kernel, "the new root " + ptrace::describe_status(st));
  // Every task created from the root inherits these options. The restored tasks never run
  // under crest, so seccomp filters installed at the end never apply to what crest injects.
  if (::ptrace(PTRACE_SETOPTIONS, root_host, nullptr,
               reinterpret_cast<void*>(ptrace::kSeizeOptions | PTRACE_O_EXITKILL |
                                       (ptrace::can_suspend_seccomp() ? ptrace::kSuspendSeccomp
                                                                      : 0))) != 0)
    throw_errno("PTRACE_SETOPTIONS of the new root", errno, Errc::kernel);

  auto rp = std::make_unique<RestoredProcess>();
  rp->rec = root;
  rp->pid = root_host;
  rp->threads.push_back(root_host);
  rp->tracer_pidfd_remote = pidfd_high.get();
  ctx.by_pid[root->pid] = rp.get();
  ctx.procs.push_back(std::move(rp));
  restore_process_tree(ctx, *ctx.procs.front(), created, nullptr);

  // Every process and thread exists. What refers to other tasks, or must not be disturbed by
  // any fd table change, or needs root, comes now, in this order.
  if (opts.progress) opts.progress("locks, timers, credentials and scheduling");
  {
    SharedCpu cpu;
    for (auto& p : ctx.procs)
      if (p->role == RestoredProcess::Role::process) cpu.add(p->pid);
    restore_late_fds(ctx);
    fds::restore_epoll_targets(ctx);
    cpu.release();
  }
  for (auto& p : ctx.procs)
    if (p->role == RestoredProcess::Role::process) restore_timers(ctx, *p);
  restore_locks(ctx);
  finish_sysv(ctx);
  for (auto& p : ctx.procs)
    if (p->role == RestoredProcess::Role::process) restore_credentials(ctx, *p);
  restore_fd_owners(ctx);
  fds::restore_tty_foreground(ctx);
  if (shell_fg) shell_job_foreground(ctx, shell_fg);
  for (auto& p : ctx.procs)
    if (p->role == RestoredProcess::Role::process) restore_sched(ctx, *p);
  fds::seal_objects(ctx);
  finish_placeholders(ctx);
  for (auto& p : ctx.procs) finish_process(ctx, *p);

  if (opts.progress) opts.progress("releasing the tree");
  // A process stopped by job control stops again the way it stopped, before its parent is
  // released (the SIGCHLD that tells its parent is taken out again there: the parent had it
  // already). Children before parents.
  std::vector<RestoredProcess*> stopped, running;
  for (auto& p : ctx.procs) (p->rec->stop_signal ? stopped : running).push_back(p.get());
  std::reverse(stopped.begin(), stopped.end());
  const int64_t t_verify0 = now_ns();
  int64_t verify_ns = 0;
  auto verify = [&](RestoredProcess& p) {
    if (!opts.verify_restore) return;
    const int64_t t = now_ns();
    try {
      verify_restored(ctx, p);
    } catch (Error& e) {
      e.with_context("--verify-restore");
      throw;
    }
    verify_ns += now_ns() - t;
  };
  (void)t_verify0;
  for (RestoredProcess* p : stopped) {
    release_process(ctx, *p);
    verify(*p);
    ::kill(p->pid, p->rec->stop_signal);
    for (pid_t tid : p->threads) ::ptrace(PTRACE_DETACH, tid, nullptr, nullptr);
    wait_stopped(p->pid, p->rec->stop_signal);
  }
  for (RestoredProcess* p : running) {
    release_process(ctx, *p);
    verify(*p);
  }
  // The page server kills the whole tree should it fail or die.
  if (lazy)
    for (auto& p : ctx.procs) lazy->watch(p->pid);
  // Everything is in place: let every thread go at once.
  for (RestoredProcess* p : running) enter_syscalls(*p);
  for (RestoredProcess* p : running) detach_threads(*p);
  created.disarm();
  const int64_t t_running = now_ns();
  if (lazy) lazy->released();
  if (init_go) {
    pid_t r = root->pid;
    (void)!::write(init_go.get(), &r, sizeof r);
    init_go.reset();
  }
  for (auto& w : ctx.warnings) log->warn("{}", w);

  RestoreResult result;
  result.root_pid = root_host;
  result.stats["restore_ns"] = t_running - t0;
  result.stats["verify_ns"] = t_verified - t0;
  result.stats["verify_restore_ns"] = verify_ns;
  result.stats["processes"] = static_cast<int64_t>(ctx.procs.size());
  result.stats["threads"] = static_cast<int64_t>(meta.threads.size());
  result.stats["injections"] = static_cast<int64_t>(Injector::injections_so_far() - injections0);
  if (lazy) {
    result.stats["lazy_pages"] = static_cast<int64_t>(lazy->stats().pages_total);
    result.lazy = lazy;
  }
  if (opts.status_fd >= 0) {
    std::string line = "RESTORED " + std::to_string(root_host) + "\n";
    (void)!::write(opts.status_fd, line.data(), line.size());
  }
  log->info("restored {} processes from {} in {:.1f} ms ({} injected calls); root pid {}",
            ctx.procs.size(), reader.name(), static_cast<double>(t_running - t0) / 1e6,
            result.stats["injections"], root_host);
  return result;
}

}  // namespace crest
