// Seccomp: strict mode, and the BPF filters of each thread (PTRACE_SECCOMP_GET_FILTER reads
// them, newest first; PTRACE_SECCOMP_GET_METADATA their flags). Restore installs the same
// filters in the same order in each thread, as root, before its credentials are dropped
// (creds.cpp); crest's own calls into the task bypass them (PTRACE_O_SUSPEND_SECCOMP), so they
// can be installed while the task is still being built. Threads that shared filters (TSYNC, or
// inherited) get equal filters of their own: they filter the same calls the same way. Dump and
// restore side by side.
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "core/context.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest {

void dump_seccomp(DumpContext& ctx, pid_t tid, schema::ThreadRecord& t) {
  const std::string who = "thread " + std::to_string(tid);
  auto st = proc::status(tid, tid);
  t.seccomp_mode = static_cast<uint32_t>(std::stoul(st["Seccomp"].empty() ? "0" : st["Seccomp"]));
  if (t.seccomp_mode != SECCOMP_MODE_FILTER) return;
  if (!ptrace::can_suspend_seccomp()) {
    ctx.refuse(who + " has seccomp filters, which this crest (without CAP_SYS_ADMIN) can neither "
               "read nor keep out of its way");
    return;
  }
  std::vector<schema::SeccompRecord> newest_first;
  for (unsigned long index = 0;; ++index) {
    long n = ::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, reinterpret_cast<void*>(index), nullptr);
    if (n < 0) {
      if (errno == ENOENT) break;
      ctx.refuse(who + ": cannot read seccomp filter " + std::to_string(index) + ": " +
                 std::strerror(errno));
      return;
    }
    schema::SeccompRecord rec;
    rec.pid = 0;  // set by the caller's process record below
    rec.tid = ctx.recorded(tid);
    rec.prog.resize(static_cast<size_t>(n) * sizeof(sock_filter));
    if (::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, reinterpret_cast<void*>(index), rec.prog.data()) != n) {
      ctx.refuse(who + ": seccomp filter " + std::to_string(index) + " changed while read");
      return;
    }
    struct {
      uint64_t filter_off, flags;
    } meta{index, 0};
    if (::ptrace(PTRACE_SECCOMP_GET_METADATA, tid, reinterpret_cast<void*>(sizeof meta), &meta) >= 0)
      rec.flags = meta.flags;
    newest_first.push_back(std::move(rec));
  }
  const pid_t rpid = t.pid;
  for (size_t i = newest_first.size(); i-- > 0;) {
    newest_first[i].pid = rpid;
    newest_first[i].index = static_cast<uint32_t>(newest_first.size() - 1 - i);
    ctx.meta.seccomp.push_back(std::move(newest_first[i]));
  }
}

namespace {

std::vector<const schema::SeccompRecord*> filters_of(const RestoreContext& ctx,
                                                     const schema::ThreadRecord& t) {
  std::vector<const schema::SeccompRecord*> out;
  for (auto* f : ctx.rows_of(ctx.meta.seccomp, t.pid))
    if (f->tid == t.tid) out.push_back(f);
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->index < b->index; });
  return out;
}

void install(RestoredProcess& p, Injector& inj, const std::string& who,
             const schema::SeccompRecord& f) {
  // The program and its sock_fprog in memory of the task's own, as large as it needs.
  const size_t len = (64 + f.prog.size() + 4095) / 4096 * 4096;
  const uint64_t at = inj.call("mmap (seccomp filter)", SYS_mmap, 0, len, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, static_cast<uint64_t>(-1), 0);
  sock_fprog prog{static_cast<unsigned short>(f.prog.size() / sizeof(sock_filter)),
                  reinterpret_cast<sock_filter*>(at + 64)};
  remote_write(p.pid, at, &prog, sizeof prog);
  remote_write(p.pid, at + 64, f.prog.data(), f.prog.size());
  long r = inj.raw(SYS_seccomp, SECCOMP_SET_MODE_FILTER, f.flags, at);
  inj.call("munmap (seccomp filter)", SYS_munmap, at, len);
  if (r < 0)
    throw Error(Errc::kernel, who + ": cannot install seccomp filter " + std::to_string(f.index),
                static_cast<int>(-r));
}

bool same_filter(const schema::SeccompRecord& a, const schema::SeccompRecord& b) {
  return a.flags == b.flags && a.prog == b.prog;
}

}  // namespace

// The filters every thread of the process has first, installed in the main thread before the
// other threads are made: they inherit them, and share them as they did (a filter added later
// with SECCOMP_FILTER_FLAG_TSYNC needs every thread's filters to be its own's ancestors).
void restore_seccomp_shared(RestoreContext& ctx, RestoredProcess& p,
                            const std::vector<const schema::ThreadRecord*>& threads) {
  std::vector<std::vector<const schema::SeccompRecord*>> chains;
  for (auto* t : threads) chains.push_back(filters_of(ctx, *t));
  size_t common = chains.empty() ? 0 : chains.front().size();
  for (auto& c : chains) {
    size_t n = 0;
    while (n < common && n < c.size() && same_filter(*c[n], *chains.front()[n])) ++n;
    common = n;
  }
  const std::string who = "process " + std::to_string(p.rec->pid);
  for (size_t i = 0; i < common; ++i) install(p, *p.inj, who, *chains.front()[i]);
  p.seccomp_shared = common;
}

// The rest of a thread's filters, and strict mode.
void restore_seccomp(RestoreContext& ctx, RestoredProcess& p, size_t thread, Injector& inj) {
  const auto& t = *p.thread_recs[thread];
  const std::string who = "thread " + std::to_string(t.tid);
  if (t.seccomp_mode == SECCOMP_MODE_STRICT) {
    inj.call("prctl(PR_SET_SECCOMP, strict)", SYS_prctl, PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0);
    return;
  }
  if (t.seccomp_mode != SECCOMP_MODE_FILTER) return;
  auto filters = filters_of(ctx, t);
  if (filters.empty()) fail(Errc::corrupt, who + " is in seccomp filter mode with no filter saved");
  for (size_t i = p.seccomp_shared; i < filters.size(); ++i) install(p, inj, who, *filters[i]);
}

}  // namespace crest
