// Syscall injection: a ptrace-stopped thread executes one system call on crest's behalf.
//
// The thread's registers are saved once; each call points rip at a `syscall` instruction inside
// the task's [vdso] (every process has one, at the same offset on the same kernel), loads the
// number and arguments, sets orig_rax = -1 so the interrupted syscall's restart logic stays out
// of the way, runs to the syscall-exit stop (PTRACE_SYSCALL, so no SIGTRAP is ever generated),
// and reads rax. Every tracee must be traced with ptrace::kSeizeOptions' PTRACE_O_TRACESYSGOOD. The saved registers come back when the Injector goes,
// and the thread is left in a plain interrupt stop (no trap flag behind: see settle()).
// Restoring a whole user_regs_struct also restores fs_base, so never inject arch_prctl(SET_FS).
// While injecting, every signal of the thread is blocked so none is delivered mid-step.
//
// Crest may die at any instant (kill -9), and a tracer's death lets its tracees run on from
// wherever they are, with whatever registers they have then. A thread left pointing at an
// injected call would run it and then the [vdso] bytes after it: the job dies. So where the
// caller gives the thread a return slot (a piece of an executable scratch mapping, see
// RemoteScratch), injected calls run at the slot's `syscall` instruction, and the code after it
// puts the thread back as it was: its signal mask, every general register, its flags, and an
// interrupted system call set up for restart as the kernel would have (rax = orig_rax, rip - 2).
// The state it restores is written into the slot before the first injected call.
//
// Calls made without such a slot (the ones that map and unmap that scratch mapping, those of the
// dirty tracker and of snapshots) run at a slot written into the [vdso] itself: the bytes after
// its image up to the end of its last page are zeros no code ever reaches, and a slot fits there
// (checked at run time; on this machine's kernel, 1,455 bytes). It is written through
// /proc/PID/mem, which copies the page for that process alone, and zeroed again when the
// Injector is done with it (the page stays a private copy with the same bytes). One thread of a
// process at a time holds it; another injects as before, at the [vdso]'s `syscall`.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <string>
#include <vector>

namespace crest {

// Offset of a `syscall` instruction inside the [vdso] of every process on this kernel.
uint64_t vdso_syscall_offset();
// Address of that instruction in pid's address space (from its [vdso] mapping).
uint64_t find_syscall_insn(pid_t pid);

class Injector {
 public:
  // vdso_slot: the task is one of a live job (take the [vdso]'s slot for calls made without a
  // return slot), or one of a tree being restored (which is killed if crest dies, and whose
  // [vdso] moves).
  enum class Guard { vdso_slot, none };
  // tid must be in a ptrace-stop of ours. syscall_insn: address of a `syscall` instruction.
  Injector(pid_t tid, uint64_t syscall_insn, Guard guard = Guard::vdso_slot);
  Injector(const Injector&) = delete;
  Injector& operator=(const Injector&) = delete;
  ~Injector();  // restores the saved registers and signal mask (never throws)

  pid_t tid() const { return tid_; }
  const user_regs_struct& saved_regs() const { return saved_; }
  void set_syscall_insn(uint64_t addr) { insn_ = plain_insn_ = addr; }

  // Executes the syscall; returns the raw result (negative errno on failure).
  long raw(long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0, uint64_t a4 = 0,
           uint64_t a5 = 0, uint64_t a6 = 0);
  // Same, but a failure throws Error(kernel) naming `what`, the thread and the errno.
  uint64_t call(const char* what, long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0,
                uint64_t a4 = 0, uint64_t a5 = 0, uint64_t a6 = 0);

  // The restore side replaces the registers itself at the end: do not put the saved ones back.
  void forget_saved_state() { restore_on_exit_ = false; }
  // From now on, calls run at `slot` (RemoteScratch::return_slot), which puts the thread back
  // by itself should crest die; drop_return_slot() before the slot is unmapped.
  void use_return_slot(uint64_t slot);
  void drop_return_slot();
  // The new task reported by a fork/clone event during the last call (0 if none).
  pid_t last_event_child() const { return last_event_child_; }
  // Runs code at `entry` (in the task's executable memory) with r12 and r13 set, until the
  // int3 at `trap`: its SIGTRAP, the only signal unblocked meanwhile, is taken at its delivery
  // stop and never delivered. For SyscallBatch.
  void run_to_trap(uint64_t entry, uint64_t r12, uint64_t r13, uint64_t trap);
  // Injections (calls and batches) made by this process so far, for the logs.
  static uint64_t injections_so_far();
  // The Injector of ours that holds thread `tid` now (the first made, while it lives), or
  // nullptr: for code that needs to inject and is handed no Injector (the fallbacks for newer
  // kernel interfaces), so that it never makes a second one on the same thread.
  static Injector* on_thread(pid_t tid);

 private:
  pid_t tid_;
  uint64_t insn_;        // where the next call runs: a slot's `syscall`, or plain_insn_
  uint64_t plain_insn_;  // the `syscall` given (the [vdso]'s)
  Guard guard_;
  user_regs_struct saved_{};
  uint64_t saved_mask_ = 0;
  bool restore_on_exit_ = true;
  bool injected_ = false;  // a syscall was injected since the last settle()
  bool masked_ = false;    // every signal blocked (from the first call on)
  uint64_t slot_ = 0;      // return slot in use (0: none, calls run at the [vdso]'s syscall)
  uint64_t vdso_slot_ = 0; // the [vdso]'s slot while we hold it
  pid_t tgid_ = 0;         // tid's process, while we hold its [vdso]'s slot
  bool vdso_tried_ = false;
  pid_t last_event_child_ = 0;
  void settle();
  void take_vdso_slot();
  void give_back_vdso_slot();  // never throws
};

// Several system calls run by one injection, for a tree being restored: code in the task's
// executable scratch memory loops over a table of calls (number and up to three arguments),
// writes each result over its number, and ends on an int3 (Injector::run_to_trap). A process
// that ignores SIGTRAP, or has one pending, gets its calls one by one instead: the int3 forces
// the signal, and the kernel resets an ignored signal's disposition when it forces it.
class SyscallBatch {
 public:
  // `area`: `size` bytes of the task's executable, writable scratch the batch may use.
  SyscallBatch(Injector& inj, uint64_t area, size_t size);
  SyscallBatch(const SyscallBatch&) = delete;
  SyscallBatch& operator=(const SyscallBatch&) = delete;
  ~SyscallBatch();  // what was not flushed is dropped (an error path)

  // Queued; run by flush(), or at once when the table is full.
  void add(const char* what, long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0,
           uint64_t a4 = 0, uint64_t a5 = 0);
  // Runs what is queued; the first call that failed throws Error(kernel) naming it.
  void flush();

 private:
  struct Call {
    uint64_t nr, a1, a2, a3, a4, a5;
  };
  Injector& inj_;
  uint64_t area_;
  size_t capacity_;
  bool one_by_one_;
  std::vector<Call> calls_;
  std::vector<const char*> what_;
};

// Memory of a stopped process, read and written from outside.
void remote_read(pid_t pid, uint64_t addr, void* buf, size_t len);
void remote_write(pid_t pid, uint64_t addr, const void* buf, size_t len);  // via /proc/PID/mem
std::string remote_read_string(pid_t pid, uint64_t addr, size_t max = 4096);

// An anonymous read-write mapping made inside a process by injection, unmapped by injection on
// destruction: scratch space for syscall arguments and results. Its last page, read-only, is a
// marker naming the mapping (its address and size), so that one a crest that died could not
// unmap is found at the next dump and removed (drop_stale_scratch).
class RemoteScratch {
 public:
  // With `return_slots` > 0 the mapping is also executable and ends with that many return slots
  // (one per thread that will inject); `inj` takes the first at once.
  RemoteScratch(Injector& inj, size_t size = 4096, uint64_t at = 0, size_t return_slots = 0);
  RemoteScratch(const RemoteScratch&) = delete;
  RemoteScratch& operator=(const RemoteScratch&) = delete;
  ~RemoteScratch();
  uint64_t addr() const { return addr_; }
  size_t size() const { return size_; }
  uint64_t return_slot(size_t i) const;  // 0 if there is no such slot
  // Copies bytes in at an offset and returns their remote address.
  uint64_t put(const void* data, size_t len, size_t offset = 0);
  uint64_t put_string(const std::string& s, size_t offset = 0);
  void get(void* out, size_t len, size_t offset = 0) const;
  void release() { addr_ = 0; }  // the mapping goes with the address space; do not unmap

 private:
  void mark();

  Injector& inj_;
  uint64_t addr_ = 0;
  size_t size_;          // what put() and get() may use
  size_t map_size_ = 0;  // the whole mapping: scratch, return slots, marker page
  size_t slots_ = 0;
};

// Removes the scratch mappings of a crest that died (killed between its mmap and munmap) from
// the process of `inj`'s thread: each is found by its marker page and unmapped by injection,
// unless a thread of the process (`rips`: every thread's instruction pointer) still runs in it,
// in which case it stays (saved as the job's memory, removed by a later dump). Returns how
// many were removed.
size_t drop_stale_scratch(Injector& inj, pid_t pid, const std::vector<uint64_t>& rips);

}  // namespace crest
