#include "core/inject.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "core/kernel/compat.h"
#include "core/proc.h"
#include "core/ptrace.h"
#include "core/util/error.h"
#include "core/util/log.h"
#include "core/util/unique_fd.h"

namespace crest {

uint64_t vdso_syscall_offset() {
  static const uint64_t offset = [] {
    auto base = static_cast<uint64_t>(::getauxval(AT_SYSINFO_EHDR));
    if (base == 0) fail(Errc::kernel, "this process has no [vdso]; syscall injection needs one");
    for (const auto& m : proc::maps(::getpid())) {
      if (m.name != "[vdso]") continue;
      auto* p = reinterpret_cast<const unsigned char*>(m.start);
      for (uint64_t i = 0; i + 1 < m.end - m.start; ++i)
        if (p[i] == 0x0f && p[i + 1] == 0x05) return i;
    }
    fail(Errc::kernel, "no syscall instruction found in [vdso]");
  }();
  return offset;
}

uint64_t find_syscall_insn(pid_t pid) {
  for (const auto& m : proc::maps(pid))
    if (m.name == "[vdso]") return m.start + vdso_syscall_offset();
  fail(Errc::unsupported, "process " + std::to_string(pid) + " has no [vdso] mapping");
}

Injector::Injector(pid_t tid, uint64_t syscall_insn) : tid_(tid), insn_(syscall_insn) {
  saved_ = ptrace::get_regs(tid);
  saved_mask_ = ptrace::get_sigmask(tid);
  ptrace::set_sigmask(tid, ~0ull);
}

Injector::~Injector() {
  if (!restore_on_exit_) return;
  try {
    ptrace::set_regs(tid_, saved_);
    if (injected_) settle();
    ptrace::set_sigmask(tid_, saved_mask_);
  } catch (const Error& e) {
    // A task killed meanwhile (a failed restore cleaning up) has nothing to put back.
    if (e.sys_errno() != ESRCH)
      log::get("core.inject")->warn("thread {}: cannot put registers back: {}", tid_, e.what());
  }
}

// After an injection the thread sits in a syscall-exit stop. Released from there, it would return
// to user mode without passing through signal handling, where an interrupted syscall of its own
// is set up for restart: it would see the kernel's internal -ERESTART* value as a result. So once
// the registers are back, resume it with an interrupt already pending: it stops again at once in
// the signal-handling path (PTRACE_EVENT_STOP) without running a single user instruction, the
// same kind of stop the freeze left it in, and the syscall it was in is restarted exactly as if
// it had never been injected into.
void Injector::settle() {
  if (::ptrace(PTRACE_INTERRUPT, tid_, nullptr, nullptr) < 0)
    throw_errno("PTRACE_INTERRUPT of thread " + std::to_string(tid_), errno, Errc::kernel);
  if (::ptrace(PTRACE_CONT, tid_, nullptr, nullptr) < 0)
    throw_errno("PTRACE_CONT of thread " + std::to_string(tid_), errno, Errc::kernel);
  for (;;) {
    int st = ptrace::wait_report(tid_);
    if (!WIFSTOPPED(st))
      fail(Errc::not_found, "thread " + std::to_string(tid_) + " ended: " + ptrace::describe_status(st));
    if ((st >> 16) == PTRACE_EVENT_STOP) break;
    // Every signal is blocked while injecting, so nothing else should come; let it pass.
    if (::ptrace(PTRACE_CONT, tid_, nullptr, nullptr) < 0)
      throw_errno("PTRACE_CONT of thread " + std::to_string(tid_), errno, Errc::kernel);
  }
  injected_ = false;
}

long Injector::raw(long nr, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                   uint64_t a6) {
  user_regs_struct r = saved_;
  r.rip = insn_;
  r.rax = static_cast<uint64_t>(nr);
  r.orig_rax = static_cast<uint64_t>(-1);
  r.rdi = a1;
  r.rsi = a2;
  r.rdx = a3;
  r.r10 = a4;
  r.r8 = a5;
  r.r9 = a6;
  // No trap flag (a task single-stepping itself has one) and no direction flag while injecting;
  // the saved registers, TF included, come back afterwards.
  r.eflags &= ~(0x100ull | 0x400ull);
  last_event_child_ = 0;
  ptrace::set_regs(tid_, r);
  injected_ = true;
  // Syscall-enter stop, the call itself (with fork/clone event stops if it makes a task), then
  // the syscall-exit stop, where rax holds the result. Syscall stops are no signals: a SIGTRAP
  // the task has pending stays pending, and its own handlers never see crest.
  auto resume = [&] {
    if (::ptrace(PTRACE_SYSCALL, tid_, nullptr, nullptr) < 0)
      throw_errno("PTRACE_SYSCALL of thread " + std::to_string(tid_), errno, Errc::kernel);
  };
  resume();
  bool entered = false;
  int traps = 0;
  for (;;) {
    int st = ptrace::wait_report(tid_);
    if (WIFSTOPPED(st) && WSTOPSIG(st) == (SIGTRAP | 0x80)) {
      if (entered) break;
      entered = true;
      resume();
      continue;
    }
    const int event = WIFSTOPPED(st) ? st >> 16 : 0;
    // A trap still pending from the freeze, before the call: a task in a group stop when seized
    // traps once for the seize and once for the interrupt. Each trap clears the pending one.
    if (event == PTRACE_EVENT_STOP && !entered && ++traps <= 2) {
      resume();
      continue;
    }
    if (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_CLONE || event == PTRACE_EVENT_VFORK) {
      // A fork/clone event of an injected clone3: the caller handles the new task.
      unsigned long msg = 0;
      ::ptrace(PTRACE_GETEVENTMSG, tid_, nullptr, &msg);
      last_event_child_ = static_cast<pid_t>(msg);
      resume();
      continue;
    }
    fail(Errc::kernel, "thread " + std::to_string(tid_) + " did not stop after an injected syscall " +
                           std::to_string(nr) + ": " + ptrace::describe_status(st));
  }
  user_regs_struct after = ptrace::get_regs(tid_);
  if (after.rip != insn_ + 2)
    fail(Errc::kernel, "thread " + std::to_string(tid_) + ": injected syscall " +
                           std::to_string(nr) + " ended at an unexpected address");
  return static_cast<long>(after.rax);
}

uint64_t Injector::call(const char* what, long nr, uint64_t a1, uint64_t a2, uint64_t a3,
                        uint64_t a4, uint64_t a5, uint64_t a6) {
  long r = raw(nr, a1, a2, a3, a4, a5, a6);
  if (r < 0 && r > -4096)
    throw Error(Errc::kernel,
                std::string(what) + " injected into thread " + std::to_string(tid_) + " failed",
                static_cast<int>(-r));
  return static_cast<uint64_t>(r);
}

// ---- remote memory ---------------------------------------------------------------------------

void remote_read(pid_t pid, uint64_t addr, void* buf, size_t len) {
  iovec local{buf, len};
  iovec remote{reinterpret_cast<void*>(addr), len};
  ssize_t n = ::process_vm_readv(pid, &local, 1, &remote, 1, 0);
  if (n == static_cast<ssize_t>(len)) return;
  // PROT_NONE and other unreadable pages: /proc/PID/mem reads them (FOLL_FORCE).
  UniqueFd fd(::open(proc::path(pid, "mem").c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw_errno("cannot open " + proc::path(pid, "mem"), errno, Errc::kernel);
  n = ::pread(fd.get(), buf, len, static_cast<off_t>(addr));
  if (n != static_cast<ssize_t>(len))
    throw_errno("cannot read " + std::to_string(len) + " bytes at " + std::to_string(addr) +
                    " of process " + std::to_string(pid),
                n < 0 ? errno : EIO, Errc::kernel);
}

void remote_write(pid_t pid, uint64_t addr, const void* buf, size_t len) {
  UniqueFd fd(::open(proc::path(pid, "mem").c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) throw_errno("cannot open " + proc::path(pid, "mem"), errno, Errc::kernel);
  ssize_t n = ::pwrite(fd.get(), buf, len, static_cast<off_t>(addr));
  if (n != static_cast<ssize_t>(len))
    throw_errno("cannot write " + std::to_string(len) + " bytes at " + std::to_string(addr) +
                    " of process " + std::to_string(pid),
                n < 0 ? errno : EIO, Errc::kernel);
}

std::string remote_read_string(pid_t pid, uint64_t addr, size_t max) {
  std::string s(max, '\0');
  remote_read(pid, addr, s.data(), max);
  s.resize(std::strlen(s.c_str()));
  return s;
}

RemoteScratch::RemoteScratch(Injector& inj, size_t size, uint64_t at) : inj_(inj), size_(size) {
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | (at ? MAP_FIXED_NOREPLACE : 0);
  addr_ = inj.call("mmap (scratch)", SYS_mmap, at, size, PROT_READ | PROT_WRITE,
                   static_cast<uint64_t>(flags), static_cast<uint64_t>(-1), 0);
}

RemoteScratch::~RemoteScratch() {
  if (addr_ == 0) return;
  try {
    inj_.raw(SYS_munmap, addr_, size_);
  } catch (const Error& e) {
    log::get("core.inject")->warn("thread {}: cannot unmap scratch: {}", inj_.tid(), e.what());
  }
}

uint64_t RemoteScratch::put(const void* data, size_t len, size_t offset) {
  if (offset + len > size_) fail(Errc::internal, "scratch overflow");
  remote_write(inj_.tid(), addr_ + offset, data, len);
  return addr_ + offset;
}

uint64_t RemoteScratch::put_string(const std::string& s, size_t offset) {
  return put(s.c_str(), s.size() + 1, offset);
}

void RemoteScratch::get(void* out, size_t len, size_t offset) const {
  remote_read(inj_.tid(), addr_ + offset, out, len);
}

}  // namespace crest
