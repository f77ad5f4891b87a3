// The engine's entry points: checkpoint a live process tree, restore one, check what would be
// refused, and list the kernel features crest relies on. Errors are crest::Error.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "storage/schema.h"
#include "storage/store.h"

namespace crest {

using Progress = std::function<void(const std::string& stage)>;

class Tracker;
class LazyPages;

enum class SnapshotMode {
  automatic,  // copy-on-write for large trees, stop-copy for small ones
  stop_copy,  // read every page while the tree is frozen
  cow,        // freeze, fork copy-on-write snapshots, thaw at once, read the snapshots
};

inline constexpr uint64_t kDefaultBufferBytes = 512ull << 20;

struct DumpOptions {
  pid_t pid = 0;
  bool leave_running = false;  // detach after the commit; otherwise the tree is killed
  // Incremental checkpoints: the writer's parent must be the previous checkpoint of this tree.
  // With a tracker, only pages written since it are stored (the tracker is armed again); without
  // one, pages are compared with the parent's by content hash. Null tracker and no parent: full.
  Tracker* tracker = nullptr;
  SnapshotMode mode = SnapshotMode::automatic;
  // With a tracker that can scan a running tree (uffd-wp) and an incremental checkpoint of a tree
  // that goes on: read the pages written since the last checkpoint before freezing, so that the
  // freeze reads only those written again meanwhile (stats: pages_precopied, precopy_ns).
  bool precopy = true;
  // A pre-copy of at least 32 MiB reads a slice of each process first and leaves the rest to
  // the freeze when half the slice was written again meanwhile (stats: precopy_abandoned).
  // Pre-copy even when the last one did not pay (most of it was written again by the freeze,
  // after which the next few checkpoints skip it), and read all of it, slice or not.
  bool precopy_always = false;
  // A tree that goes on (leave_running) and is not snapshotted copy-on-write has its pages read
  // into memory while frozen, and compressed and written after the thaw, when they are at most
  // this many bytes (stats: pages_buffered); larger reads are written while frozen. The automatic
  // mode prefers this to a copy-on-write snapshot for incremental checkpoints that fit.
  uint64_t buffer_bytes = kDefaultBufferBytes;
  std::string job_id;
  std::string scheduler_job_id;
  // TCP connections to peers outside the tree are dumped (CRIU's --tcp-established) instead of
  // refused: locked with nftables while frozen (core/netlock.h), the lock kept from the kill
  // until the restore when the tree is killed, removed after the thaw with leave_running.
  bool tcp_established = false;
  // Unix sockets connected to a socket outside the tree by its name (syslog's /dev/log, a
  // daemon's socket; CRIU's --ext-unix-sk) are dumped instead of refused: at restore a datagram
  // socket connects to the name again, a stream or seqpacket socket makes a new connection to
  // the listener there (core/fds/unix_outside.h says exactly what the program gets).
  bool ext_unix_sk = false;
  // The root is a job's init (crest-init, pid 1 of crest run's pid namespace), alive as long as
  // the job it runs: a tree whose init has no live child, or a child that has exited, is a job
  // ending, and a checkpoint of it would only bring that end back. Refused (Errc::not_found).
  bool root_is_init = false;
  // The tree is a job of a shell (CRIU's spelling): its session and controlling terminal are
  // outside it. Without this, a process with such a terminal is refused naming it.
  bool shell_job = false;
  Progress progress;
};

struct DumpResult {
  std::string checkpoint;  // committed file name
  schema::Stats stats;
  // What the checkpoint holds but the restored tree may miss (a process of the tree's session
  // living outside the tree, ...): for the report, not a failure.
  std::vector<std::string> notes;
};

// Freezes the tree of opts.pid, saves it through the writer and commits. Anything that cannot be
// restored faithfully makes it fail with Errc::unsupported before anything is committed (the
// writer is then abandoned by the caller), naming every task, fd and mapping at fault; the tree
// is left running in that case.
DumpResult dump(storage::CheckpointWriter& writer, const DumpOptions& opts);

struct CheckResult {
  std::vector<std::string> problems;  // empty: the tree can be checkpointed
  std::vector<std::string> notes;     // as DumpResult::notes
  size_t processes = 0, threads = 0, vmas = 0, fds = 0;
  uint64_t pages = 0;
};
// The same collection as dump (freeze, inspect, thaw) without saving anything. With
// tcp_established, connections to peers outside the tree are accepted as dump would (read
// without a network lock: nothing is saved); with shell_job, a terminal outside the tree; with
// ext_unix_sk, Unix sockets connected to the outside by a name.
CheckResult check_tree(pid_t pid, bool tcp_established = false, bool shell_job = false,
                       bool ext_unix_sk = false);

struct KernelFeature {
  std::string name;
  std::string needed_for;
  bool present = false;
  std::string detail;
};
std::vector<KernelFeature> kernel_features();

// The descriptor kinds crest knows (core/fds/), with what of each it restores and what makes
// one refused: for `crest check --audit`.
struct DescriptorKind {
  std::string name;
  std::vector<std::string> restored, refused;
};
std::vector<DescriptorKind> descriptor_kinds();

enum class FileChangePolicy {
  fail,      // refuse the restore if a file the job had open changed size since the checkpoint
  truncate,  // roll grown files the job had open for writing back to their checkpoint size
  ignore,    // restore anyway (the job sees the files as they are now)
};

struct RestoreOptions {
  bool pid_namespace = false;  // restore inside a fresh pid namespace
  FileChangePolicy file_changes = FileChangePolicy::fail;
  // Read and checksum every page of the image before creating anything, so that a corrupt image
  // is refused before the restore starts (otherwise corruption is found mid-way, and everything
  // created is killed).
  bool verify_first = true;
  // Before letting the tree run, read back what the kernel shows of every process (mappings
  // and their flags, credentials, signals, fds, locks, timers...) and fail the restore, naming
  // each difference, if it is not what was saved.
  bool verify_restore = true;
  int status_fd = -1;     // writes "RESTORED <pid>\n" once the tree runs
  // Stdio the job inherited from outside its tree (a terminal, a launcher's pipe or socket):
  // recorded descriptor number -> the restorer's descriptor to give the job instead. A number
  // not listed gets the restorer's own descriptor of the same number.
  std::map<int, int> inherited_fds;
  // A checkpoint taken with --shell-job: the job is attached to the restorer's controlling
  // terminal (its stdin), and made its foreground group if it was the foreground at the dump.
  bool shell_job = false;
  Progress progress;
  // The tree's session was its launcher's, a process outside the tree (a batch system's step
  // daemon such as slurmstepd makes each job a group of its own session, not a session): its
  // processes of that session are made in the restorer's session (the new launcher's, since the
  // restorer runs where the job would have started), whatever its number was. Without it such
  // a tree is refused at restore, naming the session.
  bool launcher_session = false;
  // Lazy restore (core/lazy.h): anonymous private memory of the processes no other task is
  // made from is served on first touch and prefetched after the tree runs. Implies no
  // verify_first (the image is checked chunk by chunk as it is served; a bad one kills the job).
  bool lazy = false;
};

struct RestoreResult {
  pid_t root_pid = 0;  // pid of the restored root as seen here; it is a child of the caller
  schema::Stats stats;
  // --lazy: the page server, still running; the caller keeps the reader alive and calls
  // wait() before it ends (its end, before wait() returned, kills the job).
  std::shared_ptr<LazyPages> lazy;
};

// Rebuilds the tree of the checkpoint read by `reader` and lets it run. The restored root is a
// child of the calling thread: the caller waits for it (in place) or leaves (detached).
// Everything created is killed if a step fails.
RestoreResult restore(storage::CheckpointReader& reader, const RestoreOptions& opts);

}  // namespace crest
