#include "agent/crestd/job_scratch.h"

#include <grp.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

namespace crest::agent {

std::string make_job_scratch(const std::string& base, uid_t uid, gid_t gid, std::string& why_not) {
  struct statfs fs {};
  if (::statfs(base.c_str(), &fs) != 0) {
    why_not = base + ": " + std::strerror(errno);
    return "";
  }
  if (fs.f_type != TMPFS_MAGIC) {
    why_not = base + " is not tmpfs";
    return "";
  }
  std::random_device rd;
  for (int attempt = 0; attempt < 8; ++attempt) {
    char name[64];
    std::snprintf(name, sizeof name, "/crest-job.%u.%08x%08x", static_cast<unsigned>(uid), rd(), rd());
    const std::string dir = base + name;
    // mkdir never follows a link at its last component; a name taken (by anyone) is not reused.
    if (::mkdir(dir.c_str(), 0700) != 0) {
      if (errno == EEXIST) continue;
      why_not = "cannot make " + dir + ": " + std::strerror(errno);
      return "";
    }
    if (::lchown(dir.c_str(), uid, gid) != 0) {
      why_not = "cannot give " + dir + " to uid " + std::to_string(uid) + ": " + std::strerror(errno);
      ::rmdir(dir.c_str());
      return "";
    }
    return dir;
  }
  why_not = "no free name under " + base;
  return "";
}

namespace {
bool sets(const std::vector<std::string>& env, const char* var) {
  const std::string key = std::string(var) + "=";
  for (auto& e : env)
    if (e.rfind(key, 0) == 0) return true;
  return false;
}
}  // namespace

bool sets_mpi_dirs(const std::vector<std::string>& env) {
  for (const char* var : kScratchVars)
    if (!sets(env, var)) return false;
  return true;
}

void point_mpi_at(std::vector<std::string>& env, const std::string& dir) {
  for (const char* var : kScratchVars)
    if (!sets(env, var)) env.push_back(std::string(var) + "=" + dir);
}

void remove_job_scratch(const std::string& dir, uid_t uid, gid_t gid) {
  if (dir.empty()) return;
  pid_t child = ::fork();
  if (child < 0) return;
  if (child == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 || ::setresuid(uid, uid, uid) != 0)
      ::_exit(1);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    ::_exit(ec ? 1 : 0);
  }
  int st = 0;
  while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace crest::agent
