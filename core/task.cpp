// Tasks: processes and threads — identity, credentials, registers and extended state, signal
// handling state, rseq, mm fields, limits, timers. Dump and restore side by side.
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/kcmp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <optional>
#include <cctype>
#include <cstring>
#include <sstream>
#include <tuple>

#include "core/checkpoint.h"
#include "core/context.h"
#include "core/fds/fd_kind.h"
#include "core/kernel/compat.h"
#include "core/kernel/last_pid.h"
#include "core/pagemap.h"
#include <sys/ptrace.h>
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fault.h"
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
// Returns the -ERESTART* code (0 if the thread was not in such a call): whether a signal handler
// that runs before the call is made again makes it return EINTR depends on it, and the release
// (enter_interrupted_syscall) uses it to keep that rule. (ERESTART_RESTARTBLOCK's restart state
// lives in the kernel and is lost: a nanosleep restarts with its original duration.)
int32_t rewind_syscall(user_regs_struct& r) {
  auto orig = static_cast<long>(r.orig_rax);
  auto ax = static_cast<long>(r.rax);
  int32_t code = 0;
  if (orig >= 0 && (ax == kErestartSys || ax == kErestartNoIntr || ax == kErestartNoHand ||
                    ax == kErestartRestartBlock)) {
    code = static_cast<int32_t>(ax);
    r.rax = r.orig_rax;
    r.rip -= 2;
  }
  r.orig_rax = static_cast<uint64_t>(-1);
  return code;
}

uint32_t field(const std::vector<uint64_t>& v, size_t i) {
  return i < v.size() ? static_cast<uint32_t>(v[i]) : 0;
}

// Limits, as prlimit() gives them, or from /proc/PID/limits when prlimit() may not be used on
// the task (another user's, without CAP_SYS_RESOURCE): both are exact.
std::vector<uint64_t> read_rlimits(pid_t pid) {
  std::vector<uint64_t> out;
  for (int r = 0; r < RLIM_NLIMITS; ++r) {
    rlimit64 lim{};
    if (::prlimit64(pid, static_cast<__rlimit_resource>(r), nullptr, &lim) != 0) {
      out.clear();
      break;
    }
    out.push_back(lim.rlim_cur);
    out.push_back(lim.rlim_max);
  }
  if (!out.empty()) return out;
  // "Max cpu time   unlimited   unlimited   seconds": rows in RLIMIT_* order after a header.
  std::istringstream in(fs::read_file(proc::path(pid, "limits")));
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line) && out.size() < 2 * RLIM_NLIMITS) {
    if (line.size() < 26) continue;
    std::istringstream values(line.substr(25));
    std::string soft, hard;
    values >> soft >> hard;
    auto num = [](const std::string& v) {
      return v == "unlimited" ? RLIM64_INFINITY : static_cast<uint64_t>(std::stoull(v));
    };
    out.push_back(num(soft));
    out.push_back(num(hard));
  }
  if (out.size() != 2 * RLIM_NLIMITS)
    fail(Errc::kernel, proc::path(pid, "limits") + " lists " + std::to_string(out.size() / 2) +
                           " limits, expected " + std::to_string(RLIM_NLIMITS));
  return out;
}

// Whether a thread's credentials differ from its process's main thread's (each thread has its
// own; crest saves one set per process).
std::string differing_credentials(const proc::Status& main, const proc::Status& thread) {
  for (const char* key : {"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd",
                          "CapAmb", "NoNewPrivs"})
    if (main.count(key) && thread.count(key) && main.at(key) != thread.at(key)) return key;
  return "";
}

// mlockall(MCL_FUTURE[|MCL_ONFAULT]) is a flag of the address space that no interface shows:
// probe it with a fresh page of the task's. Under MCL_FUTURE the page is faulted in and locked
// when mapped; under MCL_FUTURE|MCL_ONFAULT it is locked once touched.
uint32_t probe_mlock_future(pid_t pid, const RemoteScratch& scratch) {
  auto locked_kb = [&] { return proc::status_numbers(proc::status(pid), "VmLck"); };
  Pagemap pm(pid);
  auto before = locked_kb();
  const bool present = (pm.entries(scratch.addr(), 1)[0] & kPmPresent) != 0;
  if (present) return !before.empty() && before[0] >= 4 ? MCL_FUTURE : 0;
  uint8_t touch = 0;
  remote_write(pid, scratch.addr(), &touch, 1);
  auto after = locked_kb();
  if (!before.empty() && !after.empty() && after[0] > before[0]) return MCL_FUTURE | MCL_ONFAULT;
  return 0;
}

}  // namespace

// ---- dump -------------------------------------------------------------------------------------

void dump_process(DumpContext& ctx, const ptrace::FrozenProcess& p) {
  const pid_t pid = p.pid;
  const bool is_root = pid == ctx.tree.root();
  const std::string who = "process " + std::to_string(pid);
  auto st = proc::status(pid);
  auto stat = proc::stat(pid);

  if (stat.state == 'Z')
    ctx.refuse(who + ": its main thread has exited while other threads run; not supported");

  schema::ProcessRecord rec;
  rec.pid = ctx.recorded(pid);
  rec.ppid = is_root ? 0 : ctx.recorded(stat.ppid);
  dump_namespaces(ctx, p, rec);
  auto nspgid = proc::status_numbers(st, "NSpgid");
  auto nssid = proc::status_numbers(st, "NSsid");
  rec.pgid = nspgid.empty() ? stat.pgrp : static_cast<int32_t>(nspgid.back());
  rec.sid = nssid.empty() ? stat.session : static_cast<int32_t>(nssid.back());
  if (is_root) rec.flags |= schema::kProcessRoot;
  if (auto sig = ctx.tree.job_stopped().find(pid); sig != ctx.tree.job_stopped().end())
    rec.stop_signal = sig->second;

  // What it shares with its parent since a clone(): its fd table, its cwd/root/umask. Its
  // address space it may not share (a vfork child, clone(CLONE_VM)): those run on the parent's
  // stack and memory, which no restore can give back to a second process.
  if (!is_root) {
    auto shares = [&](int what) { return ::syscall(SYS_kcmp, pid, p.ppid, what, 0, 0) == 0; };
    if (shares(KCMP_VM))
      ctx.refuse(who + " shares its address space with its parent " + std::to_string(p.ppid) +
                 " (a vfork() child before its exec, or clone(CLONE_VM)); checkpoint it once it "
                 "has called exec or exited");
    if (shares(KCMP_FILES)) rec.flags |= schema::kProcessSharesFiles;
    if (shares(KCMP_FS)) rec.flags |= schema::kProcessSharesFs;
  }

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
  // Working and root directory: reachable by their path still, or removed (made again at
  // restore); a path that leads elsewhere (a /proc/<pid> directory of a process that exited) is
  // refused.
  for (auto [leaf, path, deleted_flag, mode, uid, gid] :
       {std::tuple{"cwd", &rec.cwd, schema::kProcessCwdDeleted, &rec.cwd_mode, &rec.cwd_uid, &rec.cwd_gid},
        std::tuple{"root", &rec.root, schema::kProcessRootDeleted, &rec.root_mode, &rec.root_uid,
                   &rec.root_gid}}) {
    struct stat there {}, now {};
    if (::stat(proc::path(pid, leaf).c_str(), &there) != 0) {
      ctx.refuse(who + ": cannot stat its " + leaf + " " + *path + ": " + std::strerror(errno));
      continue;
    }
    *mode = there.st_mode, *uid = there.st_uid, *gid = there.st_gid;
    struct statfs fs_there {};
    if (::statfs(proc::path(pid, leaf).c_str(), &fs_there) == 0 && fs_there.f_type == PROC_SUPER_MAGIC &&
        path->rfind("/proc/", 0) == 0 && path->size() > 6 && std::isdigit(static_cast<unsigned char>((*path)[6]))) {
      ctx.refuse(who + ": its " + (leaf == std::string("cwd") ? "working" : "root") +
                 " directory is " + *path + ", a task's directory in /proc, which cannot be made "
                 "again for the restored tree");
      continue;
    }
    if (fds::strip_deleted(*path) || there.st_nlink == 0) {
      rec.flags |= deleted_flag;
      continue;
    }
    if (::stat(path->c_str(), &now) != 0 || now.st_dev != there.st_dev || now.st_ino != there.st_ino)
      ctx.refuse(who + ": its " + leaf + " directory " + *path + " is no longer reachable by that "
                 "path (a /proc directory of a process that has exited?)");
  }
  rec.start_code = stat.start_code, rec.end_code = stat.end_code;
  rec.start_data = stat.start_data, rec.end_data = stat.end_data;
  rec.start_brk = stat.start_brk, rec.start_stack = stat.start_stack;
  rec.arg_start = stat.arg_start, rec.arg_end = stat.arg_end;
  rec.env_start = stat.env_start, rec.env_end = stat.env_end;
  std::string auxv = fs::read_file(proc::path(pid, "auxv"));
  rec.auxv.resize(auxv.size() / 8);
  std::memcpy(rec.auxv.data(), auxv.data(), rec.auxv.size() * 8);
  rec.mem_owner = process_owner(rec.pid);
  rec.rlimits = read_rlimits(pid);
  rec.oom_score_adj = std::stoi(fs::read_file(proc::path(pid, "oom_score_adj")));
  rec.coredump_filter =
      static_cast<uint32_t>(std::stoul(fs::read_file(proc::path(pid, "coredump_filter")), nullptr, 16));
  {
    std::string group;  // "/autogroup-25 nice 0"
    if (fs::read_file_if_exists(proc::path(pid, "autogroup"), group) && group.find(" nice ") != std::string::npos)
      rec.autogroup_nice = std::stoi(group.substr(group.find(" nice ") + 6));
  }
  // A controlling terminal: a pseudo-terminal pair of the tree or one outside it (a shell's
  // job, only with --shell-job), decided once every descriptor is known (fds/pty.cpp).
  rec.tty = static_cast<uint32_t>(stat.tty_nr);
  rec.tty_fg = stat.tty_nr != 0 && stat.tpgid == stat.pgrp ? 1 : 0;
  {
    std::string login;
    if (fs::read_file_if_exists(proc::path(pid, "loginuid"), login))
      rec.loginuid = static_cast<uint32_t>(std::stoul(login));
  }

  // Per thread: what ptrace reads directly, before any injection touches the registers.
  std::vector<schema::ThreadRecord> threads;
  for (pid_t tid : p.threads) {
    schema::ThreadRecord t;
    t.pid = rec.pid;
    t.tid = ctx.recorded(tid);
    user_regs_struct regs = ptrace::get_regs(tid);
    t.restart = rewind_syscall(regs);
    t.regs = regs_to_array(regs);
    t.xstate = ptrace::get_xstate(tid);
    t.sigmask = ptrace::get_sigmask(tid);
    auto rseq = ptrace::get_rseq(tid);
    t.rseq_ptr = rseq.ptr, t.rseq_len = rseq.len, t.rseq_sig = rseq.sig;
    t.comm = proc::comm(pid, tid);
    {
      uint64_t head = 0;
      size_t len = 0;
      if (::syscall(SYS_get_robust_list, tid, &head, &len) != 0)
        throw_errno("get_robust_list of thread " + std::to_string(tid), errno, Errc::kernel);
      t.robust_list = head;
      t.robust_len = len;
    }
    if (regs.cs != 0x33)
      ctx.refuse(who + ": thread " + std::to_string(tid) + " runs 32-bit code (cs " +
                 std::to_string(regs.cs) + "); only 64-bit tasks are supported");
    {
      struct {
        uint64_t mode, offset, len;
        uint64_t selector;
      } sud{};
      if (::ptrace(static_cast<__ptrace_request>(kPtraceGetSyscallUserDispatch), tid,
                   reinterpret_cast<void*>(sizeof sud), &sud) == 0 && sud.mode != 0)
        ctx.refuse(who + ": thread " + std::to_string(tid) + " uses syscall user dispatch; not "
                   "supported");
    }
    if (tid != pid) {
      std::string key = differing_credentials(st, proc::status(pid, tid));
      if (!key.empty())
        ctx.refuse(who + ": thread " + std::to_string(tid) + " has other credentials (" + key +
                   ") than the main thread; crest restores one set per process");
    }
    dump_sched(ctx, tid, t);
    dump_seccomp(ctx, tid, t);
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

  // What only the task itself can tell: ask it by injected syscalls into a scratch page. Under
  // seccomp, only if crest can keep the filters out of its calls (PTRACE_O_SUSPEND_SECCOMP):
  // otherwise a call the filter forbids would kill the task. Refused then, never injected into.
  for (auto& t : threads)
    if (t.seccomp_mode != 0 && !ptrace::can_suspend_seccomp()) {
      ctx.refuse(who + " runs under seccomp, and this crest (without CAP_SYS_ADMIN) cannot keep "
                 "the filters out of the system calls it would make in it");
      for (auto& th : threads) ctx.meta.threads.push_back(std::move(th));
      ctx.meta.processes.push_back(std::move(rec));
      return;
    }
  const uint64_t insn = ctx.syscall_insn.at(pid);
  {
    Injector inj(pid, insn);
    // Scratch a crest that died here before left behind is not the job's: it goes first.
    std::vector<uint64_t> rips;
    for (auto& t : threads) rips.push_back(array_to_regs(t.regs).rip);
    drop_stale_scratch(inj, pid, rips);
    // With a return slot per thread: should crest die mid-call, each thread puts itself back.
    RemoteScratch scratch(inj, 4096, 0, p.threads.size());
    fault_point("scratch-mapped");
    rec.mlock_future = probe_mlock_future(pid, scratch);
    rec.brk = inj.call("brk(0)", SYS_brk, 0);

    // Every disposition, with its flags and mask even when the handler is the default one:
    // each written to its own slot of a scratch page, all read back at once.
    {
      RemoteScratch actions(inj, 64 * sizeof(KernelSigaction));
      for (int sig = 1; sig <= 64; ++sig) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        inj.call("rt_sigaction", SYS_rt_sigaction, static_cast<uint64_t>(sig), 0,
                 actions.addr() + (sig - 1) * sizeof(KernelSigaction), 8);
      }
      KernelSigaction all[64]{};
      actions.get(all, sizeof all);
      for (int sig = 1; sig <= 64; ++sig) {
        const auto& ksa = all[sig - 1];
        if (sig == SIGKILL || sig == SIGSTOP ||
            (ksa.handler == 0 && ksa.flags == 0 && ksa.restorer == 0 && ksa.mask == 0))
          continue;
        ctx.meta.sigactions.push_back({rec.pid, sig, ksa.handler, ksa.flags, ksa.restorer, ksa.mask});
      }
    }
    int value = 0;
    inj.call("prctl(PR_GET_PDEATHSIG)", SYS_prctl, PR_GET_PDEATHSIG, scratch.addr());
    scratch.get(&value, sizeof value);
    rec.pdeath_signal = value;
    inj.call("prctl(PR_GET_CHILD_SUBREAPER)", SYS_prctl, PR_GET_CHILD_SUBREAPER, scratch.addr());
    scratch.get(&value, sizeof value);
    if (value) rec.flags |= schema::kProcessSubreaper;
    switch (inj.call("prctl(PR_GET_DUMPABLE)", SYS_prctl, PR_GET_DUMPABLE)) {
      case 0:
        rec.flags |= schema::kProcessDumpableOff;
        break;
      case 1:
        break;
      default:  // SUID_DUMP_ROOT: only the kernel sets it (fs.suid_dumpable), prctl cannot
        rec.flags |= schema::kProcessDumpableSuid;
        ctx.refuse(who + " is dumpable only by root (fs.suid_dumpable=2 after a credential "
                   "change); prctl cannot set that again");
    }
    rec.thp_disable = static_cast<uint32_t>(
        inj.call("prctl(PR_GET_THP_DISABLE)", SYS_prctl, PR_GET_THP_DISABLE, 0, 0, 0, 0));
    long merge = inj.raw(SYS_prctl, PR_GET_MEMORY_MERGE, 0, 0, 0, 0);
    rec.memory_merge = merge > 0 ? static_cast<uint32_t>(merge) : 0;
    long mdwe = inj.raw(SYS_prctl, PR_GET_MDWE, 0, 0, 0, 0);
    rec.mdwe = mdwe > 0 ? static_cast<uint32_t>(mdwe) : 0;
    long barriers = inj.raw(SYS_membarrier, kMembarrierGetRegistrations, 0, 0);
    if (barriers >= 0)
      rec.membarrier = static_cast<uint32_t>(barriers);
    else
      ctx.warnings.push_back(who + ": this kernel cannot say whether it registered for "
                             "membarrier() (Linux 6.3 can); a restore would not register it");
    for (int which = ITIMER_REAL; which <= ITIMER_PROF; ++which) {
      itimerval it{};
      inj.call("getitimer", SYS_getitimer, static_cast<uint64_t>(which), scratch.addr());
      scratch.get(&it, sizeof it);
      for (long v : {it.it_interval.tv_sec, it.it_interval.tv_usec, it.it_value.tv_sec,
                     it.it_value.tv_usec})
        rec.itimers.push_back(static_cast<uint64_t>(v));
    }
    dump_credentials(ctx, p, rec, inj, scratch.addr());
    dump_timers(ctx, p, inj, scratch.addr());
    // A local descriptor table (modify_ldt: 16-bit code, Wine) lives in the mm; crest does not
    // save it. Its size is what reading it returns.
    if (inj.raw(SYS_modify_ldt, 0, scratch.addr(), 8) > 0)
      ctx.refuse(who + " has a local descriptor table (modify_ldt); not supported");
    uint64_t xcomp = 0;  // dynamically enabled xstate features (AMX tiles): not kept
    if (inj.raw(SYS_arch_prctl, kArchGetXcompPerm, scratch.addr() + 128) == 0) {
      scratch.get(&xcomp, sizeof xcomp, 128);
      if (xcomp & (1ull << 18))
        ctx.refuse(who + " was granted AMX tile state (ARCH_REQ_XCOMP_PERM); not supported yet");
    }
    long slots = inj.raw(SYS_prctl, kPrFutexHash, kPrFutexHashGetSlots, 0, 0, 0);
    rec.futex_slots = slots > 0 ? static_cast<uint32_t>(slots) : 0;

    // Per-thread state that only the thread itself can report, through the same scratch page.
    for (size_t i = 0; i < p.threads.size(); ++i) {
      std::unique_ptr<Injector> other;
      Injector* ti = &inj;
      if (i > 0) {
        other = std::make_unique<Injector>(p.threads[i], insn);
        if (const uint64_t slot = scratch.return_slot(i)) other->use_return_slot(slot);
        ti = other.get();
      }
      auto& t = threads[i];
      stack_t ss{};
      ti->call("sigaltstack", SYS_sigaltstack, 0, scratch.addr());
      scratch.get(&ss, sizeof ss);
      t.altstack_sp = reinterpret_cast<uint64_t>(ss.ss_sp);
      t.altstack_size = ss.ss_size;
      t.altstack_flags = ss.ss_flags;
      uint64_t clear_tid = 0;
      ti->call("prctl(PR_GET_TID_ADDRESS)", SYS_prctl, PR_GET_TID_ADDRESS, scratch.addr() + 64);
      scratch.get(&clear_tid, sizeof clear_tid, 64);
      t.clear_tid = clear_tid;
      t.timerslack_ns = ti->call("prctl(PR_GET_TIMERSLACK)", SYS_prctl, PR_GET_TIMERSLACK, 0, 0, 0, 0);
      t.no_new_privs = static_cast<uint32_t>(
          ti->call("prctl(PR_GET_NO_NEW_PRIVS)", SYS_prctl, PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
      int tsc = 0;
      if (ti->raw(SYS_prctl, PR_GET_TSC, scratch.addr() + 128) == 0) {
        scratch.get(&tsc, sizeof tsc, 128);
        t.tsc = static_cast<uint32_t>(tsc);
      }
      t.mce_kill = static_cast<int32_t>(ti->raw(SYS_prctl, PR_MCE_KILL_GET, 0, 0, 0, 0));
      t.io_flusher = ti->raw(SYS_prctl, PR_GET_IO_FLUSHER, 0, 0, 0, 0) > 0 ? 1 : 0;
      auto spec = [&](uint64_t which) {
        return static_cast<int32_t>(ti->raw(SYS_prctl, PR_GET_SPECULATION_CTRL, which, 0, 0, 0));
      };
      t.spec_store_bypass = spec(PR_SPEC_STORE_BYPASS);
      t.spec_indirect_branch = spec(PR_SPEC_INDIRECT_BRANCH);
      t.spec_l1d_flush = spec(PR_SPEC_L1D_FLUSH);
      dump_thread_mempolicy(*ti, pid, scratch.addr(), t);
      t.cpuid_faulting = ti->raw(SYS_arch_prctl, kArchGetCpuid, 0) == 0 ? 1 : 0;
      const std::string thread = who + ": thread " + std::to_string(p.threads[i]);
      // x86 state crest does not give back, refused by name when a thread uses it.
      uint64_t status = 0;
      if (ti->raw(SYS_arch_prctl, kArchShstkStatus, scratch.addr() + 128) == 0) {
        scratch.get(&status, sizeof status, 128);
        if (status != 0) ctx.refuse(thread + " uses shadow stacks (CET); not supported yet");
      }
      uint64_t untag = ~0ull;
      if (ti->raw(SYS_arch_prctl, kArchGetUntagMask, scratch.addr() + 128) == 0) {
        scratch.get(&untag, sizeof untag, 128);
        if (untag != ~0ull) ctx.refuse(thread + " uses linear address masking (LAM); not supported");
      }
      uint64_t cookie = 0;
      if (ti->raw(SYS_prctl, PR_SCHED_CORE, PR_SCHED_CORE_GET, 0, 0 /* PIDTYPE_PID */,
                  scratch.addr() + 128) == 0) {
        scratch.get(&cookie, sizeof cookie, 128);
        if (cookie != 0) ctx.refuse(thread + " has a core-scheduling cookie (PR_SCHED_CORE); not supported");
      }
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
  const std::string who = "thread " + std::to_string(t.tid);
  if (t.rseq_ptr)
    inj.call("rseq register", SYS_rseq, t.rseq_ptr, t.rseq_len, 0, t.rseq_sig);
  // Set either way: a process made by fork inherits the alternate stack of the thread that
  // forked it -- the restorer's own (ASan gives crest's threads one) -- which must not outlive
  // the restore in a thread that had none: its handlers with SA_ONSTACK would run on memory
  // that is gone (python3, whose handlers all have SA_ONSTACK, died of SIGSEGV at its first).
  stack_t ss{};
  if (t.altstack_flags & SS_DISABLE) {
    ss.ss_flags = SS_DISABLE;
  } else {
    ss.ss_sp = reinterpret_cast<void*>(t.altstack_sp);
    ss.ss_size = t.altstack_size;
    ss.ss_flags = t.altstack_flags & ~SS_ONSTACK;
  }
  inj.call("sigaltstack", SYS_sigaltstack, ctx.put(p, &ss, sizeof ss, 3072), 0);
  inj.call("set_tid_address", SYS_set_tid_address, t.clear_tid);
  inj.call("set_robust_list", SYS_set_robust_list, t.robust_list, t.robust_len);
  inj.call("prctl(PR_SET_NAME)", SYS_prctl, PR_SET_NAME, ctx.put_string(p, t.comm.substr(0, 15), 3072));
  restore_thread_mempolicy(ctx, p, inj, t);
  if (t.cpuid_faulting) inj.call("arch_prctl(ARCH_SET_CPUID)", SYS_arch_prctl, kArchSetCpuid, 0);
  // Timer slack before the policy (sched.cpp): real-time threads have none, whatever is set.
  if (t.timerslack_ns)
    inj.call("prctl(PR_SET_TIMERSLACK)", SYS_prctl, PR_SET_TIMERSLACK, t.timerslack_ns, 0, 0, 0);
  if (t.tsc)
    inj.call("prctl(PR_SET_TSC)", SYS_prctl, PR_SET_TSC, t.tsc, 0, 0, 0);
  if (t.mce_kill >= 0) {
    if (t.mce_kill == PR_MCE_KILL_DEFAULT)
      inj.call("prctl(PR_MCE_KILL)", SYS_prctl, PR_MCE_KILL, PR_MCE_KILL_CLEAR, 0, 0, 0);
    else
      inj.call("prctl(PR_MCE_KILL)", SYS_prctl, PR_MCE_KILL, PR_MCE_KILL_SET,
               static_cast<uint64_t>(t.mce_kill), 0, 0);
  }
  if (t.io_flusher) {
    long r = inj.raw(SYS_prctl, PR_SET_IO_FLUSHER, 1, 0, 0, 0);
    if (r < 0)
      throw Error(Errc::refused, who + " was an I/O flusher (PR_SET_IO_FLUSHER), which needs "
                                 "CAP_SYS_RESOURCE; this crest lacks it", static_cast<int>(-r));
  }
  // Speculation controls the kernel lets a task change, set to what they were when they differ
  // from what the new thread has.
  const std::pair<uint64_t, int32_t> specs[] = {{PR_SPEC_STORE_BYPASS, t.spec_store_bypass},
                                                {PR_SPEC_INDIRECT_BRANCH, t.spec_indirect_branch},
                                                {PR_SPEC_L1D_FLUSH, t.spec_l1d_flush}};
  for (auto [which, want] : specs) {
    if (want < 0 || !(want & PR_SPEC_PRCTL)) continue;
    long now = inj.raw(SYS_prctl, PR_GET_SPECULATION_CTRL, which, 0, 0, 0);
    if (now == want) continue;
    const int mode = want & ~PR_SPEC_PRCTL;
    inj.call("prctl(PR_SET_SPECULATION_CTRL)", SYS_prctl, PR_SET_SPECULATION_CTRL, which,
             static_cast<uint64_t>(mode), 0, 0);
  }
}

// Enters (cd or chroot) a directory of the process that may have been removed: made again for
// the moment, entered, removed again.
void enter_directory(RestoreContext& ctx, RestoredProcess& p, long nr, const char* what,
                     const std::string& path, bool deleted, uint32_t mode, uint32_t uid, uint32_t gid) {
  std::unique_ptr<fds::Recreated> again;
  if (deleted) {
    schema::FileRecord f;
    f.path = path;
    f.mode = mode ? mode : (S_IFDIR | 0755);
    f.uid = uid;
    f.gid = gid;
    again = std::make_unique<fds::Recreated>(f, what);
  }
  p.inj->call(what, nr, ctx.put_string(p, again ? again->path() : path, 3072));
}

}  // namespace

void restore_process_state(RestoreContext& ctx, RestoredProcess& p) {
  Injector& inj = *p.inj;
  const auto& r = *p.rec;
  const std::string who = "process " + std::to_string(r.pid);

  // Session and group. The process was created in the session it belongs to (by its parent,
  // or by a process of that session: see core/restore.cpp); it makes a session or group it
  // leads anew and joins a group of its session, whose leader or another member exists by now.
  if (r.sid == r.pid) {
    inj.call("setsid", SYS_setsid);
    // The slave of its pair as controlling terminal, before it makes children that inherit it.
    fds::acquire_controlling_tty(ctx, p);
  }
  // A shell's job (--shell-job) lives in the restorer's session, whatever its number was.
  if (!(r.flags & schema::kProcessRoot) && r.tty == 0) {
    long sid = inj.raw(SYS_getsid, 0);
    // The launcher's session (its leader outside the tree; the root is in it too): the
    // restorer's with launcher_session, which reads 0 inside a fresh pid namespace.
    bool outside = false;
    for (auto& q : ctx.meta.processes)  // (the root: the first row, as the tree is walked)
      if (q.flags & schema::kProcessRoot) {
        outside = q.sid == r.sid && q.sid != q.pid;
        break;
      }
    if (!ctx.rows_of(ctx.meta.processes, r.sid).empty()) outside = false;
    const long restorers = ctx.opts.pid_namespace ? 0 : ::getsid(0);
    if (sid != r.sid && !(outside && ctx.opts.launcher_session && sid == restorers)) {
      if (outside && !ctx.opts.launcher_session)
        fail(Errc::unsupported, who + " is in session " + std::to_string(r.sid) + ", whose "
                                "leader was outside the tree (the job's launcher); restore it "
                                "with --launcher-session to place it in the restorer's session");
      fail(Errc::internal, who + " was made in session " + std::to_string(sid) + ", not " +
                               std::to_string(r.sid) +
                               (outside ? " (nor the restorer's, " + std::to_string(restorers) +
                                              ", for the launcher's session)"
                                        : std::string()));
    }
  }
  if (r.pgid == r.pid && r.sid != r.pid) {
    inj.call("setpgid", SYS_setpgid, 0, 0);
  } else if (!(r.flags & schema::kProcessRoot) && inj.raw(SYS_getpgid, 0) != r.pgid) {
    long rc = inj.raw(SYS_setpgid, 0, static_cast<uint64_t>(r.pgid));
    if (rc < 0)
      throw Error(Errc::internal, who + " cannot join process group " + std::to_string(r.pgid),
                  static_cast<int>(-rc));
  }

  if (!(r.flags & schema::kProcessSharesFs)) {
    // A process sharing its parent's cwd, root and umask (CLONE_FS) has them already.
    inj.call("umask", SYS_umask, r.umask);
    enter_directory(ctx, p, SYS_chdir, "chdir", r.cwd, r.flags & schema::kProcessCwdDeleted,
                    r.cwd_mode, r.cwd_uid, r.cwd_gid);
    if (r.root != "/" && r.root == r.cwd && (r.flags & schema::kProcessRootDeleted))
      inj.call("chroot", SYS_chroot, ctx.put_string(p, ".", 3072));  // the one directory, removed
    else if (r.root != "/")
      enter_directory(ctx, p, SYS_chroot, "chroot", r.root, r.flags & schema::kProcessRootDeleted,
                      r.root_mode, r.root_uid, r.root_gid);
  }
  inj.call("personality", SYS_personality, r.personality);

  // Every disposition: a forked child or a clone of crest starts with someone else's.
  std::map<int, const schema::SigactionRecord*> actions;
  for (auto* sa : ctx.rows_of(ctx.meta.sigactions, r.pid)) actions[sa->signo] = sa;
  // In one batch, each call's structure in its own place among the batch's arguments; SIGTRAP
  // alone after it: the int3 that ends a batch, were SIGTRAP ignored by then, would have the
  // kernel reset it to SIG_DFL.
  {
    std::array<KernelSigaction, 64> all{};
    static_assert(sizeof all <= kScratchBatchArgsSize);
    for (auto& [sig, sa] : actions)
      if (sig >= 1 && sig <= 64) all[static_cast<size_t>(sig - 1)] = {sa->handler, sa->flags, sa->restorer, sa->mask};
    const uint64_t at = ctx.put(p, all.data(), sizeof all, kScratchBatchArgs);
    SyscallBatch batch = batch_in(p);
    for (int sig = 1; sig <= 64; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP || sig == SIGTRAP) continue;
      batch.add("rt_sigaction", SYS_rt_sigaction, static_cast<uint64_t>(sig),
                at + static_cast<uint64_t>(sig - 1) * sizeof(KernelSigaction), 0, 8);
    }
    batch.flush();
    inj.call("rt_sigaction", SYS_rt_sigaction, SIGTRAP,
             at + static_cast<uint64_t>(SIGTRAP - 1) * sizeof(KernelSigaction), 0, 8);
  }

  if (r.flags & schema::kProcessSubreaper)
    inj.call("prctl(PR_SET_CHILD_SUBREAPER)", SYS_prctl, PR_SET_CHILD_SUBREAPER, 1);
  // Always: the root was made with SIGKILL at crest's death (clone_root), which goes now.
  inj.call("prctl(PR_SET_PDEATHSIG)", SYS_prctl, PR_SET_PDEATHSIG,
           static_cast<uint64_t>(r.pdeath_signal));
  // Flags of the address space.
  inj.call("prctl(PR_SET_THP_DISABLE)", SYS_prctl, PR_SET_THP_DISABLE, r.thp_disable ? 1 : 0, 0, 0, 0);
  if (r.memory_merge)
    inj.call("prctl(PR_SET_MEMORY_MERGE)", SYS_prctl, PR_SET_MEMORY_MERGE, 1, 0, 0, 0);

  // What the kernel keeps in /proc files, written from here as root.
  auto write_proc = [&](const char* leaf, const std::string& value) {
    const std::string path = proc::path(p.pid, leaf);
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd || ::write(fd.get(), value.data(), value.size()) != static_cast<ssize_t>(value.size()))
      throw_errno(who + ": cannot write " + value + " to " + path, errno, Errc::kernel);
  };
  write_proc("oom_score_adj", std::to_string(r.oom_score_adj));
  {
    char filter[16];
    std::snprintf(filter, sizeof filter, "0x%x", r.coredump_filter);  // the kernel reads base 0
    write_proc("coredump_filter", filter);
  }
  if (r.sid == r.pid && r.autogroup_nice != 0)  // its session's group is its own, made by setsid
    write_proc("autogroup", std::to_string(r.autogroup_nice));
  if (r.futex_slots)
    inj.call("prctl(PR_FUTEX_HASH_SET_SLOTS)", SYS_prctl, kPrFutexHash, kPrFutexHashSetSlots,
             r.futex_slots, 0, 0);
  // A task may only set its own loginuid.
  std::string login;
  if (fs::read_file_if_exists(proc::path(p.pid, "loginuid"), login) &&
      static_cast<uint32_t>(std::stoul(login)) != r.loginuid) {
    const uint64_t path = ctx.put_string(p, "/proc/self/loginuid", 3072);
    const std::string value = std::to_string(r.loginuid);
    const uint64_t text = ctx.put_string(p, value, 3200);
    long fd = inj.call("open /proc/self/loginuid", SYS_openat, static_cast<uint64_t>(AT_FDCWD), path,
                       O_WRONLY | O_CLOEXEC);
    long n = inj.raw(SYS_write, static_cast<uint64_t>(fd), text, value.size());
    inj.call("close", SYS_close, static_cast<uint64_t>(fd));
    if (n != static_cast<long>(value.size()))
      throw Error(Errc::refused, who + ": cannot give back its audit loginuid " + value,
                  n < 0 ? static_cast<int>(-n) : EIO);
  }
}

void restore_threads(RestoreContext& ctx, RestoredProcess& p) {
  const auto& r = *p.rec;
  std::vector<const schema::ThreadRecord*> recs;
  const schema::ThreadRecord* main = nullptr;
  for (auto* t : ctx.rows_of(ctx.meta.threads, r.pid)) {
    if (t->tid == r.pid)
      main = t;
    else
      recs.push_back(t);
  }
  if (!main) fail(Errc::corrupt, "process " + std::to_string(r.pid) + " has no main thread record");
  p.thread_recs = {main};
  restore_thread_self(ctx, p, *p.inj, *main);
  std::vector<const schema::ThreadRecord*> all = recs;
  all.insert(all.begin(), main);
  restore_seccomp_shared(ctx, p, all);

  constexpr uint64_t kThreadFlags =
      CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
  for (auto* t : recs) {
    pid_t host = 0;
    for (int attempt = 0;; ++attempt) {
      long rc;
      const char* call = "clone3";
      if (!kernel::use_last_pid()) {
        pid_t tid[1] = {t->tid};
        CloneArgs args{};
        args.flags = kThreadFlags;
        args.stack = p.scratch + p.scratch_size - 4096;
        args.stack_size = 2048;
        args.set_tid = ctx.put(p, tid, sizeof tid, 256);
        args.set_tid_size = 1;
        rc = p.inj->raw(SYS_clone3, ctx.put(p, &args, sizeof args, 128), sizeof args);
      } else {
        // Without set_tid: ns_last_pid aimed at the tid, then clone() (core/kernel/last_pid.h).
        if (attempt == kernel::kLastPidTries) kernel::refuse_taken_pid(t->tid, pid_namespace_name(ctx));
        kernel::wait_before_retry(attempt);
        call = "clone";
        std::optional<kernel::LastPidLock> lock;
        if (!ctx.opts.pid_namespace) lock.emplace();
        aim_next_pid(ctx, p, *p.inj, t->tid);
        rc = p.inj->raw(SYS_clone, kThreadFlags, p.scratch + p.scratch_size - 4096 + 2048, 0, 0, 0);
      }
      if (rc < 0)
        throw Error(Errc::kernel, std::string(call) + " of thread " + std::to_string(t->tid),
                    static_cast<int>(-rc));
      host = p.inj->last_event_child();
      if (host <= 0) fail(Errc::kernel, "no clone event for thread " + std::to_string(t->tid));
      int st = ptrace::wait_report(host);
      if (!WIFSTOPPED(st))
        fail(Errc::kernel, "new thread " + std::to_string(t->tid) + ": " + ptrace::describe_status(st));
      if (!kernel::use_last_pid() || rc == t->tid) break;
      log::get("core.restore")->debug("thread {}: the clone made thread {} instead", t->tid, rc);
      // At another tid (a process took this one meanwhile): the thread ends itself, exit(0),
      // at the scratch page's syscall instruction, and is tried again.
      auto regs = ptrace::get_regs(host);
      regs.rip = p.scratch;
      regs.rax = SYS_exit;
      regs.rdi = 0;
      regs.orig_rax = static_cast<uint64_t>(-1);
      ptrace::set_regs(host, regs);
      ::ptrace(PTRACE_CONT, host, nullptr, nullptr);
      for (;;) {
        st = ptrace::wait_report(host);
        if (WIFEXITED(st) || WIFSIGNALED(st)) break;
        ::ptrace(PTRACE_CONT, host, nullptr, nullptr);
      }
    }
    p.threads.push_back(host);
    p.thread_recs.push_back(t);
    Injector inj(host, p.scratch, Injector::Guard::none);
    inj.forget_saved_state();  // its registers are set from the image at release
    restore_thread_self(ctx, p, inj, *t);
  }
}

// What a fork would pass on to children that did not have it: set once the children exist.
void finish_process(RestoreContext& ctx, RestoredProcess& p) {
  const auto& r = *p.rec;
  const std::string who = "process " + std::to_string(r.pid);
  // Limits, once its children exist (a child may have higher limits than its parent, which it
  // could not raise again if forked after them): lowering is always allowed; raising a hard
  // limit above the restorer's own needs CAP_SYS_RESOURCE, and a limit that cannot be given back
  // fails the restore.
  static const char* const kLimitNames[] = {"CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS",
                                            "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS",
                                            "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME"};
  for (size_t i = 0; i + 1 < r.rlimits.size(); i += 2) {
    rlimit64 lim{r.rlimits[i], r.rlimits[i + 1]};
    long rc = p.inj->raw(SYS_prlimit64, 0, i / 2, ctx.put(p, &lim, sizeof lim, 3072), 0);
    if (rc < 0)
      throw Error(Errc::refused,
                  who + ": cannot give back its RLIMIT_" +
                      (i / 2 < 16 ? kLimitNames[i / 2] : std::to_string(i / 2).c_str()) + " (" +
                      std::to_string(lim.rlim_cur) + "/" + std::to_string(lim.rlim_max) +
                      "): above this restorer's own hard limit, and it lacks CAP_SYS_RESOURCE",
                  static_cast<int>(-rc));
  }

  for (int bit = 0; bit < 31; ++bit)
    if (r.membarrier & (1u << bit))
      p.inj->call("membarrier (register)", SYS_membarrier, 1u << bit, 0, 0);
}

void release_process(RestoreContext& ctx, RestoredProcess& p) {
  Injector& inj = *p.inj;
  const auto& r = *p.rec;
  // Signals the restore itself raised (a zombie's or a helper's SIGCHLD, a lease break's SIGIO)
  // are taken out of every queue, so that exactly the signals pending at the checkpoint are
  // queued again; every signal is blocked in every thread until the registers below are set,
  // so none is delivered early.
  uint64_t all = ~0ull;
  const uint64_t mask = ctx.put(p, &all, sizeof all, 2048);
  const timespec zero{0, 0};
  const uint64_t timeout = ctx.put(p, &zero, sizeof zero, 2064);
  std::vector<std::unique_ptr<Injector>> others;
  auto thread = [&](size_t i) -> Injector& {
    if (i == 0) return inj;
    while (others.size() < i) others.emplace_back();
    if (!others[i - 1]) {
      others[i - 1] = std::make_unique<Injector>(p.threads[i], p.scratch, Injector::Guard::none);
      others[i - 1]->forget_saved_state();
    }
    return *others[i - 1];
  };
  for (size_t i = 0; i < p.threads.size(); ++i)
    for (int n = 0; thread(i).raw(SYS_rt_sigtimedwait, mask, p.scratch + 3072, timeout, 8) > 0; ++n)
      if (n > 4096) fail(Errc::kernel, "process " + std::to_string(r.pid) + ": signals keep coming");
  // A signal is queued again by the thread it was for (the kernel lets only a thread itself
  // queue a tgkill()- or kill()-like siginfo); the process-wide ones by the main thread.
  for (auto* sp : ctx.rows_of(ctx.meta.signals, r.pid)) {
    const schema::SignalRecord& s = *sp;
    if (s.siginfo.size() < sizeof(siginfo_t)) continue;
    size_t i = 0;
    while (s.tid != 0 && i < p.threads.size() && p.thread_recs[i]->tid != s.tid) ++i;
    if (i == p.threads.size())
      fail(Errc::corrupt, "a signal for thread " + std::to_string(s.tid) + ", which is not restored");
    siginfo_t si;
    std::memcpy(&si, s.siginfo.data(), sizeof si);
    uint64_t addr = ctx.put(p, &si, sizeof si, 3072);
    if (s.tid == 0)
      thread(i).call("rt_sigqueueinfo", SYS_rt_sigqueueinfo, static_cast<uint64_t>(r.pid),
                     static_cast<uint64_t>(si.si_signo), addr);
    else
      thread(i).call("rt_tgsigqueueinfo", SYS_rt_tgsigqueueinfo, static_cast<uint64_t>(r.pid),
                     static_cast<uint64_t>(s.tid), static_cast<uint64_t>(si.si_signo), addr);
  }
  arm_timers(ctx, p);
  // The restorer's pidfd lives in the fd table: a process sharing its parent's leaves it to it.
  if (!(r.flags & schema::kProcessSharesFiles))
    inj.call("close (restorer pidfd)", SYS_close, static_cast<uint64_t>(p.tracer_pidfd_remote));
  finish_memory(ctx, p);
  // The scratch page holds the syscall instruction we use: unmap it from the vdso's.
  inj.set_syscall_insn(find_syscall_insn(p.pid));
  inj.call("munmap (scratch)", SYS_munmap, p.scratch, p.scratch_size);
  // Memory-deny-write-execute last: it would have refused crest's scratch page.
  if (r.mdwe) inj.call("prctl(PR_SET_MDWE)", SYS_prctl, PR_SET_MDWE, r.mdwe, 0, 0, 0);
  inj.forget_saved_state();
  for (size_t i = 0; i < p.threads.size(); ++i) {
    const auto& t = *p.thread_recs[i];
    ptrace::set_regs(p.threads[i], array_to_regs(t.regs));
    ptrace::set_xstate(p.threads[i], t.xstate);
    ptrace::set_sigmask(p.threads[i], t.sigmask);
  }
}

// A thread the checkpoint caught inside an interruptible syscall (pause, read, sigsuspend...) has
// its registers rewound to the `syscall` instruction. Released like that, a signal that arrives
// before it executes the instruction runs its handler first and the call is then made again: a
// pause() that should have returned EINTR after the handler sleeps on forever. So before the
// tree runs, each such thread is stepped to the entry of the call (PTRACE_SYSCALL): from there
// it is inside the kernel again, as it was when it was caught. If a signal comes first (the
// tracer sees its delivery stop instead), the registers are put back in their interrupted form
// (after the instruction, rax the -ERESTART* code, orig_rax the call) and the thread is detached
// with that signal: the kernel then decides EINTR or restart exactly as it would have.
// ERESTART_RESTARTBLOCK's restart block is gone; -ERESTARTNOHAND has its signal rules (EINTR
// after a handler) and restarts the original call without one, as the rewind does.
void enter_syscalls(RestoredProcess& p) {
  p.detach_signals.assign(p.threads.size(), 0);
  for (size_t i = 0; i < p.threads.size(); ++i) {
    const auto& t = *p.thread_recs[i];
    if (t.restart == 0) continue;
    const pid_t tid = p.threads[i];
    const std::string who = "thread " + std::to_string(t.tid) + " of process " + std::to_string(t.pid);
    if (::ptrace(PTRACE_SYSCALL, tid, nullptr, nullptr) != 0)
      throw_errno("PTRACE_SYSCALL of " + who + " into its interrupted call", errno, Errc::kernel);
    const int st = ptrace::wait_report(tid);
    log::get("core.restore")->debug("{}: stepped into its interrupted call: {}", who, ptrace::describe_status(st));
    if (!WIFSTOPPED(st))
      fail(Errc::kernel, who + " " + ptrace::describe_status(st) + " before its interrupted call");
    if (WSTOPSIG(st) == (SIGTRAP | 0x80)) continue;  // at the call's entry: detach lets it run
    if ((st >> 16) != 0)
      fail(Errc::kernel, who + " " + ptrace::describe_status(st) + " before its interrupted call");
    user_regs_struct r = array_to_regs(t.regs);
    r.orig_rax = r.rax;
    r.rip += 2;
    r.rax = static_cast<uint64_t>(t.restart == kErestartRestartBlock ? kErestartNoHand : t.restart);
    ptrace::set_regs(tid, r);
    p.detach_signals[i] = WSTOPSIG(st);
  }
}

void detach_threads(RestoredProcess& p) {
  for (size_t i = 0; i < p.threads.size(); ++i) {
    const int sig = i < p.detach_signals.size() ? p.detach_signals[i] : 0;
    ::ptrace(PTRACE_DETACH, p.threads[i], nullptr, reinterpret_cast<void*>(static_cast<long>(sig)));
  }
}

}  // namespace crest
