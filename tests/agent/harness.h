// The agent tests' harness: a real crestd on a temporary socket and storage root, started and
// stopped by the test (ready when it answers "hello", never after a sleep), processes the test
// starts and always ends, and a client that runs as another uid.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace crest::agent_test {

using nlohmann::json;
using namespace std::chrono_literals;

// Binaries under test (from the build).
std::string crest_bin();
std::string crestd_bin();
std::string testjob_bin();

// A directory for one test, removed afterwards (CREST_AGENT_KEEP=1 keeps it).
struct TempDir {
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  std::string path;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

std::string read_text(const std::string& path);
bool file_contains(const std::string& path, const std::string& needle);
// The value after "result " in a testjob's output, or "".
std::string job_result(const std::string& text);
// Polls pred every 20 ms until it holds or the deadline passes (for state with no event).
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds deadline);

struct SpawnOptions {
  std::string stdin_path = "/dev/null";
  std::string stdout_path;  // "" : /dev/null
  std::string stderr_path;  // "" : same as stdout
  std::vector<std::string> env;  // added to the environment
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
};
// Options with stdout (and stderr: the same file unless given) to files.
SpawnOptions output_to(const std::string& out, const std::string& err = "");
pid_t spawn(const std::vector<std::string>& argv, const SpawnOptions& opts = {});
// Waits for a child; nullopt on timeout (the child is left alone).
std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds timeout);
std::string describe_status(int status);

// /proc/PID/status fields.
std::string proc_field(pid_t pid, const std::string& key);
bool alive(pid_t pid);  // exists and is not a zombie
// The children of pid (all threads' children).
std::vector<pid_t> children_of(pid_t pid);

// Kills (SIGKILL) every registered pid when the test ends, whatever happened.
struct Reaper {
  ~Reaper();
  void add(pid_t pid) { pids.push_back(pid); }
  std::vector<pid_t> pids;
};

class Daemon {
 public:
  explicit Daemon(const TempDir& dir, std::vector<std::string> extra = {});
  ~Daemon();
  void start();
  void stop();    // SIGTERM; waits for the exit
  void kill9();   // SIGKILL; waits for the exit
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  json call(const json& request, const std::vector<int>& fds = {}) const;
  // The same, returning the error reply's kind instead of throwing ("" when it succeeded).
  std::string call_error(const json& request) const;
  json status(const std::string& job) const { return call({{"op", "status"}, {"job", job}})["job"]; }
  // Waits until the job has at least n committed checkpoints.
  bool wait_checkpoints(const std::string& job, uint64_t n, std::chrono::milliseconds deadline) const;

  std::string socket, storage, state, log;
  std::vector<std::string> extra;

 private:
  std::string out_;
  pid_t pid_ = -1;
};

// Runs fn in a child process with the given uid/gid (and no supplementary groups); fn's JSON
// comes back to the caller. Used to act as an unprivileged user.
json as_user(uid_t uid, gid_t gid, const std::function<json()>& fn);

// A throwaway unprivileged user for the security tests: created with useradd when missing and
// removed again by the destructor only if it was created here.
struct TestUser {
  TestUser();
  ~TestUser();
  uid_t uid = 0;
  gid_t gid = 0;
  bool ok = false;
  std::string name = "crest-agent-test";
  bool created = false;
};

}  // namespace crest::agent_test
