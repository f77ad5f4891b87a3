// The supervisor: the jobs of one agent, their timers, their checkpoints and restores, and the
// watch on their roots. crestd serves it over its socket; `crest run` without a daemon embeds
// one for its single job. Same code, same engine, either way.
//
// Threads:
//   - the watcher (one thread) sleeps in poll() on a pidfd per job root and a wake-up eventfd,
//     with the nearest due checkpoint or restore as timeout. It submits work; it never waits on
//     a job itself except after its pidfd said the root is gone.
//   - work (checkpoint, exit handling, restore) runs on a pool of `concurrency` worker threads.
//     One job's work is serialized (a queue per job, drained by one worker at a time), so its
//     checkpoints never overlap and an exit is handled only after a running checkpoint of the
//     same job is over; different jobs run side by side. A worker runs a whole checkpoint or
//     restore, which the engine needs (ptrace requests must come from the tracing thread, and a
//     restored root is the child of the thread that restored it). The engine's own parallel
//     stages (reading, compressing and checksumming pages) run in oneTBB's shared arena, where
//     every running checkpoint's calling thread also works on its own pipeline: a big job's
//     pipeline keeps the TBB workers busy but cannot hold a small job's checkpoint back (a TBB
//     arena as the dispatcher would, since the arena's threads would all sit in the big job's
//     pipeline).
//   - callers (socket connections, crest run's main thread) only lock, read, enqueue and return.
//
// Why the watcher never calls waitpid() on a live root: a root crestd launched is crestd's child
// and, during a checkpoint, traced by a worker thread of the same process; any thread's wait on
// it would consume the ptrace stops the engine waits for. A pidfd turns readable only once the
// root has exited, and exits are handled in the job's own queue, after its checkpoint.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/crestd/launch.h"
#include "agent/crestd/policy.h"
#include "core/checkpoint.h"
#include "core/util/unique_fd.h"

namespace crest {
class LazyPages;
}

namespace crest::storage {
class ImageStore;
class CheckpointReader;
}

namespace crest::agent {

struct Job;
struct Work;

// How a job's root ended, as far as the agent could learn it.
struct ExitStatus {
  bool known = false;
  bool signaled = false;
  int code = 0;    // exit code when !signaled
  int signal = 0;  // fatal signal when signaled
  static ExitStatus from_wait(int status);
  std::string describe() const;  // "exited with 3", "killed by SIGKILL", "unknown"
  nlohmann::json to_json() const;
};

struct SupervisorOptions {
  unsigned concurrency = 2;
  uint64_t buffer_bytes = kDefaultBufferBytes;  // DumpOptions::buffer_bytes of every checkpoint
  std::string init_path;
  std::string scontrol = "scontrol";  // Slurm's, for the jobs the SPANK plugin registers
  // How often a Slurm job that follows its time limit has its end asked of Slurm again.
  std::chrono::milliseconds slurm_poll{std::chrono::seconds(30)};
  std::string storage_root;  // default images directories: <root>/<uid>/<job id>
  // Node-local staging (agent/crestd/staging.h): a job's checkpoints are committed in
  // <storage_local>/<uid>/<job id> and copied to its images directory (shared storage) by a
  // flusher thread. "": none.
  std::string storage_local;
  uint64_t flush_bandwidth = 0;  // bytes/s of the copy; 0: unlimited
  unsigned local_keep = 1;       // flushed checkpoints kept locally per job (with their chains)
  uint64_t local_max_bytes = 0;  // all jobs' local copies at most this; 0: no limit
  std::string state_file;    // empty: nothing persisted (crest run's embedded supervisor)
  // Node metrics in Prometheus text format (for node_exporter's textfile collector), rewritten
  // atomically after every change; empty: none. Written only when its directory exists.
  std::string metrics_file;
  JobPolicy defaults;
  // The socket the agent serves (crestd's, or crest run's private one): every launched job gets
  // it as CREST_JOB_SOCKET, with its id as CREST_JOB (libcrest-mpi asks there for checkpoints).
  std::string control_socket;
  // A tmpfs under which every launched job gets a directory of its own for Open MPI's session
  // directory and shared-memory segments (job_scratch.h); empty: none.
  std::string scratch_base = "/dev/shm";
};

// What a new job is, whoever asks for it.
struct JobRequest {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string dir;  // empty: the default under the storage root
  JobPolicy policy;
  bool transient = false;  // forget the job once it has ended (crest run)
  std::string scheduler_job;  // the batch system's id of the job, e.g. "slurm:1234" ("": none)
  // When the batch system ends the job (its time limit), ns since the epoch (0: never). A last
  // checkpoint is taken policy.time_limit_margin before it and the job is requeued.
  int64_t end_time_ns = 0;
  // A Slurm job whose end is asked of Slurm again while it runs (every slurm_poll, and just
  // before its last checkpoint), so that a time limit changed by `scontrol update` is followed.
  bool follow_time_limit = false;
  // The first checkpoint builds on the newest good checkpoint already in `dir` (compared by
  // page content), as crest snapshot's chain does without crestd; a damaged one is skipped.
  bool chain_on_newest = false;
};

class Supervisor {
 public:
  using Done = std::function<void(const nlohmann::json& reply)>;
  using Listener = std::function<void(const nlohmann::json& event)>;

  explicit Supervisor(SupervisorOptions options);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  const SupervisorOptions& options() const { return opts_; }

  // Re-adopts the jobs of the state file (crestd start): running roots that are still the same
  // processes are watched again, the rest are marked lost. Call before start().
  void recover();
  void start();
  // Stops timers and the watcher, waits for running work, saves the state. Jobs keep running.
  void stop();

  // Starts CMD under crest-init in a new pid namespace as a job. `stdio` becomes the job's
  // 0, 1, 2 and is kept to give them back after a restore. `listener`, if any, is subscribed
  // to the job's events before it starts (so even a job that ends at once reports its end).
  // Returns the job id.
  std::string launch(JobRequest req, LaunchSpec spec, std::array<UniqueFd, 3> stdio,
                     Listener listener = nullptr);
  // Watches an existing tree. The caller has checked that the requester may.
  std::string adopt(JobRequest req, pid_t pid);

  // A job id, or a name (unique among the jobs `uid` may see; root sees all). Throws
  // Errc::not_found / Errc::usage.
  std::string resolve(const std::string& ref, uid_t uid);
  uid_t owner(const std::string& id);
  // The running job registered under a batch system's id ("slurm:1234"); Errc::not_found.
  std::string find_scheduler_job(const std::string& scheduler_job);
  nlohmann::json status(const std::string& id);
  std::vector<nlohmann::json> list(std::optional<uid_t> only_uid);
  std::string images_dir(const std::string& id);
  // The running job whose tree holds pid (pid itself or an ancestor is the job's root), if any.
  std::optional<std::string> job_of(pid_t pid);

  // Checkpoint now (queued behind a running one); `done` gets the reply (empty: nobody waits).
  // Requests that come while a checkpoint of the job waits to start join it (it covers them all):
  // however many arrive, a job has at most one checkpoint running and one queued, and a request
  // nobody waits for adds nothing. Returns true when the request joined a queued checkpoint.
  bool checkpoint(const std::string& id, Done done);
  // crest snapshot: a checkpoint whose reply comes after its retention (keep, if given, instead
  // of the job's, with a compaction every max(2, keep) files of chain), so that the caller
  // finds the directory as it will stay.
  void snapshot(const std::string& id, std::optional<unsigned> keep, Done done);
  // The running job whose root is pid (the same process, by start time), if any.
  std::optional<std::string> job_of_pid(pid_t pid);
  // The node metrics in Prometheus text format: totals since the agent started, and one series
  // per job (only `only_uid`'s jobs when given).
  std::string metrics_text(std::optional<uid_t> only_uid);
  void set_paused(const std::string& id, bool paused);
  // Stops watching the job (it runs on); with remove_images, its images go too.
  void forget(const std::string& id, bool remove_images);
  void send_signal(const std::string& id, int sig);
  // Restores a job that has ended, failed or was lost, from its newest checkpoint.
  void restore(const std::string& id, Done done);

  // Events of one job (checkpoint, checkpoint-failed, restoring, restored, restore-failed,
  // end). `end` is the last one. If the job has already ended, `end` is delivered at once.
  // Listeners run on the agent's threads: they must not block.
  uint64_t subscribe(const std::string& id, Listener listener);
  void unsubscribe(uint64_t token);

  size_t job_count();

 private:
  using JobPtr = std::shared_ptr<Job>;

  JobPtr find_locked(const std::string& id);
  JobPtr get(const std::string& id);
  std::string add_job_locked(JobPtr job);
  void submit_locked(const JobPtr& job, Work op);
  void drain(JobPtr job);
  void run_op(const JobPtr& job, Work& op);
  void run_checkpoint(const JobPtr& job, Work& op);
  void run_exit(const JobPtr& job);
  void retain(const JobPtr& job, unsigned keep, bool snapshot = false);
  void compact_newest(const JobPtr& job, unsigned keep);
  void run_restore(const JobPtr& job, Work& op);
  // The page server of a lazy restore (policy lazy_restore), on a thread of its own until every
  // page of the job is in place. The job's checkpoints wait for it; stop() waits for it too (a
  // server that ends early kills its job).
  void serve_lazily(const JobPtr& job, std::shared_ptr<storage::CheckpointReader> reader,
                    std::shared_ptr<LazyPages> lazy);
  void finish_locked(const JobPtr& job, const ExitStatus& st, const std::string& reason,
                     bool failed);
  void schedule_restore_locked(const JobPtr& job, const std::string& reason);
  std::chrono::milliseconds interval_locked(const Job& job) const;
  // When the last checkpoint before the job's end is due (time_point::max: none).
  std::chrono::steady_clock::time_point final_due_locked(const Job& job) const;
  // After a checkpoint of a Slurm job: its AdminComment, and after the last one before the time
  // limit, the requeue.
  void after_slurm_checkpoint(const JobPtr& job, bool final, bool ok);
  ExitStatus collect_exit(const JobPtr& job);
  void emit_locked(const JobPtr& job, nlohmann::json event);
  nlohmann::json status_locked(const Job& job) const;
  nlohmann::json persist_record_locked(const Job& job) const;
  void persist();
  void write_metrics();
  void wake();
  void watch_loop();
  // Asks Slurm for the end of the jobs that follow their time limit, every slurm_poll.
  void slurm_poll_loop();
  // Asks Slurm for one job's end and takes it (outside mu_). Returns true when it changed.
  // Unless before_final, a job whose last checkpoint is queued keeps the end it had.
  bool refresh_end_time(const JobPtr& job, bool before_final = false);
  void open_store(Job& job);
  // Node-local staging (options().storage_local): the local images directory of a job, made and
  // pinned as the shared one is; the flusher thread that copies it to shared storage; one pass of
  // that copy for a job (returns true when it did something).
  bool staging() const { return !opts_.storage_local.empty(); }
  void pin_local_dir(Job& job);
  void flush_loop();
  bool flush_job(const JobPtr& job, storage::ImageStore& local, storage::ImageStore& shared);
  // Bytes of every job's local copies.
  uint64_t local_bytes_locked() const;

  SupervisorOptions opts_;
  std::vector<std::thread> workers_;
  std::deque<JobPtr> ready_;  // jobs with work and no worker yet
  std::condition_variable work_cv_;
  void worker_loop();
  std::mutex mu_;
  std::condition_variable idle_cv_;
  std::map<std::string, JobPtr> jobs_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::pair<std::string, Listener>> listeners_;
  uint64_t next_token_ = 1;
  struct Orphan {  // a forgotten job that is our child: reaped (its cgroup and scratch removed)
    pid_t pid;
    UniqueFd pidfd;
    std::string cgroup;
    std::string scratch;  // job_scratch.h, removed as uid:gid
    uid_t uid;
    gid_t gid;
  };
  std::vector<Orphan> orphans_;
  struct Totals {  // since the agent started, over every job it had (guarded by mu_)
    uint64_t checkpoints = 0, checkpoint_failures = 0, restores = 0, restore_failures = 0;
    double frozen_s = 0;
    uint64_t bytes_stored = 0, bytes_read = 0;
  } totals_;
  bool metrics_dir_missing_logged_ = false;
  unsigned active_drains_ = 0;
  unsigned lazy_servers_ = 0;  // serve_lazily threads still running
  std::condition_variable lazy_cv_;
  bool stopping_ = false;
  std::mutex persist_mu_;
  UniqueFd wake_fd_;
  std::thread watcher_;
  std::thread slurm_poller_;
  std::condition_variable poll_cv_;  // wakes slurm_poll_loop when stopping
  std::thread flusher_;
  std::condition_variable flush_cv_;  // a local commit, a flush done (direct writes wait), stop
  std::atomic<bool> flush_stop_{false};
  uint64_t flush_kick_ = 0;  // bumped by every local commit (guarded by mu_)
  struct FlushTotals {  // guarded by mu_
    uint64_t flushes = 0, failures = 0, bytes = 0, direct = 0;
  } flush_totals_;
};

}  // namespace crest::agent
