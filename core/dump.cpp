// The checkpoint of a live tree, stage by stage:
//   1. freeze: seize and interrupt every thread below the root (core/ptrace.cpp)
//   2. collect: per process, task state, memory map and fds; then pipes and copy-on-write
//      sharing; every problem found is a refusal, reported together before anything is written
//   3. pages: stream present pages through the storage pipeline while still frozen (stop-copy)
//   4. commit: the checkpoint becomes durable and the newest
//   5. thaw (leave running) or kill
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <set>
#include <utility>
#include <cstring>

#include "core/checkpoint.h"
#include "core/context.h"
#include "core/netlock.h"
#include "core/snapshot.h"
#include "core/tracker_impl.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace crest {
namespace {

// Above this much memory to read, copy-on-write snapshots beat reading while frozen.
constexpr uint64_t kCowThresholdBytes = 64ull << 20;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Reads the planned runs of pages into the storage pipeline's batches.
//
// Process memory is read with pread on /proc/PID/mem, not process_vm_readv: since Linux 5.19 a
// read pin of a page shared copy-on-write makes the kernel copy it, which would undo the sharing
// between a parent and its children (and make a snapshot copy as big as the job), where
// /proc/PID/mem reads the shared page as it is. It also reads PROT_NONE pages.
class ProcessPageSource : public storage::PageSource {
 public:
  explicit ProcessPageSource(const std::vector<PageRead>& reads) : reads_(reads) {}
  // For a pre-copy of a running tree: memory that cannot be read (unmapped meanwhile) is given
  // as zeros and listed in `failed`, to be read again while frozen, instead of failing.
  ProcessPageSource(const std::vector<PageRead>& reads, std::vector<PageRead>* failed)
      : reads_(reads), failed_(failed) {}

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

 private:
  // The reads come process by process: one /proc/PID/mem open at a time (one for each of a
  // tree's processes would outnumber RLIMIT_NOFILE in a tree of 20,000).
  int mem_fd(pid_t pid) {
    if (mem_ && mem_pid_ == pid) return mem_.get();
    mem_.reset(::open(proc::path(pid, "mem").c_str(), O_RDONLY | O_CLOEXEC));
    if (!mem_) throw_errno("cannot open " + proc::path(pid, "mem"), errno, Errc::kernel);
    mem_pid_ = pid;
    return mem_.get();
  }

  void read_into(const PageRead& r, uint64_t addr, uint64_t n, std::byte* dst) {
    size_t len = n * 4096;
    int fd = r.fd >= 0 ? r.fd : mem_fd(r.pid);
    size_t got = 0;
    while (got < len) {
      ssize_t k = ::pread(fd, dst + got, len - got, static_cast<off_t>(addr + r.bias + got));
      if (k < 0) {
        if (errno == EINTR) continue;
        if (failed_ && r.fd < 0) break;
        throw_errno(r.fd >= 0 ? "cannot read file contents for owner " + std::to_string(r.owner)
                              : "cannot read memory of process " + std::to_string(r.pid),
                    errno, Errc::kernel);
      }
      if (k == 0) break;
      got += static_cast<size_t>(k);
    }
    if (got < len && failed_ && r.fd < 0) {
      std::memset(dst, 0, len);
      PageRead again = r;
      again.addr = addr;
      again.npages = n;
      failed_->push_back(again);
      return;
    }
    if (got < len) {
      // A file ends inside its last page; process memory never ends early.
      if (r.fd < 0)
        fail(Errc::kernel, "memory of process " + std::to_string(r.pid) + " ended early at " +
                               std::to_string(addr + got));
      std::memset(dst + got, 0, len - got);
    }
  }

  const std::vector<PageRead>& reads_;
  std::vector<PageRead>* failed_ = nullptr;
  size_t index_ = 0;
  uint64_t done_ = 0;
  UniqueFd mem_;
  pid_t mem_pid_ = 0;
};

// Memory for pages read while frozen: one anonymous mapping of its own, unmapped when done, so
// that a daemon's buffer for one big checkpoint goes back to the system instead of staying in
// its heap. It is populated at once: faulted in by the reads of /proc/PID/mem instead, it made
// the reads four times slower (550 ms instead of 130 for 204 MiB, the tree frozen). Made ready
// before the freeze when the size can be foreseen.
class PageBuffer {
 public:
  PageBuffer() = default;
  explicit PageBuffer(size_t bytes) : size_(bytes) {
    if (size_ == 0) return;
    void* m = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      size_ = 0;
      throw_errno("cannot map " + std::to_string(bytes >> 20) + " MiB to buffer pages in", errno,
                  Errc::kernel);
    }
    base_ = static_cast<std::byte*>(m);
    // 4 KiB pages: finding free huge pages can take longer than all the reads.
    ::madvise(base_, size_, MADV_NOHUGEPAGE);
    ::madvise(base_, size_, MADV_POPULATE_WRITE);  // advice only: the reads fault in what is left
  }
  PageBuffer(PageBuffer&& o) noexcept
      : size_(std::exchange(o.size_, 0)), base_(std::exchange(o.base_, nullptr)) {}
  PageBuffer& operator=(PageBuffer&& o) noexcept {
    std::swap(size_, o.size_);
    std::swap(base_, o.base_);
    return *this;
  }
  ~PageBuffer() {
    if (base_ != nullptr) ::munmap(base_, size_);
  }

  size_t size() const { return size_; }
  std::byte* data() const { return base_; }

 private:
  size_t size_ = 0;
  std::byte* base_ = nullptr;
};

// Room for `pages` pages in batches of a chunk each, as BufferedPages lays them out.
size_t buffer_bytes_for(uint64_t pages) {
  return (pages + schema::kChunkPages - 1) / schema::kChunkPages * schema::kChunkBytes;
}

// Pages read into memory while the tree is frozen and handed to the writer after the thaw: the
// freeze lasts as long as a copy of the pages, not their compression and write.
class BufferedPages : public storage::PageSource {
 public:
  // Drains `source`, which gives `pages` pages, into `buffer` (replaced when too small).
  BufferedPages(storage::PageSource& source, uint64_t pages, PageBuffer buffer)
      : buffer_(std::move(buffer)) {
    const size_t need = buffer_bytes_for(pages);
    if (buffer_.size() < need) buffer_ = PageBuffer(need);
    for (size_t at = 0; at < need; at += schema::kChunkBytes) {
      storage::PageBatch batch;
      batch.data = buffer_.data() + at;
      if (!source.fill(batch)) break;
      batches_.push_back(std::move(batch.extents));
    }
  }

  bool fill(storage::PageBatch& batch) override {
    if (next_ == batches_.size()) return false;
    const std::byte* bytes = buffer_.data() + next_ * schema::kChunkBytes;
    for (const auto& e : batches_[next_]) {
      std::memcpy(batch.next_page(), bytes + batch.npages * schema::kPageSize,
                  e.npages * schema::kPageSize);
      batch.add(e.owner, e.addr, e.npages);
    }
    ++next_;
    return true;
  }

 private:
  PageBuffer buffer_;
  std::vector<std::vector<storage::PageExtent>> batches_;  // the extents of each chunk's pages
  size_t next_ = 0;
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
  info.ext_unix_sk = opts.ext_unix_sk ? 1 : 0;
}

// Pids as the tree itself sees them (proc::NamespacePids).
void map_namespace_pids(DumpContext& ctx) {
  proc::NamespacePids ns(ctx.tree.root());
  ctx.meta.info.pid_namespace = ns.own_namespace() ? 1 : 0;
  for (auto& p : ctx.tree.processes())
    for (pid_t tid : p.threads) ctx.ns_pid[tid] = ns.of(tid);
  for (auto& [pid, ppid] : ctx.tree.zombies()) ctx.ns_pid[pid] = ns.of(pid);
}

// Processes outside the tree that are in a session or process group a process of the tree leads
// (a daemon's grandchild re-parented to init): the restored tree will not have them, and the
// report names them.
void note_outside_members(DumpContext& ctx) {
  std::set<pid_t> tree, leaders;
  for (auto& p : ctx.tree.processes()) tree.insert(p.pid);
  for (auto& [pid, ppid] : ctx.tree.zombies()) tree.insert(pid);
  leaders = tree;
  DIR* d = ::opendir("/proc");
  if (!d) return;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end != 0 || pid <= 0 || tree.count(static_cast<pid_t>(pid))) continue;
    try {
      auto st = proc::stat(static_cast<pid_t>(pid));
      const bool session = leaders.count(st.session) > 0, group = leaders.count(st.pgrp) > 0;
      if (!session && !group) continue;
      ctx.warnings.push_back(
          "process " + std::to_string(pid) + " (" + proc::comm(static_cast<pid_t>(pid)) + ") is in " +
          (group ? "process group " + std::to_string(st.pgrp) : "session " + std::to_string(st.session)) +
          " of the tree but lives outside the tree (its parent is " + std::to_string(st.ppid) +
          "): the restored tree will not have it");
    } catch (const Error&) {
      // gone meanwhile
    }
  }
  ::closedir(d);
}

void check_flags_unchanged(DumpContext& ctx) {
  for (pid_t pid : ctx.flags_from_before) {
    std::vector<proc::Mapping> now;
    try {
      now = proc::maps(pid, true);
    } catch (const Error&) {
      continue;  // ended since: nothing of it to be wrong about
    }
    const auto& before = ctx.smaps_before.at(pid);
    std::map<uint64_t, const proc::Mapping*> by_start;
    for (auto& m : now) by_start[m.start] = &m;
    for (auto& b : before) {
      auto it = by_start.find(b.start);
      if (it == by_start.end() || it->second->end != b.end) continue;  // changed shape: re-read next time
      auto strip = [](std::vector<std::string> f) {
        f.erase(std::remove_if(f.begin(), f.end(),
                               [](const std::string& x) { return x == "uw" || x == "um" || x == "sd"; }),
                f.end());
        return f;
      };
      if (strip(it->second->vmflags) != strip(b.vmflags))
        fail(Errc::busy, "process " + std::to_string(pid) + " changed the flags of its mapping " +
                             b.name + " while it was being checkpointed; no checkpoint taken (the "
                             "next one will read them again)");
    }
  }
}

// A restore holds every open description of the tree at once (core/restore.cpp): a tree of many
// processes may hold more than this node's hard RLIMIT_NOFILE lets one process hold. Said now,
// while the job still runs here, rather than first at the restore.
namespace {
void warn_file_limit(DumpContext& ctx) {
  std::set<int64_t> descriptions;
  for (auto& f : ctx.meta.fds) descriptions.insert(f.file_id);
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_max == RLIM_INFINITY ||
      descriptions.size() + 64 <= nofile.rlim_max)
    return;
  ctx.warnings.push_back("the tree holds " + std::to_string(descriptions.size()) +
                         " open file descriptions, which a restore holds all at once: above the "
                         "hard RLIMIT_NOFILE of " + std::to_string(nofile.rlim_max) +
                         " here, a restore on this node will be refused (raise it: ulimit -Hn, "
                         "LimitNOFILE=)");
}
}  // namespace

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
  finish_dump_fds(ctx);
  dump_sysv(ctx);
  find_cow_shared(ctx);
  note_outside_members(ctx);
  // Children that exited and wait to be reaped: their parent will ask for their status.
  for (auto& [pid, ppid] : ctx.tree.zombies()) {
    auto st = proc::stat(pid);
    schema::ProcessRecord z;
    z.pid = ctx.recorded(pid);
    z.ppid = ctx.recorded(ppid);
    auto status = proc::status(pid);
    auto nspgid = proc::status_numbers(status, "NSpgid");
    auto nssid = proc::status_numbers(status, "NSsid");
    z.pgid = nspgid.empty() ? st.pgrp : static_cast<int32_t>(nspgid.back());
    z.sid = nssid.empty() ? st.session : static_cast<int32_t>(nssid.back());
    z.flags = schema::kProcessZombie;
    z.exit_status = st.exit_code;
    z.exit_signal = st.exit_signal;
    z.comm = proc::comm(pid);
    ctx.meta.processes.push_back(std::move(z));
  }
}

std::string refusal_message(pid_t root, const DumpContext& ctx) {
  const auto lines = ctx.refusal_lines();
  const size_t problems = ctx.refusals.size() + ctx.object_refusals.size();
  std::string msg = "the tree of pid " + std::to_string(root) + " holds what crest cannot restore (" +
                    std::to_string(problems) + (problems == 1 ? " problem" : " problems") +
                    "); nothing was written";
  for (auto& r : lines) msg += "\n  " + r;
  return msg;
}

// The smaps of every process of the tree, read while it still runs (see DumpContext).
std::map<pid_t, std::vector<proc::Mapping>> read_smaps_before(pid_t root) {
  std::map<pid_t, std::vector<proc::Mapping>> out;
  std::vector<pid_t> todo{root};
  while (!todo.empty() && out.size() < 100000) {
    pid_t pid = todo.back();
    todo.pop_back();
    try {
      out[pid] = proc::maps(pid, true);
      for (pid_t c : proc::children(pid)) todo.push_back(c);
    } catch (const Error&) {
      // Gone or not ours to read: the frozen pass reads it itself.
    }
  }
  return out;
}

// Ranges of `reads` of one owner split by `marks` (sorted, disjoint): inside -> in, else out.
void split_reads(const PageRead& r, const std::vector<PageRange>& marks, std::vector<PageRead>& in,
                 std::vector<PageRead>& out) {
  uint64_t pos = r.addr, end = r.addr + r.npages * 4096;
  auto it = std::lower_bound(marks.begin(), marks.end(), pos,
                             [](const PageRange& m, uint64_t a) { return m.end <= a; });
  auto emit = [&](std::vector<PageRead>& to, uint64_t s, uint64_t e) {
    if (e <= s) return;
    PageRead part = r;
    part.addr = s;
    part.npages = (e - s) / 4096;
    to.push_back(part);
  };
  for (; it != marks.end() && it->start < end && pos < end; ++it) {
    emit(out, pos, std::max(pos, it->start));
    uint64_t s = std::max(pos, it->start), e = std::min(end, it->end);
    emit(in, s, e);
    pos = std::max(pos, e);
  }
  emit(out, pos, end);
}

// With a tracker armed after the parent checkpoint, only written pages are read; pages present
// and clean are kept in the parent's chain — if the parent has them (a page can become present
// without being written, e.g. a read fault mapping the zero page: that one is read).
struct TrackedSplit {
  std::vector<PageRead> read;
  std::vector<storage::PageExtent> keep;
  uint64_t pages_dirty = 0;
};

// Sorted by start, overlaps merged.
void normalize(std::vector<PageRange>& v) {
  std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.start < b.start; });
  std::vector<PageRange> out;
  for (auto& r : v) {
    if (!out.empty() && r.start <= out.back().end)
      out.back().end = std::max(out.back().end, r.end);
    else
      out.push_back(r);
  }
  v = std::move(out);
}

// What a pre-copy stored while the tree ran, per page-store owner: the freeze keeps those pages
// unless they were written again; `redo` could not be read and counts as written.
struct Precopy {
  std::map<uint64_t, std::vector<PageRange>> stored, redo;
  uint64_t pages = 0;      // read while the tree ran
  size_t abandoned = 0;    // reads left to the freeze: the job wrote the probe again meanwhile
  int64_t ns = 0;
};

// The pre-copy's probe: the first eighth of each process's pages, at most 64 MiB in all, when
// there are at least 32 MiB to read (less is not worth the question).
void split_precopy_probe(const std::vector<PageRead>& reads, uint64_t total,
                         std::vector<PageRead>& probe, std::vector<PageRead>& rest) {
  constexpr uint64_t kMinPages = (32ull << 20) / 4096, kMaxProbePages = (64ull << 20) / 4096;
  if (total < kMinPages) {
    probe = reads;
    return;
  }
  std::map<pid_t, uint64_t> quota;
  for (auto& r : reads) quota[r.pid] += r.npages;
  for (auto& [pid, n] : quota) n = std::max<uint64_t>(1, std::min(n / 8, n * kMaxProbePages / total));
  for (auto& r : reads) {
    uint64_t& q = quota[r.pid];
    if (q == 0) {
      rest.push_back(r);
      continue;
    }
    PageRead head = r;
    head.npages = std::min(q, r.npages);
    q -= head.npages;
    probe.push_back(head);
    if (head.npages < r.npages) {
      PageRead tail = r;
      tail.addr += head.npages * 4096;
      tail.npages -= head.npages;
      rest.push_back(tail);
    }
  }
}

// Per owner, the pages the parent checkpoint holds itself (sorted, merged): only those can be
// kept. One it recorded as shared with the parent process may have stopped being shared since
// (the parent wrote its copy), without the child writing anything: it must be read again.
// Built before the freeze, from the parent's index alone.
std::map<uint64_t, std::vector<PageRange>> pages_in_parent(
    const std::vector<schema::PageRun>& parent_index) {
  std::map<uint64_t, std::vector<PageRange>> out;
  for (auto& run : parent_index)
    if (run.kind != static_cast<uint32_t>(schema::PageKind::cow_parent))
      out[run.owner].push_back({run.addr, run.addr + run.npages * 4096, 0});
  for (auto& [owner, ranges] : out) normalize(ranges);
  return out;
}

TrackedSplit apply_tracker(DumpContext& ctx, TrackerImpl& tracker, bool incremental,
                           const std::map<uint64_t, std::vector<PageRange>>& parent_has,
                           Precopy* pre) {
  TrackedSplit out;
  std::map<uint64_t, std::vector<PageRange>> written;  // owner -> written ranges
  std::set<uint64_t> fresh_owners;
  std::map<pid_t, std::vector<const schema::VmaRecord*>> vmas_of;
  for (auto& v : ctx.meta.vmas) vmas_of[v.pid].push_back(&v);
  for (auto& p : ctx.tree.processes()) {
    pid_t rpid = ctx.recorded(p.pid);
    const std::vector<const schema::VmaRecord*>& vmas = vmas_of[rpid];
    Injector inj(p.pid, ctx.syscall_insn.at(p.pid));
    bool fresh = false;
    auto w = tracker.written(p.pid, inj, vmas, fresh);
    if (pre) {
      auto redo = pre->redo.find(process_owner(rpid));
      if (redo != pre->redo.end()) w.insert(w.end(), redo->second.begin(), redo->second.end());
    }
    normalize(w);
    written[process_owner(rpid)] = std::move(w);
    if (fresh) fresh_owners.insert(process_owner(rpid));
  }
  static const std::vector<PageRange> kNone;
  // Reused for every range: a big job has tens of thousands of clean ranges between its dirty
  // pages, and this runs while the tree is frozen.
  std::vector<PageRead> dirty, clean, done, rest, in_parent, not_in_parent;
  for (auto& r : ctx.page_reads) {
    auto w = written.find(r.owner);
    if (!incremental || r.fd >= 0 || w == written.end() || fresh_owners.count(r.owner)) {
      out.read.push_back(r);  // file contents, new processes, full checkpoints: all of it
      continue;
    }
    dirty.clear();
    clean.clear();
    split_reads(r, w->second, dirty, clean);
    for (auto& d : dirty) out.pages_dirty += d.npages;
    out.read.insert(out.read.end(), dirty.begin(), dirty.end());
    if (pre) {
      // Clean since the pre-copy read them: stored already, with the content they have now.
      auto stored = pre->stored.find(r.owner);
      if (stored != pre->stored.end()) {
        done.clear();
        rest.clear();
        for (auto& c : clean) split_reads(c, stored->second, done, rest);
        std::swap(clean, rest);
      }
    }
    auto has = parent_has.find(r.owner);
    const std::vector<PageRange>& held = has == parent_has.end() ? kNone : has->second;
    in_parent.clear();
    not_in_parent.clear();
    for (auto& c : clean) split_reads(c, held, in_parent, not_in_parent);
    for (auto& k : in_parent) out.keep.push_back({k.owner, k.addr, k.npages});
    out.read.insert(out.read.end(), not_in_parent.begin(), not_in_parent.end());
  }
  return out;
}

// Pre-copy: the tree still running, read the pages its tracker says were written since the
// last checkpoint (the tracker arms them again as it reports them).
// With `probe`, a slice is read first and the rest given up when the job writes it again
// meanwhile (see below); without, all of it is read whatever happens (tests of the race).
Precopy precopy(storage::CheckpointWriter& writer, TrackerImpl& tracker, pid_t root, bool probe_first) {
  const int64_t t0 = now_ns();
  Precopy pre;
  proc::NamespacePids ns(root);
  std::vector<PageRead> reads;
  std::vector<pid_t> todo{root};
  std::set<pid_t> seen;
  while (!todo.empty()) {
    pid_t pid = todo.back();
    todo.pop_back();
    if (!seen.insert(pid).second) continue;
    try {
      if (proc::stat(pid).state == 'Z') continue;
      pid_t rpid = ns.of(pid);
      for (auto& c : proc::children(pid)) todo.push_back(c);
      auto written = tracker.precopy(pid);
      normalize(written);
      uint64_t owner = process_owner(rpid);
      for (auto& w : written) {
        PageRead r;
        r.owner = owner;
        r.addr = w.start;
        r.npages = w.pages();
        r.pid = pid;
        reads.push_back(r);
        pre.pages += r.npages;
      }
      pre.stored[owner] = std::move(written);
    } catch (const Error& e) {
      if (e.kind() != Errc::not_found && e.sys_errno() != ENOENT && e.sys_errno() != ESRCH) throw;
      // Gone meanwhile: the freeze will not find it either.
    }
  }
  // A job that rewrites its pages faster than they can be read (a solver sweeping its whole
  // grid many times a second) gains nothing from a pre-copy: all of it is read again frozen, and
  // stored twice. A slice of each process's pages is read first; when half of what was read is
  // written again by then, the rest is left to the freeze (as `redo`: it was armed unread).
  std::vector<PageRead> failed, probe, rest;
  if (probe_first)
    split_precopy_probe(reads, pre.pages, probe, rest);
  else
    probe = std::move(reads);
  {
    ProcessPageSource source(probe, &failed);
    writer.write_pages(source);
  }
  if (!rest.empty()) {
    uint64_t read = 0, again = 0;
    std::map<pid_t, std::vector<PageRange>> by_pid;
    for (auto& r : probe) {
      by_pid[r.pid].push_back({r.addr, r.addr + r.npages * 4096, 0});
      read += r.npages;
    }
    for (auto& [pid, ranges] : by_pid) {
      try {
        again += tracker.written_again(pid, ranges);
      } catch (const Error& e) {
        if (e.kind() != Errc::not_found && e.sys_errno() != ENOENT && e.sys_errno() != ESRCH) throw;
      }
    }
    if (again * 2 >= read) {
      pre.abandoned = rest.size();
      pre.pages = read;
      failed.insert(failed.end(), rest.begin(), rest.end());
    } else {
      ProcessPageSource source(rest, &failed);
      writer.write_pages(source);
    }
  }
  for (auto& f : failed) pre.redo[f.owner].push_back({f.addr, f.addr + f.npages * 4096, 0});
  for (auto& [owner, v] : pre.redo) normalize(v);
  pre.ns = now_ns() - t0;
  return pre;
}

// Pages the pre-copy stored that are not present at the freeze (unmapped, freed) are dropped.
void forget_precopied_absent(DumpContext& ctx, const Precopy& pre,
                             storage::CheckpointWriter& writer) {
  std::map<uint64_t, std::vector<PageRange>> present;
  for (auto& r : ctx.page_reads)
    if (r.fd < 0) present[r.owner].push_back({r.addr, r.addr + r.npages * 4096, 0});
  for (auto& run : ctx.cow_runs)
    present[run.owner].push_back({run.addr, run.addr + run.npages * 4096, 0});
  for (auto& [owner, v] : present) normalize(v);
  for (auto& [owner, stored] : pre.stored) {
    for (auto& st : stored) {
      PageRead as_read;
      as_read.owner = owner;
      as_read.addr = st.start;
      as_read.npages = st.pages();
      std::vector<PageRead> kept, gone;
      split_reads(as_read, present[owner], kept, gone);
      for (auto& g : gone) writer.forget_pages({g.owner, g.addr, g.npages});
    }
  }
}

// Connections to the outside of a tree about to be killed go into repair mode, in which a
// socket's end sends nothing: no FIN, no reset, the peer sees only silence (and the lock).
void silence_external(DumpContext& ctx) {
  const int on = 1;
  for (auto& s : ctx.external_tcp)
    if (::setsockopt(s.get(), IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) != 0)
      throw_errno("putting a connection to the outside in repair mode before the kill", errno,
                  Errc::kernel);
}

}  // namespace

void DumpContext::refuse_object(const std::string& object, std::string why, pid_t pid, int fd) {
  const std::string key = object + "\n" + why;
  auto [it, fresh] = object_refusal_index.emplace(key, object_refusals.size());
  if (fresh) object_refusals.push_back({std::move(why), {}});
  object_refusals[it->second].holders.emplace_back(pid, fd);
}

std::vector<std::string> DumpContext::refusal_lines(size_t max_lines) const {
  std::vector<std::string> out;
  const size_t total = refusals.size() + object_refusals.size();
  for (auto& r : refusals) {
    if (out.size() + 1 >= max_lines && total > max_lines) break;
    out.push_back(r);
  }
  for (auto& o : object_refusals) {
    if (out.size() + 1 >= max_lines && total > max_lines) break;
    // One line per object: what and why, then who holds it (the first few by name).
    std::string line = o.why + "; held by";
    std::set<pid_t> pids;
    for (auto& [pid, fd] : o.holders) pids.insert(pid);
    size_t shown = 0;
    for (auto& [pid, fd] : o.holders) {
      if (shown == 8) break;
      line += (shown ? ", " : " ") + std::string("process ") + std::to_string(pid) + " fd " +
              std::to_string(fd);
      ++shown;
    }
    if (o.holders.size() > shown)
      line += " and " + std::to_string(o.holders.size() - shown) + " more descriptors (" +
              std::to_string(pids.size()) + " processes in all)";
    out.push_back(line);
  }
  if (out.size() < total)
    out.push_back("... and " + std::to_string(total - out.size()) + " more problems");
  return out;
}

DumpResult dump(storage::CheckpointWriter& writer, const DumpOptions& opts) {
  auto log = log::get("core.dump");
  auto* tracker = dynamic_cast<TrackerImpl*>(opts.tracker);
  if (opts.tracker && !tracker) fail(Errc::internal, "unknown tracker implementation");
  const int64_t t_start = now_ns();
  // The snapshot copies of a crest that was killed while reading them are zombies in the tree
  // that nothing else reaps (clone children: the job's wait ignores them; only a restarted
  // crestd looks for them in its own jobs): reap them, or the job keeps them forever.
  try {
    if (unsigned n = reap_stray_copies(opts.pid))
      log->warn("pid {}: reaped {} snapshot copies left by a crest that died", opts.pid, n);
  } catch (const Error& e) {
    log->debug("pid {}: cannot look for stray snapshot copies: {}", opts.pid, e.what());
  }
  // Pre-copy (incremental checkpoints of a tree that goes on, with a tracker that can scan a
  // running process): what was written since the last checkpoint is read before the freeze, so
  // the freeze reads only what is written again meanwhile. The writer keeps the newer copy of a
  // page given twice.
  std::optional<Precopy> pre;
  bool want_precopy = tracker && opts.leave_running && opts.precopy && tracker->can_precopy() &&
                      !tracker->last_checkpoint().empty() &&
                      tracker->last_checkpoint() == writer.parent_uuid();
  if (want_precopy && tracker->precopy_skip > 0 && !opts.precopy_always) {
    --tracker->precopy_skip;
    want_precopy = false;
  }
  if (want_precopy) {
    if (opts.progress) opts.progress("pre-copy: reading pages written since the last checkpoint");
    try {
      pre = precopy(writer, *tracker, opts.pid, !opts.precopy_always);
    } catch (...) {
      tracker->invalidate();  // pages were re-armed unread: this checkpoint must be full
      throw;
    }
  }
  auto smaps = read_smaps_before(opts.pid);
  const auto parent_has = tracker ? pages_in_parent(writer.parent_index())
                                  : std::map<uint64_t, std::vector<PageRange>>{};
  // Without a pre-copy, the freeze will most likely read what the last one read into its buffer
  // (a job rewriting its working set): the buffer is made ready while the tree still runs.
  PageBuffer ready;
  if (tracker && opts.leave_running && !pre && tracker->last_frozen_pages > 0 &&
      tracker->last_frozen_pages * schema::kPageSize <= opts.buffer_bytes)
    ready = PageBuffer(buffer_bytes_for(tracker->last_frozen_pages));
  const int64_t t_smaps = now_ns();
  if (opts.progress) opts.progress("freezing the tree of pid " + std::to_string(opts.pid));
  auto tree = ptrace::FrozenTree::freeze(opts.pid);
  const int64_t t_frozen = now_ns();

  DumpContext ctx(tree);
  ctx.shell_job = opts.shell_job;
  ctx.smaps_before = std::move(smaps);
  ctx.tcp_established = opts.tcp_established;
  ctx.ext_unix_sk = opts.ext_unix_sk;
  // The lock is released when the dump fails (ctx.net_lock's destructor) or the tree goes on,
  // and kept for the restore when the dump kills the tree.
  ctx.net_lock_table = netlock::table_for(writer.uuid());
  if (opts.progress)
    opts.progress("collecting state of " + std::to_string(tree.processes().size()) +
                  " processes, " + std::to_string(tree.thread_count()) + " threads");
  collect(ctx);
  if (ctx.refused()) fail(Errc::unsupported, refusal_message(opts.pid, ctx));
  warn_file_limit(ctx);
  fill_identity(ctx, opts.pid, opts);
  if (opts.root_is_init) {
    const int32_t root = ctx.meta.info.root_pid;
    bool live = false;
    for (auto& p : ctx.meta.processes) {
      if (p.ppid != root || (p.flags & schema::kProcessRoot)) continue;
      if (p.flags & schema::kProcessZombie)
        fail(Errc::not_found, "the job is ending: its process " + std::to_string(p.pid) + " (" +
                                  p.comm + ") has exited; no checkpoint taken");
      live = true;
    }
    if (!live) fail(Errc::not_found, "the job is ending: its init has no process left to run");
  }
  auto& s = ctx.meta.stats;

  // Dirty pages, taken at the freeze point (the tracker is armed again right here).
  std::vector<storage::PageExtent> keep;
  bool incremental = false;
  if (tracker) {
    incremental = !tracker->last_checkpoint().empty() &&
                  tracker->last_checkpoint() == writer.parent_uuid();
    ctx.meta.info.tracker = tracker->name();
    try {
      const int64_t t0 = now_ns();
      auto split =
          apply_tracker(ctx, *tracker, incremental, parent_has, pre && incremental ? &*pre : nullptr);
      if (pre) forget_precopied_absent(ctx, *pre, writer);
      ctx.page_reads = std::move(split.read);
      keep = std::move(split.keep);
      s["pages_dirty"] = static_cast<int64_t>(split.pages_dirty);
      s["tracker_ns"] = now_ns() - t0;
      // Half or more of the pre-copy written again by the freeze: it did not pay.
      if (pre && pre->pages > 0 && split.pages_dirty * 2 >= pre->pages) tracker->precopy_skip = 3;
    } catch (...) {
      tracker->invalidate();
      throw;
    }
  }
  const int64_t t_collected = now_ns();

  uint64_t pages = 0;
  for (auto& r : ctx.page_reads) pages += r.npages;

  // Copy-on-write snapshot: worth it when the job is to go on and there is much to read. After
  // a pre-copy little is left, and a fork of the whole address space would cost more than it
  // saves, whatever the mode. An incremental checkpoint whose pages fit the buffer is read into
  // memory instead: a job that rewrites its working set (what made those pages dirty) would pay
  // a copy-on-write fault for each of them while the snapshot is read, and the fork itself costs
  // in proportion to all its memory, not to what is read.
  const uint64_t bytes = pages * schema::kPageSize;
  const bool fits = opts.leave_running && bytes <= opts.buffer_bytes;
  bool cow = opts.leave_running &&
             (opts.mode == SnapshotMode::cow ||
              (opts.mode == SnapshotMode::automatic && bytes >= kCowThresholdBytes &&
               !(incremental && fits)));
  if (pre && bytes < kCowThresholdBytes) cow = false;
  const bool buffer = !cow && fits;
  ctx.meta.info.mode = cow ? "cow" : "stop-copy";
  Snapshots snapshots;
  std::vector<PageRead> after_thaw;
  std::optional<BufferedPages> buffered;
  try {
    if (cow) {
      // Shared memory, file contents and regions a fork does not copy are read now; private
      // pages later, from the copies.
      std::vector<PageRead> now_reads;
      for (auto& r : ctx.page_reads) (r.fd >= 0 || r.no_fork ? now_reads : after_thaw).push_back(r);
      snapshots.take(tree, ctx.syscall_insn);
      for (auto& r : after_thaw) r.pid = snapshots.copy_of(r.pid);
      ctx.page_reads = std::move(now_reads);
    }
    if (opts.progress)
      opts.progress("saving " + std::to_string(pages) + " pages (" +
                    std::to_string(pages * 4096 >> 20) + " MiB)" +
                    (cow ? " from copy-on-write snapshots" : buffer ? " into memory" : ""));
    ProcessPageSource source(ctx.page_reads);
    if (buffer)
      buffered.emplace(source, pages, std::move(ready));
    else
      writer.write_pages(source);
  } catch (...) {
    if (tracker) tracker->invalidate();
    snapshots.release(true);
    throw;
  }
  const int64_t t_frozen_pages = now_ns();

  // With --leave-running the job goes on as soon as what must be read while frozen is read.
  // Without it, the job must not run past the checkpoint: it is killed after the commit, still
  // frozen.
  if (opts.leave_running) {
    tree.detach();
    log::get("core.dump")->debug("pid {}: the tree runs on; writing what is left", opts.pid);
    ctx.net_lock.release();
    ctx.meta.info.net_lock.clear();  // the image names no lock
  }
  const int64_t t_thawed = now_ns();
  // VmFlags read before the freeze are right if they still are now: a mapping whose flags
  // changed in between (an madvise of a whole mapping) may have had either at the freeze.
  if (opts.leave_running) {
    try {
      check_flags_unchanged(ctx);
    } catch (...) {
      if (tracker) tracker->invalidate();
      snapshots.release(false);
      throw;
    }
  }
  // Index work only, which needs nothing frozen: pages kept in the parent's chain, pages shared
  // copy-on-write with the parent process.
  try {
    for (auto& k : keep) writer.keep_pages(k);
    for (auto& run : ctx.cow_runs)
      writer.record_pages({run.owner, run.addr, run.npages}, schema::PageKind::cow_parent);
  } catch (...) {
    if (tracker) tracker->invalidate();
    if (cow) snapshots.release(!opts.leave_running);
    throw;
  }
  if (cow) {
    try {
      ProcessPageSource source(after_thaw);
      writer.write_pages(source);
    } catch (...) {
      if (tracker) tracker->invalidate();
      snapshots.release(false);
      throw;
    }
    snapshots.release(false);
  }
  if (buffered) {
    try {
      writer.write_pages(*buffered);
    } catch (...) {
      if (tracker) tracker->invalidate();
      throw;
    }
  }
  const int64_t t_pages = now_ns();

  uint64_t cow_pages = 0;
  for (auto& run : ctx.cow_runs) cow_pages += run.npages;
  uint64_t kept_pages = 0;
  for (auto& k : keep) kept_pages += k.npages;
  s["processes"] = static_cast<int64_t>(tree.processes().size());
  s["threads"] = static_cast<int64_t>(tree.thread_count());
  s["vmas"] = static_cast<int64_t>(ctx.meta.vmas.size());
  s["fds"] = static_cast<int64_t>(ctx.meta.fds.size());
  s["pages_read"] = static_cast<int64_t>(pages + (pre ? pre->pages : 0));
  if (pre) {
    s["pages_precopied"] = static_cast<int64_t>(pre->pages);
    if (pre->abandoned) s["precopy_abandoned"] = 1;
    s["precopy_ns"] = pre->ns;
  }
  s["pages_unchanged"] = static_cast<int64_t>(kept_pages);
  s["pages_cow_shared"] = static_cast<int64_t>(cow_pages);
  s["pages_buffered"] = static_cast<int64_t>(buffer ? pages : 0);
  s["smaps_ns"] = t_smaps - t_start;
  s["freeze_ns"] = t_frozen - t_smaps;
  s["froze_cgroup"] = tree.cgroup().empty() ? 0 : 1;
  s["collect_ns"] = t_collected - t_frozen;
  s["pages_frozen_ns"] = t_frozen_pages - t_collected;
  s["pages_ns"] = t_pages - t_collected;
  s["frozen_ns"] = t_thawed - t_smaps;

  if (opts.progress) opts.progress("committing");
  DumpResult result;
  try {
    result.checkpoint = writer.commit(ctx.meta);
  } catch (...) {
    if (tracker) tracker->invalidate();
    throw;
  }
  const int64_t t_commit = now_ns();
  std::set<pid_t> alive;
  for (auto& p : tree.processes()) alive.insert(p.pid);
  if (tracker) {
    tracker->committed(writer.uuid(), alive);
    tracker->last_frozen_pages = buffer ? pages : 0;  // a snapshot or too big: no buffer next
  }
  if (!opts.leave_running) {
    if (ctx.net_lock.held()) ctx.net_lock.keep(opts.pid, proc::stat(opts.pid).starttime);
    silence_external(ctx);
    log::get("core.dump")->debug("pid {}: killing the tree", opts.pid);
    tree.kill();
    ctx.external_tcp.clear();  // ends them, in repair mode, without a packet
  }
  const int64_t t_end = now_ns();

  const auto& w = writer.stats();
  result.stats = ctx.meta.stats;
  result.notes = ctx.warnings;
  result.stats["pages_zero"] = static_cast<int64_t>(w.pages_zero);
  result.stats["pages_stored"] = static_cast<int64_t>(w.pages_stored);
  result.stats["pages_kept"] = static_cast<int64_t>(w.pages_kept);
  result.stats["bytes_stored"] = static_cast<int64_t>(w.bytes_stored);
  result.stats["chunks"] = static_cast<int64_t>(w.chunks);
  result.stats["commit_ns"] = t_commit - t_pages;
  result.stats["total_ns"] = t_end - t_start;
  log->info("pid {}: checkpoint {} committed: {} pages read, {} kept, frozen {:.1f} ms ({})",
            opts.pid, result.checkpoint, pages, kept_pages,
            static_cast<double>(result.stats["frozen_ns"]) / 1e6, ctx.meta.info.mode);
  return result;
}

CheckResult check_tree(pid_t pid, bool tcp_established, bool shell_job, bool ext_unix_sk) {
  auto tree = ptrace::FrozenTree::freeze(pid);
  DumpContext ctx(tree);
  ctx.tcp_established = tcp_established;
  ctx.ext_unix_sk = ext_unix_sk;
  ctx.shell_job = shell_job;
  CheckResult r;
  try {
    collect(ctx);
  } catch (const Error& e) {
    r.problems.push_back(e.what());
  }
  for (auto& line : ctx.refusal_lines(1000)) r.problems.push_back(line);
  r.notes = ctx.warnings;
  r.processes = tree.processes().size();
  r.threads = tree.thread_count();
  r.vmas = ctx.meta.vmas.size();
  r.fds = ctx.meta.fds.size();
  for (auto& rd : ctx.page_reads) r.pages += rd.npages;
  return r;
}

}  // namespace crest
