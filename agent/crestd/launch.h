// Starting a job: crest-init as pid 1 of a new pid namespace, the command as its child.
//
// The caller becomes the parent of crest-init (so it alone learns the job's exit status) and
// gets a pidfd for it. The child is made with clone3(CLONE_NEWPID | CLONE_PIDFD) and execs at
// once; between the two it only makes async-signal-safe calls, because the caller (crestd, or
// crest run with its supervisor) has other threads.
#pragma once

#include <sys/types.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "core/util/unique_fd.h"

namespace crest::agent {

struct Credentials {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};

struct LaunchSpec {
  std::vector<std::string> argv;  // the job's command
  std::vector<std::string> env;   // its whole environment ("K=V")
  std::string cwd;                // entered with the job's credentials; empty: the caller's
  std::array<int, 3> stdio{0, 1, 2};  // descriptors that become the job's 0, 1, 2
  std::optional<Credentials> creds;   // switch to these before exec (crestd); none: stay
  bool new_session = false;       // setsid(): the job owns its session (crestd's jobs)
  std::string init_path;          // crest-init
  int cgroup_fd = -1;             // a cgroup v2 directory to start the job in (CLONE_INTO_CGROUP)
};

struct Launched {
  pid_t pid = 0;  // crest-init, as seen by the caller
  UniqueFd pidfd;
};

// Throws crest::Error naming the stage that failed (credentials, cwd, exec of crest-init). A
// command crest-init cannot run is not an error here: the job then ends with status 127.
Launched launch_job(const LaunchSpec& spec);

// crest-init next to the running binary (or in ../lib/crest), else "crest-init" on PATH.
std::string default_init_path();

}  // namespace crest::agent
