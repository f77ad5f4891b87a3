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

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "core/kernel/compat.h"
#include "core/pagemap.h"
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

namespace {

// A return slot: the code at its start, the state it puts back at kSlotData.
constexpr size_t kSlotSize = 512;
constexpr size_t kSlotData = 256;

// What a slot's code puts back: the signal mask, the general registers in this order (the code
// below loads each from its place), then what iretq takes: rip, cs, rflags, rsp, ss; last, the
// thread's id as gettid() gives it in its own pid namespace, so that a copy the injected call
// made (clone3 of a snapshot) knows it is not the thread the state is for.
struct ReturnState {
  uint64_t mask;
  uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15;
  uint64_t rip, cs, eflags, rsp, ss;
  uint64_t tid;
};
static_assert(kSlotData + sizeof(ReturnState) <= kSlotSize);
static_assert(offsetof(ReturnState, tid) == 8 * 21);  // field(21) in return_code()

// The thread as it would run on if released now: an interrupted system call is restarted the
// way the kernel restarts one when no handler runs (rax = orig_rax, rip back over `syscall`).
ReturnState return_state(pid_t tid, const user_regs_struct& r, uint64_t mask) {
  ReturnState st{mask,  r.rax, r.rbx, r.rcx,    r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10,
                 r.r11, r.r12, r.r13, r.r14,    r.r15, r.rip, r.cs,  r.eflags, r.rsp, r.ss,
                 static_cast<uint64_t>(proc::innermost_pid(tid))};
  if (static_cast<int64_t>(r.orig_rax) >= 0) {
    switch (static_cast<int64_t>(r.rax)) {
      case -512:  // ERESTARTSYS
      case -513:  // ERESTARTNOINTR
      case -514:  // ERESTARTNOHAND
        st.rax = r.orig_rax;
        st.rip -= 2;
        break;
      case -516:  // ERESTART_RESTARTBLOCK
        st.rax = SYS_restart_syscall;
        st.rip -= 2;
        break;
      default:
        break;
    }
  }
  return st;
}

// The slot's code (x86-64, position independent: every operand is rip-relative to the slot's
// own data): `syscall` (where injected calls run), then, reached only by a thread crest left:
// a task whose gettid() is not the saved one is a copy made by the injected call and kills
// itself (SIGKILL, never a second instance of the process running on); the thread itself does
// rt_sigprocmask(SIG_SETMASK, &mask), loads every register but rsp, and iretq, which puts back
// rip, rflags and rsp at once: a thread that single-steps itself (TF in its flags) traps after
// its own next instruction, on its own stack, as it would have without crest.
std::vector<uint8_t> return_code() {
  std::vector<uint8_t> b;
  auto put = [&](std::initializer_list<uint8_t> bytes) { b.insert(b.end(), bytes); };
  auto rip_relative = [&](std::initializer_list<uint8_t> op, size_t target) {
    put(op);
    const auto disp = static_cast<int32_t>(static_cast<int64_t>(target) -
                                           static_cast<int64_t>(b.size() + 4));
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(static_cast<uint32_t>(disp) >> (8 * i)));
  };
  auto field = [](size_t i) { return kSlotData + 8 * i; };  // i-th qword of ReturnState
  put({0x0f, 0x05});                                   // syscall
  put({0xb8, 0xba, 0x00, 0x00, 0x00});                 // mov eax, gettid
  put({0x0f, 0x05});                                   // syscall
  rip_relative({0x48, 0x3b, 0x05}, field(21));         // cmp rax, [tid]
  put({0x74, 0x17});                                   // je over the next 23 bytes
  put({0xb8, 0x27, 0x00, 0x00, 0x00});                 // mov eax, getpid
  put({0x0f, 0x05});                                   // syscall
  put({0x89, 0xc7});                                   // mov edi, eax
  put({0xbe, 0x09, 0x00, 0x00, 0x00});                 // mov esi, SIGKILL
  put({0xb8, 0x3e, 0x00, 0x00, 0x00});                 // mov eax, kill
  put({0x0f, 0x05});                                   // syscall
  put({0xeb, 0xfe});                                   // jmp . (never reached: killed)
  put({0xb8, 0x0e, 0x00, 0x00, 0x00});                 // mov eax, rt_sigprocmask
  put({0xbf, 0x02, 0x00, 0x00, 0x00});                 // mov edi, SIG_SETMASK
  rip_relative({0x48, 0x8d, 0x35}, field(0));          // lea rsi, [mask]
  put({0x31, 0xd2});                                   // xor edx, edx
  put({0x41, 0xba, 0x08, 0x00, 0x00, 0x00});           // mov r10d, 8
  put({0x0f, 0x05});                                   // syscall
  // mov REG, [field]: REX.W (REX.R for r8-r15), 8b, ModRM (reg << 3 | rip-relative)
  const std::pair<uint8_t, uint8_t> regs[] = {
      {0x48, 0x05}, {0x48, 0x1d}, {0x48, 0x0d}, {0x48, 0x15}, {0x48, 0x35}, {0x48, 0x3d},
      {0x48, 0x2d}, {0x4c, 0x05}, {0x4c, 0x0d}, {0x4c, 0x15}, {0x4c, 0x1d}, {0x4c, 0x25},
      {0x4c, 0x2d}, {0x4c, 0x35}, {0x4c, 0x3d}};  // rax ... r15
  for (size_t i = 0; i < std::size(regs); ++i)
    rip_relative({regs[i].first, 0x8b, regs[i].second}, field(1 + i));
  rip_relative({0x48, 0x8d, 0x25}, field(1 + std::size(regs)));  // lea rsp, [rip of the frame]
  put({0x48, 0xcf});                                              // iretq
  if (b.size() > kSlotData) fail(Errc::internal, "return slot code too long");
  return b;
}

constexpr size_t kSlotUsed = kSlotData + sizeof(ReturnState);

// Our [vdso]: its bytes, and where a slot fits in the zeros after its image (0: nowhere).
struct VdsoImage {
  std::vector<uint8_t> bytes;
  uint64_t slot = 0;
};

const VdsoImage& own_vdso() {
  static const VdsoImage image = [] {
    VdsoImage v;
    const auto base = static_cast<uint64_t>(::getauxval(AT_SYSINFO_EHDR));
    if (base == 0) return v;
    for (const auto& m : proc::maps(::getpid())) {
      if (m.name != "[vdso]" || m.start != base) continue;
      const auto* p = reinterpret_cast<const uint8_t*>(m.start);
      v.bytes.assign(p, p + (m.end - m.start));
    }
    size_t end = v.bytes.size();
    while (end > 0 && v.bytes[end - 1] == 0) --end;
    const size_t at = (end + 64) & ~size_t{15};  // a few zeros kept after the image
    if (!v.bytes.empty() && at + kSlotUsed <= v.bytes.size()) v.slot = at;
    return v;
  }();
  return image;
}

// The processes whose [vdso] slot an Injector of ours holds.
std::mutex vdso_slots_mutex;
std::set<pid_t> vdso_slots_held;

}  // namespace

namespace {
std::mutex live_mutex;
std::map<pid_t, Injector*> live;  // thread -> the first Injector made on it, while it lives
}  // namespace

Injector* Injector::on_thread(pid_t tid) {
  std::lock_guard<std::mutex> lock(live_mutex);
  auto it = live.find(tid);
  return it == live.end() ? nullptr : it->second;
}

Injector::Injector(pid_t tid, uint64_t syscall_insn, Guard guard)
    : tid_(tid), insn_(syscall_insn), plain_insn_(syscall_insn), guard_(guard) {
  saved_ = ptrace::get_regs(tid);
  saved_mask_ = ptrace::get_sigmask(tid);
  std::lock_guard<std::mutex> lock(live_mutex);
  live.emplace(tid, this);
}

// Calls without a return slot of the caller's run at a slot in the [vdso]'s zeros, if its
// bytes there are ours to take: the process's [vdso] is our image (its ELF header and the
// zeros, or a slot a crest that died left there) and no other Injector of ours holds it.
void Injector::take_vdso_slot() {
  vdso_tried_ = true;
  const VdsoImage& own = own_vdso();
  if (guard_ != Guard::vdso_slot || own.slot == 0 || plain_insn_ < vdso_syscall_offset()) return;
  const uint64_t base = plain_insn_ - vdso_syscall_offset();
  const std::vector<uint8_t> code = return_code();
  try {
    std::vector<uint8_t> theirs(64), there(kSlotUsed);
    remote_read(tid_, base, theirs.data(), theirs.size());
    if (!std::equal(theirs.begin(), theirs.end(), own.bytes.begin())) return;
    remote_read(tid_, base + own.slot, there.data(), there.size());
    const bool zeros = std::all_of(there.begin(), there.end(), [](uint8_t b) { return b == 0; });
    if (!zeros && !std::equal(code.begin(), code.end(), there.begin())) return;
    const pid_t tgid = static_cast<pid_t>(std::stol(proc::status(tid_).at("Tgid")));
    {
      std::lock_guard<std::mutex> lock(vdso_slots_mutex);
      if (!vdso_slots_held.insert(tgid).second) return;
    }
    tgid_ = tgid;
    vdso_slot_ = base + own.slot;
    std::vector<uint8_t> slot(kSlotUsed, 0);
    std::copy(code.begin(), code.end(), slot.begin());
    const ReturnState st = return_state(tid_, saved_, saved_mask_);
    std::memcpy(slot.data() + kSlotData, &st, sizeof st);
    remote_write(tid_, vdso_slot_, slot.data(), slot.size());
    slot_ = insn_ = vdso_slot_;
  } catch (const std::exception& e) {
    log::get("core.inject")->debug("thread {}: no [vdso] slot: {}", tid_, e.what());
    give_back_vdso_slot();
  }
}

void Injector::give_back_vdso_slot() {
  if (tgid_ == 0) return;
  try {
    const std::vector<uint8_t> zeros(kSlotUsed, 0);
    remote_write(tid_, vdso_slot_, zeros.data(), zeros.size());
  } catch (const Error& e) {
    if (e.sys_errno() != ESRCH && e.sys_errno() != EIO)  // gone meanwhile
      log::get("core.inject")->warn("thread {}: cannot zero its [vdso] slot again: {}", tid_, e.what());
  }
  std::lock_guard<std::mutex> lock(vdso_slots_mutex);
  vdso_slots_held.erase(tgid_);
  tgid_ = 0;
  if (slot_ == vdso_slot_) {
    slot_ = 0;
    insn_ = plain_insn_;
  }
  vdso_slot_ = 0;
}

void Injector::use_return_slot(uint64_t slot) {
  const ReturnState st = return_state(tid_, saved_, saved_mask_);
  remote_write(tid_, slot + kSlotData, &st, sizeof st);
  slot_ = insn_ = slot;
  if (injected_) {
    // Stopped after a call made elsewhere (the [vdso]): pointed at the slot's way back at once.
    user_regs_struct back = saved_;
    back.rip = slot_ + 2;
    back.orig_rax = static_cast<uint64_t>(-1);
    ptrace::set_regs(tid_, back);
  }
  give_back_vdso_slot();  // no longer where the thread would return
}

void Injector::drop_return_slot() {
  if (slot_ == 0) return;
  insn_ = plain_insn_;
  slot_ = 0;
  vdso_tried_ = false;  // the next call may take the [vdso]'s again
}

Injector::~Injector() {
  {
    std::lock_guard<std::mutex> lock(live_mutex);
    auto it = live.find(tid_);
    if (it != live.end() && it->second == this) live.erase(it);
  }
  if (!restore_on_exit_) {
    give_back_vdso_slot();
    return;
  }
  try {
    if (slot_ != 0 && injected_) {
      // Out of the call's stop through the slot's way back, so that crest dying at any point
      // from here leaves the thread to put itself back; then its own registers and mask.
      user_regs_struct back = saved_;
      back.rip = slot_ + 2;
      back.orig_rax = static_cast<uint64_t>(-1);
      ptrace::set_regs(tid_, back);
      settle();
      if (masked_) ptrace::set_sigmask(tid_, saved_mask_);
      ptrace::set_regs(tid_, saved_);
      give_back_vdso_slot();
      return;
    }
    ptrace::set_regs(tid_, saved_);
    if (injected_) settle();
    if (masked_) ptrace::set_sigmask(tid_, saved_mask_);
  } catch (const Error& e) {
    // A task killed meanwhile (a failed restore cleaning up) has nothing to put back.
    if (e.sys_errno() != ESRCH)
      log::get("core.inject")->warn("thread {}: cannot put registers back: {}", tid_, e.what());
  }
  give_back_vdso_slot();
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

namespace {
std::atomic<uint64_t> injections{0};
}  // namespace

uint64_t Injector::injections_so_far() { return injections.load(std::memory_order_relaxed); }

long Injector::raw(long nr, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                   uint64_t a6) {
  injections.fetch_add(1, std::memory_order_relaxed);
  if (slot_ == 0 && !vdso_tried_) take_vdso_slot();
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
  if (!masked_) {  // after the registers: with a slot, a thread left now puts its mask back
    ptrace::set_sigmask(tid_, ~0ull);
    masked_ = true;
  }
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

void Injector::run_to_trap(uint64_t entry, uint64_t r12, uint64_t r13, uint64_t trap) {
  injections.fetch_add(1, std::memory_order_relaxed);
  user_regs_struct r = saved_;
  r.rip = entry;
  r.r12 = r12;
  r.r13 = r13;
  r.orig_rax = static_cast<uint64_t>(-1);
  r.eflags &= ~(0x100ull | 0x400ull);
  last_event_child_ = 0;
  ptrace::set_regs(tid_, r);
  injected_ = true;
  masked_ = true;
  const uint64_t trap_bit = 1ull << (SIGTRAP - 1);
  ptrace::set_sigmask(tid_, ~trap_bit);
  if (::ptrace(PTRACE_CONT, tid_, nullptr, nullptr) < 0)
    throw_errno("PTRACE_CONT of thread " + std::to_string(tid_), errno, Errc::kernel);
  int traps = 0;
  for (;;) {
    const int st = ptrace::wait_report(tid_);
    const int event = WIFSTOPPED(st) ? st >> 16 : 0;
    if (WIFSTOPPED(st) && WSTOPSIG(st) == SIGTRAP && event == 0) break;  // the int3's delivery stop
    if (event == PTRACE_EVENT_STOP && ++traps <= 2) {  // traps pending from the freeze
      if (::ptrace(PTRACE_CONT, tid_, nullptr, nullptr) < 0)
        throw_errno("PTRACE_CONT of thread " + std::to_string(tid_), errno, Errc::kernel);
      continue;
    }
    fail(Errc::kernel, "thread " + std::to_string(tid_) + " did not stop at the end of injected "
                       "code: " + ptrace::describe_status(st));
  }
  // The SIGTRAP is dropped by the next resume (no signal given).
  ptrace::set_sigmask(tid_, ~0ull);
  if (ptrace::get_regs(tid_).rip != trap + 1)
    fail(Errc::kernel, "thread " + std::to_string(tid_) + ": injected code stopped at an unexpected address");
}

namespace {

// The batch's code: for r13 entries of {nr, a1, ..., a5} from r12: load, syscall, store rax
// over nr, next; then int3.
constexpr uint8_t kBatchCode[] = {
    0x49, 0x8b, 0x04, 0x24,        // loop: mov rax, [r12]
    0x49, 0x8b, 0x7c, 0x24, 0x08,  // mov rdi, [r12 + 8]
    0x49, 0x8b, 0x74, 0x24, 0x10,  // mov rsi, [r12 + 16]
    0x49, 0x8b, 0x54, 0x24, 0x18,  // mov rdx, [r12 + 24]
    0x4d, 0x8b, 0x54, 0x24, 0x20,  // mov r10, [r12 + 32]
    0x4d, 0x8b, 0x44, 0x24, 0x28,  // mov r8, [r12 + 40]
    0x0f, 0x05,                    // syscall
    0x49, 0x89, 0x04, 0x24,        // mov [r12], rax
    0x49, 0x83, 0xc4, 0x30,        // add r12, 48
    0x49, 0xff, 0xcd,              // dec r13
    0x75, 0xd4,                    // jnz loop
    0xcc,                          // int3
};
constexpr size_t kBatchCodeRoom = 64;

}  // namespace

SyscallBatch::SyscallBatch(Injector& inj, uint64_t area, size_t size)
    : inj_(inj), area_(area), capacity_(size > kBatchCodeRoom ? (size - kBatchCodeRoom) / sizeof(Call) : 0) {
  one_by_one_ = capacity_ < 2;
  if (!one_by_one_) {
    const auto st = proc::status(inj.tid());
    const uint64_t trap = 1ull << (SIGTRAP - 1);
    one_by_one_ = ((proc::status_hex(st, "SigIgn") | proc::status_hex(st, "SigPnd") |
                    proc::status_hex(st, "ShdPnd")) & trap) != 0;
  }
  static_assert(sizeof(Call) == 48);
}

SyscallBatch::~SyscallBatch() {
  if (!calls_.empty())
    log::get("core.inject")->debug("thread {}: {} batched calls dropped", inj_.tid(), calls_.size());
}

void SyscallBatch::add(const char* what, long nr, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5) {
  if (one_by_one_) {
    inj_.call(what, nr, a1, a2, a3, a4, a5);
    return;
  }
  calls_.push_back({static_cast<uint64_t>(nr), a1, a2, a3, a4, a5});
  what_.push_back(what);
  if (calls_.size() == capacity_) flush();
}

void SyscallBatch::flush() {
  if (calls_.empty()) return;
  const std::vector<Call> calls = std::move(calls_);
  const std::vector<const char*> what = std::move(what_);
  calls_.clear();
  what_.clear();
  if (calls.size() == 1) {
    inj_.call(what[0], static_cast<long>(calls[0].nr), calls[0].a1, calls[0].a2, calls[0].a3,
              calls[0].a4, calls[0].a5);
    return;
  }
  std::vector<uint8_t> image(kBatchCodeRoom + calls.size() * sizeof(Call), 0);
  std::memcpy(image.data(), kBatchCode, sizeof kBatchCode);
  std::memcpy(image.data() + kBatchCodeRoom, calls.data(), calls.size() * sizeof(Call));
  remote_write(inj_.tid(), area_, image.data(), image.size());
  log::get("core.inject")->debug("thread {}: {} calls in one injection", inj_.tid(), calls.size());
  inj_.run_to_trap(area_, area_ + kBatchCodeRoom, calls.size(), area_ + sizeof kBatchCode - 1);
  std::vector<Call> done(calls.size());
  remote_read(inj_.tid(), area_ + kBatchCodeRoom, done.data(), done.size() * sizeof(Call));
  for (size_t i = 0; i < done.size(); ++i) {
    const auto r = static_cast<int64_t>(done[i].nr);
    if (r < 0 && r > -4096)
      throw Error(Errc::kernel,
                  std::string(what[i]) + " injected into thread " + std::to_string(inj_.tid()) + " failed",
                  static_cast<int>(-r));
  }
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
  iovec local{const_cast<void*>(buf), len};
  iovec remote{reinterpret_cast<void*>(addr), len};
  if (::process_vm_writev(pid, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(len)) return;
  // Read-only and PROT_NONE pages: /proc/PID/mem writes them (FOLL_FORCE).
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

namespace {

// The last page of a scratch mapping (RemoteScratch), read-only: it names the mapping. Its own
// VMA (no neighbour merges with a one-page read-only anonymous mapping of this content), so
// that it is found even where the writable part merged with a mapping next to it.
struct ScratchMarker {
  char magic[24];
  uint64_t addr, size;  // the whole mapping, this page included
};
constexpr char kScratchMagic[24] = "crest scratch mapping";
constexpr uint64_t kPage = 4096;

uint64_t page_round(uint64_t n) { return (n + kPage - 1) & ~(kPage - 1); }

}  // namespace

RemoteScratch::RemoteScratch(Injector& inj, size_t size, uint64_t at, size_t return_slots)
    : inj_(inj), size_(size) {
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | (at ? MAP_FIXED_NOREPLACE : 0);
  const size_t base = page_round(size);
  if (return_slots > 0) {
    // Executable too, the slots after the scratch. A process that may not have a writable and
    // executable mapping (PR_SET_MDWE, an LSM) gets the plain scratch, without slots.
    const size_t total = base + page_round(return_slots * kSlotSize) + kPage;
    const long m = inj.raw(SYS_mmap, at, total, PROT_READ | PROT_WRITE | PROT_EXEC,
                           static_cast<uint64_t>(flags), static_cast<uint64_t>(-1), 0);
    if (m > 0 || m < -4095) {
      addr_ = static_cast<uint64_t>(m);
      map_size_ = total;
      size_ = base;
      slots_ = return_slots;
      const std::vector<uint8_t> code = return_code();
      std::vector<uint8_t> all(return_slots * kSlotSize);
      for (size_t i = 0; i < return_slots; ++i)
        std::copy(code.begin(), code.end(), all.begin() + static_cast<std::ptrdiff_t>(i * kSlotSize));
      remote_write(inj.tid(), addr_ + base, all.data(), all.size());
      mark();
      inj.use_return_slot(return_slot(0));
      return;
    }
  }
  map_size_ = base + kPage;
  addr_ = inj.call("mmap (scratch)", SYS_mmap, at, map_size_, PROT_READ | PROT_WRITE,
                   static_cast<uint64_t>(flags), static_cast<uint64_t>(-1), 0);
  mark();
}

void RemoteScratch::mark() {
  ScratchMarker m{};
  std::memcpy(m.magic, kScratchMagic, sizeof m.magic);
  m.addr = addr_;
  m.size = map_size_;
  const uint64_t at = addr_ + map_size_ - kPage;
  try {
    remote_write(inj_.tid(), at, &m, sizeof m);
    inj_.call("mprotect (scratch marker)", SYS_mprotect, at, kPage, PROT_READ);
  } catch (const Error&) {
    // No destructor runs for a constructor that throws: the mapping goes now.
    inj_.raw(SYS_munmap, addr_, map_size_);
    addr_ = 0;
    throw;
  }
}

uint64_t RemoteScratch::return_slot(size_t i) const {
  if (i >= slots_) return 0;
  return addr_ + size_ + i * kSlotSize;
}

size_t drop_stale_scratch(Injector& inj, pid_t pid, const std::vector<uint64_t>& rips) {
  const std::vector<proc::Mapping> maps = proc::maps(pid);
  std::optional<Pagemap> pagemap;
  size_t dropped = 0;
  for (size_t i = 0; i < maps.size(); ++i) {
    const proc::Mapping& m = maps[i];
    // A marker page: one anonymous, private, read-only page, present.
    if (m.end - m.start != kPage || !m.name.empty() || m.inode != 0 || m.shared || !m.read ||
        m.write || m.exec)
      continue;
    // Read only if present: reading a missing page would fault one in.
    if (!pagemap) pagemap.emplace(pid);
    uint64_t entry = 0;
    pagemap->read_entries(m.start, 1, &entry);
    if (!(entry & kPmPresent)) continue;
    ScratchMarker mk{};
    remote_read(pid, m.start, &mk, sizeof mk);
    if (std::memcmp(mk.magic, kScratchMagic, sizeof mk.magic) != 0 || mk.size < 2 * kPage ||
        mk.addr + mk.size != m.end || mk.addr > m.start)
      continue;
    // The rest of it must still be there, anonymous and writable, as it was made.
    uint64_t covered = m.start;
    for (size_t j = i; j-- > 0 && covered > mk.addr;) {
      const proc::Mapping& w = maps[j];
      if (w.end != covered || !w.name.empty() || w.inode != 0 || w.shared || !w.write) break;
      covered = std::max(w.start, mk.addr);
    }
    const bool whole = covered == mk.addr;
    const bool running = std::any_of(rips.begin(), rips.end(),
                                     [&](uint64_t r) { return r >= mk.addr && r < m.end; });
    auto log = log::get("core.dump");
    if (!whole || running) {
      log->warn("process {}: a scratch mapping of a crest that died at {:#x} ({}) stays: {}", pid,
                mk.addr, mk.size, running ? "a thread runs in it" : "it changed since");
      continue;
    }
    const long r = inj.raw(SYS_munmap, mk.addr, mk.size);
    if (r != 0) {
      log->warn("process {}: cannot unmap the scratch mapping of a crest that died at {:#x}: {}", pid,
                mk.addr, std::strerror(static_cast<int>(-r)));
      continue;
    }
    log->warn("process {}: removed the scratch mapping a crest that died left at {:#x} ({} bytes)",
              pid, mk.addr, mk.size);
    ++dropped;
  }
  return dropped;
}

RemoteScratch::~RemoteScratch() {
  if (addr_ == 0) return;
  if (slots_ > 0) inj_.drop_return_slot();  // the slots go with the mapping
  try {
    inj_.raw(SYS_munmap, addr_, map_size_);
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
