#include "agent/crestd/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <deque>

#include "agent/crestd/daly.h"
#include "agent/crestd/images.h"
#include "agent/crestd/job_scratch.h"
#include "agent/crestd/protocol.h"
#include "agent/crestd/slurm.h"
#include "agent/crestd/staging.h"
#include "agent/crestd/trust.h"
#include "core/cgroup.h"
#include "core/checkpoint.h"
#include "core/lazy.h"
#include "core/proc.h"
#include "core/snapshot.h"
#include "core/tracker.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"
#include "storage/image_store.h"

namespace crest::agent {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

namespace {

// PIDFD_GET_INFO (Linux 6.13; exit status since 6.15): a process's wait status for whoever holds
// a pidfd, not only its parent. Not in the 6.1 headers this machine builds with.
struct PidfdInfo {
  uint64_t mask;
  uint64_t cgroupid;
  uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  int32_t exit_code;
  uint32_t coredump_mask;
  uint32_t spare;
};
constexpr unsigned long kPidfdGetInfo = _IOWR(0xFF, 11, PidfdInfo);
constexpr uint64_t kPidfdInfoExit = 1ull << 3;
constexpr idtype_t kPPidfd = static_cast<idtype_t>(3);  // P_PIDFD

// Gives memory freed by a job's work (page buffers, HDF5's chunk and table memory) back to the
// system: malloc keeps what its per-thread arenas freed for reuse, and a fleet of small jobs left
// crestd at 250 MiB resident where it needs 50. Trimming costs a walk of the arenas, so it is
// done at most every 10 s, not after each piece of work.
void release_freed_memory() {
  static std::atomic<int64_t> last{0};
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t prev = last.load();
  if (now - prev < 10 || !last.compare_exchange_strong(prev, now)) return;
  ::malloc_trim(0);
}

int64_t realtime_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string iso_time(int64_t ns) {
  if (ns <= 0) return "";
  time_t secs = static_cast<time_t>(ns / 1000000000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[64];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>((ns / 1000000) % 1000));
  return buf;
}

std::string signal_name(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

// A batch system stops a job (a requeue, a cancel, a time limit) with SIGTERM to each of its
// processes; a checkpoint taken at that moment holds the signal pending, and a restore from it
// would end the job at once. Such a checkpoint of a batch job is removed, and the checkpoint
// counts as failed (Errc::busy), naming the signal.
void discard_if_stopping(storage::ImageStore& store, const std::string& name) {
  int sig = 0;
  {
    auto reader = store.open(name);
    for (const auto& s : reader->meta().signals) {
      if (s.siginfo.size() < sizeof(siginfo_t)) continue;
      siginfo_t si;
      std::memcpy(&si, s.siginfo.data(), sizeof si);
      if (si.si_signo == SIGTERM || si.si_signo == SIGKILL) sig = si.si_signo;
    }
  }
  if (sig == 0) return;
  store.remove(name);
  fail(Errc::busy, name + " discarded: the job was being stopped (" + signal_name(sig) +
                       " pending in it at the checkpoint)");
}

// A Slurm batch script that runs an srun step (or mpirun launching its daemons through srun) is
// not checkpointed while the step runs: srun's connections to slurmctld and to the step's
// slurmstepd, and the step itself (its tasks run under that slurmstepd, outside this tree), end
// with the allocation, so a restore after a requeue could not give srun back its step. Refused
// naming the srun process (Errc::unsupported); the checkpoints go on once the step has ended.
void refuse_running_srun(pid_t root) {
  std::vector<pid_t> todo{root};
  for (size_t i = 0; i < todo.size() && i < 100000; ++i) {
    pid_t p = todo[i];
    char exe[PATH_MAX];
    ssize_t n = ::readlink(proc::path(p, "exe").c_str(), exe, sizeof exe - 1);
    if (n > 0) {
      exe[n] = '\0';
      const char* base = std::strrchr(exe, '/');
      if (std::strcmp(base ? base + 1 : exe, "srun") == 0)
        fail(Errc::unsupported,
             "the job runs an srun step (srun pid " + std::to_string(p) + ", " + exe +
                 "): a step runs under a slurmstepd of its own, outside the batch script's "
                 "tree, and srun's connections to it and to slurmctld cannot be restored after a "
                 "requeue; the batch script is checkpointed again once the step has ended");
    }
    try {
      for (pid_t c : proc::children(p)) todo.push_back(c);
    } catch (const Error&) {
      // gone meanwhile
    }
  }
}

int64_t stat_of(const schema::Stats& s, const char* key) {
  auto it = s.find(key);
  return it == s.end() ? 0 : it->second;
}

json error_json(Errc kind, const std::string& message) {
  return error_reply(kind_name(kind), message);
}

double seconds(std::chrono::milliseconds d) { return static_cast<double>(d.count()) / 1e3; }

uint64_t start_time_of(pid_t pid) {
  try {
    return proc::stat(pid).starttime;
  } catch (const Error&) {
    return 0;
  }
}

// Moves every process of the tree below root into the cgroup (a restored tree is created in the
// restorer's cgroup). Best effort: a tree that forks meanwhile is walked again.
void move_tree(pid_t root, const std::string& dir) {
  for (int pass = 0; pass < 3; ++pass) {
    bool moved_any = false;
    std::vector<pid_t> todo{root};
    while (!todo.empty()) {
      pid_t p = todo.back();
      todo.pop_back();
      try {
        if (cgroup::of(p) != dir) {
          cgroup::move(p, dir);
          moved_any = true;
        }
        for (pid_t c : proc::children(p)) todo.push_back(c);
      } catch (const Error&) {
      }
    }
    if (!moved_any) return;
  }
}

// A frozen job cgroup left by an agent that died in the middle of a checkpoint.
bool thaw_if_frozen(const std::string& dir) {
  std::string state;
  if (dir.empty() || !fs::read_file_if_exists(dir + "/cgroup.freeze", state) || state.find('1') == std::string::npos)
    return false;
  int fd = ::open((dir + "/cgroup.freeze").c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::write(fd, "0", 1) == 1;
  ::close(fd);
  return ok;
}

}  // namespace

// ---- ExitStatus ---------------------------------------------------------------------------------

ExitStatus ExitStatus::from_wait(int status) {
  ExitStatus s;
  if (WIFEXITED(status)) {
    s.known = true;
    s.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    s.known = true;
    s.signaled = true;
    s.signal = WTERMSIG(status);
  }
  return s;
}

std::string ExitStatus::describe() const {
  if (!known) return "ended (exit status unknown)";
  if (signaled) return "killed by " + signal_name(signal);
  return "exited with " + std::to_string(code);
}

json ExitStatus::to_json() const {
  if (!known) return {{"known", false}};
  if (signaled) return {{"signal", signal}, {"signal_name", signal_name(signal)}};
  return {{"code", code}};
}

// ---- Job ----------------------------------------------------------------------------------------

enum class JobState { running, restore_wait, restoring, ended, failed, lost };

const char* state_name(JobState s) {
  switch (s) {
    case JobState::running: return "running";
    case JobState::restore_wait: return "restore-wait";
    case JobState::restoring: return "restoring";
    case JobState::ended: return "ended";
    case JobState::failed: return "failed";
    case JobState::lost: return "lost";
  }
  return "?";
}

JobState parse_state(const std::string& s) {
  for (JobState st : {JobState::running, JobState::restore_wait, JobState::restoring,
                      JobState::ended, JobState::failed, JobState::lost})
    if (s == state_name(st)) return st;
  return JobState::lost;
}

struct CheckpointInfo {
  std::string name;
  std::string parent;
  int64_t time_ns = 0;
  schema::Stats stats;
};

// One piece of a job's work, run in the job's queue.
struct Work {
  enum Kind { checkpoint, exit, restore } kind = checkpoint;
  std::vector<Supervisor::Done> waiters;
  bool scheduled = false;   // started by the timer: its lateness is measured
  Clock::time_point due{};  // when the timer wanted it
  bool automatic = false;   // a restore started by the failure watch
  bool final = false;       // the last checkpoint before the job's end (time limit)
  bool snapshot = false;    // crest snapshot: the reply comes after retention
  std::optional<unsigned> keep;  // retention of this checkpoint (snapshot), else the job's
};

struct Job {
  // Fixed once the job exists.
  std::string id, name;
  std::string scheduler_job;  // "slurm:1234": recorded in every checkpoint and shown by crest jobs
  int64_t end_time_ns = 0;    // the batch system ends the job then (0: never)
  bool follow_time_limit = false;  // end_time_ns is asked of Slurm again while the job runs
  uid_t uid = 0;
  gid_t gid = 0;
  bool launched = false;  // the root is crest-init, started by an agent (crest run)
  bool root_is_init = false;  // the root is pid 1 of its own pid namespace (launched, or adopted)
  bool transient = false;
  std::vector<std::string> argv;
  std::string dir;
  // `dir` opened and checked once (open_images_dir) before the job is shared, and `at`, a path
  // through that descriptor: crestd (root) reads and writes the images only there, so a
  // component of `dir` a user renames or replaces later cannot send its writes elsewhere.
  // Without it (`dir_error` says why), no checkpoint is taken.
  UniqueFd dir_fd;
  std::string at;
  std::string dir_error;
  std::string cgroup;  // the job's own cgroup v2 directory ("" if none)
  std::string scratch;  // its directory on tmpfs for Open MPI (job_scratch.h; "" if none)
  // Node-local staging: the local images directory (<storage_local>/<uid>/<id>), pinned as `dir`
  // is (local_at). Empty when staging is off or the directory was refused (local_error).
  std::string local_dir;
  UniqueFd local_fd;
  std::string local_at;
  std::string local_error;
  JobPolicy policy;
  int64_t created_ns = 0;

  // Guarded by Supervisor::mu_.
  JobState state = JobState::running;
  pid_t pid = 0;
  uint64_t start_time = 0;
  UniqueFd pidfd;
  bool our_child = false;
  bool exit_seen = false;
  bool requested_stop = false;  // a terminating signal was sent through the agent
  std::array<UniqueFd, 3> stdio;
  bool paused = false;
  bool busy = false;
  bool checkpointing = false;
  bool lazy_serving = false;  // a lazy restore still serves its memory (serve_lazily)
  bool forgotten = false;
  bool remove_when_idle = false;
  bool final_queued = false;  // the last checkpoint before end_time_ns was queued
  bool requeued = false;      // and the job was requeued after it
  Clock::time_point comment_at{};  // the Slurm job's AdminComment was last updated then
  Clock::time_point next_due = Clock::time_point::max();
  Clock::time_point restore_due = Clock::time_point::max();
  std::string restore_reason;
  ExitStatus failure;  // the abnormal end being recovered from
  uint64_t checkpoints = 0, checkpoint_failures = 0, restores = 0, restore_failures = 0;
  unsigned auto_restores = 0;
  std::optional<CheckpointInfo> last;
  std::string last_name;  // the checkpoint a restore would use (persisted)
  std::string last_error;
  std::string tracker_name;
  double cost_s = 0;  // EWMA of the checkpoint duration, for --every auto
  int64_t frozen_max_ns = 0;
  double frozen_sum_ns = 0;
  uint64_t bytes_stored_sum = 0, bytes_read_sum = 0;  // over its checkpoints (metrics)
  unsigned chain = 0;
  uint64_t compactions = 0;
  double last_compaction_ms = 0;
  uint64_t bytes = 0;
  unsigned image_files = 0;
  uint64_t scheduled = 0, late = 0;
  int64_t late_max_ms = 0;
  double late_sum_ms = 0;
  json last_restore;
  ExitStatus exit;
  std::string end_reason;
  int64_t ended_ns = 0;
  std::deque<Work> queue;  // work waiting; `busy` while a task drains it
  // Staging, as the flusher last saw it.
  std::string last_safe;        // the newest checkpoint committed and verified on shared storage
  int64_t last_safe_ns = 0;     // when it became safe
  double last_flush_ms = 0;     // its copy + verification
  double last_safe_latency_ms = 0;  // from the checkpoint's start until it was safe
  unsigned unflushed = 0;       // local checkpoints not yet on shared storage
  std::string flushing;         // being copied now
  std::string flush_error;
  uint64_t flushes = 0, flushed_bytes = 0, direct_writes = 0;
  uint64_t local_bytes = 0;
  std::string last_location;    // where the last checkpoint was committed: "local" or "shared"
  // Staging's locks: flush_mu is held by the flusher for a copy and by a checkpoint written to
  // shared storage directly; local_mu by the flusher removing local copies and by a checkpoint or
  // compaction of the local directory.
  std::mutex flush_mu, local_mu;

  // Owned by the job's running work (never touched by two threads at once).
  std::unique_ptr<Tracker> tracker;
  std::unique_ptr<storage::ImageStore> store;
  std::unique_ptr<storage::ImageStore> local_store;  // staging: the local directory's
  std::string parent_for_next;  // the checkpoint the next incremental one builds on
  bool parent_local = false;    // staging: parent_for_next is in the local directory
  unsigned incrementals = 0;    // since the last full checkpoint
};

// ---- construction -------------------------------------------------------------------------------

Supervisor::Supervisor(SupervisorOptions options) : opts_(std::move(options)) {
  if (opts_.concurrency == 0) opts_.concurrency = 1;
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_) throw_errno("eventfd", errno, Errc::kernel);
}

Supervisor::~Supervisor() { stop(); }

void Supervisor::start() {
  std::lock_guard lock(mu_);
  if (watcher_.joinable()) return;
  stopping_ = false;
  watcher_ = std::thread([this] { watch_loop(); });
  slurm_poller_ = std::thread([this] { slurm_poll_loop(); });
  flush_stop_ = false;
  if (staging()) flusher_ = std::thread([this] { flush_loop(); });
  for (unsigned i = 0; i < opts_.concurrency; ++i) workers_.emplace_back([this] { worker_loop(); });
}

void Supervisor::worker_loop() {
  for (;;) {
    JobPtr job;
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [this] { return !ready_.empty() || (stopping_ && active_drains_ == 0); });
      if (ready_.empty()) return;
      job = std::move(ready_.front());
      ready_.pop_front();
    }
    drain(job);
    release_freed_memory();  // after checkpoints, restores and compactions alike
  }
}

void Supervisor::stop() {
  {
    std::unique_lock lock(mu_);
    if (stopping_ && !watcher_.joinable() && active_drains_ == 0) return;
    stopping_ = true;
  }
  wake();
  poll_cv_.notify_all();
  {
    std::lock_guard lock(mu_);
    flush_stop_ = true;
  }
  flush_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  if (slurm_poller_.joinable()) slurm_poller_.join();
  if (flusher_.joinable()) flusher_.join();
  {
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [this] { return active_drains_ == 0; });
  }
  work_cv_.notify_all();
  for (auto& w : workers_)
    if (w.joinable()) w.join();
  workers_.clear();
  {
    // A page server must not end before its job has all its memory: the job would be killed.
    std::unique_lock lock(mu_);
    if (lazy_servers_ > 0)
      log::get("agent.main")->info("waiting for {} lazy restores to have every page in place",
                                   lazy_servers_);
    lazy_cv_.wait(lock, [this] { return lazy_servers_ == 0; });
  }
  persist();
}

void Supervisor::wake() {
  uint64_t one = 1;
  (void)!::write(wake_fd_.get(), &one, sizeof one);
}

size_t Supervisor::job_count() {
  std::lock_guard lock(mu_);
  return jobs_.size();
}

// ---- jobs ---------------------------------------------------------------------------------------

Supervisor::JobPtr Supervisor::find_locked(const std::string& id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) fail(Errc::not_found, "no job " + id);
  return it->second;
}

std::optional<std::string> Supervisor::job_of(pid_t pid) {
  // The ancestors of pid, itself first (at most a few dozen: stop at init or a loop).
  std::vector<pid_t> line;
  for (pid_t p = pid; p > 1 && line.size() < 256; ) {
    line.push_back(p);
    try {
      p = proc::stat(p).ppid;
    } catch (const Error&) {
      break;
    }
  }
  std::lock_guard lock(mu_);
  for (pid_t p : line)
    for (auto& [id, job] : jobs_)
      if (job->pid == p && job->state == JobState::running) return id;
  return std::nullopt;
}

Supervisor::JobPtr Supervisor::get(const std::string& id) {
  std::lock_guard lock(mu_);
  return find_locked(id);
}

std::string Supervisor::add_job_locked(JobPtr job) {
  if (job->id.empty()) job->id = std::to_string(next_id_++);
  jobs_[job->id] = job;
  return job->id;
}

std::chrono::milliseconds Supervisor::interval_locked(const Job& job) const {
  const JobPolicy& p = job.policy;
  // No timer: a due time ten years ahead (crest checkpoint and crest snapshot still work).
  if (p.never) return std::chrono::hours(24 * 365 * 10);
  if (!p.auto_interval) return p.interval;
  // Before the first measurement, a first checkpoint soon measures the cost.
  if (job.checkpoints == 0 || job.cost_s <= 0) return p.min_interval;
  double tau = daly_interval(job.cost_s, seconds(p.mtbf));
  auto ms = std::chrono::milliseconds(static_cast<int64_t>(tau * 1000));
  return std::max(ms, p.min_interval);
}

std::string Supervisor::resolve(const std::string& ref, uid_t uid) {
  // An empty reference is no name: it would match every job that has none.
  if (ref.empty()) fail(Errc::usage, "'job' must be a job id or name, not empty");
  std::lock_guard lock(mu_);
  if (jobs_.count(ref)) return ref;
  std::vector<std::string> hits;
  for (auto& [id, job] : jobs_)
    if (job->name == ref && (uid == 0 || job->uid == uid)) hits.push_back(id);
  if (hits.size() == 1) return hits[0];
  if (hits.empty()) fail(Errc::not_found, "no job " + ref);
  fail(Errc::usage, "'" + ref + "' names " + std::to_string(hits.size()) +
                        " jobs; use the job id");
}

uid_t Supervisor::owner(const std::string& id) { return get(id)->uid; }

std::string Supervisor::find_scheduler_job(const std::string& scheduler_job) {
  std::lock_guard lock(mu_);
  std::string found;
  for (auto& [id, job] : jobs_)
    if (job->scheduler_job == scheduler_job && job->state == JobState::running &&
        (found.empty() || std::stoull(id) > std::stoull(found)))
      found = id;
  if (found.empty()) fail(Errc::not_found, "no running job registered for " + scheduler_job);
  return found;
}

Clock::time_point Supervisor::final_due_locked(const Job& job) const {
  if (job.end_time_ns <= 0 || job.final_queued) return Clock::time_point::max();
  const JobPolicy& p = job.policy;
  int64_t margin_ns = p.time_limit_margin_auto
                          ? static_cast<int64_t>((3 * std::max(job.cost_s, 0.0) + 60) * 1e9)
                          : static_cast<int64_t>(p.time_limit_margin.count()) * 1000000;
  // Never in the first half of what was left of the allocation when the job was registered: a
  // margin larger than the allocation would otherwise requeue every run before it did any work.
  int64_t due_ns = std::max(job.end_time_ns - margin_ns,
                            job.created_ns + (job.end_time_ns - job.created_ns) / 2);
  return Clock::now() + std::chrono::nanoseconds(due_ns - realtime_ns());
}
std::string Supervisor::images_dir(const std::string& id) { return get(id)->dir; }

void Supervisor::open_store(Job& job) {
  if (!job.store) {
    if (!job.dir_fd)
      fail(Errc::refused, job.dir_error.empty() ? "no images directory" : job.dir_error);
    job.store = storage::ImageStore::open_directory(job.at, /*create=*/true);
  }
  if (!job.local_store && !job.local_at.empty())
    job.local_store = storage::ImageStore::open_directory(job.local_at, /*create=*/true);
}

void Supervisor::pin_local_dir(Job& job) {
  if (!staging()) return;
  job.local_dir = opts_.storage_local + "/" + std::to_string(job.uid) + "/" + job.id;
  try {
    job.local_fd = open_images_dir(job.local_dir, job.uid, job.gid);
    job.local_at = pinned_path(job.local_fd);
  } catch (const Error& e) {
    job.local_error = e.what();
    job.local_at.clear();
    log::get("agent.flush")->warn("job {}: no local staging (checkpoints go to {} directly): {}",
                                  job.id, job.dir, e.what());
  }
}

uint64_t Supervisor::local_bytes_locked() const {
  uint64_t total = 0;
  for (auto& [id, job] : jobs_) total += job->local_bytes;
  return total;
}

namespace {
// A message about the images as the user knows them: the pinned path (pinned_path) replaced by
// the directory's name.
std::string shown(const Job& job, std::string msg) {
  for (auto [pinned, named] : {std::pair{&job.at, &job.dir}, std::pair{&job.local_at, &job.local_dir}}) {
    if (pinned->empty()) continue;
    for (size_t at = msg.find(*pinned); at != std::string::npos; at = msg.find(*pinned, at))
      msg.replace(at, pinned->size(), *named), at += named->size();
  }
  return msg;
}

void pin_images_dir(Job& job) {
  job.dir_fd = open_images_dir(job.dir, job.uid, job.gid);
  job.at = pinned_path(job.dir_fd);
}
}  // namespace

std::string Supervisor::launch(JobRequest req, LaunchSpec spec, std::array<UniqueFd, 3> stdio,
                              Listener listener) {
  auto log = log::get("agent.job");
  auto job = std::make_shared<Job>();
  job->name = req.name;
  job->scheduler_job = req.scheduler_job;
  job->uid = req.uid;
  job->gid = req.gid;
  job->launched = true;
  job->transient = req.transient;
  job->argv = spec.argv;
  job->policy = req.policy;
  job->created_ns = realtime_ns();
  {
    std::lock_guard lock(mu_);
    if (stopping_) fail(Errc::busy, "the agent is shutting down");
    job->id = std::to_string(next_id_++);
  }
  job->dir = req.dir.empty() ? opts_.storage_root + "/" + std::to_string(req.uid) + "/" + job->id
                             : req.dir;
  pin_images_dir(*job);
  pin_local_dir(*job);
  if (spec.init_path.empty()) spec.init_path = opts_.init_path;
  for (int i = 0; i < 3; ++i) spec.stdio[i] = stdio[i].get();
  // Who the job is and where its agent listens, for a program that asks for its own checkpoints
  // (libcrest-mpi). Values inherited from an enclosing job are replaced.
  std::erase_if(spec.env, [](const std::string& e) {
    return e.rfind("CREST_JOB=", 0) == 0 || e.rfind("CREST_JOB_SOCKET=", 0) == 0;
  });
  spec.env.push_back("CREST_JOB=" + job->id);
  if (!opts_.control_socket.empty()) spec.env.push_back("CREST_JOB_SOCKET=" + opts_.control_socket);
  // Open MPI's session directory and shared-memory segments in a directory of the job's own, or
  // two jobs (each with mpirun at the same pid of its own namespace) share their names.
  if (!opts_.scratch_base.empty() && !sets_mpi_dirs(spec.env)) {
    std::string why_not;
    job->scratch = make_job_scratch(opts_.scratch_base, job->uid, job->gid, why_not);
    if (job->scratch.empty())
      log->warn("job {}: no scratch directory for Open MPI: {}", job->id, why_not);
    else
      point_mpi_at(spec.env, job->scratch);
  }
  // The job's own cgroup: the engine then freezes the whole tree at once before seizing it.
  UniqueFd cg_fd;
  try {
    job->cgroup = cgroup::create(std::string("crest/") + (opts_.state_file.empty() ? "run-" : "crestd-") +
                                 std::to_string(::getpid()) + "-" + job->id);
    cg_fd.reset(::open(job->cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    spec.cgroup_fd = cg_fd.get();
  } catch (const Error& e) {
    log->debug("job {}: no cgroup of its own: {}", job->id, e.what());
    job->cgroup.clear();
  }
  Launched l;
  try {
    l = launch_job(spec);
  } catch (...) {
    if (!job->cgroup.empty()) cgroup::remove(job->cgroup);
    remove_job_scratch(job->scratch, job->uid, job->gid);
    throw;
  }
  if (!job->cgroup.empty() && cgroup::of(l.pid) != job->cgroup) {
    cgroup::remove(job->cgroup);
    job->cgroup.clear();
  }
  {
    std::lock_guard lock(mu_);
    job->pid = l.pid;
    job->pidfd = std::move(l.pidfd);
    job->our_child = true;
    job->start_time = start_time_of(l.pid);
    job->stdio = std::move(stdio);
    job->state = JobState::running;
    job->next_due = Clock::now() + interval_locked(*job);
    add_job_locked(job);
    if (listener) listeners_[next_token_++] = {job->id, std::move(listener)};
  }
  log->info("job {} pid {}: started '{}' as uid {} (every {}, keep {}, auto-restore {}, images in {})",
            job->id, job->pid, spec.argv[0], job->uid, job->policy.every(), job->policy.keep,
            job->policy.auto_restore, job->dir);
  persist();
  wake();
  return job->id;
}

std::string Supervisor::adopt(JobRequest req, pid_t pid) {
  auto log = log::get("agent.job");
  if (pid <= 1 || pid == ::getpid())
    fail(Errc::refused, "pid " + std::to_string(pid) + " cannot be a job");
  {
    std::lock_guard lock(mu_);
    for (auto& [id, j] : jobs_)
      if (j->pid == pid && j->state == JobState::running)
        fail(Errc::busy, "pid " + std::to_string(pid) + " is already job " + id);
  }
  UniqueFd pfd = proc::open_pidfd(pid);
  if (!pfd) {
    if (errno == ESRCH) fail(Errc::not_found, "no process with pid " + std::to_string(pid));
    throw_errno("pidfd_open of " + std::to_string(pid), errno, Errc::kernel);
  }
  // Refuse now what no checkpoint could take, with the engine's reasons.
  CheckResult check = check_tree(pid, req.policy.tcp_established, false, req.policy.ext_unix_sk);
  if (!check.problems.empty()) {
    std::string msg = "the tree of pid " + std::to_string(pid) + " cannot be checkpointed:";
    for (auto& p : check.problems) msg += "\n  " + p;
    fail(Errc::unsupported, msg);
  }

  auto job = std::make_shared<Job>();
  job->name = req.name;
  job->scheduler_job = req.scheduler_job;
  job->uid = req.uid;
  job->gid = req.gid;
  job->launched = false;
  // A registered tree whose root is the init of its own pid namespace (crest-init started by the
  // Slurm plugin): a checkpoint of it with no live job under the init is refused, as for ours.
  try {
    auto ns = proc::status_numbers(proc::status(pid), "NSpid");
    job->root_is_init = ns.size() > 1 && ns.back() == 1;
  } catch (const Error&) {
  }
  job->transient = req.transient;
  job->policy = req.policy;
  job->created_ns = realtime_ns();
  job->end_time_ns = req.end_time_ns;
  job->follow_time_limit = req.follow_time_limit && !slurm_job_of(req.scheduler_job).empty();
  try {
    job->argv = {proc::comm(pid)};
  } catch (const Error&) {
  }
  // Its stdio, to give back after a restore (the same terminal, file or pipe).
  for (int i = 0; i < 3; ++i) job->stdio[i] = proc::copy_fd(pfd.get(), i);
  {
    std::lock_guard lock(mu_);
    if (stopping_) fail(Errc::busy, "the agent is shutting down");
    job->id = std::to_string(next_id_++);
  }
  job->dir = req.dir.empty() ? opts_.storage_root + "/" + std::to_string(req.uid) + "/" + job->id
                             : req.dir;
  pin_images_dir(*job);
  pin_local_dir(*job);
  if (req.chain_on_newest) {
    // Snapshots taken before (without crestd, or by an agent that has restarted) go on as one
    // chain: the first checkpoint here reads every page but stores only those that changed.
    try {
      open_store(*job);
      std::string why;
      job->parent_for_next = snapshot_parent(*job->store, why);
      job->last_name = job->parent_for_next;
      if (!why.empty()) log->warn("job {} pid {}: {}; its first checkpoint is full", job->id, pid, why);
    } catch (const Error& e) {
      log->warn("job {} pid {}: cannot read the checkpoints already in {}: {}", job->id, pid,
                job->dir, e.what());
    }
  }
  {
    std::lock_guard lock(mu_);
    job->pid = pid;
    job->pidfd = std::move(pfd);
    job->our_child = start_time_of(pid) != 0 && proc::stat(pid).ppid == ::getpid();
    job->start_time = start_time_of(pid);
    job->state = JobState::running;
    job->next_due = Clock::now() + interval_locked(*job);
    add_job_locked(job);
  }
  log->info("job {} pid {}: registered ({} processes; every {}, keep {}, auto-restore {}, images in {})",
            job->id, pid, check.processes, job->policy.every(), job->policy.keep,
            job->policy.auto_restore, job->dir);
  persist();
  wake();
  return job->id;
}

// ---- requests -----------------------------------------------------------------------------------

bool Supervisor::checkpoint(const std::string& id, Done done) {
  std::unique_lock lock(mu_);
  auto job = find_locked(id);
  if (job->state != JobState::running) {
    lock.unlock();
    if (done)
      done(error_json(Errc::refused, "job " + id + " is " + state_name(job->state) +
                                         ", not running"));
    return false;
  }
  bool joined = std::any_of(job->queue.begin(), job->queue.end(),
                            [](const Work& w) { return w.kind == Work::checkpoint; });
  Work op;
  op.kind = Work::checkpoint;
  if (done) op.waiters.push_back(std::move(done));
  submit_locked(job, std::move(op));
  return joined;
}

void Supervisor::snapshot(const std::string& id, std::optional<unsigned> keep, Done done) {
  std::unique_lock lock(mu_);
  auto job = find_locked(id);
  if (job->state != JobState::running) {
    lock.unlock();
    done(error_json(Errc::refused, "job " + id + " is " + state_name(job->state) +
                                       ", not running"));
    return;
  }
  // Not merged with a queued checkpoint: this one must run after the request, with its own
  // retention, and answer after it.
  Work op;
  op.kind = Work::checkpoint;
  op.snapshot = true;
  op.keep = keep;
  op.waiters.push_back(std::move(done));
  submit_locked(job, std::move(op));
}

std::optional<std::string> Supervisor::job_of_pid(pid_t pid) {
  const uint64_t start = start_time_of(pid);
  std::lock_guard lock(mu_);
  for (auto& [id, job] : jobs_)
    if (job->pid == pid && job->state == JobState::running && !job->forgotten &&
        (start == 0 || job->start_time == 0 || job->start_time == start))
      return id;
  return std::nullopt;
}

void Supervisor::set_paused(const std::string& id, bool paused) {
  {
    std::lock_guard lock(mu_);
    auto job = find_locked(id);
    if (job->paused == paused) return;
    job->paused = paused;
    if (!paused && job->next_due != Clock::time_point::max())
      job->next_due = Clock::now() + interval_locked(*job);
    log::get("agent.sched")->info("job {} pid {}: timer {}", job->id, job->pid,
                                  paused ? "paused" : "resumed");
  }
  persist();
  wake();
}

void Supervisor::forget(const std::string& id, bool remove) {
  JobPtr job;
  {
    std::lock_guard lock(mu_);
    job = find_locked(id);
    jobs_.erase(id);
    job->forgotten = true;
    for (auto& w : job->queue)
      for (auto& d : w.waiters) d(error_json(Errc::refused, "job " + id + " was forgotten"));
    job->queue.clear();
    // A forgotten job runs on (with its scratch directory) as long as it likes.
    if (job->our_child && job->pidfd)
      orphans_.push_back({job->pid, std::move(job->pidfd), job->cgroup, job->scratch, job->uid, job->gid});
    json ev = {{"event", "end"}, {"forgotten", true}, {"reason", "the job was forgotten"}};
    emit_locked(job, ev);
    for (auto it = listeners_.begin(); it != listeners_.end();)
      it = it->second.first == id ? listeners_.erase(it) : std::next(it);
    if (remove) {
      if (job->busy) {
        job->remove_when_idle = true;
      } else {
        remove_images(job->at, job->dir);
        remove_images(job->local_at, job->local_dir);
      }
    }
    log::get("agent.job")->info("job {} pid {}: forgotten{}", id, job->pid,
                                remove ? ", images removed" : "");
  }
  persist();
  wake();
}

void Supervisor::send_signal(const std::string& id, int sig) {
  std::lock_guard lock(mu_);
  auto job = find_locked(id);
  if (job->state != JobState::running || !job->pidfd)
    fail(Errc::refused, "job " + id + " is " + state_name(job->state) + ", not running");
  if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGQUIT || sig == SIGKILL)
    job->requested_stop = true;
  if (::syscall(SYS_pidfd_send_signal, job->pidfd.get(), sig, nullptr, 0) != 0)
    throw_errno("cannot signal job " + id, errno, Errc::kernel);
}

void Supervisor::restore(const std::string& id, Done done) {
  std::unique_lock lock(mu_);
  auto job = find_locked(id);
  if (job->state == JobState::running || job->state == JobState::restoring ||
      job->state == JobState::restore_wait) {
    lock.unlock();
    done(error_json(Errc::busy, "job " + id + " is " + state_name(job->state) +
                                    "; only a job that has ended can be restored"));
    return;
  }
  Work op;
  op.kind = Work::restore;
  op.waiters.push_back(std::move(done));
  submit_locked(job, std::move(op));
}

uint64_t Supervisor::subscribe(const std::string& id, Listener listener) {
  std::lock_guard lock(mu_);
  auto job = find_locked(id);
  if (job->state == JobState::ended || job->state == JobState::failed ||
      job->state == JobState::lost) {
    json ev = {{"event", "end"},
               {"job", id},
               {"status", job->exit.to_json()},
               {"reason", job->end_reason}};
    listener(ev);
    return 0;
  }
  uint64_t token = next_token_++;
  listeners_[token] = {id, std::move(listener)};
  return token;
}

void Supervisor::unsubscribe(uint64_t token) {
  std::lock_guard lock(mu_);
  listeners_.erase(token);
}

void Supervisor::emit_locked(const JobPtr& job, json event) {
  event["job"] = job->id;
  event["time"] = iso_time(realtime_ns());
  for (auto& [token, l] : listeners_)
    if (l.first == job->id) l.second(event);
}

// ---- work queue ---------------------------------------------------------------------------------

void Supervisor::submit_locked(const JobPtr& job, Work op) {
  auto& q = job->queue;
  if (op.kind == Work::checkpoint && !op.snapshot) {
    for (auto& queued : q)
      if (queued.kind == Work::checkpoint) {
        for (auto& w : op.waiters) queued.waiters.push_back(std::move(w));
        queued.final = queued.final || op.final;
        return;
      }
  }
  if (stopping_) {
    for (auto& w : op.waiters) w(error_json(Errc::busy, "the agent is shutting down"));
    return;
  }
  q.push_back(std::move(op));
  if (job->busy) return;
  job->busy = true;
  ++active_drains_;
  ready_.push_back(job);
  work_cv_.notify_one();
}

void Supervisor::drain(JobPtr job) {
  for (;;) {
    Work op;
    {
      std::lock_guard lock(mu_);
      auto& q = job->queue;
      if (q.empty()) {
        job->busy = false;
        if (job->remove_when_idle) {
          job->remove_when_idle = false;
          remove_images(job->at, job->dir);
          remove_images(job->local_at, job->local_dir);
        }
        --active_drains_;
        idle_cv_.notify_all();
        work_cv_.notify_all();
        return;
      }
      op = std::move(q.front());
      q.pop_front();
    }
    run_op(job, op);
  }
}

void Supervisor::run_op(const JobPtr& job, Work& op) {
  try {
    switch (op.kind) {
      case Work::checkpoint: run_checkpoint(job, op); break;
      case Work::exit: run_exit(job); break;
      case Work::restore: run_restore(job, op); break;
    }
  } catch (const std::exception& e) {
    log::get("agent.job")->error("job {}: internal error: {}", job->id, e.what());
    for (auto& w : op.waiters) w(error_json(Errc::internal, e.what()));
  }
  wake();
}

// ---- checkpoint ---------------------------------------------------------------------------------

void Supervisor::run_checkpoint(const JobPtr& job, Work& op) {
  auto log = log::get("agent.job");
  pid_t pid;
  JobPolicy policy;
  {
    std::lock_guard lock(mu_);
    if (job->forgotten || job->state != JobState::running || job->pid == 0) {
      std::string why = job->forgotten ? "was forgotten" : std::string("is ") + state_name(job->state);
      for (auto& w : op.waiters) w(error_json(Errc::refused, "job " + job->id + " " + why));
      return;
    }
    if (job->lazy_serving) {
      // Pages not in place yet would read as absent; a scheduled one comes again after.
      for (auto& w : op.waiters)
        w(error_json(Errc::busy, "job " + job->id + " was restored lazily and its memory is still "
                                 "being served from the image; checkpoint it once every page is "
                                 "in place (a moment)"));
      return;
    }
    pid = job->pid;
    policy = job->policy;
    if (op.keep) {
      policy.keep = *op.keep;
      policy.compact_after = std::max(2u, *op.keep);
    }
    job->checkpointing = true;
    if (op.scheduled) {
      ++job->scheduled;
      int64_t late_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - op.due).count();
      if (late_ms < 0) late_ms = 0;
      job->late_max_ms = std::max(job->late_max_ms, late_ms);
      job->late_sum_ms += static_cast<double>(late_ms);
      // Late: started more than a tenth of the interval (at least 100 ms) after its time.
      auto interval = interval_locked(*job);
      if (late_ms > std::max<int64_t>(100, interval.count() / 10)) ++job->late;
    }
  }

  if (op.final && job->follow_time_limit && refresh_end_time(job, /*before_final=*/true)) {
    // The time limit moved since the last look: the last checkpoint comes when the new end
    // wants it (now, if it is due already).
    bool later;
    {
      std::lock_guard lock(mu_);
      job->final_queued = false;
      later = final_due_locked(*job) > Clock::now();
      job->final_queued = !later;
      if (later) job->checkpointing = false;
    }
    if (later) {
      persist();
      wake();
      return;
    }
  }
  if (op.final) {
    // Said before the checkpoint, so that the restored job's output still has it.
    UniqueFd err;
    std::string slurm_id;
    int64_t end_ns;
    {
      std::lock_guard lock(mu_);
      if (job->stdio[2]) err.reset(::fcntl(job->stdio[2].get(), F_DUPFD_CLOEXEC, 3));
      slurm_id = slurm_job_of(job->scheduler_job);
      end_ns = job->end_time_ns;
    }
    std::string line = "crest: job " + (slurm_id.empty() ? job->id : slurm_id) +
                       ": last checkpoint before the time limit (" + iso_time(end_ns) + ")" +
                       (slurm_id.empty() ? "" : ", then requeued") + "\n";
    if (err) (void)!::write(err.get(), line.data(), line.size());
  }

  json reply;
  bool ok = false;
  DumpResult result;
  std::string parent;
  bool to_local = false;
  std::unique_lock<std::mutex> local_lock, flush_lock;  // staging (see Job)
  const int64_t started_ns = realtime_ns();
  log->debug("job {} pid {}: checkpoint starting", job->id, pid);
  try {
    if (!slurm_job_of(job->scheduler_job).empty()) refuse_running_srun(pid);
    open_store(*job);
    // Staging: committed locally, unless this checkpoint must be on shared storage when it is
    // reported (the last one before a time limit, crest snapshot's) or the node's local budget
    // has no room for it; those go to shared storage directly.
    to_local = job->local_store != nullptr && !op.final && !op.snapshot;
    if (to_local && opts_.local_max_bytes > 0) {
      uint64_t estimate = 0, used = 0;
      {
        std::lock_guard lock(mu_);
        if (job->last) estimate = static_cast<uint64_t>(stat_of(job->last->stats, "bytes_stored"));
        used = local_bytes_locked();
      }
      if (used + estimate > opts_.local_max_bytes) {
        to_local = false;
        log->info("job {} pid {}: local staging is full ({} of {} bytes used, about {} more "
                  "needed): this checkpoint goes to {} directly",
                  job->id, pid, used, opts_.local_max_bytes, estimate, job->dir);
      }
    }
    storage::ImageStore& target = to_local ? *job->local_store : *job->store;
    storage::WriteTuning tuning;
    bool parent_here = true;
    if (to_local) {
      local_lock = std::unique_lock(job->local_mu);
      // Numbered past whatever shared storage holds: the copy must not replace any of it.
      tuning.min_sequence = max_sequence(job->store->list()) + 1;
      parent_here = job->parent_local;
    } else if (job->local_store) {
      // Not while the flusher copies into the same directory; numbered past the local ones.
      flush_lock = std::unique_lock(job->flush_mu);
      tuning.min_sequence = max_sequence(job->local_store->list()) + 1;
      if (job->parent_local) {
        // Incremental on the parent's copy there, if it has been flushed.
        parent_here = false;
        std::string uuid;
        for (const auto& e : job->local_store->list())
          if (e.name == job->parent_for_next) uuid = e.uuid;
        for (const auto& e : job->store->list())
          if (e.readable && e.name == job->parent_for_next && e.uuid == uuid) parent_here = true;
      }
    }
    bool full = job->parent_for_next.empty() || !parent_here ||
                (policy.full_every > 0 && job->incrementals >= policy.full_every);
    if (full || !job->tracker) job->tracker = Tracker::create();
    parent = full ? "" : job->parent_for_next;
    {
      auto writer = target.begin(parent, tuning);
      DumpOptions o;
      o.pid = pid;
      o.leave_running = true;
      o.tracker = job->tracker.get();
      o.mode = policy.snapshot;
      o.buffer_bytes = opts_.buffer_bytes;
      o.job_id = job->id;
      o.scheduler_job_id = job->scheduler_job;
      o.root_is_init = job->launched || job->root_is_init;
      o.tcp_established = policy.tcp_established;
      o.ext_unix_sk = policy.ext_unix_sk;
      // A job crest launched without a session of its own (crest run on a terminal) is that
      // terminal's job, and is restored onto the restorer's session and terminal.
      o.shell_job = job->launched;
      // The engine's stages, for whoever follows a checkpoint in the log (bench/kill9.py).
      o.progress = [&](const std::string& stage) { log->debug("job {} pid {}: {}", job->id, pid, stage); };
      result = dump(*writer, o);
    }
    if (!job->scheduler_job.empty()) discard_if_stopping(target, result.checkpoint);
    job->parent_for_next = result.checkpoint;
    job->parent_local = to_local;
    job->incrementals = full ? 0 : job->incrementals + 1;
    own_images(to_local ? job->local_at : job->at, job->uid, job->gid);
    local_lock = {};
    flush_lock = {};
    int64_t frozen = stat_of(result.stats, "frozen_ns");
    int64_t total = stat_of(result.stats, "total_ns");
    {
      std::lock_guard lock(mu_);
      ++job->checkpoints;
      job->last = CheckpointInfo{result.checkpoint, parent, started_ns, result.stats};
      job->last_name = result.checkpoint;
      job->tracker_name = job->tracker ? job->tracker->name() : "";
      job->frozen_max_ns = std::max(job->frozen_max_ns, frozen);
      job->frozen_sum_ns += static_cast<double>(frozen);
      const auto stored = static_cast<uint64_t>(stat_of(result.stats, "bytes_stored"));
      const auto read = static_cast<uint64_t>(stat_of(result.stats, "pages_read")) * 4096;
      job->bytes_stored_sum += stored;
      job->bytes_read_sum += read;
      ++totals_.checkpoints;
      totals_.frozen_s += static_cast<double>(frozen) / 1e9;
      totals_.bytes_stored += stored;
      totals_.bytes_read += read;
      double cost = static_cast<double>(total) / 1e9;
      job->cost_s = job->cost_s <= 0 ? cost : 0.5 * job->cost_s + 0.5 * cost;
      job->chain = full ? 1 : job->chain + 1;
      job->last_error.clear();
      if (job->local_store) {
        job->last_location = to_local ? "local" : "shared";
        if (to_local) {
          ++flush_kick_;
          ++job->unflushed;
        } else {
          ++job->direct_writes;
          ++flush_totals_.direct;
        }
      }
      reply = {{"ok", true},
               {"job", job->id},
               {"checkpoint", result.checkpoint},
               {"parent", parent},
               {"dir", job->dir},
               {"stats", result.stats}};
      if (job->local_store) {
        reply["location"] = job->last_location;
        reply["local_dir"] = job->local_dir;
      }
      emit_locked(job, {{"event", "checkpoint"},
                        {"checkpoint", result.checkpoint},
                        {"location", job->last_location},
                        {"parent", parent},
                        {"frozen_ns", frozen},
                        {"total_ns", total},
                        {"bytes_stored", stat_of(result.stats, "bytes_stored")}});
    }
    ok = true;
    if (to_local) flush_cv_.notify_all();
    log->info("job {} pid {}: checkpoint {} ({}{}) frozen {:.1f} ms, {} bytes stored, {:.1f} ms in all{}",
              job->id, pid, result.checkpoint, full ? "full" : "incremental on ",
              full ? "" : parent, static_cast<double>(frozen) / 1e6,
              stat_of(result.stats, "bytes_stored"), static_cast<double>(total) / 1e6,
              !job->local_store ? "" : to_local ? ", committed locally" : ", written to shared storage directly");
  } catch (const Error& e) {
    local_lock = {};
    flush_lock = {};
    const std::string what = shown(*job, e.what());
    // A failed dump leaves the tracker in an unknown state: the next one starts a fresh tracker
    // on the same parent (pages are then compared by content).
    job->tracker.reset();
    std::lock_guard lock(mu_);
    ++job->checkpoint_failures;
    ++totals_.checkpoint_failures;
    job->last_error = std::string(kind_name(e.kind())) + ": " + what;
    reply = error_json(e.kind(), what);
    emit_locked(job, {{"event", "checkpoint-failed"}, {"error", reply["error"]}});
    bool gone = e.kind() == Errc::not_found || !proc::exists(pid);
    if (gone)
      log->info("job {} pid {}: checkpoint abandoned: the job is ending ({})", job->id, pid, what);
    else
      log->warn("job {} pid {}: checkpoint failed: {}: {}", job->id, pid, kind_name(e.kind()),
                what);
  }
  persist();  // before anyone hears of the checkpoint: a crash right after must not forget it
  if (!op.snapshot)
    for (auto& w : op.waiters) w(reply);
  if (ok && job->local_store && !to_local) {
    // Written to shared storage directly: safe once its chain verifies there.
    auto report = job->store->verify(result.checkpoint);
    std::lock_guard lock(mu_);
    if (report.ok()) {
      job->last_safe = result.checkpoint;
      job->last_safe_ns = realtime_ns();
      job->last_flush_ms = 0;
      job->last_safe_latency_ms = static_cast<double>(job->last_safe_ns - started_ns) / 1e6;
      emit_locked(job, {{"event", "safe"}, {"checkpoint", result.checkpoint}, {"direct", true}});
    } else {
      job->flush_error = shown(*job, result.checkpoint + " does not verify on shared storage: " +
                                         report.errors[0]);
    }
  }
  after_slurm_checkpoint(job, op.final, ok);
  if (ok && op.snapshot) {
    retain(job, policy.keep, /*snapshot=*/true);
  } else if (ok) {
    retain(job, policy.keep);
    if (policy.compact_after >= 2 && job->chain >= policy.compact_after)
      compact_newest(job, policy.keep);
  }
  if (op.snapshot) {
    // The snapshot's caller hears once retention is over, and of its failure if it failed (the
    // checkpoint itself is committed: it says which).
    if (ok) {
      std::lock_guard lock(mu_);
      if (!job->last_error.empty()) reply["retention_error"] = job->last_error;
      reply["images"] = {{"files", job->image_files}, {"bytes", job->bytes}};
      reply["tracker"] = job->tracker_name;
    }
    for (auto& w : op.waiters) w(reply);
  }
  {
    std::lock_guard lock(mu_);
    job->checkpointing = false;
    if (job->state == JobState::running)
      job->next_due = Clock::now() + interval_locked(*job);
  }
  persist();
  log->debug("job {} pid {}: checkpoint over", job->id, pid);
}

void Supervisor::after_slurm_checkpoint(const JobPtr& job, bool final, bool ok) {
  auto log = log::get("agent.slurm");
  std::string slurm_id, name, dir, error;
  int64_t taken_ns = 0;
  uint64_t count = 0;
  bool comment = false;
  UniqueFd err;
  {
    std::lock_guard lock(mu_);
    slurm_id = slurm_job_of(job->scheduler_job);
    if (slurm_id.empty()) return;
    if (ok && job->last) {
      name = job->last->name;
      taken_ns = job->last->time_ns;
    }
    dir = job->dir;
    count = job->checkpoints;
    error = job->last_error;
    if (job->last_location == "local")
      dir = job->local_dir + " (node-local; being copied to " + job->dir +
            (job->last_safe.empty() ? "" : ", where " + job->last_safe + " is safe") + ")";
    // AdminComment at most every 15 s (each is a request to slurmctld), and after the last one.
    auto now = Clock::now();
    comment = ok && (final || now - job->comment_at >= std::chrono::seconds(15));
    if (comment) job->comment_at = now;
    if (final && job->stdio[2]) err.reset(::fcntl(job->stdio[2].get(), F_DUPFD_CLOEXEC, 3));
  }
  auto tell = [&](const std::string& line) {
    if (err) (void)!::write(err.get(), line.data(), line.size());
  };
  if (comment) {
    std::string text = "crest: checkpoint " + name + " taken " + iso_time(taken_ns) + " (" +
                       std::to_string(count) + " this run) in " + dir +
                       (final ? "; the last before the time limit" : "");
    try {
      slurm_admin_comment(opts_.scontrol, slurm_id, text);
    } catch (const Error& e) {
      log->warn("job {} (slurm {}): cannot note the checkpoint in the job's AdminComment: {}",
                job->id, slurm_id, e.what());
    }
  }
  if (!final) return;
  if (!ok) {
    log->error("job {} (slurm {}): the last checkpoint before the time limit failed ({}); the "
               "job is not requeued", job->id, slurm_id, error);
    tell("crest: job " + slurm_id + ": the last checkpoint before the time limit failed (" +
         error + "); the job is not requeued and ends at its time limit\n");
    return;
  }
  try {
    slurm_requeue(opts_.scontrol, slurm_id);
    {
      std::lock_guard lock(mu_);
      job->requeued = true;
    }
    log->info("job {} (slurm {}): requeued after {}, its last checkpoint before the time limit",
              job->id, slurm_id, name);
  } catch (const Error& e) {
    log->error("job {} (slurm {}): {}; the job ends at its time limit", job->id, slurm_id,
               e.what());
    tell("crest: job " + slurm_id + ": " + e.what() +
         " (the job needs --requeue, or JobRequeue=1 on the cluster); it ends at its time "
         "limit\n");
  }
  persist();
}

// Retention after a checkpoint (its requester already has the reply): old checkpoints go while
// the job runs on. A snapshot's (crest snapshot) is the one crest snapshot applies without
// crestd (images.h), so that a directory of snapshots looks the same whoever took them.
void Supervisor::retain(const JobPtr& job, unsigned keep, bool snapshot) {
  auto log = log::get("agent.job");
  log->debug("job {} pid {}: retention (keep {})", job->id, job->pid, keep);
  try {
    // Staging: this is shared storage's retention (the flusher's copies are subject to it too);
    // the local copies go once flushed (drop_flushed_local, in the flusher).
    Retention r = snapshot ? snapshot_retention(*job->store, job->parent_for_next, keep)
                           : apply_retention(*job->store, keep);
    if (snapshot || !r.removed.empty()) own_images(job->at, job->uid, job->gid);
    storage::ImageStore& chain_store =
        job->parent_local && job->local_store ? *job->local_store : *job->store;
    unsigned chain = chain_length(chain_store.list(), job->parent_for_next);
    uint64_t bytes = images_bytes(job->at);
    unsigned files = images_count(job->at);
    uint64_t local = job->local_at.empty() ? 0 : images_bytes(job->local_at);
    std::lock_guard lock(mu_);
    job->chain = chain;
    job->bytes = bytes;
    job->image_files = files;
    job->local_bytes = local;
    if (!r.removed.empty())
      log->info("job {} pid {}: retention (keep {}): removed {} old {}", job->id, job->pid, keep,
                r.removed.size(), snapshot ? "snapshots" : "checkpoints");
  } catch (const Error& e) {
    const std::string what = shown(*job, e.what());
    std::lock_guard lock(mu_);
    job->last_error = "retention: " + std::string(kind_name(e.kind())) + ": " + what;
    log->warn("job {} pid {}: retention failed: {}", job->id, job->pid, what);
  }
}

// Folds the newest checkpoint's chain into it (same name and uuid: the tracker's next checkpoint
// is still incremental on it), then lets retention drop the ancestors nothing kept needs: the
// compaction itself removes nothing, so an ancestor that is one of the newest `keep` stays. Runs
// in the job's queue after the checkpoint's requester has its reply: the job runs on, and its
// next checkpoint waits for the compaction (both write the same directory).
void Supervisor::compact_newest(const JobPtr& job, unsigned keep) {
  auto log = log::get("agent.job");
  const auto t0 = Clock::now();
  log->debug("job {} pid {}: compacting {}", job->id, job->pid, job->parent_for_next);
  try {
    // Staging: a chain on local storage is compacted there (and the compacted checkpoint copied
    // again: the flusher sees its parent changed), with the flusher's removals held off.
    const bool local = job->parent_local && job->local_store;
    std::unique_lock<std::mutex> local_lock;
    if (local) local_lock = std::unique_lock(job->local_mu);
    storage::CompactResult c = (local ? *job->local_store : *job->store)
                                   .compact(job->parent_for_next, {}, /*remove_ancestors=*/false);
    own_images(local ? job->local_at : job->at, job->uid, job->gid);
    local_lock = {};
    if (local) {
      {
        std::lock_guard lock(mu_);
        ++flush_kick_;
      }
      flush_cv_.notify_all();
    }
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    {
      std::lock_guard lock(mu_);
      ++job->compactions;
      job->last_compaction_ms = ms;
    }
    log->info("job {} pid {}: compacted {} (a chain of {} files) in {:.1f} ms", job->id, job->pid,
              c.checkpoint, c.files_before, ms);
    retain(job, keep);
  } catch (const Error& e) {
    const std::string what = shown(*job, e.what());
    std::lock_guard lock(mu_);
    job->last_error = "compaction: " + std::string(kind_name(e.kind())) + ": " + what;
    log->warn("job {} pid {}: compaction of {} failed: {}", job->id, job->pid, job->parent_for_next,
              what);
  }
}

// ---- failure watch ------------------------------------------------------------------------------

ExitStatus Supervisor::collect_exit(const JobPtr& job) {
  int fd;
  bool child;
  {
    std::lock_guard lock(mu_);
    fd = job->pidfd.get();
    child = job->our_child;
  }
  if (fd < 0) return {};
  auto deadline = Clock::now() + std::chrono::seconds(5);
  if (child) {
    // The parent's view: reap it (only once it has exited: see the header).
    while (Clock::now() < deadline) {
      siginfo_t si{};
      int r = ::waitid(kPPidfd, static_cast<id_t>(fd), &si, WEXITED | WNOHANG);
      if (r == 0 && si.si_pid != 0) {
        ExitStatus s;
        s.known = true;
        if (si.si_code == CLD_EXITED) {
          s.code = si.si_status;
        } else {
          s.signaled = true;
          s.signal = si.si_status;
        }
        return s;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) break;  // ECHILD: not ours after all (re-adopted after a restart)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  // Anyone's view (Linux 6.15): the status the kernel kept for pidfd holders. It appears once
  // the real parent has reaped the process, which an init may do late.
  while (Clock::now() < deadline) {
    PidfdInfo info{};
    info.mask = kPidfdInfoExit;
    if (::ioctl(fd, kPidfdGetInfo, &info) != 0) {
      if (errno == EINTR) continue;
      break;  // not supported here
    }
    if (info.mask & kPidfdInfoExit) return ExitStatus::from_wait(info.exit_code);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return {};
}

void Supervisor::run_exit(const JobPtr& job) {
  auto log = log::get("agent.watch");
  ExitStatus st = collect_exit(job);
  if (!job->scheduler_job.empty() && !job->parent_for_next.empty()) {
    // When this run ended, for the message of the job's restore (maybe on another node).
    try {
      write_run_end(job->at, job->uid, job->gid, realtime_ns());
    } catch (const Error& e) {
      log->warn("job {} pid -: cannot record the end of its run: {}", job->id, e.what());
    }
  }
  // Only a checkpoint of this job will do (an images directory given again may hold older ones).
  bool have_images = !job->parent_for_next.empty();
  {
    std::lock_guard lock(mu_);
    pid_t old_pid = job->pid;
    job->pidfd.reset();
    job->pid = 0;
    job->our_child = false;
    job->next_due = Clock::time_point::max();
    if (job->forgotten || job->state != JobState::running) return;

    // What the job itself did: crest-init reports a job killed by signal N as 128+N.
    ExitStatus own = st;
    if (job->launched && st.known && !st.signaled && st.code > 128 && st.code <= 128 + 64) {
      own.signaled = true;
      own.signal = st.code - 128;
      own.code = 0;
    }
    std::string what = own.describe();
    if (job->launched && !st.signaled && own.signaled)
      what = "the job was " + own.describe() + " (crest-init exited with " +
             std::to_string(st.code) + ")";
    else if (!st.signaled || !job->launched)
      what = "the job's root " + st.describe();
    else
      what = "crest-init (the job's pid 1) was " + st.describe();

    bool abnormal = false;
    if (!st.known) {
      log->warn("job {} pid {}: ended, but its exit status could not be learned (not crestd's "
                "child and no PIDFD_GET_INFO); treated as a normal end",
                job->id, old_pid);
    } else if (own.signaled) {
      abnormal = !job->requested_stop;
    } else if (own.code != 0 && job->policy.restore_on_nonzero) {
      abnormal = !job->requested_stop;
    }

    if (!abnormal) {
      log->info("job {} pid {}: {}{}", job->id, old_pid, what,
                job->requested_stop && own.signaled ? " (a stop requested through crest)" : "");
      finish_locked(job, own, what, false);
    } else if (job->auto_restores < job->policy.auto_restore && have_images) {
      job->failure = own;
      log->warn("job {} pid {}: {}", job->id, old_pid, what);
      schedule_restore_locked(job, what);
    } else {
      std::string why = job->policy.auto_restore == 0 ? "automatic restore is off"
                        : !have_images                ? "there is no checkpoint to restore from"
                                                      : "no automatic restore left (" +
                                                          std::to_string(job->policy.auto_restore) +
                                                          " used)";
      log->error("job {} pid {}: {}; not restored: {}", job->id, old_pid, what, why);
      finish_locked(job, own, what + "; not restored: " + why, true);
    }
  }
  persist();
}

void Supervisor::schedule_restore_locked(const JobPtr& job, const std::string& reason) {
  unsigned attempt = ++job->auto_restores;
  double factor = std::pow(2.0, static_cast<double>(attempt - 1));
  auto delay = std::chrono::milliseconds(
      static_cast<int64_t>(std::min(static_cast<double>(job->policy.backoff.count()) * factor,
                                    static_cast<double>(job->policy.backoff_max.count()))));
  job->state = JobState::restore_wait;
  job->restore_due = Clock::now() + delay;
  job->restore_reason = reason;
  log::get("agent.watch")
      ->warn("job {} pid -: automatic restore {} of {} from the newest checkpoint in {} (reason: {})",
             job->id, attempt, job->policy.auto_restore, format_duration(delay), reason);
  emit_locked(job, {{"event", "restoring"},
                    {"reason", reason},
                    {"attempt", attempt},
                    {"of", job->policy.auto_restore},
                    {"delay_ms", delay.count()}});
}

void Supervisor::finish_locked(const JobPtr& job, const ExitStatus& st, const std::string& reason,
                               bool failed) {
  job->state = failed ? JobState::failed : JobState::ended;
  job->exit = st;
  job->end_reason = reason;
  job->ended_ns = realtime_ns();
  if (!job->cgroup.empty()) cgroup::remove(job->cgroup);  // only when empty
  remove_job_scratch(job->scratch, job->uid, job->gid);
  job->scratch.clear();
  if (!failed && job->policy.remove_images_on_success) {
    remove_images(job->at, job->dir);
    remove_images(job->local_at, job->local_dir);
    job->store.reset();
    job->local_store.reset();
  }
  emit_locked(job, {{"event", "end"}, {"status", st.to_json()}, {"reason", reason},
                    {"failed", failed}});
  if (job->transient) {
    jobs_.erase(job->id);
    job->forgotten = true;
    for (auto it = listeners_.begin(); it != listeners_.end();)
      it = it->second.first == job->id ? listeners_.erase(it) : std::next(it);
  }
}

// ---- restore ------------------------------------------------------------------------------------

void Supervisor::serve_lazily(const JobPtr& job, std::shared_ptr<storage::CheckpointReader> reader,
                              std::shared_ptr<LazyPages> lazy) {
  {
    std::lock_guard lock(mu_);
    job->lazy_serving = true;
    ++lazy_servers_;
  }
  std::thread([this, job, reader = std::move(reader), lazy = std::move(lazy)]() mutable {
    auto log = log::get("agent.job");
    std::string error;
    try {
      lazy->wait();
    } catch (const std::exception& e) {
      error = e.what();
    }
    const LazyPages::Stats st = lazy->stats();
    lazy.reset();  // before the image it reads
    reader.reset();
    const double after_ms = static_cast<double>(st.resident_ns - st.released_ns) / 1e6;
    {
      std::lock_guard lock(mu_);
      job->lazy_serving = false;
      if (error.empty()) {
        log->info("job {} pid {}: lazy restore: all {} pages in place {:.1f} ms after the job ran "
                  "({} served on fault, {} prefetched)",
                  job->id, job->pid, st.pages_total, after_ms, st.pages_faulted,
                  st.pages_prefetched);
        emit_locked(job, {{"event", "resident"},
                          {"pages", st.pages_total},
                          {"faulted", st.pages_faulted},
                          {"prefetched", st.pages_prefetched},
                          {"after_ms", after_ms}});
      } else {
        // The guardian has killed the job: its end is seen and handled as any failure.
        job->last_error = error;
        log->error("job {} pid {}: {}", job->id, job->pid, error);
      }
      if (job->state == JobState::running && job->next_due < Clock::now())
        job->next_due = Clock::now();  // due while it was served: now
      --lazy_servers_;
      wake();
      lazy_cv_.notify_all();  // under mu_: once it is released, stop() may return
    }
  }).detach();
}

void Supervisor::run_restore(const JobPtr& job, Work& op) {
  auto log = log::get("agent.job");
  JobState before;
  std::string reason;
  std::map<int, int> inherited;
  {
    std::lock_guard lock(mu_);
    before = job->state;
    if (job->forgotten) return;
    if (op.automatic) {
      if (job->state != JobState::restoring) return;
      reason = job->restore_reason;
    } else {
      if (job->state != JobState::ended && job->state != JobState::failed &&
          job->state != JobState::lost) {
        for (auto& w : op.waiters)
          w(error_json(Errc::busy, "job " + job->id + " is " + state_name(job->state)));
        return;
      }
      reason = "requested";
      job->state = JobState::restoring;
    }
    for (int i = 0; i < 3; ++i)
      if (job->stdio[i]) inherited[i] = job->stdio[i].get();
  }
  try {
    open_store(*job);
    // The job's newest committed checkpoint (what `latest` names, unless the directory also holds
    // a newer one of some other run). Staging: its local copy if it verifies, else its copy on
    // shared storage; if that was never flushed, the newest one there (only the unflushed
    // checkpoints are lost).
    std::shared_ptr<storage::CheckpointReader> reader;
    std::string from = "shared";
    if (job->local_store && job->parent_local && !job->parent_for_next.empty()) {
      auto report = job->local_store->verify(job->parent_for_next);
      if (report.ok()) {
        reader = job->local_store->open(job->parent_for_next);
        from = "local";
      } else {
        log->warn("job {} pid -: the local copy of {} cannot be restored from ({}); trying shared "
                  "storage", job->id, job->parent_for_next, shown(*job, report.errors[0]));
      }
    }
    if (!reader) {
      try {
        reader = job->store->open(job->parent_for_next.empty() ? "latest" : job->parent_for_next);
      } catch (const Error& e) {
        if (!job->local_store || job->parent_for_next.empty()) throw;
        log->warn("job {} pid -: {} is not on shared storage ({}); restoring from the newest "
                  "checkpoint there", job->id, job->parent_for_next, shown(*job, e.what()));
        reader = job->store->open("latest");
      }
    }
    // The user can rewrite their own images: nothing in them may exceed what the user may do.
    check_image_for_owner(reader->meta(), job->uid, job->gid);
    RestoreOptions ro;
    // Output the job wrote after its checkpoint is rolled back, so it writes it again the same.
    ro.file_changes = FileChangePolicy::truncate;
    ro.inherited_fds = inherited;
    ro.shell_job = true;  // a job launched on crest run's terminal (see the dumps)
    ro.lazy = job->policy.lazy_restore;
    RestoreResult res = crest::restore(*reader, ro);
    UniqueFd pfd = proc::open_pidfd(res.root_pid);
    if (!pfd) throw_errno("pidfd_open of the restored root", errno, Errc::kernel);
    int64_t ns = stat_of(res.stats, "restore_ns");
    if (!job->cgroup.empty()) {
      cgroup::create(job->cgroup.substr(cgroup::v2_mount().size()));  // removed at the end
      move_tree(res.root_pid, job->cgroup);
    }
    job->tracker.reset();
    job->parent_for_next = reader->name();
    job->parent_local = from == "local";
    {
      std::lock_guard lock(mu_);
      if (job->forgotten) {
        // Forgotten while it was being restored: nobody is to watch it, so it does not run.
        ::kill(res.root_pid, SIGKILL);
        int st;
        ::waitpid(res.root_pid, &st, 0);
        if (!job->cgroup.empty()) cgroup::remove(job->cgroup);
        for (auto& w : op.waiters) w(error_json(Errc::refused, "job " + job->id + " was forgotten"));
        return;
      }
      job->pid = res.root_pid;
      job->last_name = reader->name();
      job->pidfd = std::move(pfd);
      job->our_child = true;
      job->exit_seen = false;
      job->requested_stop = false;
      job->start_time = start_time_of(res.root_pid);
      job->state = JobState::running;
      ++job->restores;
      ++totals_.restores;
      job->exit = {};
      job->end_reason.clear();
      job->last_restore = {{"time", iso_time(realtime_ns())},
                           {"checkpoint", reader->name()},
                           {"reason", reason},
                           {"automatic", op.automatic},
                           {"from", from},
                           {"restore_ns", ns},
                           {"pid", res.root_pid},
                           {"lazy", res.lazy != nullptr}};
      job->next_due = Clock::now() + interval_locked(*job);
      emit_locked(job, {{"event", "restored"},
                        {"checkpoint", reader->name()},
                        {"pid", res.root_pid},
                        {"reason", reason},
                        {"restore_ns", ns}});
      for (auto& w : op.waiters)
        w({{"ok", true}, {"job", job->id}, {"checkpoint", reader->name()}, {"pid", res.root_pid}});
    }
    log->info("job {} pid {}: restored from {}{} in {:.1f} ms{} (reason: {})", job->id,
              res.root_pid, reader->name(),
              job->local_store ? " (" + from + " copy)" : std::string(),
              static_cast<double>(ns) / 1e6, res.lazy ? ", its memory served lazily" : "", reason);
    if (res.lazy) serve_lazily(job, reader, std::move(res.lazy));
  } catch (const Error& e) {
    const std::string what = shown(*job, e.what());
    std::lock_guard lock(mu_);
    ++job->restore_failures;
    ++totals_.restore_failures;
    job->last_error = std::string(kind_name(e.kind())) + ": " + what;
    log->error("job {} pid -: restore failed: {}: {}", job->id, kind_name(e.kind()), what);
    emit_locked(job, {{"event", "restore-failed"},
                      {"error", {{"kind", kind_name(e.kind())}, {"message", what}}}});
    if (op.automatic) {
      if (job->auto_restores < job->policy.auto_restore) {
        schedule_restore_locked(job, reason + "; the last restore failed: " + what);
      } else {
        finish_locked(job, job->failure,
                      reason + "; not restored: the last restore failed (" + what + ")", true);
      }
    } else {
      job->state = before;
      for (auto& w : op.waiters) w(error_json(e.kind(), what));
    }
  }
  persist();
}

// ---- the watcher --------------------------------------------------------------------------------

void Supervisor::watch_loop() {
  auto log = log::get("agent.sched");
  for (;;) {
    std::vector<pollfd> fds{{wake_fd_.get(), POLLIN, 0}};
    std::vector<JobPtr> watched;
    size_t orphan_base;
    int timeout = -1;
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      auto now = Clock::now();
      Clock::time_point next = Clock::time_point::max();
      for (auto& [id, job] : jobs_) {
        if (job->state == JobState::running && job->pidfd && !job->exit_seen) {
          fds.push_back({job->pidfd.get(), POLLIN, 0});
          watched.push_back(job);
        }
        if (job->state == JobState::running && !job->paused && !job->lazy_serving) {
          next = std::min(next, job->next_due);
          next = std::min(next, final_due_locked(*job));
        }
        if (job->state == JobState::restore_wait) next = std::min(next, job->restore_due);
      }
      orphan_base = fds.size();
      for (auto& o : orphans_) fds.push_back({o.pidfd.get(), POLLIN, 0});
      if (next != Clock::time_point::max()) {
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count();
        timeout = static_cast<int>(std::clamp<int64_t>(ms + 1, 0, 60000));
      }
    }
    int n = ::poll(fds.data(), fds.size(), timeout);
    if (n < 0 && errno != EINTR) {
      log->error("poll: {}", std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (fds[0].revents) {
      uint64_t v;
      (void)!::read(wake_fd_.get(), &v, sizeof v);
    }

    std::lock_guard lock(mu_);
    if (stopping_) return;
    for (size_t i = 0; i < watched.size(); ++i) {
      if (!fds[i + 1].revents) continue;
      auto& job = watched[i];
      if (job->forgotten || job->exit_seen || job->pidfd.get() != fds[i + 1].fd) continue;
      job->exit_seen = true;
      Work op;
      op.kind = Work::exit;
      submit_locked(job, std::move(op));
    }
    for (size_t i = orphans_.size(); i-- > 0;) {
      if (orphan_base + i >= fds.size() || !fds[orphan_base + i].revents) continue;
      siginfo_t si{};
      ::waitid(kPPidfd, static_cast<id_t>(orphans_[i].pidfd.get()), &si, WEXITED | WNOHANG);
      if (!orphans_[i].cgroup.empty()) cgroup::remove(orphans_[i].cgroup);
      remove_job_scratch(orphans_[i].scratch, orphans_[i].uid, orphans_[i].gid);
      orphans_.erase(orphans_.begin() + static_cast<long>(i));
    }
    auto now = Clock::now();
    for (auto& [id, job] : jobs_) {
      if (job->lazy_serving) continue;  // its checkpoints wait until its memory is all in place
      if (job->state == JobState::running && !job->paused && job->next_due <= now) {
        Work op;
        op.kind = Work::checkpoint;
        op.scheduled = true;
        op.due = job->next_due;
        job->next_due = Clock::time_point::max();  // set again when this checkpoint is over
        submit_locked(job, std::move(op));
      }
      if (job->state == JobState::running && !job->paused && final_due_locked(*job) <= now) {
        job->final_queued = true;
        Work op;
        op.kind = Work::checkpoint;
        op.final = true;
        log->info("job {} pid {}: the last checkpoint before its time limit ({})", job->id,
                  job->pid, iso_time(job->end_time_ns));
        submit_locked(job, std::move(op));
      } else if (job->state == JobState::restore_wait && job->restore_due <= now) {
        job->state = JobState::restoring;
        job->restore_due = Clock::time_point::max();
        Work op;
        op.kind = Work::restore;
        op.automatic = true;
        submit_locked(job, std::move(op));
      }
    }
  }
}

// ---- Slurm time limits ------------------------------------------------------------------------

bool Supervisor::refresh_end_time(const JobPtr& job, bool before_final) {
  auto log = log::get("agent.slurm");
  std::string slurm_id = slurm_job_of(job->scheduler_job);
  if (slurm_id.empty()) return false;
  SlurmJobEnd end;
  try {
    end = slurm_job_end(opts_.scontrol, slurm_id);
  } catch (const Error& e) {
    log->warn("job {} (slurm {}): cannot ask Slurm for its time limit: {}", job->id, slurm_id,
              e.what());
    return false;
  }
  if (!end.running) return false;  // being requeued or ending: what it had stays
  std::lock_guard lock(mu_);
  if (job->end_time_ns == end.end_ns || (job->final_queued && !before_final)) return false;
  log->info("job {} (slurm {}): its time limit changed: it now ends {} (was {})", job->id,
            slurm_id, end.end_ns ? iso_time(end.end_ns) : "never",
            job->end_time_ns ? iso_time(job->end_time_ns) : "never");
  job->end_time_ns = end.end_ns;
  return true;
}

void Supervisor::slurm_poll_loop() {
  for (;;) {
    std::vector<JobPtr> followed;
    {
      std::unique_lock lock(mu_);
      poll_cv_.wait_for(lock, opts_.slurm_poll, [this] { return stopping_; });
      if (stopping_) return;
      for (auto& [id, job] : jobs_)
        if (job->follow_time_limit && job->state == JobState::running && !job->final_queued &&
            !job->forgotten)
          followed.push_back(job);
    }
    bool changed = false;
    for (auto& job : followed) changed |= refresh_end_time(job);
    if (changed) {
      persist();
      wake();  // the watch loop computes the last checkpoint's time again
    }
  }
}

// ---- staging: the flusher ----------------------------------------------------------------------

namespace {
// The flusher's own stores of a job (list() remembers what it read of each file).
struct FlushStores {
  std::unique_ptr<storage::ImageStore> local, shared;
  std::string logged_error;  // the last error logged, so that a retry does not log it again
};
}  // namespace

void Supervisor::flush_loop() {
  std::map<std::string, FlushStores> stores;
  for (;;) {
    std::vector<JobPtr> jobs;
    {
      std::lock_guard lock(mu_);
      if (flush_stop_) return;
      for (auto& [id, j] : jobs_)
        if (!j->local_at.empty() && !j->at.empty() && !j->forgotten) jobs.push_back(j);
    }
    std::erase_if(stores, [&](auto& kv) {
      return std::none_of(jobs.begin(), jobs.end(), [&](auto& j) { return j->id == kv.first; });
    });
    uint64_t kick;
    {
      std::lock_guard lock(mu_);
      kick = flush_kick_;
    }
    bool did = false;
    for (auto& job : jobs) {
      if (flush_stop_) return;
      FlushStores& st = stores[job->id];
      auto log = log::get("agent.flush");
      try {
        if (!st.local) st.local = storage::ImageStore::open_directory(job->local_at, true);
        if (!st.shared) st.shared = storage::ImageStore::open_directory(job->at, true);
        did |= flush_job(job, *st.local, *st.shared);
        st.logged_error.clear();
      } catch (const Error& e) {
        const std::string what = shown(*job, e.what());
        if (e.kind() == Errc::busy && flush_stop_) return;
        {
          std::lock_guard lock(mu_);
          job->flushing.clear();
          job->flush_error = std::string(kind_name(e.kind())) + ": " + what;
          ++flush_totals_.failures;
        }
        if (st.logged_error != what)
          log->warn("job {}: copy to shared storage failed (tried again every second): {}",
                    job->id, what);
        st.logged_error = what;
      }
    }
    if (did) {
      persist();
      flush_cv_.notify_all();
      continue;  // more may be waiting
    }
    std::unique_lock lock(mu_);
    flush_cv_.wait_for(lock, std::chrono::seconds(1),
                       [&] { return flush_stop_ || flush_kick_ != kick; });
  }
}

bool Supervisor::flush_job(const JobPtr& job, storage::ImageStore& local_store,
                           storage::ImageStore& shared_store) {
  storage::ImageStore* local = &local_store;
  storage::ImageStore* shared = &shared_store;
  auto log = log::get("agent.flush");
  unsigned keep;
  bool ended;
  {
    std::lock_guard lock(mu_);
    keep = job->policy.keep;
    ended = job->state == JobState::ended || job->state == JobState::failed;
  }
  auto update = [&](const PendingFlushes& p) {
    uint64_t bytes = images_bytes(job->local_at);
    std::lock_guard lock(mu_);
    job->unflushed = static_cast<unsigned>(p.items.size());
    job->local_bytes = bytes;
    if (!p.conflict.empty()) job->flush_error = "conflict: " + p.conflict;
  };
  PendingFlushes pending = pending_flushes(local->list(), shared->list());
  if (pending.items.empty() || !pending.conflict.empty()) {
    // Nothing to copy: the local copies nobody needs go (all of them once the job has ended).
    if (pending.items.empty()) {
      std::lock_guard local_lock(job->local_mu);
      auto removed = drop_flushed_local(*local, shared->list(), ended ? 0 : opts_.local_keep);
      if (!removed.empty())
        log->debug("job {}: removed {} local copies flushed to shared storage", job->id,
                   removed.size());
    }
    update(pending_flushes(local->list(), shared->list()));
    return false;
  }
  update(pending);
  FlushResult r;
  storage::CheckpointEntry item;
  {
    // A checkpoint written to shared storage directly meanwhile may have superseded it.
    std::lock_guard flush_lock(job->flush_mu);
    pending = pending_flushes(local->list(), shared->list());
    if (pending.items.empty()) return true;
    item = pending.items.front();
    {
      std::lock_guard lock(mu_);
      job->flushing = item.name;
    }
    log->debug("job {}: copying {} to {}", job->id, item.name, job->dir);
    r = flush_checkpoint(*shared, job->local_at, job->at, item.name, opts_.flush_bandwidth,
                         flush_stop_);
  }
  own_images(job->at, job->uid, job->gid);
  const int64_t now = realtime_ns();
  {
    std::lock_guard lock(mu_);
    job->flushing.clear();
    job->flush_error.clear();
    ++job->flushes;
    job->flushed_bytes += r.bytes;
    ++flush_totals_.flushes;
    flush_totals_.bytes += r.bytes;
    // A checkpoint written directly meanwhile may be newer than this copy: the newest stays.
    auto seq = [](const std::string& n) {
      return std::strtoull(n.c_str() + std::min<size_t>(n.size(), 5), nullptr, 10);
    };
    if (job->last_safe.empty() || seq(item.name) >= seq(job->last_safe)) job->last_safe = item.name;
    job->last_safe_ns = now;
    job->last_flush_ms = r.copy_ms + r.verify_ms;
    job->last_safe_latency_ms = item.created_ns > 0 ? static_cast<double>(now - item.created_ns) / 1e6 : 0;
    emit_locked(job, {{"event", "safe"},
                      {"checkpoint", item.name},
                      {"bytes", r.bytes},
                      {"copy_ms", r.copy_ms},
                      {"verify_ms", r.verify_ms}});
  }
  log->info("job {}: {} is safe on shared storage ({} bytes copied in {:.1f} ms, verified in "
            "{:.1f} ms)",
            job->id, item.name, r.bytes, r.copy_ms, r.verify_ms);
  // Shared storage's retention, then the local copies that are not needed any more.
  try {
    Retention ret = apply_retention(*shared, keep);
    if (!ret.removed.empty())
      log->info("job {}: retention on shared storage (keep {}): removed {} old checkpoints",
                job->id, keep, ret.removed.size());
  } catch (const Error& e) {
    log->warn("job {}: retention on shared storage failed: {}", job->id, shown(*job, e.what()));
  }
  {
    std::lock_guard local_lock(job->local_mu);
    drop_flushed_local(*local, shared->list(), ended ? 0 : opts_.local_keep);
  }
  update(pending_flushes(local->list(), shared->list()));
  uint64_t bytes = images_bytes(job->at);
  unsigned files = images_count(job->at);
  std::lock_guard lock(mu_);
  job->bytes = bytes;
  job->image_files = files;
  return true;
}

// ---- status -------------------------------------------------------------------------------------

json Supervisor::status_locked(const Job& job) const {
  json j;
  j["id"] = job.id;
  j["name"] = job.name;
  if (!job.scheduler_job.empty()) j["scheduler_job"] = job.scheduler_job;
  j["uid"] = job.uid;
  j["gid"] = job.gid;
  j["kind"] = job.launched ? "run" : "registered";
  j["command"] = job.argv;
  j["state"] = state_name(job.state);
  j["pid"] = job.pid;
  j["dir"] = job.dir;
  j["cgroup"] = job.cgroup;
  j["scratch"] = job.scratch;
  j["lazy_serving"] = job.lazy_serving;
  j["every"] = job.policy.every();
  auto interval = interval_locked(job);
  j["interval_s"] = seconds(interval);
  if (job.policy.auto_interval)
    j["auto"] = {{"mtbf_s", seconds(job.policy.mtbf)},
                 {"cost_s", job.cost_s},
                 {"interval_s", seconds(interval)},
                 {"measured", job.checkpoints > 0}};
  j["paused"] = job.paused;
  j["checkpointing"] = job.checkpointing;
  j["tracker"] = job.tracker_name;
  j["checkpoints"] = job.checkpoints;
  j["checkpoint_failures"] = job.checkpoint_failures;
  if (job.last) {
    const auto& s = job.last->stats;
    j["last_checkpoint"] = {{"name", job.last->name},
                            {"time", iso_time(job.last->time_ns)},
                            {"incremental", !job.last->parent.empty()},
                            {"parent", job.last->parent},
                            {"frozen_ns", stat_of(s, "frozen_ns")},
                            {"total_ns", stat_of(s, "total_ns")},
                            {"bytes_stored", stat_of(s, "bytes_stored")},
                            {"pages_stored", stat_of(s, "pages_stored")},
                            {"pages_kept", stat_of(s, "pages_kept")},
                            {"pages_read", stat_of(s, "pages_read")},
                            // On shared storage, committed and verified (always, without staging).
                            {"safe", job.local_dir.empty() || job.last_safe == job.last->name}};
    if (!job.local_dir.empty()) j["last_checkpoint"]["location"] = job.last_location;
  } else {
    j["last_checkpoint"] = nullptr;
  }
  if (job.state == JobState::running && !job.paused && !job.policy.never) {
    // time_point::max: the timer's checkpoint is queued or running now.
    double in_s = job.next_due == Clock::time_point::max()
                      ? 0.0
                      : std::chrono::duration<double>(job.next_due - Clock::now()).count();
    j["next_checkpoint_in_s"] = std::max(0.0, in_s);
    j["next_checkpoint"] = iso_time(realtime_ns() + static_cast<int64_t>(std::max(0.0, in_s) * 1e9));
  } else {
    j["next_checkpoint_in_s"] = nullptr;
  }
  if (job.end_time_ns > 0) {
    j["end_time"] = iso_time(job.end_time_ns);
    auto due = final_due_locked(job);
    j["final_checkpoint_in_s"] =
        due == Clock::time_point::max()
            ? json(nullptr)
            : json(std::max(0.0, std::chrono::duration<double>(due - Clock::now()).count()));
    j["requeued"] = job.requeued;
  }
  if (job.follow_time_limit) j["follows_time_limit"] = true;
  j["chain_length"] = job.chain;
  j["compactions"] = {{"count", job.compactions}, {"last_ms", job.last_compaction_ms}};
  j["images"] = {{"files", job.image_files}, {"bytes", job.bytes}};
  if (!job.local_dir.empty()) {
    j["staging"] = {{"local_dir", job.local_dir},
                    {"local_error", job.local_error},
                    {"local_bytes", job.local_bytes},
                    {"unflushed", job.unflushed},
                    {"flushing", job.flushing},
                    {"flushes", job.flushes},
                    {"flushed_bytes", job.flushed_bytes},
                    {"direct_writes", job.direct_writes},
                    {"last_safe", job.last_safe},
                    {"last_safe_time", iso_time(job.last_safe_ns)},
                    {"last_flush_ms", job.last_flush_ms},
                    {"last_safe_latency_ms", job.last_safe_latency_ms},
                    {"flush_error", job.flush_error}};
  }
  j["frozen_ns"] = {{"last", job.last ? stat_of(job.last->stats, "frozen_ns") : 0},
                    {"max", job.frozen_max_ns},
                    {"mean", job.checkpoints ? job.frozen_sum_ns / static_cast<double>(job.checkpoints) : 0.0}};
  j["schedule"] = {{"scheduled", job.scheduled},
                   {"late", job.late},
                   {"late_max_ms", job.late_max_ms},
                   {"late_mean_ms", job.scheduled ? job.late_sum_ms / static_cast<double>(job.scheduled) : 0.0}};
  j["restores"] = job.restores;
  j["restore_failures"] = job.restore_failures;
  j["auto_restore"] = {{"budget", job.policy.auto_restore}, {"used", job.auto_restores}};
  j["last_restore"] = job.last_restore.is_null() ? json(nullptr) : job.last_restore;
  j["last_error"] = job.last_error;
  if (job.state == JobState::ended || job.state == JobState::failed || job.state == JobState::lost) {
    j["exit"] = job.exit.to_json();
    j["end_reason"] = job.end_reason;
    j["ended"] = iso_time(job.ended_ns);
  }
  j["created"] = iso_time(job.created_ns);
  j["policy"] = job.policy.to_json();
  return j;
}

json Supervisor::status(const std::string& id) {
  std::lock_guard lock(mu_);
  return status_locked(*find_locked(id));
}

std::vector<json> Supervisor::list(std::optional<uid_t> only_uid) {
  std::lock_guard lock(mu_);
  std::vector<std::pair<uint64_t, json>> rows;
  for (auto& [id, job] : jobs_)
    if (!only_uid || job->uid == *only_uid) rows.emplace_back(std::stoull(id), status_locked(*job));
  std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.first < b.first; });
  std::vector<json> out;
  for (auto& r : rows) out.push_back(std::move(r.second));
  return out;
}

// ---- persistence --------------------------------------------------------------------------------

json Supervisor::persist_record_locked(const Job& job) const {
  json r = {{"id", job.id},
            {"name", job.name},
            {"scheduler_job", job.scheduler_job},
            {"end_time_ns", job.end_time_ns},
            {"follow_time_limit", job.follow_time_limit},
            {"final_queued", job.final_queued},
            {"requeued", job.requeued},
            {"uid", job.uid},
            {"gid", job.gid},
            {"launched", job.launched},
            {"transient", job.transient},
            {"argv", job.argv},
            {"dir", job.dir},
            {"cgroup", job.cgroup},
            {"scratch", job.scratch},
            {"policy", job.policy.to_json()},
            {"created_ns", job.created_ns},
            {"state", state_name(job.state)},
            {"pid", job.pid},
            {"start_time", job.start_time},
            {"paused", job.paused},
            {"checkpoints", job.checkpoints},
            {"checkpoint_failures", job.checkpoint_failures},
            {"restores", job.restores},
            {"restore_failures", job.restore_failures},
            {"auto_restores", job.auto_restores},
            {"restore_reason", job.restore_reason},
            {"failure", job.failure.to_json()},
            {"exit", job.exit.to_json()},
            {"end_reason", job.end_reason},
            {"ended_ns", job.ended_ns},
            {"cost_s", job.cost_s},
            {"last_checkpoint", job.last_name}};
  if (!job.local_dir.empty()) {
    r["last_safe"] = job.last_safe;
    r["last_safe_ns"] = job.last_safe_ns;
  }
  return r;
}

// ---- metrics -----------------------------------------------------------------------------------

namespace {

// A label value in the text format: backslash, double quote and newline escaped.
std::string label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// One metric family: HELP and TYPE once, then its samples.
struct Family {
  std::string name, type, help;
  std::vector<std::pair<std::string, std::string>> samples;  // labels ("" or {...}), value
  void add(const std::string& labels, const std::string& value) { samples.emplace_back(labels, value); }
  void print(std::string& out) const {
    out += "# HELP " + name + " " + help + "\n";
    out += "# TYPE " + name + " " + type + "\n";
    for (auto& [labels, value] : samples) out += name + labels + " " + value + "\n";
  }
};

}  // namespace

std::string Supervisor::metrics_text(std::optional<uid_t> only_uid) {
  std::lock_guard lock(mu_);
  std::string out;
  auto total = [&](const char* name, const char* type, const char* help, const std::string& v) {
    Family f{name, type, help, {}};
    f.add("", v);
    f.print(out);
  };
  total("crest_checkpoints_total", "counter", "Checkpoints committed by this agent since it started.",
        std::to_string(totals_.checkpoints));
  total("crest_checkpoint_failures_total", "counter",
        "Checkpoints that failed since the agent started.", std::to_string(totals_.checkpoint_failures));
  total("crest_checkpoint_frozen_seconds_total", "counter",
        "Time jobs were frozen for checkpoints since the agent started.", number(totals_.frozen_s));
  total("crest_checkpoint_stored_bytes_total", "counter",
        "Bytes written to images by checkpoints since the agent started.",
        std::to_string(totals_.bytes_stored));
  total("crest_checkpoint_read_bytes_total", "counter",
        "Bytes of job memory read by checkpoints since the agent started.",
        std::to_string(totals_.bytes_read));
  if (staging()) {
    total("crest_flushes_total", "counter",
          "Checkpoints copied from local staging to shared storage and verified there.",
          std::to_string(flush_totals_.flushes));
    total("crest_flush_failures_total", "counter", "Copies to shared storage that failed.",
          std::to_string(flush_totals_.failures));
    total("crest_flushed_bytes_total", "counter", "Bytes copied to shared storage.",
          std::to_string(flush_totals_.bytes));
    total("crest_direct_writes_total", "counter",
          "Checkpoints written to shared storage directly (local staging full, last before a time "
          "limit, crest snapshot).",
          std::to_string(flush_totals_.direct));
    total("crest_local_bytes", "gauge", "Bytes of the jobs' local staging copies.",
          std::to_string(local_bytes_locked()));
  }
  total("crest_restores_total", "counter", "Restores done by this agent since it started.",
        std::to_string(totals_.restores));
  total("crest_restore_failures_total", "counter", "Restores that failed since the agent started.",
        std::to_string(totals_.restore_failures));

  std::map<std::string, unsigned> states;
  for (JobState st : {JobState::running, JobState::restore_wait, JobState::restoring,
                      JobState::ended, JobState::failed, JobState::lost})
    states[state_name(st)] = 0;
  std::vector<std::pair<uint64_t, const Job*>> jobs;
  for (auto& [id, job] : jobs_) {
    if (only_uid && job->uid != *only_uid) continue;
    ++states[state_name(job->state)];
    jobs.emplace_back(std::stoull(id), job.get());
  }
  std::sort(jobs.begin(), jobs.end(), [](auto& a, auto& b) { return a.first < b.first; });
  Family st{"crest_jobs", "gauge", "Jobs the agent knows, by state.", {}};
  for (auto& [name, n] : states) st.add("{state=\"" + name + "\"}", std::to_string(n));
  st.print(out);

  Family ck{"crest_job_checkpoints_total", "counter", "Checkpoints committed of the job.", {}};
  Family cf{"crest_job_checkpoint_failures_total", "counter", "Checkpoints of the job that failed.", {}};
  Family fz{"crest_job_frozen_seconds_total", "counter",
            "Time the job was frozen for checkpoints (since the agent started).", {}};
  Family lf{"crest_job_last_frozen_seconds", "gauge", "Time the job was frozen by its last checkpoint.", {}};
  Family sb{"crest_job_stored_bytes_total", "counter",
            "Bytes written to images by the job's checkpoints (since the agent started).", {}};
  Family rb{"crest_job_read_bytes_total", "counter",
            "Bytes of the job's memory read by its checkpoints (since the agent started).", {}};
  Family lt{"crest_job_last_checkpoint_timestamp_seconds", "gauge",
            "When the job's last checkpoint started (Unix time).", {}};
  Family ib{"crest_job_images_bytes", "gauge", "Bytes of the job's checkpoint files.", {}};
  Family rs{"crest_job_restores_total", "counter", "Restores of the job.", {}};
  Family rf{"crest_job_restore_failures_total", "counter", "Restores of the job that failed.", {}};
  Family up{"crest_job_running", "gauge", "1 when the job is running, else 0.", {}};
  Family uf{"crest_job_unflushed_checkpoints", "gauge",
            "The job's checkpoints committed locally and not yet safe on shared storage.", {}};
  Family ls{"crest_job_last_safe_timestamp_seconds", "gauge",
            "When the job's newest checkpoint safe on shared storage became safe (Unix time).", {}};
  for (auto& [n, job] : jobs) {
    std::string labels = "{job=\"" + label_value(job->id) + "\",name=\"" + label_value(job->name) +
                         "\",uid=\"" + std::to_string(job->uid) + "\",scheduler_job=\"" +
                         label_value(job->scheduler_job) + "\"}";
    ck.add(labels, std::to_string(job->checkpoints));
    cf.add(labels, std::to_string(job->checkpoint_failures));
    fz.add(labels, number(job->frozen_sum_ns / 1e9));
    lf.add(labels, number(job->last ? static_cast<double>(stat_of(job->last->stats, "frozen_ns")) / 1e9 : 0.0));
    sb.add(labels, std::to_string(job->bytes_stored_sum));
    rb.add(labels, std::to_string(job->bytes_read_sum));
    if (job->last) lt.add(labels, number(static_cast<double>(job->last->time_ns) / 1e9));
    ib.add(labels, std::to_string(job->bytes));
    rs.add(labels, std::to_string(job->restores));
    rf.add(labels, std::to_string(job->restore_failures));
    up.add(labels, job->state == JobState::running ? "1" : "0");
    if (!job->local_dir.empty()) {
      uf.add(labels, std::to_string(job->unflushed));
      if (job->last_safe_ns > 0) ls.add(labels, number(static_cast<double>(job->last_safe_ns) / 1e9));
    }
  }
  for (const Family* f : {&ck, &cf, &fz, &lf, &sb, &rb, &lt, &ib, &rs, &rf, &up}) f->print(out);
  if (staging())
    for (const Family* f : {&uf, &ls}) f->print(out);
  return out;
}

void Supervisor::write_metrics() {
  if (opts_.metrics_file.empty()) return;
  std::string dir = fs::dirname(opts_.metrics_file);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    // node_exporter's textfile directory is not there: no node_exporter on this node.
    std::lock_guard lock(mu_);
    if (!metrics_dir_missing_logged_)
      log::get("agent.state")->info("no directory {}: node metrics are not written (crest jobs "
                                    "--metrics shows them)", dir);
    metrics_dir_missing_logged_ = true;
    return;
  }
  std::string text = metrics_text(std::nullopt);
  std::lock_guard plock(persist_mu_);
  try {
    // Written beside it under a name the collector ignores (not *.prom), then renamed over it:
    // node_exporter never reads half a file.
    fs::write_file_atomic(dir, fs::basename(opts_.metrics_file), text, 0644);
  } catch (const Error& e) {
    log::get("agent.state")->warn("cannot write the metrics file: {}", e.what());
  }
}

void Supervisor::persist() {
  write_metrics();
  if (opts_.state_file.empty()) return;
  json doc;
  {
    std::lock_guard lock(mu_);
    doc["version"] = 1;
    doc["next_id"] = next_id_;
    doc["jobs"] = json::array();
    for (auto& [id, job] : jobs_) doc["jobs"].push_back(persist_record_locked(*job));
  }
  std::lock_guard plock(persist_mu_);
  try {
    std::string dir = fs::dirname(opts_.state_file);
    ::mkdir(dir.c_str(), 0755);
    fs::write_file_atomic(dir, fs::basename(opts_.state_file), doc.dump(2) + "\n", 0600);
  } catch (const Error& e) {
    log::get("agent.state")->error("cannot save the job state: {}", e.what());
  }
}

namespace {
ExitStatus exit_from_json(const json& j) {
  ExitStatus s;
  if (!j.is_object()) return s;
  if (j.contains("signal")) {
    s.known = s.signaled = true;
    s.signal = j.value("signal", 0);
  } else if (j.contains("code")) {
    s.known = true;
    s.code = j.value("code", 0);
  }
  return s;
}
}  // namespace

void Supervisor::recover() {
  auto log = log::get("agent.state");
  if (opts_.state_file.empty()) return;
  std::string text;
  if (!fs::read_file_if_exists(opts_.state_file, text)) return;
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("jobs")) {
    log->error("{}: not a crestd state file; starting with no jobs", opts_.state_file);
    return;
  }
  std::lock_guard lock(mu_);
  next_id_ = std::max<uint64_t>(next_id_, doc.value("next_id", 1));
  for (auto& r : doc["jobs"]) {
    try {
      auto job = std::make_shared<Job>();
      job->id = r.at("id").get<std::string>();
      job->name = r.value("name", "");
      job->scheduler_job = r.value("scheduler_job", "");
      job->end_time_ns = r.value("end_time_ns", int64_t{0});
      job->follow_time_limit = r.value("follow_time_limit", false);
      job->final_queued = r.value("final_queued", false);
      job->requeued = r.value("requeued", false);
      job->uid = r.value("uid", 0u);
      job->gid = r.value("gid", 0u);
      job->launched = r.value("launched", false);
      job->transient = r.value("transient", false);
      job->argv = r.value("argv", std::vector<std::string>{});
      job->dir = r.at("dir").get<std::string>();
      job->cgroup = r.value("cgroup", "");
      job->scratch = r.value("scratch", "");
      if (thaw_if_frozen(job->cgroup))
        log->warn("job {} pid -: thawed {}, left frozen by an agent that died in a checkpoint",
                  r.at("id").get<std::string>(), job->cgroup);
      job->policy = opts_.defaults;
      if (r.contains("policy")) job->policy.update(r["policy"]);
      job->created_ns = r.value("created_ns", int64_t{0});
      job->paused = r.value("paused", false);
      job->checkpoints = r.value("checkpoints", uint64_t{0});
      job->checkpoint_failures = r.value("checkpoint_failures", uint64_t{0});
      job->restores = r.value("restores", uint64_t{0});
      job->restore_failures = r.value("restore_failures", uint64_t{0});
      job->auto_restores = r.value("auto_restores", 0u);
      job->restore_reason = r.value("restore_reason", "");
      job->failure = exit_from_json(r.value("failure", json::object()));
      job->exit = exit_from_json(r.value("exit", json::object()));
      job->end_reason = r.value("end_reason", "");
      job->ended_ns = r.value("ended_ns", int64_t{0});
      job->cost_s = r.value("cost_s", 0.0);
      job->parent_for_next = r.value("last_checkpoint", "");
      job->last_safe = r.value("last_safe", "");
      job->last_safe_ns = r.value("last_safe_ns", int64_t{0});
      job->last_name = job->parent_for_next;
      try {
        pin_images_dir(*job);
      } catch (const Error& e) {
        job->dir_error = e.what();
        log->warn("job {} pid -: no checkpoint will be taken: {}", r.at("id").get<std::string>(),
                  e.what());
      }
      job->image_files = job->dir_fd ? images_count(job->at) : 0;
      job->bytes = job->dir_fd ? images_bytes(job->at) : 0;
      pin_local_dir(*job);
      if (!job->local_at.empty()) {
        // Where its newest checkpoint is: the local one if it is there (the flusher copies what
        // is not on shared storage yet, a copy cut short by the restart included).
        job->local_bytes = images_bytes(job->local_at);
        job->unflushed = 0;
        try {
          auto local = storage::ImageStore::open_directory(job->local_at);
          for (const auto& e : local->list())
            if (e.readable && e.name == job->parent_for_next) job->parent_local = true;
        } catch (const Error& e) {
          log->warn("job {} pid -: cannot read its local copies: {}", job->id, e.what());
        }
      }
      JobState st = parse_state(r.value("state", "lost"));
      pid_t pid = r.value("pid", 0);
      uint64_t start = r.value("start_time", uint64_t{0});
      next_id_ = std::max<uint64_t>(next_id_, std::stoull(job->id) + 1);

      if (st == JobState::running) {
        UniqueFd pfd = pid > 0 ? proc::open_pidfd(pid) : UniqueFd();
        if (pfd && start != 0 && start_time_of(pid) == start) {
          // The same process: watch it again. Its stdio is taken back from the root itself.
          job->pid = pid;
          job->pidfd = std::move(pfd);
          job->start_time = start;
          job->our_child = proc::stat(pid).ppid == ::getpid();
          for (int i = 0; i < 3; ++i) job->stdio[i] = proc::copy_fd(job->pidfd.get(), i);
          job->state = JobState::running;
          job->next_due = Clock::now() + interval_locked(*job);
          log->info("job {} pid {}: re-adopted after a restart of the agent", job->id, pid);
          try {
            if (unsigned n = reap_stray_copies(pid))
              log->warn("job {} pid {}: reaped {} snapshot copies left by the agent that died",
                        job->id, pid, n);
          } catch (const Error& e) {
            log->warn("job {} pid {}: cannot look for stray snapshot copies: {}", job->id, pid,
                      e.what());
          }
        } else {
          job->state = JobState::lost;
          job->end_reason = "ended while the agent was not running (exit status unknown)";
          if (!job->cgroup.empty()) cgroup::remove(job->cgroup);
          // Its Open MPI directory goes as at any end. The path is kept: a restore of the job
          // makes the directory again (it is in the image), and its end removes it.
          remove_job_scratch(job->scratch, job->uid, job->gid);
          log->warn("job {} pid {}: {}; not restored automatically (crest restore --job {})",
                    job->id, pid, job->end_reason, job->id);
          if (job->transient) continue;
        }
      } else if (st == JobState::restore_wait || st == JobState::restoring) {
        // It had failed and was about to be restored: carry on.
        job->state = JobState::restore_wait;
        job->restore_due = Clock::now();
        log->info("job {} pid -: resuming its automatic restore after a restart of the agent",
                  job->id);
      } else {
        job->state = st;
        if (job->transient) continue;
      }
      jobs_[job->id] = job;
    } catch (const std::exception& e) {
      log->error("{}: skipping a job record that cannot be read: {}", opts_.state_file, e.what());
    }
  }
}

}  // namespace crest::agent
