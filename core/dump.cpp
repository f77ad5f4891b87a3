// The checkpoint of a live tree, stage by stage:
//   1. freeze: seize and interrupt every thread below the root (core/ptrace.cpp)
//   2. collect: per process, task state, memory map and fds; then pipes and copy-on-write
//      sharing; every problem found is a refusal, reported together before anything is written
//   3. pages: stream present pages through the storage pipeline while still frozen (stop-copy)
//   4. commit: the checkpoint becomes durable and the newest
//   5. thaw (leave running) or kill
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

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

// Reads the planned runs of pages into the storage pipeline's batches.
class ProcessPageSource : public storage::PageSource {
 public:
  explicit ProcessPageSource(const std::vector<PageRead>& reads) : reads_(reads) {}

  bool fill(storage::PageBatch& batch) override {
    while (batch.room() > 0 && index_ < reads_.size()) {
      const PageRead& r = reads_[index_];
      uint64_t n = std::min(batch.room(), r.npages - done_);
      uint64_t addr = r.addr + done_ * 4096;
      read_into(r, addr, n, batch.next_page());
      batch.add(r.owner, addr, n);
      done_ += n;
      if (done_ == r.npages) {
        ++index_;
        done_ = 0;
      }
    }
    return batch.npages > 0;
  }

  uint64_t bytes_read() const { return bytes_; }

 private:
  void read_into(const PageRead& r, uint64_t addr, uint64_t n, std::byte* dst) {
    size_t len = n * 4096;
    bytes_ += len;
    if (r.fd >= 0) {
      size_t got = 0;
      while (got < len) {
        ssize_t k = ::pread(r.fd, dst + got, len - got, static_cast<off_t>(addr + got));
        if (k < 0) throw_errno("cannot read file contents for owner " + std::to_string(r.owner));
        if (k == 0) break;
        got += static_cast<size_t>(k);
      }
      if (got < len) std::memset(dst + got, 0, len - got);  // the file ends inside its last page
      return;
    }
    if (!r.force) {
      iovec local{dst, len};
      iovec remote{reinterpret_cast<void*>(addr), len};
      ssize_t k = ::process_vm_readv(r.pid, &local, 1, &remote, 1, 0);
      if (k == static_cast<ssize_t>(len)) return;
    }
    remote_read(r.pid, addr, dst, len);  // unreadable pages: through /proc/PID/mem
  }

  const std::vector<PageRead>& reads_;
  size_t index_ = 0;
  uint64_t done_ = 0;
  uint64_t bytes_ = 0;
};

void fill_identity(DumpContext& ctx, pid_t root, const DumpOptions& opts) {
  auto& info = ctx.meta.info;
  utsname u{};
  ::uname(&u);
  info.host = u.nodename;
  info.kernel_release = u.release;
  info.kernel_build = u.version;
  info.machine = u.machine;
  info.root_pid = ctx.recorded(root);
  info.job_id = opts.job_id;
  info.scheduler_job_id = opts.scheduler_job_id;
  info.tracker = "none";
  info.mode = "stop-copy";
}

// Pids as the tree itself sees them: inside its own pid namespace (crest run) they differ from
// ours; NSpid lists a task's pid in every namespace from ours down to its own.
void map_namespace_pids(DumpContext& ctx) {
  auto root_ns = proc::status_numbers(proc::status(ctx.tree.root()), "NSpid");
  bool own_ns = root_ns.size() > 1 && root_ns.back() == 1;
  ctx.meta.info.pid_namespace = own_ns ? 1 : 0;
  for (auto& p : ctx.tree.processes())
    for (pid_t tid : p.threads) {
      auto ns = proc::status_numbers(proc::status(tid), "NSpid");
      ctx.ns_pid[tid] = own_ns && ns.size() >= root_ns.size()
                            ? static_cast<pid_t>(ns[root_ns.size() - 1])
                            : tid;
    }
}

// Everything but the pages. Returns the refusals (empty: the tree can be checkpointed).
void collect(DumpContext& ctx) {
  map_namespace_pids(ctx);
  for (auto& p : ctx.tree.processes()) ctx.syscall_insn[p.pid] = find_syscall_insn(p.pid);
  for (auto& p : ctx.tree.processes()) {
    try {
      dump_process(ctx, p);
      dump_memory(ctx, p);
      dump_fds(ctx, p);
    } catch (Error& e) {
      e.with_context("process " + std::to_string(p.pid));
      throw;
    }
  }
  dump_pipes(ctx);
  find_cow_shared(ctx);
}

std::string refusal_message(pid_t root, const std::vector<std::string>& refusals) {
  std::string msg = "the tree of pid " + std::to_string(root) + " holds what crest cannot restore (" +
                    std::to_string(refusals.size()) + (refusals.size() == 1 ? " problem" : " problems") +
                    "); nothing was written";
  for (auto& r : refusals) msg += "\n  " + r;
  return msg;
}

}  // namespace

DumpResult dump(storage::CheckpointWriter& writer, const DumpOptions& opts) {
  auto log = log::get("core.dump");
  const int64_t t_start = now_ns();
  if (opts.progress) opts.progress("freezing the tree of pid " + std::to_string(opts.pid));
  auto tree = ptrace::FrozenTree::freeze(opts.pid);
  const int64_t t_frozen = now_ns();

  DumpContext ctx(tree);
  if (opts.progress)
    opts.progress("collecting state of " + std::to_string(tree.processes().size()) +
                  " processes, " + std::to_string(tree.thread_count()) + " threads");
  collect(ctx);
  if (!ctx.refusals.empty()) fail(Errc::unsupported, refusal_message(opts.pid, ctx.refusals));
  fill_identity(ctx, opts.pid, opts);
  const int64_t t_collected = now_ns();

  uint64_t pages = 0;
  for (auto& r : ctx.page_reads) pages += r.npages;
  if (opts.progress)
    opts.progress("saving " + std::to_string(pages) + " pages (" +
                  std::to_string(pages * 4096 >> 20) + " MiB)");
  ProcessPageSource source(ctx.page_reads);
  writer.write_pages(source);
  for (auto& run : ctx.cow_runs)
    writer.record_pages({run.owner, run.addr, run.npages}, schema::PageKind::cow_parent);
  const int64_t t_pages = now_ns();

  uint64_t cow_pages = 0;
  for (auto& run : ctx.cow_runs) cow_pages += run.npages;
  auto& s = ctx.meta.stats;
  s["processes"] = static_cast<int64_t>(tree.processes().size());
  s["threads"] = static_cast<int64_t>(tree.thread_count());
  s["vmas"] = static_cast<int64_t>(ctx.meta.vmas.size());
  s["fds"] = static_cast<int64_t>(ctx.meta.fds.size());
  s["pages_read"] = static_cast<int64_t>(pages);
  s["pages_cow_shared"] = static_cast<int64_t>(cow_pages);
  s["freeze_ns"] = t_frozen - t_start;
  s["collect_ns"] = t_collected - t_frozen;
  s["pages_ns"] = t_pages - t_collected;

  // With --leave-running the job may go on as soon as its pages are read: what is committed next
  // is already in our hands. Without it, the job must not run past the checkpoint: it is killed
  // only after the commit, still frozen.
  if (opts.leave_running) tree.detach();
  const int64_t t_thawed = now_ns();
  s["frozen_ns"] = t_thawed - t_start;

  if (opts.progress) opts.progress("committing");
  DumpResult result;
  result.checkpoint = writer.commit(ctx.meta);
  const int64_t t_commit = now_ns();
  if (!opts.leave_running) tree.kill();
  const int64_t t_end = now_ns();

  const auto& w = writer.stats();
  result.stats = ctx.meta.stats;
  result.stats["pages_zero"] = static_cast<int64_t>(w.pages_zero);
  result.stats["pages_stored"] = static_cast<int64_t>(w.pages_stored);
  result.stats["pages_kept"] = static_cast<int64_t>(w.pages_kept);
  result.stats["bytes_stored"] = static_cast<int64_t>(w.bytes_stored);
  result.stats["chunks"] = static_cast<int64_t>(w.chunks);
  result.stats["commit_ns"] = t_commit - t_thawed;
  result.stats["total_ns"] = t_end - t_start;
  log->info("pid {}: checkpoint {} committed: {} pages, frozen {:.1f} ms", opts.pid,
            result.checkpoint, pages, static_cast<double>(result.stats["frozen_ns"]) / 1e6);
  return result;
}

CheckResult check_tree(pid_t pid) {
  auto tree = ptrace::FrozenTree::freeze(pid);
  DumpContext ctx(tree);
  CheckResult r;
  try {
    collect(ctx);
  } catch (const Error& e) {
    r.problems.push_back(e.what());
  }
  r.problems.insert(r.problems.end(), ctx.refusals.begin(), ctx.refusals.end());
  r.processes = tree.processes().size();
  r.threads = tree.thread_count();
  r.vmas = ctx.meta.vmas.size();
  r.fds = ctx.meta.fds.size();
  for (auto& rd : ctx.page_reads) r.pages += rd.npages;
  return r;
}

}  // namespace crest
