#include "agent/crestd/slurm.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/util/error.h"
#include "core/util/unique_fd.h"

extern char** environ;

namespace crest::agent {

std::string slurm_job_of(const std::string& scheduler_job) {
  static const std::string prefix = "slurm:";
  if (scheduler_job.rfind(prefix, 0) != 0 || scheduler_job.size() == prefix.size()) return "";
  std::string id = scheduler_job.substr(prefix.size());
  for (char c : id)
    if (c < '0' || c > '9') return "";
  return id;
}

int run_command(const std::vector<std::string>& argv, std::string& out) {
  if (argv.empty()) fail(Errc::usage, "run_command: no program");
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe", errno, Errc::io);
  UniqueFd rd(p[0]), wr(p[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, wr.get(), 1);
  posix_spawn_file_actions_adddup2(&fa, wr.get(), 2);
  // Signals crestd blocks or ignores must not be blocked or ignored in the program.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  int rc = ::posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw_errno("cannot run " + argv[0], rc, Errc::io);
  wr.reset();
  out.clear();
  char buf[512];
  for (;;) {
    ssize_t n = ::read(rd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (out.size() < 4096) out.append(buf, static_cast<size_t>(n));
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) throw_errno("waitpid of " + argv[0], errno, Errc::io);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return st;
}

namespace {

void scontrol(const std::vector<std::string>& argv, const std::string& what) {
  std::string out;
  int st = run_command(argv, out);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail(Errc::refused, what + " failed (" +
                            (WIFEXITED(st) ? "exit " + std::to_string(WEXITSTATUS(st))
                                           : std::string("killed")) +
                            (out.empty() ? ")" : "): " + out));
}

}  // namespace

void slurm_requeue(const std::string& scontrol_path, const std::string& job) {
  scontrol({scontrol_path, "requeue", job}, "scontrol requeue " + job);
}

void slurm_admin_comment(const std::string& scontrol_path, const std::string& job,
                         const std::string& text) {
  scontrol({scontrol_path, "update", "JobId=" + job, "AdminComment=" + text},
           "scontrol update JobId=" + job + " AdminComment");
}

namespace {

// The value of " KEY=" in a `scontrol show job -o` line ("" if absent).
std::string show_job_field(const std::string& line, const std::string& key) {
  std::string pat = key + "=";
  size_t at = 0;
  while ((at = line.find(pat, at)) != std::string::npos) {
    if (at == 0 || line[at - 1] == ' ') {
      size_t from = at + pat.size();
      size_t to = line.find(' ', from);
      return line.substr(from, to == std::string::npos ? std::string::npos : to - from);
    }
    at += pat.size();
  }
  return "";
}

}  // namespace

SlurmJobEnd parse_slurm_job_end(const std::string& line) {
  std::string state = show_job_field(line, "JobState");
  std::string limit = show_job_field(line, "TimeLimit");
  std::string end = show_job_field(line, "EndTime");
  if (state.empty() || limit.empty() || end.empty())
    fail(Errc::corrupt, "scontrol show job: no JobState, TimeLimit or EndTime in '" +
                            line.substr(0, 200) + "'");
  SlurmJobEnd out;
  out.running = state == "RUNNING";
  if (limit == "UNLIMITED" || limit == "Partition_Limit" || end == "Unknown" || end == "None")
    return out;
  struct tm tm {};
  const char* rest = ::strptime(end.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (rest == nullptr || *rest != '\0')
    fail(Errc::corrupt, "scontrol show job: EndTime=" + end + " is not a time");
  tm.tm_isdst = -1;
  time_t t = ::mktime(&tm);
  if (t == static_cast<time_t>(-1)) fail(Errc::corrupt, "scontrol show job: EndTime=" + end);
  out.end_ns = static_cast<int64_t>(t) * 1000000000;
  return out;
}

SlurmJobEnd slurm_job_end(const std::string& scontrol_path, const std::string& job) {
  std::string out;
  int st = run_command({scontrol_path, "show", "job", "-o", job}, out);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail(Errc::refused, "scontrol show job " + job + " failed (" +
                            (WIFEXITED(st) ? "exit " + std::to_string(WEXITSTATUS(st))
                                           : std::string("killed")) +
                            (out.empty() ? ")" : "): " + out));
  return parse_slurm_job_end(out);
}

void write_run_end(const std::string& dir, uid_t uid, gid_t gid, int64_t realtime_ns) {
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dfd) throw_errno("cannot open " + dir);
  const std::string tmp = std::string(".") + kRunEndFile + ".tmp";
  ::unlinkat(dfd.get(), tmp.c_str(), 0);
  UniqueFd fd(::openat(dfd.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                       0600));
  if (!fd) throw_errno("cannot create " + dir + "/" + tmp);
  std::string line = std::to_string(realtime_ns) + "\n";
  if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size()))
    throw_errno("cannot write " + dir + "/" + tmp);
  if (::fchown(fd.get(), uid, gid) != 0) throw_errno("cannot give " + dir + "/" + tmp + " away");
  fd.reset();
  if (::renameat(dfd.get(), tmp.c_str(), dfd.get(), kRunEndFile) != 0)
    throw_errno("cannot rename " + dir + "/" + tmp);
}

}  // namespace crest::agent
