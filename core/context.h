// State shared by the per-kind dump and restore code of one checkpoint or one restore.
// Internal to core/: the public entry points are in core/checkpoint.h.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/fds/unix_diag.h"
#include "core/inject.h"
#include "core/netlock.h"
#include "core/proc.h"
#include "core/ptrace.h"
#include "core/util/unique_fd.h"
#include "storage/schema.h"
#include "storage/store.h"

namespace crest {

// Owner ids of the page store: a process's address space is owned by its pid; the contents of a
// file object (memfd, shared memory, unlinked file) by a stable id derived from its inode, so that
// successive checkpoints of the same job name the same object the same way.
inline uint64_t process_owner(pid_t pid) { return static_cast<uint64_t>(pid); }
uint64_t file_owner(uint64_t dev, uint64_t ino);

// Where the page source reads one run of pages from.
struct PageRead {
  uint64_t owner = 0;
  uint64_t addr = 0;    // address in the process, or offset in the file
  uint64_t npages = 0;
  pid_t pid = 0;        // process memory: process_vm_readv, or /proc/PID/mem when force is set
  bool force = false;   // the pages are not readable (PROT_NONE...): go through /proc/PID/mem
  bool no_fork = false; // in a DONTFORK/WIPEONFORK VMA: a snapshot copy does not have them
  uint64_t bias = 0;    // read at addr + bias (crest's own attach of a System V segment, whose
                        // pages are recorded by their offset in the segment)
  int fd = -1;          // file contents: pread on this descriptor of ours
};

struct DumpContext {
  const ptrace::FrozenTree& tree;
  schema::CheckpointMeta meta;
  std::map<const void*, std::shared_ptr<void>> kind_state;  // a kind's own dump state, by kind
  std::vector<std::string> refusals;  // each names the task, fd or mapping and why
  // Refusals of one object held by many (a socket shared by 250 processes): said once, with
  // its holders. Keyed by what is refused and why, in the order first seen.
  struct ObjectRefusal {
    std::string why;
    std::vector<std::pair<pid_t, int>> holders;  // (pid, fd)
  };
  std::vector<ObjectRefusal> object_refusals;
  std::map<std::string, size_t> object_refusal_index;
  // What the report says without refusing: the restored tree may need it (a process of its
  // session living outside it...).
  std::vector<std::string> warnings;
  std::vector<PageRead> page_reads;   // private memory and file contents to store
  std::vector<schema::PageRun> cow_runs;  // pages shared copy-on-write with the parent process
  std::vector<UniqueFd> held_fds;     // our descriptors the page reads use
  std::map<std::pair<uint64_t, uint64_t>, int64_t> file_by_inode;  // (dev, ino) -> files row
  std::set<uint64_t> planned_owners;  // file contents already planned for reading
  // Open file descriptions seen so far, by inode: (files row, host pid, fd where it is held).
  std::map<std::pair<uint64_t, uint64_t>, std::vector<std::tuple<int64_t, pid_t, int>>> descriptions;
  // The same, split further by what differs between descriptions that share an inode (all
  // eventfds, timerfds and epolls share one): each list is kept in kcmp order and bisected.
  std::map<std::tuple<uint64_t, uint64_t, std::string>, std::vector<std::tuple<int64_t, pid_t, int>>>
      descriptions_by_kind;
  std::map<pid_t, uint64_t> syscall_insn;  // per process: address of `syscall` in its [vdso]
  // VmFlags of every mapping, read from /proc/PID/smaps before the freeze (reading smaps walks
  // every page table entry: tens of ms per GiB, too slow for the frozen window). Mappings found
  // unchanged while frozen take their flags from here; a process with any other is read again.
  std::map<pid_t, std::vector<proc::Mapping>> smaps_before;
  std::set<pid_t> flags_from_before;  // processes whose VmFlags came from smaps_before
  // epoll targets as fdinfo listed them, resolved once every descriptor is known (fds/epoll.cpp)
  std::vector<std::tuple<schema::EpollRecord, pid_t, int>> epoll_targets;
  // Unix sockets as the kernel's socket diagnostics list them, read once (fds/unix_socket.cpp)
  std::map<uint32_t, fds::UnixDiag> unix_diag;
  bool unix_diag_read = false;
  // --ext-unix-sk: Unix sockets connected to a named socket outside the tree are dumped
  // (fds/unix_outside.cpp). The connections whose SO_PEERCRED names a process outside the tree,
  // by socket inode: that process's pid (refused unless the peer is outside).
  bool ext_unix_sk = false;
  std::map<uint64_t, pid_t> unix_outside_cred;
  // Descriptors carried by messages queued to Unix sockets (SCM_RIGHTS): our own copies (a
  // peek installs them in crest), for the message at meta.socket_queues[queue_row]. Once every
  // descriptor of the tree is known, each is found among them by kcmp or dumped as a
  // description no process holds (resolve_in_flight, fds/table.cpp); kept open until the end.
  struct InFlight {
    size_t queue_row = 0;
    std::vector<UniqueFd> fds;
    std::string where;  // the socket whose queue holds the message, for messages
  };
  std::vector<InFlight> in_flight;
  // --tcp-established: connections to peers outside the tree are dumped, under a network lock
  // named net_lock_table ("": no lock may be taken, as for `crest check`); our copies of them,
  // put in repair mode before a kill.
  bool tcp_established = false;
  std::string net_lock_table;
  netlock::Lock net_lock;
  std::vector<UniqueFd> external_tcp;
  // Host pid/tid -> pid as recorded: the same, or the pid inside the tree's own pid namespace.
  std::map<pid_t, pid_t> ns_pid;
  bool shell_job = false;  // DumpOptions::shell_job
  pid_t recorded(pid_t host) const {
    auto it = ns_pid.find(host);
    return it == ns_pid.end() ? 0 : it->second;
  }

  explicit DumpContext(const ptrace::FrozenTree& t) : tree(t) {}
  void refuse(std::string why) { refusals.push_back(std::move(why)); }
  void refuse_object(const std::string& object, std::string why, pid_t pid, int fd);
  bool refused() const { return !refusals.empty() || !object_refusals.empty(); }
  // Every refusal, each object once with its holders (at most `max_lines` lines).
  std::vector<std::string> refusal_lines(size_t max_lines = 100) const;
  schema::FileRecord& add_file(schema::FileRecord rec);  // assigns rec.id
  schema::FileRecord* file(int64_t id);
};

// Per kind, the dump half (see each file). Every function may call ctx.refuse() for what it
// cannot handle and goes on, so that one dump names every problem at once.
void dump_process(DumpContext& ctx, const ptrace::FrozenProcess& p);  // task.cpp
void dump_memory(DumpContext& ctx, const ptrace::FrozenProcess& p);   // memory.cpp
void dump_fds(DumpContext& ctx, const ptrace::FrozenProcess& p);      // fds/table.cpp
void finish_dump_fds(DumpContext& ctx);  // fds/: what needs every fd seen (pipe ends...)
void find_cow_shared(DumpContext& ctx);  // memory.cpp: pages a child shares with its parent
void dump_aio_ring(DumpContext& ctx, const ptrace::FrozenProcess& p, schema::VmaRecord& v);  // aio.cpp
// In the task, through its injector and scratch page (task.cpp calls them):
void dump_credentials(DumpContext& ctx, const ptrace::FrozenProcess& p, schema::ProcessRecord& rec,
                      Injector& inj, uint64_t scratch);             // creds.cpp
void dump_sched(DumpContext& ctx, pid_t tid, schema::ThreadRecord& t);  // sched.cpp
void dump_timers(DumpContext& ctx, const ptrace::FrozenProcess& p, Injector& inj,
                 uint64_t scratch);                                // timers.cpp
void dump_seccomp(DumpContext& ctx, pid_t tid, schema::ThreadRecord& t);  // seccomp.cpp
void dump_namespaces(DumpContext& ctx, const ptrace::FrozenProcess& p,
                     schema::ProcessRecord& rec);                  // namespaces.cpp
void dump_thread_mempolicy(Injector& inj, pid_t pid, uint64_t scratch,
                           schema::ThreadRecord& t);               // numa.cpp
void dump_vma_mempolicies(DumpContext& ctx, pid_t pid, const schema::ThreadRecord& main,
                          size_t first_vma);                       // numa.cpp
// sysv_ipc.cpp: the job's System V objects (after every process's memory is collected), and
// the owner of a segment's pages.
void dump_sysv(DumpContext& ctx);
uint64_t sysv_owner(int32_t shmid);
// memory.cpp: plans saving the contents of a memfd / shared memory / unlinked file (once per
// object), reading it through open_path (a /proc map_files or fd link).
void plan_file_contents(DumpContext& ctx, schema::FileRecord& f, const std::string& open_path);

// ---- restore ----------------------------------------------------------------------------------

struct RestoreOptions;
class LazyPages;

// The scratch mapping crest makes in each process it rebuilds (core/memory.cpp), by offset:
// [0, kScratchBatchAt) arguments of single calls, each user at its own offsets;
// [kScratchBatchAt, 8192) the code and table of a SyscallBatch (batch_in);
// [8192, 12288) InTask's slots (fds/in_task.h);
// [kScratchBatchArgs, +4096) what batched calls point to (their structures, their results);
// the last page, the stack of the threads being created (core/task.cpp).
constexpr uint64_t kScratchSize = 5 * 4096;
constexpr uint64_t kScratchBatchAt = 5376;
constexpr uint64_t kScratchBatchEnd = 8192;
constexpr uint64_t kScratchBatchArgs = 12288;
constexpr uint64_t kScratchBatchArgsSize = 4096;

// A process being rebuilt: stopped under our ptrace, with an injector on its main thread.
struct RestoredProcess {
  const schema::ProcessRecord* rec = nullptr;
  pid_t pid = 0;        // pid as seen from here (differs from rec->pid inside a new pid namespace)
  std::unique_ptr<Injector> inj;
  uint64_t scratch = 0;            // scratch page for arguments
  uint64_t scratch_size = 0;
  int tracer_pidfd_remote = -1;    // the process's pidfd of the restorer, for pidfd_getfd (without
                                   // it: its end of RestoreContext::fd_channel's pair)
  std::vector<pid_t> threads;      // restored thread ids (as seen from here), main first
  std::vector<const schema::ThreadRecord*> thread_recs;  // the record of each of `threads`
  std::set<uint64_t> kept_vmas;    // starts of VMAs inherited from the parent as they are
  // A placeholder, not a process of the image's tree as such: a zombie that ends before the
  // release, or a helper holding a session or group id whose leader is gone, which ends and is
  // reaped by its parent. Neither gets memory, fds or state restored.
  enum class Role { process, zombie, helper } role = Role::process;
  RestoredProcess* parent = nullptr;  // the process that waits for it
  size_t seccomp_shared = 0;          // seccomp filters installed before its threads were made
  std::vector<int> detach_signals;    // per thread: the signal to detach it with (enter_syscalls)
};

// Calls for p's main thread run together, in few injections (core/inject.h).
inline SyscallBatch batch_in(RestoredProcess& p) {
  return SyscallBatch(*p.inj, p.scratch + kScratchBatchAt, kScratchBatchEnd - kScratchBatchAt);
}

struct RestoreContext {
  const schema::CheckpointMeta& meta;
  storage::CheckpointReader& reader;
  const RestoreOptions& opts;
  std::map<int64_t, UniqueFd> files;      // files row -> our descriptor of that description
  std::map<int64_t, UniqueFd> late_files; // deferred kinds: files row -> the description made
  std::map<uint64_t, UniqueFd> objects;   // contents owner -> memfd / shared memory / unlinked file
  std::vector<UniqueFd> keepers;          // FIFO ends that hold buffered bytes until release
  std::map<int64_t, std::string> file_paths;  // files row -> path usable by open() here
  std::vector<std::unique_ptr<RestoredProcess>> procs;  // creation order
  std::map<pid_t, RestoredProcess*> by_pid;              // by recorded pid
  std::vector<std::pair<RestoredProcess*, const schema::FdRecord*>> late_fds;  // deferred kinds
  std::deque<schema::ProcessRecord> helper_records;  // records of helpers (core/restore.cpp)
  std::map<const void*, std::shared_ptr<void>> kind_state;  // a kind's own restore state, by kind
  std::vector<std::string> warnings;
  // Without pidfd_getfd: our end of the socket pair whose other end every task holds at
  // tracer_pidfd_remote, to send them descriptors (install_fd). Invalid with pidfd_getfd.
  UniqueFd fd_channel;
  LazyPages* lazy = nullptr;  // --lazy: serves the pages restore_memory leaves out

  RestoreContext(const schema::CheckpointMeta& m, storage::CheckpointReader& r,
                 const RestoreOptions& o)
      : meta(m), reader(r), opts(o) {}
  const schema::FileRecord& file(int64_t id) const;
  // Copies one of our descriptors into the process at the lowest free number; returns it.
  int install_fd(RestoredProcess& p, int our_fd);
  // Our descriptor for making mapping v of a file row: the memory object, or the file opened
  // by path, such that the mapping gets the VmFlags v had.
  UniqueFd open_for_mapping(const schema::FileRecord& f, const schema::VmaRecord& v);
  std::set<uint64_t> write_sealed;  // memory objects whose seals against writing are in force
  uint64_t put(RestoredProcess& p, const void* data, size_t len, size_t offset = 0);
  uint64_t put_string(RestoredProcess& p, const std::string& s, size_t offset = 0);

  // The rows of a table of `meta` that belong to recorded pid `pid`, in table order
  // (rows_by<&Row::ppid>: those whose other pid column holds it). Each table's index is built
  // on first use: per-process work must not scan whole tables, which grows with the square of
  // the tree (a tree of 10,000 processes has 640,000 sigactions).
  template <auto Column, class Row>
  const std::vector<const Row*>& rows_by(const std::vector<Row>& table, pid_t pid) const {
    using Index = std::unordered_map<pid_t, std::vector<const Row*>>;
    static const char column_tag = 0;
    std::shared_ptr<void>& slot = pid_index_[{&table, &column_tag}];
    if (!slot) {
      auto index = std::make_shared<Index>();
      for (const Row& r : table) (*index)[r.*Column].push_back(&r);
      slot = index;
    }
    static const std::vector<const Row*> none;
    const Index& index = *static_cast<const Index*>(slot.get());
    auto it = index.find(pid);
    return it == index.end() ? none : it->second;
  }
  template <class Row>
  const std::vector<const Row*>& rows_of(const std::vector<Row>& table, pid_t pid) const {
    return rows_by<&Row::pid>(table, pid);
  }

 private:
  // rows_by: (table, column) -> index
  mutable std::map<std::pair<const void*, const void*>, std::shared_ptr<void>> pid_index_;
};

// The restore stages of each kind, in the order restore() runs them (see core/restore.cpp).
void prepare_files(RestoreContext& ctx);                   // fds/: every description, opened
void restore_memory(RestoreContext& ctx, RestoredProcess& p, const RestoredProcess* parent);
void restore_aio_ring(RestoreContext& ctx, RestoredProcess& p, const schema::VmaRecord& v);
void restore_vma_mempolicy(RestoreContext& ctx, RestoredProcess& p, const schema::VmaRecord& v);
void restore_thread_mempolicy(RestoreContext& ctx, RestoredProcess& p, Injector& inj,
                              const schema::ThreadRecord& t);  // numa.cpp
void restore_fds(RestoreContext& ctx, RestoredProcess& p);  // fds/table.cpp
void restore_process_state(RestoreContext& ctx, RestoredProcess& p);   // task.cpp: before children
void restore_time_namespace(RestoreContext& ctx, RestoredProcess& p);  // namespaces.cpp
void restore_threads(RestoreContext& ctx, RestoredProcess& p);         // task.cpp: after children
// Without clone3's set_tid (core/kernel/last_pid.h): makes the next task cloned in p's pid
// namespace get pid `want`. The host's namespace is written by crest (the caller holds a
// LastPidLock), a job's own by p itself through `inj` (restore.cpp).
void aim_next_pid(RestoreContext& ctx, RestoredProcess& p, Injector& inj, pid_t want);
// Where a pid that stays taken is: for the refusal's message.
std::string pid_namespace_name(const RestoreContext& ctx);
// Once every process and thread exists:
void restore_late_fds(RestoreContext& ctx);                // fds/table.cpp: a task's /proc files
void restore_timers(RestoreContext& ctx, RestoredProcess& p);         // timers.cpp: made
void arm_timers(RestoreContext& ctx, RestoredProcess& p);             // timers.cpp: at release
void restore_credentials(RestoreContext& ctx, RestoredProcess& p);     // creds.cpp (and seccomp)
void restore_seccomp_shared(RestoreContext& ctx, RestoredProcess& p,
                            const std::vector<const schema::ThreadRecord*>& threads);  // seccomp.cpp
void restore_seccomp(RestoreContext& ctx, RestoredProcess& p, size_t thread, Injector& inj);
void restore_fd_owners(RestoreContext& ctx);               // fds/table.cpp: after credentials
void restore_sched(RestoreContext& ctx, RestoredProcess& p);           // sched.cpp
void finish_memory(RestoreContext& ctx, RestoredProcess& p);           // memory.cpp: seals
void finish_process(RestoreContext& ctx, RestoredProcess& p);          // task.cpp: mm registrations
void release_process(RestoreContext& ctx, RestoredProcess& p);         // task.cpp: regs
// task.cpp, after release_process and before any thread of the tree runs: threads the checkpoint
// caught inside an interruptible syscall are stepped back into it; detach_threads lets them go.
void enter_syscalls(RestoredProcess& p);
void detach_threads(RestoredProcess& p);
void verify_restored(RestoreContext& ctx, RestoredProcess& p);         // verify.cpp
// sysv_ipc.cpp: the job's IPC namespace and objects, made before the root; the thread that
// creates the root enters it around that; attaches made again by each process (memory.cpp);
// what needs every process (sempids), before credentials.
void prepare_sysv(RestoreContext& ctx);
void enter_sysv_namespace(RestoreContext& ctx);
void leave_sysv_namespace(RestoreContext& ctx);
void restore_sysv_attach(RestoreContext& ctx, RestoredProcess& p, const schema::VmaRecord& v);
void finish_sysv(RestoreContext& ctx);

}  // namespace crest
