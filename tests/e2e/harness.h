// End-to-end harness: runs a workload (tests/workloads, protocol in workload.h) and the real
// `crest` CLI against it, as separate processes, and judges the outcome.
//
// The test process is a child subreaper (PR_SET_CHILD_SUBREAPER): everything the workloads and
// crest leave behind — the processes of a killed tree, a detached restored root, the init of a
// restored pid namespace — is reparented to it, reaped promptly (so the original pids are free
// for the next restore) and killed when a test ends. SIGCHLD is blocked and read through a
// signalfd; children start with an empty signal mask.
//
// Waiting is always on a real event (the ready pipe, the --status-fd pipe, SIGCHLD/pidfd) with a
// deadline; a deadline that passes fails the test with the workload's log and crest's output.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace crest::e2e {

using Seconds = std::chrono::duration<double>;

// Process-wide setup (subreaper, SIGCHLD signalfd). Call once from main() before the tests.
void init_harness();

// The binaries under test: compile-time paths from CMake, overridable with the environment
// variables CREST_E2E_CREST and CREST_E2E_WORKLOADS (a directory).
std::string crest_path();
std::string workload_path(const std::string& name);

std::string describe_wait_status(int wstatus);
std::string read_text_file(const std::string& path);

// ---- Processes ---------------------------------------------------------------------------

// Waits for `pid`, a child of this process (forked by it or adopted as subreaper), to end and
// returns its wait status; nullopt when the deadline passes first.
std::optional<int> wait_child(pid_t pid, Seconds timeout);
// Reaps children until none is left. Statuses of what was reaped go to `reaped`. False when the
// deadline passes with children still alive.
bool wait_no_children(Seconds timeout, std::map<pid_t, int>* reaped = nullptr);
// Waits until `pid` (any process, not necessarily ours) has exited.
bool wait_exited(pid_t pid, Seconds timeout);
// Drops what is known about a reaped `pid` (it is alive again, e.g. restored with that pid).
void forget_pid(pid_t pid);
// SIGKILLs every descendant of this process and reaps them.
void kill_descendants();

std::vector<pid_t> children_of(pid_t pid);
// `root` and all its descendants (by /proc/PID/task/TID/children), root first.
std::vector<pid_t> tree_of(pid_t root);
// A field of /proc/PID/status ("PPid", "NSpid", "State"...); empty if unavailable.
std::string proc_status(pid_t pid, const std::string& key);
bool process_exists(pid_t pid);
// Sum of Pss over the processes, in bytes (/proc/PID/smaps_rollup).
uint64_t pss_bytes(const std::vector<pid_t>& pids);

// ---- Commands ----------------------------------------------------------------------------

struct CommandResult {
  std::string command;
  int wstatus = -1;
  bool timed_out = false;
  double seconds = 0;
  std::string out, err;
  bool exited(int code) const;
  std::string describe() const;  // the command, how it ended, its stdout and stderr
};

// A crest command left running in the background (restore in place), with its status pipe.
struct CrestProcess {
  pid_t pid = -1;
  int status_fd = -1;  // read end of the pipe given to crest as fd 3; -1 if none
  std::string command, out_path, err_path;
  std::chrono::steady_clock::time_point started;
};

// A line read from a pipe: complete (ended by '\n'), or what came before EOF / the deadline.
struct LineResult {
  std::string line;
  bool complete = false;
  bool eof = false;
};
LineResult read_line(int fd, Seconds timeout);

// ---- A TCP peer outside the tree ----------------------------------------------------------

// The other end of tests/workloads/tcp_external.c: a thread of the harness, so outside any tree
// crest dumps. Listens on 127.0.0.1 (port()), accepts one connection, sends the workload an
// endless known byte sequence and checks the one it receives, reading slowly (both ends' queues
// stay full); once the workload ends its side and everything before it was read, it ends its own
// and stops.
class TcpPeer {
 public:
  struct Result {
    bool ended = false;      // the workload's FIN came and was answered
    uint64_t sent = 0, received = 0;
    std::string error;       // a reset, a wrong byte, a deadline...
  };
  TcpPeer();
  ~TcpPeer();  // stops the thread if it still runs
  TcpPeer(const TcpPeer&) = delete;
  TcpPeer& operator=(const TcpPeer&) = delete;
  uint16_t port() const { return port_; }
  // Waits up to `timeout` for the exchange to end; what the peer saw.
  Result finish(Seconds timeout);

 private:
  void run();
  int listener_ = -1;
  uint16_t port_ = 0;
  struct State;
  State* state_;
};

// ---- One workload run ----------------------------------------------------------------------

class WorkloadRun {
 public:
  // Makes the scratch directory DIR (mkdtemp under CREST_E2E_TMPDIR or the build tree).
  WorkloadRun(std::string workload, const std::string& label);
  // Kills whatever is left of the tree and of crest, and removes DIR (kept with CREST_E2E_KEEP=1).
  ~WorkloadRun();
  WorkloadRun(const WorkloadRun&) = delete;
  WorkloadRun& operator=(const WorkloadRun&) = delete;

  const std::string& workload() const { return workload_; }
  const std::string& dir() const { return dir_; }
  std::string images() const { return dir_ + "/img"; }
  // The root's pid as the harness sees it (host pid namespace).
  pid_t root() const { return root_; }
  void set_root(pid_t pid) { root_ = pid; }
  // Options every `crest dump` of the scenario adds (--tcp-established).
  std::vector<std::string> dump_args;

  // Starts the workload with the protocol's fds and waits for its ready byte. With a launcher
  // (e.g. `unshare --pid --fork`), the launcher runs the workload; root() is the launcher.
  testing::AssertionResult start(Seconds ready_timeout, const std::vector<std::string>& launcher = {});
  // Starts a real program as the root instead (stdin /dev/null, stdout and stderr to
  // DIR/out.log), without the workload protocol.
  testing::AssertionResult start_program(const std::vector<std::string>& argv);
  // Starts another program outside the tree (a client), output to DIR/NAME.log; -1 on failure.
  pid_t spawn_client(const std::string& name, const std::vector<std::string>& argv);

  // Contents of DIR/out.log.
  std::string log() const;
  // out.log holds exactly one verdict line and it is "PASS".
  testing::AssertionResult verdict_pass() const;
  // The log and every crest command's output so far, for failure messages.
  std::string diagnostics() const;

  // Runs `crest ARGS...` to completion (stdout/stderr captured in DIR/crest-N.{out,err}).
  CommandResult crest(const std::vector<std::string>& args, Seconds timeout);
  // Starts `crest ARGS...` in the background; with_status_fd gives it a pipe as fd 3.
  CrestProcess spawn_crest(const std::vector<std::string>& args, bool with_status_fd);
  // Collects a background crest's outcome after it was reaped with `wstatus`.
  CommandResult finish_crest(CrestProcess& proc, int wstatus, bool timed_out);

  // Image files (ckpt-*) in DIR/img.
  std::vector<std::string> checkpoint_files() const;
  uint64_t checkpoint_bytes() const;

 private:
  std::string workload_;
  std::string dir_;
  pid_t root_ = -1;
  int ncommands_ = 0;
  std::vector<std::string> history_;  // describe() of every crest command
};

}  // namespace crest::e2e
