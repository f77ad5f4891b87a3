// Tasks: processes and threads — identity, credentials, registers and extended state, signal
// handling state, rseq, mm fields, limits, timers. Dump and restore side by side.
#include <linux/capability.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/user.h>
#include <unistd.h>

#include <cstring>

#include "core/context.h"
#include "core/kernel/compat.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

namespace crest {
namespace {

// The kernel's struct sigaction for rt_sigaction (not glibc's).
struct KernelSigaction {
  uint64_t handler;
  uint64_t flags;
  uint64_t restorer;
  uint64_t mask;
};

std::array<uint64_t, 27> regs_to_array(const user_regs_struct& r) {
  static_assert(sizeof(user_regs_struct) == 27 * sizeof(uint64_t));
  std::array<uint64_t, 27> a{};
  std::memcpy(a.data(), &r, sizeof r);
  return a;
}

user_regs_struct array_to_regs(const std::array<uint64_t, 27>& a) {
  user_regs_struct r{};
  std::memcpy(&r, a.data(), sizeof r);
  return r;
}

// A thread stopped inside an interruptible syscall has rax = -ERESTART* and orig_rax = the
// syscall. The kernel would restart it on resume; a restored thread is not inside the kernel, so
// point it back at the `syscall` instruction with the original number: it re-executes the call.
// (ERESTART_RESTARTBLOCK's restart state lives in the kernel and is lost: a nanosleep restarts
// with its original duration.)
void rewind_syscall(user_regs_struct& r) {
  auto orig = static_cast<long>(r.orig_rax);
  auto ax = static_cast<long>(r.rax);
  if (orig >= 0 && (ax == kErestartSys || ax == kErestartNoIntr || ax == kErestartNoHand ||
                    ax == kErestartRestartBlock)) {
    r.rax = r.orig_rax;
    r.rip -= 2;
  }
  r.orig_rax = static_cast<uint64_t>(-1);
}

uint32_t field(const std::vector<uint64_t>& v, size_t i) {
  return i < v.size() ? static_cast<uint32_t>(v[i]) : 0;
}

void check_namespaces(DumpContext& ctx, pid_t pid, bool is_root) {
  static const char* kinds[] = {"mnt", "net", "ipc", "uts", "user", "cgroup", "time"};
  for (const char* ns : kinds) {
    std::string mine, theirs;
    try {
      mine = proc::readlink("/proc/self/ns/" + std::string(ns));
      theirs = proc::readlink(proc::path(pid, "ns/" + std::string(ns)));
    } catch (const Error&) {
      continue;  // the kernel lacks this namespace kind
    }
    if (mine != theirs)
      ctx.refuse("process " + std::to_string(pid) + " runs in its own " + ns +
                 " namespace; crest restores trees in the restorer's namespaces only");
  }
  std::string mine = proc::readlink("/proc/self/ns/pid");
  std::string theirs = proc::readlink(proc::path(pid, "ns/pid"));
  if (mine != theirs && !(is_root && ctx.recorded(pid) == 1) && ctx.meta.info.pid_namespace == 0)
    ctx.refuse("process " + std::to_string(pid) +
               " is in a pid namespace whose init is not the dumped root");
}

}  // namespace

// ---- dump -------------------------------------------------------------------------------------

void dump_process(DumpContext& ctx, const ptrace::FrozenProcess& p) {
  const pid_t pid = p.pid;
  const bool is_root = pid == ctx.tree.root();
  const std::string who = "process " + std::to_string(pid);
  auto st = proc::status(pid);
  auto stat = proc::stat(pid);

  check_namespaces(ctx, pid, is_root);
  if (st["Seccomp"] != "0" && !st["Seccomp"].empty())
    ctx.refuse(who + " has a seccomp filter; crest cannot restore seccomp filters yet");
  if (auto sig = ctx.tree.job_stopped().find(pid); sig != ctx.tree.job_stopped().end())
    ctx.refuse(who + " is stopped by job control (SIG" + std::string(::sigabbrev_np(sig->second)) +
               "); continue it before checkpointing");
  if (stat.state == 'Z')
    ctx.refuse(who + ": its main thread has exited while other threads run; not supported");

  schema::ProcessRecord rec;
  rec.pid = ctx.recorded(pid);
  rec.ppid = is_root ? 0 : ctx.recorded(stat.ppid);
  auto nspgid = proc::status_numbers(st, "NSpgid");
  auto nssid = proc::status_numbers(st, "NSsid");
  rec.pgid = nspgid.empty() ? stat.pgrp : static_cast<int32_t>(nspgid.back());
  rec.sid = nssid.empty() ? stat.session : static_cast<int32_t>(nssid.back());
  if (is_root) rec.flags |= schema::kProcessRoot;
  if (st["NoNewPrivs"] == "1") rec.flags |= schema::kProcessNoNewPrivs;
  auto uids = proc::status_numbers(st, "Uid");
  auto gids = proc::status_numbers(st, "Gid");
  rec.uid = field(uids, 0), rec.euid = field(uids, 1), rec.suid = field(uids, 2);
  rec.fsuid = field(uids, 3);
  rec.gid = field(gids, 0), rec.egid = field(gids, 1), rec.sgid = field(gids, 2);
  rec.fsgid = field(gids, 3);
  for (uint64_t g : proc::status_numbers(st, "Groups")) rec.groups.push_back(static_cast<uint32_t>(g));
  rec.cap_inh = proc::status_hex(st, "CapInh");
  rec.cap_prm = proc::status_hex(st, "CapPrm");
  rec.cap_eff = proc::status_hex(st, "CapEff");
  rec.cap_bnd = proc::status_hex(st, "CapBnd");
  rec.cap_amb = proc::status_hex(st, "CapAmb");
  rec.umask = static_cast<uint32_t>(std::stoul(st["Umask"].empty() ? "22" : st["Umask"], nullptr, 8));
  rec.personality = static_cast<uint32_t>(
      std::stoul(fs::read_file(proc::path(pid, "personality")), nullptr, 16));
  rec.exit_signal = stat.exit_signal;
  rec.comm = proc::comm(pid);
  rec.exe = proc::readlink(proc::path(pid, "exe"));
  rec.cwd = proc::readlink(proc::path(pid, "cwd"));
  rec.root = proc::readlink(proc::path(pid, "root"));
  rec.start_code = stat.start_code, rec.end_code = stat.end_code;
  rec.start_data = stat.start_data, rec.end_data = stat.end_data;
  rec.start_brk = stat.start_brk, rec.start_stack = stat.start_stack;
  rec.arg_start = stat.arg_start, rec.arg_end = stat.arg_end;
  rec.env_start = stat.env_start, rec.env_end = stat.env_end;
  std::string auxv = fs::read_file(proc::path(pid, "auxv"));
  rec.auxv.resize(auxv.size() / 8);
  std::memcpy(rec.auxv.data(), auxv.data(), rec.auxv.size() * 8);
  rec.mem_owner = process_owner(rec.pid);

  // Limits: prlimit() on another user's task needs CAP_SYS_RESOURCE, which sites may not grant.
  // Unreadable limits are "not saved" (the restored process keeps the restorer's), not a failure.
  for (int r = 0; r < RLIM_NLIMITS; ++r) {
    rlimit64 lim{};
    if (::prlimit64(pid, static_cast<__rlimit_resource>(r), nullptr, &lim) != 0) {
      rec.rlimits.clear();
      break;
    }
    rec.rlimits.push_back(lim.rlim_cur);
    rec.rlimits.push_back(lim.rlim_max);
  }

  // Per thread: what ptrace reads directly, before any injection touches the registers.
  std::vector<schema::ThreadRecord> threads;
  for (pid_t tid : p.threads) {
    schema::ThreadRecord t;
    t.pid = rec.pid;
    t.tid = ctx.recorded(tid);
    user_regs_struct regs = ptrace::get_regs(tid);
    rewind_syscall(regs);
    t.regs = regs_to_array(regs);
    t.xstate = ptrace::get_xstate(tid);
    t.sigmask = ptrace::get_sigmask(tid);
    auto rseq = ptrace::get_rseq(tid);
    t.rseq_ptr = rseq.ptr, t.rseq_len = rseq.len, t.rseq_sig = rseq.sig;
    t.comm = proc::comm(pid, tid);
    for (const siginfo_t& si : ptrace::peek_signals(tid, false)) {
      schema::SignalRecord s{rec.pid, t.tid, {}};
      s.siginfo.assign(reinterpret_cast<const uint8_t*>(&si),
                       reinterpret_cast<const uint8_t*>(&si) + sizeof si);
      ctx.meta.signals.push_back(std::move(s));
    }
    threads.push_back(std::move(t));
  }
  for (const siginfo_t& si : ptrace::peek_signals(pid, true)) {
    schema::SignalRecord s{rec.pid, 0, {}};
    s.siginfo.assign(reinterpret_cast<const uint8_t*>(&si),
                     reinterpret_cast<const uint8_t*>(&si) + sizeof si);
    ctx.meta.signals.push_back(std::move(s));
  }
  if (ctx.meta.info.xsave_mask == 0 && !threads.empty() && threads[0].xstate.size() >= 472)
    std::memcpy(&ctx.meta.info.xsave_mask, threads[0].xstate.data() + 464, 8);

  // What only the task itself can tell: ask it by injected syscalls into a scratch page.
  const uint64_t insn = ctx.syscall_insn.at(pid);
  {
    Injector inj(pid, insn);
    RemoteScratch scratch(inj);
    rec.brk = inj.call("brk(0)", SYS_brk, 0);

    uint64_t handled = proc::status_hex(st, "SigCgt") | proc::status_hex(st, "SigIgn");
    for (int sig = 1; sig <= 64; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP || !(handled & (1ull << (sig - 1)))) continue;
      inj.call("rt_sigaction", SYS_rt_sigaction, static_cast<uint64_t>(sig), 0, scratch.addr(), 8);
      KernelSigaction ksa{};
      scratch.get(&ksa, sizeof ksa);
      ctx.meta.sigactions.push_back(
          {rec.pid, sig, ksa.handler, ksa.flags, ksa.restorer, ksa.mask});
    }
    int value = 0;
    inj.call("prctl(PR_GET_PDEATHSIG)", SYS_prctl, PR_GET_PDEATHSIG, scratch.addr());
    scratch.get(&value, sizeof value);
    rec.pdeath_signal = value;
    inj.call("prctl(PR_GET_CHILD_SUBREAPER)", SYS_prctl, PR_GET_CHILD_SUBREAPER, scratch.addr());
    scratch.get(&value, sizeof value);
    if (value) rec.flags |= schema::kProcessSubreaper;
    if (inj.call("prctl(PR_GET_DUMPABLE)", SYS_prctl, PR_GET_DUMPABLE) == 0)
      rec.flags |= schema::kProcessDumpableOff;
    for (int which = ITIMER_REAL; which <= ITIMER_PROF; ++which) {
      itimerval it{};
      inj.call("getitimer", SYS_getitimer, static_cast<uint64_t>(which), scratch.addr());
      scratch.get(&it, sizeof it);
      for (long v : {it.it_interval.tv_sec, it.it_interval.tv_usec, it.it_value.tv_sec,
                     it.it_value.tv_usec})
        rec.itimers.push_back(static_cast<uint64_t>(v));
    }

    // Per-thread state that only the thread itself can report, through the same scratch page.
    for (size_t i = 0; i < p.threads.size(); ++i) {
      std::unique_ptr<Injector> other;
      Injector* ti = &inj;
      if (i > 0) {
        other = std::make_unique<Injector>(p.threads[i], insn);
        ti = other.get();
      }
      stack_t ss{};
      ti->call("sigaltstack", SYS_sigaltstack, 0, scratch.addr());
      scratch.get(&ss, sizeof ss);
      threads[i].altstack_sp = reinterpret_cast<uint64_t>(ss.ss_sp);
      threads[i].altstack_size = ss.ss_size;
      threads[i].altstack_flags = ss.ss_flags;
      uint64_t clear_tid = 0;
      ti->call("prctl(PR_GET_TID_ADDRESS)", SYS_prctl, PR_GET_TID_ADDRESS, scratch.addr() + 64);
      scratch.get(&clear_tid, sizeof clear_tid, 64);
      threads[i].clear_tid = clear_tid;
    }
  }

  for (auto& t : threads) ctx.meta.threads.push_back(std::move(t));
  ctx.meta.processes.push_back(std::move(rec));
}

}  // namespace crest

// ---- restore ----------------------------------------------------------------------------------

namespace crest {
namespace {

struct CloneArgs {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
      set_tid_size, cgroup;
};

// Per-thread state only the thread itself can set.
void restore_thread_self(RestoreContext& ctx, RestoredProcess& p, Injector& inj,
                         const schema::ThreadRecord& t) {
  if (t.rseq_ptr)
    inj.call("rseq register", SYS_rseq, t.rseq_ptr, t.rseq_len, 0, t.rseq_sig);
  if (!(t.altstack_flags & SS_DISABLE)) {
    stack_t ss{};
    ss.ss_sp = reinterpret_cast<void*>(t.altstack_sp);
    ss.ss_size = t.altstack_size;
    ss.ss_flags = t.altstack_flags & ~SS_ONSTACK;
    inj.call("sigaltstack", SYS_sigaltstack, ctx.put(p, &ss, sizeof ss, 3072), 0);
  }
  inj.call("set_tid_address", SYS_set_tid_address, t.clear_tid);
  inj.call("prctl(PR_SET_NAME)", SYS_prctl, PR_SET_NAME, ctx.put_string(p, t.comm.substr(0, 15), 3072));
}

}  // namespace

void restore_process_state(RestoreContext& ctx, RestoredProcess& p) {
  Injector& inj = *p.inj;
  const auto& r = *p.rec;
  const schema::ProcessRecord* parent = nullptr;
  if (!(r.flags & schema::kProcessRoot))
    for (auto& q : ctx.meta.processes)
      if (q.pid == r.ppid) parent = &q;

  // Session and group, as far as they can be recreated from here: a session or group the
  // process leads is made anew; one it shares with its parent is inherited by the fork; a group
  // led by an earlier-restored process of the same session is joined.
  if (r.sid == r.pid) {
    inj.call("setsid", SYS_setsid);
  } else if (parent && r.sid != parent->sid) {
    fail(Errc::unsupported, "process " + std::to_string(r.pid) + " is in session " +
                                std::to_string(r.sid) + ", not its parent's (" +
                                std::to_string(parent->sid) + "); that cannot be recreated");
  }
  if (r.pgid == r.pid && r.sid != r.pid) {
    inj.call("setpgid", SYS_setpgid, 0, 0);
  } else if (parent && r.pgid != parent->pgid && r.pgid != r.pid) {
    long rc = inj.raw(SYS_setpgid, 0, static_cast<uint64_t>(r.pgid));
    if (rc < 0)
      throw Error(Errc::unsupported,
                  "process " + std::to_string(r.pid) + " cannot join process group " +
                      std::to_string(r.pgid) + " (its leader is not restored before it)",
                  static_cast<int>(-rc));
  }

  inj.call("umask", SYS_umask, r.umask);
  inj.call("chdir", SYS_chdir, ctx.put_string(p, r.cwd, 3072));
  if (r.root != "/") inj.call("chroot", SYS_chroot, ctx.put_string(p, r.root, 3072));
  inj.call("personality", SYS_personality, r.personality);

  // Every disposition: a forked child or a clone of crest starts with someone else's.
  std::map<int, const schema::SigactionRecord*> actions;
  for (auto& sa : ctx.meta.sigactions)
    if (sa.pid == r.pid) actions[sa.signo] = &sa;
  for (int sig = 1; sig <= 64; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    KernelSigaction ksa{};
    if (auto it = actions.find(sig); it != actions.end())
      ksa = {it->second->handler, it->second->flags, it->second->restorer, it->second->mask};
    inj.call("rt_sigaction", SYS_rt_sigaction, static_cast<uint64_t>(sig),
             ctx.put(p, &ksa, sizeof ksa, 3072), 0, 8);
  }

  // Limits: lowering is always allowed; raising a hard limit needs CAP_SYS_RESOURCE.
  for (size_t i = 0; i + 1 < r.rlimits.size(); i += 2) {
    rlimit64 lim{r.rlimits[i], r.rlimits[i + 1]};
    long rc = inj.raw(SYS_prlimit64, 0, i / 2, ctx.put(p, &lim, sizeof lim, 3072), 0);
    if (rc < 0)
      ctx.warnings.push_back("process " + std::to_string(r.pid) + ": limit " +
                             std::to_string(i / 2) + " not restored: " + std::strerror(static_cast<int>(-rc)));
  }
  for (int which = 0; which < 3 && r.itimers.size() >= 12; ++which) {
    itimerval it{};
    it.it_interval.tv_sec = static_cast<time_t>(r.itimers[which * 4]);
    it.it_interval.tv_usec = static_cast<suseconds_t>(r.itimers[which * 4 + 1]);
    it.it_value.tv_sec = static_cast<time_t>(r.itimers[which * 4 + 2]);
    it.it_value.tv_usec = static_cast<suseconds_t>(r.itimers[which * 4 + 3]);
    if (it.it_value.tv_sec || it.it_value.tv_usec)
      inj.call("setitimer", SYS_setitimer, static_cast<uint64_t>(which),
               ctx.put(p, &it, sizeof it, 3072), 0);
  }
  if (r.flags & schema::kProcessSubreaper)
    inj.call("prctl(PR_SET_CHILD_SUBREAPER)", SYS_prctl, PR_SET_CHILD_SUBREAPER, 1);
  if (r.pdeath_signal)
    inj.call("prctl(PR_SET_PDEATHSIG)", SYS_prctl, PR_SET_PDEATHSIG,
             static_cast<uint64_t>(r.pdeath_signal));
}

void restore_threads(RestoreContext& ctx, RestoredProcess& p) {
  const auto& r = *p.rec;
  std::vector<const schema::ThreadRecord*> recs;
  const schema::ThreadRecord* main = nullptr;
  for (auto& t : ctx.meta.threads) {
    if (t.pid != r.pid) continue;
    if (t.tid == r.pid)
      main = &t;
    else
      recs.push_back(&t);
  }
  if (!main) fail(Errc::corrupt, "process " + std::to_string(r.pid) + " has no main thread record");
  p.thread_recs = {main};
  restore_thread_self(ctx, p, *p.inj, *main);

  for (auto* t : recs) {
    pid_t tid[1] = {t->tid};
    CloneArgs args{};
    args.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    args.stack = p.scratch + p.scratch_size - 4096;
    args.stack_size = 2048;
    args.set_tid = ctx.put(p, tid, sizeof tid, 256);
    args.set_tid_size = 1;
    long rc = p.inj->raw(SYS_clone3, ctx.put(p, &args, sizeof args, 128), sizeof args);
    if (rc < 0)
      throw Error(Errc::kernel, "clone3 of thread " + std::to_string(t->tid),
                  static_cast<int>(-rc));
    pid_t host = p.inj->last_event_child();
    if (host <= 0) fail(Errc::kernel, "no clone event for thread " + std::to_string(t->tid));
    p.threads.push_back(host);
    p.thread_recs.push_back(t);
    int st = ptrace::wait_report(host);
    if (!WIFSTOPPED(st))
      fail(Errc::kernel, "new thread " + std::to_string(t->tid) + ": " + ptrace::describe_status(st));
    Injector inj(host, p.scratch);
    inj.forget_saved_state();  // its registers are set from the image at release
    restore_thread_self(ctx, p, inj, *t);
  }
}

void restore_credentials(RestoreContext& ctx, RestoredProcess& p) {
  const auto& r = *p.rec;
  bool all_root = r.uid == 0 && r.euid == 0 && r.suid == 0 && r.fsuid == 0 && r.gid == 0 &&
                  r.egid == 0 && r.sgid == 0 && r.fsgid == 0;
  if (!all_root && (r.cap_eff || r.cap_prm || r.cap_amb))
    ctx.warnings.push_back("process " + std::to_string(r.pid) +
                           ": capabilities of a non-root process are not restored");
  std::vector<uint32_t> groups = r.groups;
  for (size_t i = 0; i < p.threads.size(); ++i) {
    std::unique_ptr<Injector> other;
    Injector* inj = p.inj.get();
    if (i > 0) {
      other = std::make_unique<Injector>(p.threads[i], p.scratch);
      other->forget_saved_state();
      inj = other.get();
    }
    // Raw credential syscalls change only the calling thread: every thread does its own.
    uint64_t list = groups.empty() ? 0 : ctx.put(p, groups.data(), groups.size() * 4, 3072);
    inj->call("setgroups", SYS_setgroups, groups.size(), list);
    if (!all_root) {
      inj->call("setresgid", SYS_setresgid, r.gid, r.egid, r.sgid);
      inj->call("setresuid", SYS_setresuid, r.uid, r.euid, r.suid);
      if (r.fsgid != r.egid) inj->raw(SYS_setfsgid, r.fsgid);
      if (r.fsuid != r.euid) inj->raw(SYS_setfsuid, r.fsuid);
    }
    // A uid change may have made the task non-dumpable; put back what it was.
    inj->call("prctl(PR_SET_DUMPABLE)", SYS_prctl, PR_SET_DUMPABLE,
              (r.flags & schema::kProcessDumpableOff) ? 0 : 1);
    if (r.flags & schema::kProcessNoNewPrivs)
      inj->call("prctl(PR_SET_NO_NEW_PRIVS)", SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  }
}

void release_process(RestoreContext& ctx, RestoredProcess& p) {
  Injector& inj = *p.inj;
  const auto& r = *p.rec;
  // Signals pending at the checkpoint are queued again; every signal is blocked in every thread
  // until the registers below are set, so none is delivered early.
  for (auto& s : ctx.meta.signals) {
    if (s.pid != r.pid || s.siginfo.size() < sizeof(siginfo_t)) continue;
    siginfo_t si;
    std::memcpy(&si, s.siginfo.data(), sizeof si);
    uint64_t addr = ctx.put(p, &si, sizeof si, 3072);
    if (s.tid == 0)
      inj.call("rt_sigqueueinfo", SYS_rt_sigqueueinfo, static_cast<uint64_t>(r.pid),
               static_cast<uint64_t>(si.si_signo), addr);
    else
      inj.call("rt_tgsigqueueinfo", SYS_rt_tgsigqueueinfo, static_cast<uint64_t>(r.pid),
               static_cast<uint64_t>(s.tid), static_cast<uint64_t>(si.si_signo), addr);
  }
  inj.call("close (restorer pidfd)", SYS_close, static_cast<uint64_t>(p.tracer_pidfd_remote));
  // The scratch page holds the syscall instruction we use: unmap it from the vdso's.
  inj.set_syscall_insn(find_syscall_insn(p.pid));
  inj.call("munmap (scratch)", SYS_munmap, p.scratch, p.scratch_size);
  inj.forget_saved_state();
  for (size_t i = 0; i < p.threads.size(); ++i) {
    const auto& t = *p.thread_recs[i];
    ptrace::set_regs(p.threads[i], array_to_regs(t.regs));
    ptrace::set_xstate(p.threads[i], t.xstate);
    ptrace::set_sigmask(p.threads[i], t.sigmask);
  }
}

}  // namespace crest
