// What crestd asks of Slurm for the jobs the SPANK plugin registers (scheduler id "slurm:N"),
// through Slurm's own scontrol so that crestd links nothing of Slurm's:
//   - `scontrol requeue N` after the last checkpoint before a job's time limit: Slurm runs the job
//     again (same id) and the plugin restores it from that checkpoint (the job must be
//     requeueable: sbatch --requeue, or the site's JobRequeue=1);
//   - `scontrol update JobId=N AdminComment=...`: the job's newest checkpoint, shown by
//     `scontrol show job` (AdminComment: users cannot overwrite it, unlike Comment).
// And what the plugin reads back when it restores the job (maybe on another node): the time the
// job's previous run ended, in the images directory, to say how much work the restore lost.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace crest::agent {

// The Slurm job id of a scheduler id "slurm:N", or "" for any other.
std::string slurm_job_of(const std::string& scheduler_job);

// Runs argv (argv[0] looked up in PATH unless it has a '/'), stdout and stderr captured into
// `out` (at most 4 KiB). Returns the wait status; throws Errc::io when it cannot run.
int run_command(const std::vector<std::string>& argv, std::string& out);

// `scontrol requeue N`. Throws Errc::refused with scontrol's words when it fails.
void slurm_requeue(const std::string& scontrol, const std::string& job);
// `scontrol update JobId=N AdminComment=TEXT`. Throws Errc::refused when it fails.
void slurm_admin_comment(const std::string& scontrol, const std::string& job,
                         const std::string& text);

// What `scontrol show job -o N` says of a job's end: whether it runs, and when its time limit
// ends it (ns since the epoch, 0: no limit). scontrol writes times in its local time zone, which
// is crestd's (it runs scontrol with its own environment).
struct SlurmJobEnd {
  bool running = false;
  int64_t end_ns = 0;
};
// Parses that one line. Throws Errc::corrupt when it has no JobState, TimeLimit or EndTime.
SlurmJobEnd parse_slurm_job_end(const std::string& show_job_line);
// Asks Slurm (scontrol show job -o N). Throws Errc::refused with scontrol's words when it fails.
SlurmJobEnd slurm_job_end(const std::string& scontrol, const std::string& job);

// The file in a job's images directory that holds when its last run ended (nanoseconds since
// the epoch, one line): written by crestd when the job's root ends, read by the plugin.
inline constexpr const char* kRunEndFile = "run-end";
// Writes it, owned by uid:gid, without following a link a user may have put there.
void write_run_end(const std::string& dir, uid_t uid, gid_t gid, int64_t realtime_ns);

}  // namespace crest::agent
