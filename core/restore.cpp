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
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/checkpoint.h"
#include "core/context.h"
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
// ago may still be held by zombies that init has not reaped yet: give them a little time.
void check_pids_free(const schema::CheckpointMeta& meta) {
  std::vector<pid_t> want;
  for (auto& t : meta.threads) want.push_back(t.tid);
  for (auto& p : meta.processes)
    if (p.flags & schema::kProcessZombie) want.push_back(p.pid);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
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
    if (!only_zombies || std::chrono::steady_clock::now() > deadline) {
      std::string list;
      for (auto& t : taken) list += (list.empty() ? "" : ", ") + t;
      fail(Errc::busy, "pids of the checkpoint are taken on this node: " + list +
                           "; restore with --pidns, or end those processes");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Kills everything a failed restore created. Disarmed once the tree is released.
class CreatedTasks {
 public:
  void add(pid_t pid) { pids_.push_back(pid); }
  void disarm() { pids_.clear(); }
  ~CreatedTasks() {
    for (auto it = pids_.rbegin(); it != pids_.rend(); ++it) ::kill(*it, SIGKILL);
    for (auto it = pids_.rbegin(); it != pids_.rend(); ++it) {
      int st;
      while (::waitpid(*it, &st, __WALL) < 0 && errno == EINTR) {
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

// The root: a clone of crest with the root's pid, which stops itself for us to trace.
pid_t clone_root(pid_t pid, bool new_pidns) {
  pid_t tids[1] = {pid};
  clone_args_v2 args{};
  args.flags = new_pidns && pid == 1 ? CLONE_NEWPID : 0;
  args.exit_signal = SIGCHLD;
  args.set_tid = reinterpret_cast<uint64_t>(tids);
  args.set_tid_size = 1;
  long r = ::syscall(SYS_clone3, &args, sizeof args);
  if (r == 0) {
    ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
    ::raise(SIGSTOP);
    ::_exit(127);  // never reached: the tracer replaces this task's whole state
  }
  if (r < 0) {
    int err = errno;
    if (err == EEXIST)
      fail(Errc::busy, "pid " + std::to_string(pid) + " is taken on this node; restore with --pidns");
    throw_errno("clone3 of the root with pid " + std::to_string(pid), err, Errc::kernel);
  }
  return static_cast<pid_t>(r);
}

// A tiny init for a fresh pid namespace whose root is not pid 1: reaps orphans and leaves when
// the root has ended (the kernel then ends the namespace), with the root's status when the root
// became its child (detached restore). Runs in a fork of a multithreaded process: only
// async-signal-safe calls.
[[noreturn]] void run_namespace_init(int go_fd) {
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

// Forks a child of p by an injected clone3 in p's main thread, with the child's original pid.
RestoredProcess& fork_child(RestoreContext& ctx, RestoredProcess& p,
                            const schema::ProcessRecord& child, CreatedTasks& created) {
  pid_t tid[1] = {child.pid};
  clone_args_v2 args{};
  args.exit_signal = static_cast<uint64_t>(child.exit_signal);
  args.set_tid = p.scratch + 256;
  args.set_tid_size = 1;
  ctx.put(p, tid, sizeof tid, 256);
  ctx.put(p, &args, sizeof args, 128);
  long r = p.inj->raw(SYS_clone3, p.scratch + 128, sizeof args);
  if (r < 0) {
    if (r == -EEXIST)
      fail(Errc::busy, "pid " + std::to_string(child.pid) + " is taken on this node; restore with --pidns");
    throw Error(Errc::kernel, "clone3 of process " + std::to_string(child.pid) + " in its parent " +
                                  std::to_string(p.rec->pid),
                static_cast<int>(-r));
  }
  pid_t host = p.inj->last_event_child();
  if (host <= 0) fail(Errc::kernel, "no fork event for the clone3 of " + std::to_string(child.pid));
  created.add(host);
  int st = ptrace::wait_report(host);  // its first stop (auto-attached)
  if (!WIFSTOPPED(st))
    fail(Errc::kernel, "new process " + std::to_string(child.pid) + ": " + ptrace::describe_status(st));
  auto rp = std::make_unique<RestoredProcess>();
  rp->rec = &child;
  rp->pid = host;
  rp->threads.push_back(host);
  rp->tracer_pidfd_remote = p.tracer_pidfd_remote;
  auto& ref = *rp;
  ctx.procs.push_back(std::move(rp));
  ctx.by_pid[child.pid] = &ref;
  return ref;
}

// A child that had exited but was not reaped: forked like the others, then made to end the way
// it ended, so that its parent's wait collects the same status.
void make_zombie(RestoreContext& ctx, RestoredProcess& p, const schema::ProcessRecord& z,
                 CreatedTasks& created) {
  auto& child = fork_child(ctx, p, z, created);
  pid_t host = child.pid;
  {
    Injector inj(host, p.scratch);  // the fork copied the parent's scratch page and gadget
    inj.forget_saved_state();
    if (z.sid == z.pid) inj.raw(SYS_setsid);
    if (z.pgid == z.pid && z.sid != z.pid) inj.raw(SYS_setpgid, 0, 0);
    else if (z.pgid != p.rec->pgid && z.pgid != z.pid) inj.raw(SYS_setpgid, 0, static_cast<uint64_t>(z.pgid));
    int st = z.exit_status;
    if (WIFSIGNALED(st)) {
      // Die of the same signal: default action, unblocked, no core file.
      // (The child has its own copy of the parent's scratch page at the same address.)
      struct { uint64_t handler, flags, restorer, mask; } dfl{0, 0, 0, 0};
      remote_write(host, p.scratch + 3072, &dfl, sizeof dfl);
      inj.raw(SYS_rt_sigaction, static_cast<uint64_t>(WTERMSIG(st)), p.scratch + 3072, 0, 8);
      rlimit64 none{0, 0};
      remote_write(host, p.scratch + 3072, &none, sizeof none);
      inj.raw(SYS_prlimit64, 0, RLIMIT_CORE, p.scratch + 3072, 0);
      ptrace::set_sigmask(host, 0);
      ::syscall(SYS_tgkill, host, host, WTERMSIG(st));
    } else {
      ptrace::set_regs(host, [&] {
        auto r = ptrace::get_regs(host);
        r.rip = p.scratch;
        r.rax = SYS_exit_group;
        r.rdi = static_cast<uint64_t>(WEXITSTATUS(st));
        r.orig_rax = static_cast<uint64_t>(-1);
        return r;
      }());
    }
  }
  // Let it go: it runs only to its end. Our report of its death comes first; its parent's
  // (restored, still stopped) wait finds it later.
  ::ptrace(PTRACE_CONT, host, nullptr, nullptr);
  for (;;) {
    int st = ptrace::wait_report(host);
    if (WIFEXITED(st) || WIFSIGNALED(st)) break;
    int sig = WIFSTOPPED(st) && (st >> 16) == 0 ? WSTOPSIG(st) : 0;
    ::ptrace(PTRACE_CONT, host, nullptr, reinterpret_cast<void*>(static_cast<long>(sig)));
  }
  // It is no longer a task to release.
  ctx.procs.erase(std::find_if(ctx.procs.begin(), ctx.procs.end(),
                               [&](auto& q) { return q->pid == host; }));
  ctx.by_pid.erase(z.pid);
}

void restore_process_tree(RestoreContext& ctx, RestoredProcess& p, CreatedTasks& created,
                          const RestoredProcess* parent) {
  p.inj = std::make_unique<Injector>(p.pid, find_syscall_insn(p.pid));
  try {
    restore_memory(ctx, p, parent);
    restore_fds(ctx, p);
    restore_process_state(ctx, p);
  } catch (Error& e) {
    e.with_context("process " + std::to_string(p.rec->pid));
    throw;
  }
  std::vector<const schema::ProcessRecord*> children;
  for (auto& c : ctx.meta.processes)
    if (c.ppid == p.rec->pid && !(c.flags & schema::kProcessRoot)) children.push_back(&c);
  std::sort(children.begin(), children.end(),
            [](auto* a, auto* b) { return a->pid < b->pid; });
  for (auto* c : children) {
    if (c->flags & schema::kProcessZombie) {
      make_zombie(ctx, p, *c, created);
      continue;
    }
    auto& child = fork_child(ctx, p, *c, created);
    restore_process_tree(ctx, child, created, &p);
  }
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

RestoreResult restore(storage::CheckpointReader& reader, const RestoreOptions& opts_in) {
  auto log = log::get("core.restore");
  const int64_t t0 = now_ns();
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

  RestoreContext ctx(meta, reader, opts);
  if (opts.progress) opts.progress("recreating files, pipes and memory objects");
  prepare_files(ctx);

  // The restorer's pidfd, inherited by every task it creates so that tasks can take copies of
  // the restorer's descriptors (pidfd_getfd works across pid namespaces where pidfd_open of the
  // restorer's pid would not). Placed at a number the root does not use.
  int max_fd = 2;
  for (auto& f : meta.fds) max_fd = std::max(max_fd, f.fd);
  UniqueFd self_pidfd = proc::open_pidfd(::getpid());
  if (!self_pidfd) throw_errno("pidfd_open of the restorer", errno, Errc::kernel);
  UniqueFd pidfd_high(::fcntl(self_pidfd.get(), F_DUPFD, max_fd + 64));
  if (!pidfd_high) throw_errno("placing the restorer's pidfd", errno, Errc::kernel);

  CreatedTasks created;
  UniqueFd init_go;
  UniqueFd own_pidns;
  if (opts.pid_namespace && root->pid != 1) {
    // A fresh namespace needs a pid 1 before the root can have its own pid in it. unshare()
    // makes our next children land in a new namespace; it also stops this thread from creating
    // threads until we setns() back, which we do right after creating the root.
    own_pidns.reset(::open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC));
    if (!own_pidns) throw_errno("cannot open /proc/self/ns/pid", errno, Errc::kernel);
    if (::unshare(CLONE_NEWPID) != 0) throw_errno("unshare(CLONE_NEWPID)", errno, Errc::kernel);
    int go[2];
    if (::pipe2(go, O_CLOEXEC) != 0) throw_errno("pipe2", errno, Errc::kernel);
    pid_t init = ::fork();
    if (init == 0) {
      ::close(go[1]);
      run_namespace_init(go[0]);
    }
    ::close(go[0]);
    if (init < 0) throw_errno("fork of the pid namespace's init", errno, Errc::kernel);
    created.add(init);
    init_go.reset(go[1]);
  }

  if (opts.progress) opts.progress("creating the tree: " + std::to_string(meta.processes.size()) +
                                   " processes, " + std::to_string(meta.threads.size()) + " threads");
  pid_t root_host = clone_root(root->pid, opts.pid_namespace);
  created.add(root_host);
  if (own_pidns && ::setns(own_pidns.get(), CLONE_NEWPID) != 0)
    throw_errno("setns back to the restorer's pid namespace", errno, Errc::kernel);
  int st = ptrace::wait_report(root_host);
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

  if (opts.progress) opts.progress("releasing the tree");
  for (auto& p : ctx.procs) restore_credentials(ctx, *p);
  for (auto& p : ctx.procs) release_process(ctx, *p);
  // Everything is in place: let every thread go at once.
  for (auto& p : ctx.procs)
    for (pid_t tid : p->threads) ::ptrace(PTRACE_DETACH, tid, nullptr, nullptr);
  created.disarm();
  const int64_t t_running = now_ns();
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
  result.stats["processes"] = static_cast<int64_t>(ctx.procs.size());
  result.stats["threads"] = static_cast<int64_t>(meta.threads.size());
  if (opts.status_fd >= 0) {
    std::string line = "RESTORED " + std::to_string(root_host) + "\n";
    (void)!::write(opts.status_fd, line.data(), line.size());
  }
  log->info("restored {} processes from {} in {:.1f} ms; root pid {}", ctx.procs.size(),
            reader.name(), static_cast<double>(t_running - t0) / 1e6, root_host);
  return result;
}

}  // namespace crest
