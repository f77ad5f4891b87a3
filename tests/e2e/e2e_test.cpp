// End-to-end tests in the ZDTM shape: each (workload × scenario) is one gtest case named
// E2E/<Scenario>.<workload>, e.g. E2E/InPlace.counter.
//
// Scenarios and what they expect from the CLI (see also tests/e2e/README.md):
//   Baseline  no crest: ready -> SIGTERM -> the workload prints PASS and exits 0.
//   InPlace   `crest dump -t ROOT -D DIR/img` exits 0 after a committed checkpoint and kills the
//             tree; `crest restore -D DIR/img --status-fd 3` writes "RESTORED <pid>\n" on fd 3
//             once the tree runs, stays the parent of the restored root (same pid as before),
//             and exits with the job's status after SIGTERM to the root.
//   Detached  `crest restore -D DIR/img -d --status-fd 3` exits 0 once the tree runs; the root
//             (same pid) is reparented to the harness.
//   PidNs     `crest restore -D DIR/img -d --pidns --status-fd 3`: RESTORED gives the root's host
//             pid; inside the new namespace the root has its original pid (NSpid).
//   Twice     dump, restore in place, run 300 ms, dump again (same DIR/img), restore detached.
//   Lazy      dump, then `crest restore --lazy` in place: the job runs while its anonymous
//             memory is served on fault and prefetched, checks it from inside, and crest exits
//             with the job's status once all is resident.
//   Refusal   `crest dump` of a tree holding a socket / a userfaultfd / a traced child exits
//             non-zero, names the reason on stderr, writes no ckpt-* file, and leaves the tree
//             running and untouched (it then passes its baseline check).
//   Memory    512 MiB shared copy-on-write by 4 processes: stored once in the image, and the
//             tree's Pss after an in-place restore is within 10% of before.
//   Cow       `crest dump -t ROOT -D DIR/img -R --cow` exits 0 with a checkpoint taken from
//             copy-on-write snapshots (info.mode "cow"), and the tree runs on exactly as before:
//             same processes, untraced, no snapshot copy left (not even a zombie). The harness
//             then kills the tree, restores detached and checks. waitloop is dumped 3 times.
//   Killed    `crest dump -R` killed with SIGKILL at 12 moments spread over a dump's length
//             (freezing, inspecting, reading memory, writing, thawing): after each, every
//             process of the tree runs on untraced, not stopped. 6 `crest dump` (kill mode)
//             killed the same way: the tree runs on, or it was killed after a committed
//             checkpoint, which restores. Then the tree is dumped, and
//             `crest restore -d` killed at 12 moments spread over a restore's length: after
//             each, the tree was released (it runs, untraced) or nothing of it is left.
//             `crest dump -R --cow` killed right after it made a snapshot copy: the copies
//             kill themselves, the next dump reaps them. Last, the checkpoint restores and the
//             workload passes its check from inside.
//   KilledCompact (one test, counter): `crest compact` killed at 6 moments of a compaction;
//             every committed checkpoint still verifies; the newest restores.
//   StorageFaults (two tests, counter): the images directory fills during a dump (a tmpfs made
//             by the test); a restore of a chain with a truncated, missing, unreadable or
//             corrupted file is refused before any process is made.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/e2e/harness.h"
#include "tests/e2e/unix_peer.h"

namespace crest::e2e {
namespace {

using testing::AssertionFailure;
using testing::AssertionResult;
using testing::AssertionSuccess;

enum WorkloadFlags : unsigned {
  kBig = 1u << 0,      // 1 GiB / 512 MiB: only the scenarios that matter, longer deadlines
  kRefusal = 1u << 1,  // crest must refuse to dump it
  kMemory = 1u << 2,   // memory-footprint scenario
  kCowOnly = 1u << 3,  // written for the Cow scenario: Baseline and Cow only
  kPidNsOnly = 1u << 4,  // holds pids outside the tree (its session's): restored in a pid ns only
  kDiskFull = 1u << 5,   // also dumped onto a full file system: the failed dump must not harm it
  // Talks over TCP to a peer of the harness outside the tree (TcpPeer, port in DIR/peer.port):
  // dumped with --tcp-established; the peer's side is checked too. Its Cow scenario checks the
  // job going on after `dump -R --cow` (a kill without crest would reset the connection).
  kPeer = 1u << 6,
  // Talks over Unix sockets to peers of the harness outside the tree (UnixPeer: a datagram
  // receiver at DIR/log.sock, a stream listener at DIR/srv.sock): dumped with --ext-unix-sk;
  // the peers' side is checked too.
  kUnixPeer = 1u << 7,
  kKilled = 1u << 8,  // also the Killed scenario (crest dump -R killed at random moments)
  // Forks short-lived children all the time: its tree is not the same from one moment to the
  // next, which the Cow scenario checks.
  kTransient = 1u << 9,
};

struct WorkloadSpec {
  const char* name;
  unsigned flags;
  std::vector<std::string> refusal_words;  // stderr must name one of these (case-insensitive)
  std::vector<std::string> dump_words = {};  // a dump's stderr (a refusal's too) must name each
  std::string needs = {};  // a program from Debian it runs: the test is skipped without it
};

const std::vector<WorkloadSpec>& workloads() {
  static const std::vector<WorkloadSpec> kAll = {
      {"counter", kKilled, {}},
      {"threads", kKilled, {}},
      {"tree", 0, {}},
      {"pipes", 0, {}},
      {"fifo", 0, {}},
      {"files", 0, {}},
      {"sharedfd", 0, {}},
      {"unlinked", 0, {}},
      {"mmap_file", 0, {}},
      {"shm_anon", 0, {}},
      {"shm_file", 0, {}},
      {"memfd", 0, {}},
      {"sleep", 0, {}},
      {"blocked_read", 0, {}},
      {"blocked_wait", 0, {}},
      {"signals", kKilled, {}},
      {"brk", 0, {}},
      {"zombie", 0, {}},
      {"waitloop", kCowOnly, {}},
      {"mem1g", kBig, {}},
      {"fork512", kBig | kMemory, {}},
      {"lazy_ops", kTransient, {}},
      {"socket", kRefusal, {"packet socket"}},
      {"ptrace", kRefusal, {"ptrace", "traced"}},
      // Exact restores: files
      {"flock_locks", kDiskFull, {}},
      {"posix_locks", kDiskFull, {}},
      {"ofd_locks", 0, {}},
      {"leases", 0, {}},
      {"fown", 0, {}},
      {"file_times", 0, {}},
      {"unlinked_attrs", 0, {}},
      {"fifo_unlinked", 0, {}},
      {"cwd_deleted", 0, {}},
      {"dir_removed", 0, {}},
      {"proc_self", 0, {}},
      {"memfd_attrs", 0, {}},
      {"memfd_exec", 0, {}},
      {"fdtable_shared", 0, {}},
      {"opath", 0, {}},
      {"deleted_dev", 0, {}},
      {"ro_unlinked", 0, {}},
      // mappings
      {"madvise", 0, {}},
      {"droppable", 0, {}},
      {"mlock", kDiskFull, {}},
      {"guard", 0, {}},
      {"swapped", 0, {}},
      {"mprotect_file", 0, {}},
      {"mseal", 0, {}},
      // tasks
      {"robust_list", 0, {}},
      {"caps", kDiskFull, {}},
      {"rlimits", 0, {}},
      {"sched", 0, {}},
      {"posix_timers", kDiskFull, {}},
      {"aio", 0, {}},
      {"syscall_restart", kKilled, {}},
      {"zombie_leader", 0, {}},
      {"stopped", kDiskFull, {}},
      {"vfork", kRefusal, {"vfork"}},
      {"sigtrap", kDiskFull | kKilled, {}},
      {"seccomp_strict", kDiskFull, {}},
      {"seccomp_filter", 0, {}},
      {"prctl_misc", 0, {}},
      {"sigactions_all", kKilled, {}},
      {"fd_batch", 0, {}},
      {"timens", 0, {}},
      // event and notification descriptors
      {"eventfds", 0, {}},
      {"timerfds", 0, {}},
      {"signalfds", 0, {}},
      {"epolls", 0, {}},
      {"inotifies", 0, {}},
      {"pidfds", 0, {}},
      {"mqueues", 0, {}},
      // sockets
      {"unix_stream", 0, {}},
      {"unix_dgram", 0, {}},
      {"unix_seqpacket", 0, {}},
      {"unix_listen", 0, {}},
      {"unix_shutdown", 0, {}},
      {"unix_scm_rights", 0, {}},
      {"tcp_loopback", 0, {}},
      {"tcp_states", 0, {}},
      {"udp", 0, {}},
      {"tcp_timewait", 0, {}},
      {"netlink", 0, {}},
      {"tcp_external", kPeer, {}},
      {"unix_external", kUnixPeer, {}, {"restored as a new connection to", "connected again to"}},
      {"tcp_backlog", 0, {}},
      // real programs: SQLite's and HDF5's own file locks (python3, sqlite3, h5py)
      {"py_locks", 0, {}},
      // a Python asyncio program: epoll, its self-pipe socketpair, TCP server and clients, eventfd
      {"py_asyncio", 0, {}},
      // terminals: pty pairs, a job-control session on one; a real tmux server and its shell
      {"pty_pair", 0, {}},
      {"pty_output", 0, {}},
      {"tmux_shell", 0, {}, {}, "/usr/bin/tmux"},
      // trees
      {"subreaper_tree", 0, {}},
      {"outside_session", kPidNsOnly, {}, {"outside the tree"}},
      // refusals that must leave everything as it was, and a short report
      {"refused_mix", kRefusal, {"userfaultfd"}},
      {"events_refused", kRefusal, {"inotify"},
       {"events not read yet", "edge-triggered", "spent", "not in the tree"}},
      // Its peer outside the tree is named by the connection's SO_PEERCRED ("not in the tree");
      // its datagram carrying a pipe end in flight is restorable and named no more.
      {"unix_refused", kRefusal, {"outside the tree", "not in the tree"}},
      {"unix_scm_refused", kRefusal, {"in flight"},
       {"Unix socket held only in flight", "of kind epoll, is held only in flight",
        "waiting to be accepted already holds data (or descriptors in flight)"}},
      {"tcp_refused", kRefusal, {"TCP"},
       {"sent into a connection not accepted yet", "a connection that has ended", "which is not a socket of the tree",
        "--tcp-established"}},
      {"tcp_backlog_refused", kRefusal, {"TCP"},
       {"sent into a connection not accepted yet", "its client is not a socket of the tree", "SYN_SENT",
        "TCP_FASTOPEN_CONNECT", "TCP_MAXSEG set before it connected"}},
      {"tcp_backlog_changed", kRefusal, {"changed on the listener after the connection came"}},
      {"many_sockets", kRefusal, {"packet socket"}},
      {"netlink_queued", kRefusal, {"messages are queued"}},
      {"mqueue_notify", kRefusal, {"notification"}},
      {"proc_cwd", kRefusal, {"/proc"}},
      // System V IPC
      {"sysv_shm", 0, {}},
      {"sysv_sem", 0, {}},
      {"sysv_msg", 0, {}},
      {"sysv_refused", kRefusal, {"System V"}, {"partly unmapped", "outside the tree", "SEM_UNDO"}},
      {"shm_file_outside", kRefusal, {"outside the tree"}, {"also mapped by process"}},
      {"pty_refused", kRefusal, {"unread"},
       {"5 bytes unread on", "no slave of it", "is stopped",
        "packet-mode status byte", "locked termios"}},
  };
  return kAll;
}

enum class Scenario { Baseline, InPlace, Detached, PidNs, Twice, Refusal, Memory, Cow, DiskFull, Killed, Lazy };

const char* scenario_name(Scenario s) {
  switch (s) {
    case Scenario::Baseline:
      return "Baseline";
    case Scenario::InPlace:
      return "InPlace";
    case Scenario::Detached:
      return "Detached";
    case Scenario::PidNs:
      return "PidNs";
    case Scenario::Twice:
      return "Twice";
    case Scenario::Refusal:
      return "Refusal";
    case Scenario::Memory:
      return "Memory";
    case Scenario::Cow:
      return "Cow";
    case Scenario::DiskFull:
      return "DiskFull";
    case Scenario::Killed:
      return "Killed";
    case Scenario::Lazy:
      return "Lazy";
  }
  return "?";
}

bool applies(Scenario s, const WorkloadSpec& w) {
  const bool refusal = w.flags & kRefusal, big = w.flags & kBig, memory = w.flags & kMemory;
  if ((w.flags & kCowOnly) && s != Scenario::Baseline && s != Scenario::Cow) return false;
  if ((w.flags & kPidNsOnly) && s != Scenario::Baseline && s != Scenario::PidNs) return false;
  switch (s) {
    case Scenario::Baseline:
      return true;
    case Scenario::InPlace:
      return !refusal && !memory;  // Memory is the in-place run of fork512
    case Scenario::Detached:
    case Scenario::PidNs:
    case Scenario::Twice:
      return !refusal && !big;
    case Scenario::Refusal:
      return refusal;
    case Scenario::Memory:
      return memory;
    case Scenario::Cow:
      return !refusal && !(w.flags & kTransient);
    case Scenario::DiskFull:
      return (w.flags & kDiskFull) != 0;
    case Scenario::Killed:
      return (w.flags & kKilled) != 0;
    case Scenario::Lazy:
      return !refusal && !memory;
  }
  return false;
}

// Deadlines. Generous: they only bound a hang; a healthy run is far below them.
struct Deadlines {
  Seconds ready, crest, check, tree_gone;
};
Deadlines deadlines_for(const WorkloadSpec& w) {
  if (w.flags & kBig) return {Seconds(120), Seconds(150), Seconds(120), Seconds(60)};
  return {Seconds(60), Seconds(60), Seconds(60), Seconds(30)};
}

void note(const std::string& what) { fprintf(stderr, "[e2e] %s\n", what.c_str()); }

std::string str(pid_t p) { return std::to_string(p); }

// The command line of a tracer that holds a process the test expected gone.
std::string describe_tracer(const std::string& pid) {
  std::string cmd = read_text_file("/proc/" + pid + "/cmdline");
  std::replace(cmd.begin(), cmd.end(), '\0', ' ');
  return "[" + cmd + "]";
}

std::string describe_processes(const std::vector<pid_t>& pids) {
  std::string s;
  for (pid_t p : pids) {
    std::string comm = read_text_file("/proc/" + str(p) + "/comm");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    const std::string tracer = proc_status(p, "TracerPid");
    s += " " + str(p) + " (" + (comm.empty() ? "?" : comm) + ", " + proc_status(p, "State") +
         ", parent " + proc_status(p, "PPid") +
         (tracer.empty() || tracer == "0" ? "" : ", traced by " + tracer + " " + describe_tracer(tracer)) + ")";
  }
  return s;
}

// How a process that is a zombie ended (the wait status in /proc/PID/stat), else "".
std::string zombie_end(pid_t p) {
  std::string st = read_text_file("/proc/" + str(p) + "/stat");
  const auto close = st.rfind(')');
  if (close == std::string::npos) return "";
  std::istringstream fields(st.substr(close + 2));
  std::string state, field, last;
  fields >> state;
  while (fields >> field) last = field;
  if (state != "Z" || last.empty()) return "";
  return ": " + describe_wait_status(std::stoi(last));
}

// Everything below the harness: its children and their descendants.
std::vector<pid_t> our_tree() {
  std::vector<pid_t> all = tree_of(getpid());
  all.erase(all.begin());
  return all;
}

// ---- Steps -------------------------------------------------------------------------------

// SIGTERM to a root that is our child; it must exit 0 with PASS, leaving nothing behind.
AssertionResult check_native(WorkloadRun& w, const Deadlines& d) {
  if (kill(w.root(), SIGTERM) != 0) {
    return AssertionFailure() << "the root " << w.root() << " is gone before the check\n"
                              << w.diagnostics();
  }
  auto st = wait_child(w.root(), d.check);
  if (!st) {
    return AssertionFailure() << "the root " << w.root() << " did not finish its check within "
                              << d.check.count() << " s\n"
                              << w.diagnostics();
  }
  if (!WIFEXITED(*st) || WEXITSTATUS(*st) != 0) {
    return AssertionFailure() << "the root " << describe_wait_status(*st) << "\n"
                              << w.diagnostics();
  }
  if (!wait_no_children(d.tree_gone)) {
    return AssertionFailure() << "processes left behind after the root exited:"
                              << describe_processes(our_tree()) << "\n"
                              << w.diagnostics();
  }
  return w.verdict_pass();
}

// `crest dump -t ROOT -D DIR/img`: exit 0, a checkpoint file, the whole tree dead and reaped.
// `reaped` receives the statuses of everything that ended (the tree, a previous in-place crest).
AssertionResult dump(WorkloadRun& w, const Deadlines& d,
                     std::map<pid_t, int>* reaped_out = nullptr,
                     const std::vector<std::string>& must_say = {},
                     const std::function<void()>& after = {}) {
  std::vector<pid_t> tree = tree_of(w.root());
  size_t files_before = w.checkpoint_files().size();
  std::vector<std::string> args = {"dump", "-t", str(w.root()), "-D", w.images()};
  args.insert(args.end(), w.dump_args.begin(), w.dump_args.end());
  CommandResult r = w.crest(args, d.crest);
  note("dump of " + w.workload() + ": " + describe_wait_status(r.wstatus) + " in " +
       std::to_string(r.seconds) + " s");
  if (!r.exited(0)) return AssertionFailure() << "crest dump failed\n" << w.diagnostics();
  for (const auto& words : must_say)
    if (r.err.find(words) == std::string::npos)
      return AssertionFailure() << "crest dump's report does not say '" << words << "'\n"
                                << w.diagnostics();
  if (after) after();

  std::map<pid_t, int> reaped;
  bool gone = wait_no_children(d.tree_gone, &reaped);
  if (reaped_out) *reaped_out = reaped;
  if (!gone) {
    return AssertionFailure() << "crest dump exited 0 but processes are still alive after "
                              << d.tree_gone.count() << " s:" << describe_processes(our_tree())
                              << "\n"
                              << w.diagnostics();
  }
  auto it = reaped.find(w.root());
  if (it != reaped.end() && !(WIFSIGNALED(it->second) && WTERMSIG(it->second) == SIGKILL)) {
    return AssertionFailure() << "after crest dump the root " << describe_wait_status(it->second)
                              << ", expected killed by SIGKILL\n"
                              << w.diagnostics();
  }
  for (pid_t p : tree) {
    if (process_exists(p)) {
      return AssertionFailure() << "pid " << p << " of the dumped tree still exists\n"
                                << w.diagnostics();
    }
  }
  auto files = w.checkpoint_files();
  if (files.size() <= files_before) {
    return AssertionFailure() << "crest dump exited 0 but " << w.images()
                              << " holds no new ckpt-* file\n"
                              << w.diagnostics();
  }
  for (const auto& f : files) {
    if (f.size() > 4 && f.compare(f.size() - 4, 4, ".tmp") == 0) {
      return AssertionFailure() << "a temporary file is left in the images directory: " << f;
    }
  }
  return AssertionSuccess();
}

enum class Mode { InPlace, Detached, PidNs };

struct Restored {
  Mode mode;
  pid_t root = -1;  // host pid
  CrestProcess crest;
};

// Parses "RESTORED <pid>".
bool parse_status_line(const std::string& line, pid_t* pid) {
  static const std::regex re(R"(^RESTORED ([0-9]+)\s*$)");
  std::smatch m;
  if (!std::regex_match(line, m, re)) return false;
  *pid = static_cast<pid_t>(std::stol(m[1].str()));
  return *pid > 0;
}

// A process's pids from the host namespace inward (the NSpid line).
std::vector<pid_t> ns_pids(pid_t host_pid) {
  std::istringstream in(proc_status(host_pid, "NSpid"));
  std::vector<pid_t> out;
  pid_t p;
  while (in >> p) out.push_back(p);
  return out;
}

AssertionResult restore(WorkloadRun& w, Mode mode, pid_t original_root, const Deadlines& d,
                        Restored* out, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args{"restore", "-D", w.images(), "--status-fd", "3"};
  args.insert(args.end(), extra.begin(), extra.end());
  if (mode != Mode::InPlace) args.push_back("-d");
  if (mode == Mode::PidNs) args.push_back("--pidns");
  out->mode = mode;
  out->crest = w.spawn_crest(args, true);
  CrestProcess& c = out->crest;
  if (c.pid < 0) return AssertionFailure() << "cannot run crest restore: " << c.err_path;
  struct CloseStatus {
    int& fd;
    ~CloseStatus() {
      if (fd >= 0) close(fd);
      fd = -1;
    }
  } close_status{c.status_fd};

  LineResult line;
  if (mode == Mode::InPlace) {
    // crest stays alive as the root's parent: the status line is the only signal.
    line = read_line(c.status_fd, d.crest);
    if (!line.complete) {
      auto st = wait_child(c.pid, line.eof ? Seconds(10) : Seconds(0));
      bool running = !st;
      if (running) {
        kill(c.pid, SIGKILL);
        st = wait_child(c.pid, Seconds(10));
      }
      w.finish_crest(c, st.value_or(-1), running);
      return AssertionFailure() << "crest restore (in place) gave no status line"
                                << (line.eof ? " (closed fd 3)" : " within the deadline")
                                << (line.line.empty() ? "" : "; got '" + line.line + "'") << "\n"
                                << w.diagnostics();
    }
  } else {
    // Detached: crest exits 0 once the tree runs; the line is in the pipe by then.
    auto st = wait_child(c.pid, d.crest);
    bool timed_out = !st;
    if (timed_out) {
      kill(c.pid, SIGKILL);
      st = wait_child(c.pid, Seconds(10));
    }
    CommandResult r = w.finish_crest(c, st.value_or(-1), timed_out);
    note("restore of " + w.workload() + ": " + describe_wait_status(r.wstatus) + " in " +
         std::to_string(r.seconds) + " s");
    if (!r.exited(0)) return AssertionFailure() << "crest restore -d failed\n" << w.diagnostics();
    line = read_line(c.status_fd, Seconds(5));
    if (!line.complete) {
      return AssertionFailure() << "crest restore -d exited 0 without a complete status line on "
                                   "fd 3 (got '"
                                << line.line << "')\n"
                                << w.diagnostics();
    }
  }
  pid_t root = -1;
  if (!parse_status_line(line.line, &root)) {
    return AssertionFailure() << "status line '" << line.line << "' is not 'RESTORED <pid>'\n"
                              << w.diagnostics();
  }
  forget_pid(root);  // alive again: any old status of this pid is stale
  out->root = root;
  w.set_root(root);
  if (!process_exists(root)) {
    return AssertionFailure() << "the restored root " << root << " does not exist\n"
                              << w.diagnostics();
  }
  if (mode == Mode::PidNs) {
    std::vector<pid_t> pids = ns_pids(root);
    pid_t inner = pids.empty() ? -1 : pids.back();
    if (inner != original_root) {
      return AssertionFailure() << "restored root has pid " << inner
                                << " in its namespace (NSpid: " << proc_status(root, "NSpid")
                                << "), expected the original " << original_root << "\n"
                                << w.diagnostics();
    }
    if (pids.size() < 2) {
      return AssertionFailure() << "--pidns: the root " << root
                                << " is not in a new pid namespace (NSpid: "
                                << proc_status(root, "NSpid") << ")\n"
                                << w.diagnostics();
    }
  } else if (root != original_root) {
    return AssertionFailure() << "restored root pid " << root << ", expected the original "
                              << original_root << "\n"
                              << w.diagnostics();
  }
  std::string ppid = proc_status(root, "PPid");
  if (mode == Mode::InPlace && ppid != str(c.pid)) {
    return AssertionFailure() << "in place: the restored root's parent is " << ppid
                              << ", expected crest restore (" << c.pid << ")\n"
                              << w.diagnostics();
  }
  if (mode == Mode::Detached && ppid != str(getpid())) {
    return AssertionFailure() << "detached: the restored root's parent is " << ppid
                              << ", expected the harness (" << getpid() << ", a subreaper)\n"
                              << w.diagnostics();
  }
  std::string tracer = proc_status(root, "TracerPid");
  if (tracer != "0") {
    return AssertionFailure() << "the restored root is still traced (TracerPid " << tracer << ")\n"
                              << w.diagnostics();
  }
  return AssertionSuccess();
}

// SIGTERM to the restored root; the job must end with status 0 and PASS.
AssertionResult check_restored(WorkloadRun& w, Restored& r, const Deadlines& d) {
  if (kill(r.root, SIGTERM) != 0) {
    return AssertionFailure() << "the restored root " << r.root << " is gone before the check\n"
                              << w.diagnostics();
  }
  switch (r.mode) {
    case Mode::InPlace: {
      // crest restore waits for its job and exits with the job's status.
      auto st = wait_child(r.crest.pid, d.check);
      bool timed_out = !st;
      if (timed_out) {
        kill(r.root, SIGKILL);
        kill(r.crest.pid, SIGKILL);
        st = wait_child(r.crest.pid, Seconds(10));
      }
      CommandResult res = w.finish_crest(r.crest, st.value_or(-1), timed_out);
      if (timed_out) {
        return AssertionFailure() << "crest restore (in place) did not exit within "
                                  << d.check.count() << " s of SIGTERM to the root\n"
                                  << w.diagnostics();
      }
      if (!res.exited(0)) {
        return AssertionFailure() << "crest restore (in place) "
                                  << describe_wait_status(res.wstatus)
                                  << "; expected the job's status, exit 0\n"
                                  << w.diagnostics();
      }
      break;
    }
    case Mode::Detached: {
      auto st = wait_child(r.root, d.check);
      if (!st) {
        return AssertionFailure() << "the restored root did not finish its check within "
                                  << d.check.count() << " s\n"
                                  << w.diagnostics();
      }
      if (!WIFEXITED(*st) || WEXITSTATUS(*st) != 0) {
        return AssertionFailure() << "the restored root " << describe_wait_status(*st) << "\n"
                                  << w.diagnostics();
      }
      break;
    }
    case Mode::PidNs: {
      if (!wait_exited(r.root, d.check)) {
        return AssertionFailure() << "the restored root did not finish its check within "
                                  << d.check.count() << " s\n"
                                  << w.diagnostics();
      }
      // The root's parent is the namespace's init; it (or the root) is our child and must end
      // with the job's status.
      std::map<pid_t, int> reaped;
      if (!wait_no_children(d.tree_gone, &reaped)) {
        return AssertionFailure() << "processes left behind after the restored root exited "
                                     "(the namespace's init should end with the job):"
                                  << describe_processes(our_tree()) << "\n"
                                  << w.diagnostics();
      }
      for (const auto& [pid, st] : reaped) {
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
          return AssertionFailure() << "process " << pid << " " << describe_wait_status(st)
                                    << "; expected the job's status, exit 0\n"
                                    << w.diagnostics();
        }
      }
      break;
    }
  }
  if (!wait_no_children(d.tree_gone)) {
    return AssertionFailure() << "processes left behind after the job ended:"
                              << describe_processes(our_tree()) << "\n"
                              << w.diagnostics();
  }
  return w.verdict_pass();
}

void sleep_for(Seconds s) {
  timespec ts;
  ts.tv_sec = static_cast<time_t>(s.count());
  ts.tv_nsec = static_cast<long>((s.count() - static_cast<double>(ts.tv_sec)) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The number of pages whose bytes the newest checkpoint stores, from `crest show --json`:
// newest.stats.pages_stored (the checkpoint's own statistics), else newest.pages.stored.
std::optional<int64_t> stored_pages(const nlohmann::json& j) {
  const auto newest = j.find("newest");
  if (newest == j.end() || !newest->is_object()) return std::nullopt;
  for (const auto& [group, key] :
       {std::pair<const char*, const char*>{"stats", "pages_stored"}, {"pages", "stored"}}) {
    auto g = newest->find(group);
    if (g == newest->end() || !g->is_object()) continue;
    auto v = g->find(key);
    if (v != g->end() && v->is_number_integer()) return v->get<int64_t>();
  }
  return std::nullopt;
}

// `crest dump -t ROOT -D DIR/img -R --cow`: exit 0, a new checkpoint whose info.mode is "cow",
// and the tree exactly as it was (`tree`, sorted): alive, untraced, not stopped, and without any
// extra process — a snapshot copy left behind, even as a zombie, would show up here.
AssertionResult dump_cow(WorkloadRun& w, const Deadlines& d, const std::vector<pid_t>& tree) {
  size_t files_before = w.checkpoint_files().size();
  // Children the workload has not reaped on purpose (the zombie workload) stay zombies.
  std::set<pid_t> zombies_before, stopped_before;
  for (pid_t p : tree) {
    if (proc_status(p, "State").rfind("Z", 0) == 0) zombies_before.insert(p);
    if (proc_status(p, "State").rfind("T", 0) == 0) stopped_before.insert(p);
  }
  std::vector<std::string> args = {"dump", "-t", str(w.root()), "-D", w.images(), "-R", "--cow"};
  args.insert(args.end(), w.dump_args.begin(), w.dump_args.end());
  CommandResult r = w.crest(args, d.crest);
  note("cow dump of " + w.workload() + ": " + describe_wait_status(r.wstatus) + " in " +
       std::to_string(r.seconds) + " s");
  if (!r.exited(0)) return AssertionFailure() << "crest dump -R --cow failed\n" << w.diagnostics();
  if (w.checkpoint_files().size() <= files_before) {
    return AssertionFailure() << "crest dump -R --cow exited 0 but " << w.images()
                              << " holds no new ckpt-* file\n"
                              << w.diagnostics();
  }
  if (wait_child(w.root(), Seconds(0))) {
    return AssertionFailure() << "the root ended during crest dump -R --cow\n" << w.diagnostics();
  }
  std::vector<pid_t> now = tree_of(w.root());
  std::sort(now.begin(), now.end());
  if (now != tree) {
    return AssertionFailure() << "after crest dump -R --cow the tree is" << describe_processes(now)
                              << "; before it was" << describe_processes(tree)
                              << " (a snapshot copy left behind, or a process lost)\n"
                              << w.diagnostics();
  }
  for (pid_t p : now) {
    std::string tracer = proc_status(p, "TracerPid");
    std::string state = proc_status(p, "State");
    bool zombie_ok = state.rfind("Z", 0) == 0 && zombies_before.count(p);
    bool stopped_ok = state.rfind("T", 0) == 0 && stopped_before.count(p);
    if (tracer != "0" || state.empty() || (state[0] == 'Z' && !zombie_ok) ||
        (state[0] == 'T' && !stopped_ok) || state[0] == 't' ||
        (stopped_before.count(p) && state[0] != 'T')) {
      return AssertionFailure() << "after crest dump -R --cow pid " << p << " is in state '"
                                << state << "' with TracerPid " << tracer << "\n"
                                << w.diagnostics();
    }
  }
  CommandResult show = w.crest({"show", w.images(), "--json"}, d.crest);
  if (!show.exited(0)) return AssertionFailure() << "crest show --json failed\n" << show.describe();
  auto json = nlohmann::json::parse(show.out, nullptr, false);
  std::string mode;
  if (!json.is_discarded() && json["newest"].is_object() && json["newest"]["info"].is_object() &&
      json["newest"]["info"]["mode"].is_string())
    mode = json["newest"]["info"]["mode"].get<std::string>();
  if (mode != "cow") {
    return AssertionFailure() << "the checkpoint of crest dump -R --cow has newest.info.mode '"
                              << mode << "', expected 'cow'\n"
                              << show.describe();
  }
  return AssertionSuccess();
}

// `crest dump -R --cow` killed right after it made a process's snapshot copy, before the copy
// is traced to die with crest (crest's CREST_FAULT_KILL point): the copy, released where the
// injected clone3 returns, must kill itself rather than run on as a second instance of the
// process. The tree of `top` is left with zombie copies only; the next dump reaps them.
AssertionResult copy_left_by_killed_cow_dump(WorkloadRun& w, const Deadlines& d, pid_t top) {
  std::vector<pid_t> tree = tree_of(top);
  std::sort(tree.begin(), tree.end());
  std::vector<std::string> args = {"dump", "-t", str(top), "-D", w.images(), "-R", "--cow"};
  args.insert(args.end(), w.dump_args.begin(), w.dump_args.end());
  ::setenv("CREST_FAULT_KILL", "snapshot-copy-made", 1);
  CommandResult r = w.crest(args, d.crest);
  ::unsetenv("CREST_FAULT_KILL");
  if (!WIFSIGNALED(r.wstatus) || WTERMSIG(r.wstatus) != SIGKILL)
    return AssertionFailure() << "crest dump -R --cow never reached its snapshot copy: "
                              << describe_wait_status(r.wstatus) << "\n" << w.diagnostics();
  sleep_for(Seconds(0.2));  // a copy left running would be running by now
  int copies = 0;
  for (pid_t p : tree_of(top)) {
    const std::string state = proc_status(p, "State");
    if (std::binary_search(tree.begin(), tree.end(), p)) {
      if (proc_status(p, "TracerPid") != "0" || state.empty() || state[0] == 't' || state[0] == 'T')
        return AssertionFailure() << "pid " << p << " is '" << state << "' after crest died\n"
                                  << w.diagnostics();
      continue;
    }
    if (state.rfind("Z", 0) != 0)
      return AssertionFailure() << "snapshot copy " << p << " runs on as a second instance ('"
                                << state << "')" << describe_processes(tree_of(top)) << "\n"
                                << w.diagnostics();
    ++copies;
  }
  if (copies == 0) return AssertionFailure() << "no snapshot copy was left\n" << w.diagnostics();
  CommandResult next = w.crest({"dump", "-t", str(top), "-D", w.images(), "-R"}, d.crest);
  if (!next.exited(0)) return AssertionFailure() << "the next dump failed\n" << w.diagnostics();
  std::vector<pid_t> now = tree_of(top);
  std::sort(now.begin(), now.end());
  if (now != tree)
    return AssertionFailure() << "the next dump left the tree" << describe_processes(now)
                              << "; before it was" << describe_processes(tree) << "\n"
                              << w.diagnostics();
  note("a cow dump killed after its snapshot copy: " + std::to_string(copies) +
       " copies killed themselves; the next dump reaped them");
  return AssertionSuccess();
}

// Kills every process of the tree; all of them reaped and their pids free again. Everything is
// stopped first, so that no process sees another die (a reader would see EOF on its pipe and
// write to the log) — the tree ends as a `crest dump` without -R ends it, all at once.
AssertionResult kill_tree(WorkloadRun& w, const Deadlines& d, const std::vector<pid_t>& tree) {
  for (pid_t p : tree) kill(p, SIGSTOP);
  for (pid_t p : tree) kill(p, SIGKILL);
  if (!wait_no_children(d.tree_gone)) {
    return AssertionFailure() << "processes survive SIGKILL:" << describe_processes(our_tree())
                              << "\n"
                              << w.diagnostics();
  }
  for (pid_t p : tree) {
    if (!wait_exited(p, d.tree_gone)) {
      return AssertionFailure() << "pid " << p << " of the killed tree still exists\n"
                                << w.diagnostics();
    }
  }
  return AssertionSuccess();
}

// ---- Scenarios -----------------------------------------------------------------------------

void run_scenario(Scenario s, const WorkloadSpec& spec) {
  if (!spec.needs.empty() && ::access(spec.needs.c_str(), X_OK) != 0)
    GTEST_SKIP() << spec.name << " needs " << spec.needs << ", which is not installed (.ci/setup "
                 << "installs it)";
  const Deadlines d = deadlines_for(spec);
  WorkloadRun w(spec.name, std::string(scenario_name(s)) + "-" + spec.name);
  std::optional<TcpPeer> peer;
  if (spec.flags & kPeer) {
    peer.emplace();
    std::ofstream(w.dir() + "/peer.port") << peer->port() << "\n";
    w.dump_args.push_back("--tcp-established");
  }
  std::optional<UnixPeer> unix_peer;
  if (spec.flags & kUnixPeer) {
    unix_peer.emplace(w.dir() + "/log.sock", w.dir() + "/srv.sock");
    w.dump_args.push_back("--ext-unix-sk");
  }
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();

  switch (s) {
    case Scenario::Baseline:
      ASSERT_TRUE(check_native(w, d));
      break;

    case Scenario::InPlace:
    case Scenario::Detached:
    case Scenario::PidNs: {
      // A process the workload left outside the tree (outside_session) is not the tree's: it
      // ends with the dump, as the harness ends what it started.
      auto end_outsider = [&] {
        pid_t outsider = static_cast<pid_t>(std::atol(read_text_file(w.dir() + "/outside.pid").c_str()));
        if (outsider > 0) kill(outsider, SIGKILL);
      };
      ASSERT_TRUE(dump(w, d, nullptr, spec.dump_words,
                       (spec.flags & kPidNsOnly) ? std::function<void()>(end_outsider) : nullptr));
      Restored r;
      Mode mode = s == Scenario::InPlace    ? Mode::InPlace
                  : s == Scenario::Detached ? Mode::Detached
                                            : Mode::PidNs;
      ASSERT_TRUE(restore(w, mode, original, d, &r));
      ASSERT_TRUE(check_restored(w, r, d));
      break;
    }

    case Scenario::Lazy: {
      // crest restore --lazy in place: the job runs before its memory is back and checks it
      // from inside (its check touches every page it cares about, served on fault or
      // prefetched); crest exits with the job's status once all is resident.
      ASSERT_TRUE(dump(w, d));
      Restored r;
      ASSERT_TRUE(restore(w, Mode::InPlace, original, d, &r, {"--lazy"}));
      ASSERT_TRUE(check_restored(w, r, d));
      break;
    }

    case Scenario::Twice: {
      ASSERT_TRUE(dump(w, d));
      Restored first;
      ASSERT_TRUE(restore(w, Mode::InPlace, original, d, &first));
      sleep_for(Seconds(0.3));  // let the restored job run: the scenario, not synchronisation
      std::map<pid_t, int> reaped;
      ASSERT_TRUE(dump(w, d, &reaped));  // also reaps the first crest restore (its job ended)
      auto it = reaped.find(first.crest.pid);
      CommandResult first_end =
          w.finish_crest(first.crest, it == reaped.end() ? -1 : it->second, false);
      note("first crest restore (in place) after its job was dumped: " +
           describe_wait_status(first_end.wstatus));
      ASSERT_GE(w.checkpoint_files().size(), 2u) << "the second dump added no checkpoint";
      Restored second;
      ASSERT_TRUE(restore(w, Mode::Detached, original, d, &second));
      ASSERT_TRUE(check_restored(w, second, d));
      break;
    }

    case Scenario::Refusal: {
      const pid_t root = w.root();
      CommandResult r = w.crest({"dump", "-t", str(root), "-D", w.images()}, d.crest);
      ASSERT_FALSE(r.timed_out) << w.diagnostics();
      ASSERT_FALSE(r.exited(0)) << "crest dump of a tree holding " << spec.refusal_words[0]
                                << " succeeded; it must refuse\n"
                                << w.diagnostics();
      ASSERT_TRUE(WIFEXITED(r.wstatus)) << "crest dump crashed\n" << w.diagnostics();
      bool named = false;
      for (const auto& word : spec.refusal_words) {
        named = named || lower(r.err).find(lower(word)) != std::string::npos;
      }
      ASSERT_TRUE(named) << "the refusal does not name the reason (expected one of:" <<
          [&] {
            std::string s;
            for (const auto& x : spec.refusal_words) s += " '" + x + "'";
            return s;
          }() << " on stderr)\n"
                         << w.diagnostics();
      for (const auto& word : spec.dump_words)
        EXPECT_NE(r.err.find(word), std::string::npos)
            << "the refusal does not name '" << word << "'\n" << w.diagnostics();
      ASSERT_TRUE(w.checkpoint_files().empty())
          << "a refused dump left files in " << w.images() << "\n"
          << w.diagnostics();
      // Each refused object is named once, with its holders: the report stays readable however
      // many processes share the objects.
      const size_t lines = static_cast<size_t>(std::count(r.err.begin(), r.err.end(), '\n'));
      EXPECT_LE(lines, 110u) << "the refusal report has " << lines << " lines";
      EXPECT_LE(r.err.size(), 64u * 1024) << "the refusal report has " << r.err.size() << " bytes";
      EXPECT_LE(r.seconds, 10.0) << "the refused dump took " << r.seconds << " s";
      // The job must be untouched: alive, not traced, not stopped by us.
      ASSERT_FALSE(wait_child(root, Seconds(0)).has_value()) << "the refused dump killed the job\n"
                                                             << w.diagnostics();
      for (pid_t p : tree_of(root)) {
        if (spec.name == std::string("ptrace") && p != root) continue;  // the workload's tracee
        ASSERT_EQ(proc_status(p, "TracerPid"), "0") << "pid " << p << " is still traced after "
                                                    << "the refused dump\n"
                                                    << w.diagnostics();
      }
      ASSERT_TRUE(check_native(w, d));
      break;
    }

    case Scenario::Memory: {
      constexpr double kShared = 512.0 * 1024 * 1024;
      std::vector<pid_t> before_tree = tree_of(w.root());
      ASSERT_EQ(before_tree.size(), 4u) << "expected a parent and 3 readers";
      const double pss_before = static_cast<double>(pss_bytes(before_tree));
      note("fork512 Pss before: " + std::to_string(pss_before / 1048576) + " MiB");
      ASSERT_TRUE(dump(w, d));

      const double image = static_cast<double>(w.checkpoint_bytes());
      note("fork512 image: " + std::to_string(image / 1048576) + " MiB");
      EXPECT_LT(image, 1.5 * kShared) << "the image holds the shared 512 MiB more than once";
      EXPECT_GT(image, 0.9 * kShared) << "the image is too small to hold 512 MiB of random data";

      CommandResult show = w.crest({"show", w.images(), "--json"}, d.crest);
      EXPECT_TRUE(show.exited(0)) << "crest show --json failed\n" << show.describe();
      if (show.exited(0)) {
        auto json = nlohmann::json::parse(show.out, nullptr, false);
        EXPECT_FALSE(json.is_discarded()) << "crest show --json printed no JSON\n" << show.out;
        if (!json.is_discarded()) {
          auto pages = stored_pages(json);
          EXPECT_TRUE(pages.has_value())
              << "crest show --json has neither newest.stats.pages_stored nor "
                 "newest.pages.stored\n"
              << show.out.substr(0, 4000);
          if (pages) {
            note("fork512 pages stored: " + std::to_string(*pages));
            const double shared_pages = kShared / 4096;
            EXPECT_LT(static_cast<double>(*pages), 1.5 * shared_pages)
                << "pages stored " << *pages << ": shared pages stored more than once";
            EXPECT_GT(static_cast<double>(*pages), 0.9 * shared_pages)
                << "pages stored " << *pages << " is less than the 512 MiB held";
          }
        }
      }

      Restored r;
      ASSERT_TRUE(restore(w, Mode::InPlace, original, d, &r));
      std::vector<pid_t> after_tree = tree_of(r.root);
      const double pss_after = static_cast<double>(pss_bytes(after_tree));
      note("fork512 Pss after restore: " + std::to_string(pss_after / 1048576) + " MiB");
      EXPECT_EQ(after_tree.size(), 4u)
          << "the restored tree has " << after_tree.size() << " processes";
      EXPECT_LE(std::abs(pss_after - pss_before), 0.10 * pss_before)
          << "tree memory (sum of Pss) " << pss_after / 1048576 << " MiB after restore vs "
          << pss_before / 1048576 << " MiB before: copy-on-write sharing was not restored";
      ASSERT_TRUE(check_restored(w, r, d));
      break;
    }

    case Scenario::DiskFull: {
      // The images directory on a 16 KiB file system: the dump fails writing, after the tree was
      // frozen and inspected. The job must go on as if nothing happened, and pass its check.
      const std::string small = w.dir() + "/small";
      ASSERT_EQ(::mkdir(small.c_str(), 0700), 0);
      ASSERT_EQ(::mount("tmpfs", small.c_str(), "tmpfs", 0, "size=16k"), 0) << std::strerror(errno);
      struct Unmount {
        std::string path;
        ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
      } unmount{small};
      const pid_t root = w.root();
      std::vector<pid_t> tree = tree_of(root);
      CommandResult r = w.crest({"dump", "-t", str(root), "-D", small + "/img"}, d.crest);
      ASSERT_FALSE(r.timed_out) << w.diagnostics();
      ASSERT_TRUE(WIFEXITED(r.wstatus)) << "crest dump crashed\n" << w.diagnostics();
      ASSERT_FALSE(r.exited(0)) << "crest dump onto a full file system succeeded\n" << w.diagnostics();
      EXPECT_NE(lower(r.err).find("space"), std::string::npos)
          << "the failure does not say the file system is full\n" << w.diagnostics();
      ASSERT_FALSE(wait_child(root, Seconds(0)).has_value()) << "the failed dump killed the job\n"
                                                             << w.diagnostics();
      std::vector<pid_t> now = tree_of(root);
      std::sort(now.begin(), now.end());
      std::sort(tree.begin(), tree.end());
      ASSERT_EQ(now, tree) << "the failed dump changed the tree\n" << w.diagnostics();
      for (pid_t p : now)
        ASSERT_EQ(proc_status(p, "TracerPid"), "0") << "pid " << p << " is still traced\n"
                                                    << w.diagnostics();
      ASSERT_TRUE(check_native(w, d));
      break;
    }

    case Scenario::Killed: {
      // crest must never take the job with it: each kill lands somewhere else in the dump.
      const pid_t root = w.root();
      std::vector<pid_t> tree = tree_of(root);
      std::sort(tree.begin(), tree.end());
      std::vector<std::string> args{"dump", "-R", "-t", str(root), "-D", w.images()};
      args.insert(args.end(), w.dump_args.begin(), w.dump_args.end());
      const auto t0 = std::chrono::steady_clock::now();
      CommandResult whole = w.crest(args, d.crest);
      ASSERT_TRUE(whole.exited(0)) << w.diagnostics();
      const double length = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const int trials = 12;
      for (int i = 0; i < trials; ++i) {
        CrestProcess c = w.spawn_crest(args, false);
        ASSERT_GT(c.pid, 0) << c.err_path;
        sleep_for(Seconds(length * 1.1 * (i + 0.5) / trials));
        ::kill(c.pid, SIGKILL);
        int st = 0;
        ::waitpid(c.pid, &st, 0);
        sleep_for(Seconds(0.05));  // the kernel detaches the tree from its dead tracer
        std::vector<pid_t> now = tree_of(root);
        std::sort(now.begin(), now.end());
        ASSERT_EQ(now, tree) << "crest killed at " << (i + 0.5) / trials * 1.1
                             << " of a dump's length changed the tree\n" << w.diagnostics();
        for (pid_t p : now) {
          const std::string state = proc_status(p, "State");
          ASSERT_EQ(proc_status(p, "TracerPid"), "0") << "pid " << p << " is still traced\n" << w.diagnostics();
          ASSERT_TRUE(state.rfind("S", 0) == 0 || state.rfind("R", 0) == 0 || state.rfind("D", 0) == 0)
              << "pid " << p << " is " << state << zombie_end(p) << " after crest was killed at " << (i + 0.5) / trials * 1.1
              << " of a dump's length\n" << w.diagnostics();
        }
      }
      note("crest dump -R (" + std::to_string(length) + " s) killed " + std::to_string(trials) +
           " times: the job ran on each time");
      ASSERT_TRUE(copy_left_by_killed_cow_dump(w, d, root));

      // Dumps that kill the tree, killed themselves: the tree runs on untraced, or it was killed
      // after its checkpoint was committed, which then restores (and the next try dumps that).
      std::filesystem::remove_all(w.images());
      std::vector<std::string> kill_args{"dump", "-t", str(original), "-D", w.images()};
      kill_args.insert(kill_args.end(), w.dump_args.begin(), w.dump_args.end());
      int committed = 0;
      auto committed_files = [&] {  // a killed dump may leave its ckpt-N.h5.tmp: not one of them
        size_t n = 0;
        for (const auto& f : w.checkpoint_files()) n += f.size() > 3 && f.substr(f.size() - 3) == ".h5";
        return n;
      };
      for (int i = 0; i < trials / 2; ++i) {
        const double at = 1.1 * (i + 0.5) / (trials / 2);
        const size_t before = committed_files();
        CrestProcess c = w.spawn_crest(kill_args, false);
        ASSERT_GT(c.pid, 0) << c.err_path;
        sleep_for(Seconds(length * at));
        ::kill(c.pid, SIGKILL);
        int st = 0;
        ::waitpid(c.pid, &st, 0);
        sleep_for(Seconds(0.1));
        if (::kill(original, 0) == 0 && proc_status(original, "State").rfind("Z", 0) != 0) {
          std::vector<pid_t> now = tree_of(original);
          std::sort(now.begin(), now.end());
          std::sort(tree.begin(), tree.end());
          ASSERT_EQ(now, tree) << "crest dump killed at " << at << " changed the tree\n" << w.diagnostics();
          for (pid_t p : now) {
            const std::string state = proc_status(p, "State");
            ASSERT_EQ(proc_status(p, "TracerPid"), "0") << "pid " << p << " is still traced\n" << w.diagnostics();
            ASSERT_TRUE(state.rfind("S", 0) == 0 || state.rfind("R", 0) == 0 || state.rfind("D", 0) == 0)
                << "pid " << p << " is " << state << zombie_end(p) << " after crest dump was killed at " << at << "\n"
                << w.diagnostics();
          }
          continue;
        }
        ASSERT_TRUE(wait_no_children(d.tree_gone)) << describe_processes(our_tree()) << w.diagnostics();
        ASSERT_GT(committed_files(), before)
            << "crest dump killed at " << at << " killed the job without a checkpoint\n" << w.diagnostics();
        CommandResult v = w.crest({"verify", w.images()}, d.crest);
        ASSERT_TRUE(v.exited(0)) << w.diagnostics();
        Restored back;
        ASSERT_TRUE(restore(w, Mode::Detached, original, d, &back));
        tree = tree_of(original);
        ++committed;
      }
      note("crest dump (kill mode) killed " + std::to_string(trials / 2) + " times: " +
           std::to_string(committed) + " had committed and killed the job (restored), the rest left it running");

      // Then restores killed at moments spread over one's length: either the tree was released
      // (it runs, untraced) or nothing of it is left; the checkpoint restores after all of it.
      // (The dumps above left a chain that retention trims: the kill-mode one starts afresh.)
      std::filesystem::remove_all(w.images());
      ASSERT_TRUE(dump(w, d));
      Restored timed;
      const auto r0 = std::chrono::steady_clock::now();
      ASSERT_TRUE(restore(w, Mode::Detached, original, d, &timed));
      const double restore_length = std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count();
      ASSERT_TRUE(kill_tree(w, d, tree_of(original)));
      const std::vector<std::string> restore_args{"restore", "-D", w.images(), "-d"};
      int released = 0;
      for (int i = 0; i < trials; ++i) {
        const double at = 1.1 * (i + 0.5) / trials;
        CrestProcess c = w.spawn_crest(restore_args, false);
        ASSERT_GT(c.pid, 0) << c.err_path;
        sleep_for(Seconds(restore_length * at));
        ::kill(c.pid, SIGKILL);
        int st = 0;
        ::waitpid(c.pid, &st, 0);
        sleep_for(Seconds(0.1));
        if (::kill(original, 0) == 0 && proc_status(original, "State").rfind("Z", 0) != 0 &&
            proc_status(original, "TracerPid") == "0") {
          ++released;  // the restore was done: the job runs; it goes for the next try
          ASSERT_TRUE(kill_tree(w, d, tree_of(original)));
          continue;
        }
        ASSERT_TRUE(wait_no_children(d.tree_gone))
            << "crest restore killed at " << at << " of a restore's length left:"
            << describe_processes(our_tree()) << "\n" << w.diagnostics();
      }
      note("crest restore -d (" + std::to_string(restore_length) + " s) killed " +
           std::to_string(trials) + " times: " + std::to_string(released) +
           " had released the tree, the others left nothing");
      Restored r;
      AssertionResult restored = restore(w, Mode::Detached, original, d, &r);
      // Without clone3 a killed restore can leave ns_last_pid aimed at the tree's pids, and the
      // next crest can be given one of them: it refuses naming that (and moves the cursor past
      // the tree's pids), and the next try works.
      if (!restored &&
          std::string(restored.message()).find("of the checkpoint is this crest's own") != std::string::npos) {
        note("the restore's own pid was one of the tree's; again");
        restored = restore(w, Mode::Detached, original, d, &r);
      }
      ASSERT_TRUE(restored);
      ASSERT_TRUE(check_restored(w, r, d));
      break;
    }

    case Scenario::Cow: {
      std::vector<pid_t> tree = tree_of(w.root());
      std::sort(tree.begin(), tree.end());
      const int rounds = spec.name == std::string("waitloop") ? 3 : 1;
      for (int i = 0; i < rounds; i++) ASSERT_TRUE(dump_cow(w, d, tree));
      if (spec.flags & kPeer) {
        // The job goes on, its connection to the outside with it: the lock is gone.
        ASSERT_TRUE(check_native(w, d));
        break;
      }
      ASSERT_TRUE(kill_tree(w, d, tree));
      Restored r;
      ASSERT_TRUE(restore(w, Mode::Detached, original, d, &r));
      ASSERT_TRUE(check_restored(w, r, d));
      break;
    }
  }
  if (peer) {
    // The other side: every byte the workload sent came once, in order, and what it received is
    // what the peer sent; no reset, both FINs exchanged.
    const TcpPeer::Result pr = peer->finish(Seconds(30));
    EXPECT_TRUE(pr.error.empty()) << "the peer outside the tree: " << pr.error << "\n" << w.diagnostics();
    EXPECT_TRUE(pr.ended) << "the peer never saw the workload end its side\n" << w.diagnostics();
    unsigned long long sent = 0, received = 0;
    std::istringstream totals(read_text_file(w.dir() + "/tcp_external.totals"));
    ASSERT_TRUE(totals >> sent >> received) << "no totals from the workload\n" << w.diagnostics();
    EXPECT_EQ(pr.received, sent) << "the peer received " << pr.received << " bytes, the workload sent " << sent;
    EXPECT_EQ(pr.sent, received) << "the peer sent " << pr.sent << " bytes, the workload received " << received;
    note("peer outside the tree: sent " + std::to_string(pr.sent) + ", received " + std::to_string(pr.received));
  }
  if (unix_peer) {
    // The outside side: each datagram the workload sent came once; its stream connected once
    // per life of the tree (a restore makes a new connection).
    EXPECT_EQ(unix_peer->error(), "") << w.diagnostics();
    int hello = 0, after = 0;
    for (auto& m : unix_peer->messages()) {
      hello += m.rfind("hello-A ", 0) == 0;
      after += m.rfind("after-A ", 0) == 0;
    }
    EXPECT_EQ(hello, 1) << "the receiver outside got the message sent before the dump " << hello << " times";
    EXPECT_EQ(after, 1) << "the receiver outside got the message sent after the restore " << after << " times";
    const int lives = s == Scenario::Baseline ? 1 : s == Scenario::Twice ? 3 : 2;
    EXPECT_EQ(unix_peer->connections(), lives) << "connections the listener outside accepted";
  }
}

class E2ETest : public testing::Test {
 public:
  E2ETest(Scenario s, const WorkloadSpec* w) : scenario_(s), spec_(w) {}
  void TestBody() override { run_scenario(scenario_, *spec_); }

 private:
  Scenario scenario_;
  const WorkloadSpec* spec_;
};

// `crest compact` killed at 6 moments spread over a compaction's length, each time on a chain
// made longer by two incremental dumps of the running counter: every committed checkpoint
// still verifies (with its whole chain), a file left half-written is never taken for one, and
// the newest restores and passes the workload's check from inside.
TEST(KilledCompact, EveryCommittedCheckpointStaysWhole) {
  const Deadlines d{Seconds(60), Seconds(60), Seconds(60), Seconds(30)};
  WorkloadRun w("counter", "KilledCompact");
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  auto incremental = [&] {
    CommandResult r = w.crest({"dump", "-R", "--parent", "-t", str(original), "-D", w.images()}, d.crest);
    return r.exited(0);
  };
  auto all_verify = [&](const std::string& when) {
    for (const auto& f : w.checkpoint_files()) {
      if (f.size() < 3 || f.substr(f.size() - 3) != ".h5") continue;  // a .tmp is no checkpoint
      CommandResult v = w.crest({"verify", w.images() + "/" + f}, d.crest);
      if (!v.exited(0)) return AssertionResult(AssertionFailure() << when << ": " << f << " does not verify\n" << w.diagnostics());
    }
    CommandResult v = w.crest({"verify", w.images()}, d.crest);
    if (!v.exited(0)) return AssertionResult(AssertionFailure() << when << ": the newest does not verify\n" << w.diagnostics());
    return AssertionResult(AssertionSuccess());
  };
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(incremental()) << w.diagnostics();
  const auto t0 = std::chrono::steady_clock::now();
  CommandResult whole = w.crest({"compact", w.images()}, d.crest);
  ASSERT_TRUE(whole.exited(0)) << w.diagnostics();
  const double length = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int trials = 6;
  for (int i = 0; i < trials; ++i) {
    ASSERT_TRUE(incremental()) << w.diagnostics();
    ASSERT_TRUE(incremental()) << w.diagnostics();
    const double at = 1.1 * (i + 0.5) / trials;
    CrestProcess c = w.spawn_crest({"compact", w.images()}, false);
    ASSERT_GT(c.pid, 0) << c.err_path;
    sleep_for(Seconds(length * at));
    ::kill(c.pid, SIGKILL);
    int st = 0;
    ::waitpid(c.pid, &st, 0);
    ASSERT_TRUE(all_verify("crest compact killed at " + std::to_string(at) + " of its length"));
  }
  note("crest compact (" + std::to_string(length) + " s) killed " + std::to_string(trials) +
       " times: every committed checkpoint verified after each");
  ASSERT_TRUE(incremental()) << w.diagnostics();
  std::vector<pid_t> tree = tree_of(original);
  ASSERT_TRUE(kill_tree(w, d, tree));
  Restored r;
  ASSERT_TRUE(restore(w, Mode::Detached, original, d, &r));
  ASSERT_TRUE(check_restored(w, r, d));
}

// The same kill, right after a snapshot copy is made, of a job whose root is the init of its
// own pid namespace (as under `crest run` or Slurm): there a thread's id is not its host id.
// The process the copy was made from runs back out of crest's call and keeps its state (its
// threads check it from inside when it ends); the copy kills itself; the next dump reaps it.
TEST(KilledCow, InAPidNamespaceTheCopyDiesAndTheProcessRunsOn) {
  const Deadlines d{Seconds(60), Seconds(60), Seconds(60), Seconds(30)};
  WorkloadRun w("threads", "KilledCow");
  ASSERT_TRUE(w.start(d.ready, {"/usr/bin/unshare", "--pid", "--fork"}));
  const pid_t launcher = w.root();
  std::vector<pid_t> kids;
  for (int i = 0; i < 100 && kids.empty(); ++i) {
    kids = children_of(launcher);
    if (kids.empty()) sleep_for(Seconds(0.01));
  }
  ASSERT_EQ(kids.size(), 1u) << w.diagnostics();
  const pid_t init = kids[0];
  ASSERT_EQ(ns_pids(init).size(), 2u) << "not in a pid namespace of its own";
  ASSERT_TRUE(copy_left_by_killed_cow_dump(w, d, init));
  ::kill(init, SIGTERM);
  ASSERT_TRUE(wait_child(launcher, d.check).has_value()) << w.diagnostics();
  ASSERT_TRUE(w.verdict_pass()) << w.diagnostics();
}

// `crest dump -R` killed just after it made its scratch mapping in the job (the CREST_FAULT_KILL
// point "scratch-mapped", while it collects): the job runs on, not stopped nor traced, with that
// mapping (and its marker page) left over; the next dump recognizes it as crest's, removes it
// before it reads anything (it says so), and the job's address space is as before either dump;
// the job passes its check.
TEST(KilledDump, TheScratchMappingOfACrestKilledWhileCollectingGoesAtTheNextDump) {
  const Deadlines d{Seconds(60), Seconds(60), Seconds(60), Seconds(30)};
  WorkloadRun w("counter", "KilledScratch");
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  const std::string maps = "/proc/" + str(original) + "/maps";
  const std::string before = read_text_file(maps);
  ::setenv("CREST_FAULT_KILL", "scratch-mapped", 1);
  CommandResult killed = w.crest({"dump", "-R", "-t", str(original), "-D", w.images()}, d.crest);
  ::unsetenv("CREST_FAULT_KILL");
  ASSERT_TRUE(WIFSIGNALED(killed.wstatus) && WTERMSIG(killed.wstatus) == SIGKILL)
      << "crest dump never reached its scratch mapping\n" << killed.describe();
  sleep_for(Seconds(0.1));
  EXPECT_EQ(proc_status(original, "TracerPid"), "0");
  EXPECT_NE(proc_status(original, "State").substr(0, 1), "T");
  const std::string left = read_text_file(maps);
  ASSERT_NE(left, before) << "no scratch mapping was left to remove";
  EXPECT_NE(left.find(" r--p 00000000 00:00 0"), std::string::npos) << left;

  CommandResult next = w.crest({"dump", "-R", "-t", str(original), "-D", w.images()}, d.crest);
  ASSERT_TRUE(next.exited(0)) << w.diagnostics();
  EXPECT_NE(next.err.find("removed the scratch mapping a crest that died left"), std::string::npos)
      << next.describe();
  EXPECT_EQ(read_text_file(maps), before) << "the job's mappings differ after the next dump";
  ASSERT_TRUE(check_native(w, d));
}

// ---- Memory in swap ----------------------------------------------------------------------------

// A swap file the test makes and turns on, and turns off and removes when it ends. Pages in swap
// are not present in memory: a dump that saved present pages only lost them without a word, and
// the restored job read zeros.
struct SwapFile {
  explicit SwapFile(const std::string& p) : path(p) {
    std::string out;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ::posix_fallocate(fd, 0, 64 << 20) != 0) {
      error = "cannot make " + path + ": " + std::strerror(errno);
      if (fd >= 0) ::close(fd);
      return;
    }
    ::close(fd);
    if (std::system(("mkswap " + path + " >/dev/null 2>&1").c_str()) != 0) {
      error = "mkswap failed";
      return;
    }
    ok = ::swapon(path.c_str(), 0) == 0;
    if (!ok) error = std::string("swapon: ") + std::strerror(errno);
  }
  ~SwapFile() {
    if (ok) ::swapoff(path.c_str());
    ::unlink(path.c_str());
  }
  std::string path, error;
  bool ok = false;
};

long vmswap_kib(pid_t pid) {
  std::string v = proc_status(pid, "VmSwap");
  return v.empty() ? -1 : std::atol(v.c_str());
}

// The `swapped` workload's pages sit in swap at every checkpoint: a full one while it runs, one
// in copy-on-write mode, an incremental one that kills it. Restored from the last, every page
// holds its data and the hole is a hole, checked from inside.
TEST(Swap, PagesInSwapAreSavedAndComeBack) {
  const Deadlines d{Seconds(60), Seconds(60), Seconds(60), Seconds(30)};
  WorkloadRun w("swapped", "Swap");
  SwapFile swap(w.dir() + "/swapfile");
  if (!swap.ok) GTEST_SKIP() << "no swap area to test with: " << swap.error;
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  ASSERT_GT(vmswap_kib(original), 8 * 1024) << "the workload's pages did not go to swap";
  for (const char* step : {"full", "cow", "incremental"}) {
    std::vector<std::string> args{"dump", "-t", str(original), "-D", w.images()};
    if (std::string(step) != "incremental") args.push_back("-R");
    if (std::string(step) == "cow") args.push_back("--cow");
    if (std::string(step) != "full") args.push_back("--parent");
    sleep_for(Seconds(0.1));  // pushed out again since the last dump read them
    ASSERT_GT(vmswap_kib(original), 8 * 1024) << step << ": nothing in swap to dump";
    CommandResult r = w.crest(args, d.crest);
    ASSERT_TRUE(r.exited(0)) << step << "\n" << w.diagnostics();
  }
  ASSERT_TRUE(wait_no_children(d.tree_gone)) << w.diagnostics();
  Restored r;
  ASSERT_TRUE(restore(w, Mode::Detached, original, d, &r));
  ASSERT_TRUE(check_restored(w, r, d));
}

// ---- Lazy restore -------------------------------------------------------------------------------

// "all N pages resident" from crest restore --lazy's stderr: the pages it served lazily.
long lazy_pages_served(const std::string& err) {
  static const std::regex re(R"(lazy restore: all ([0-9]+) pages resident)");
  std::smatch m;
  return std::regex_search(err, m, re) ? std::stol(m[1].str()) : -1;
}

// The page server (crest restore --lazy, in place) killed with SIGKILL right after the job was
// let go, with most of its 1 GiB still to serve: the guardian kills the job (it must not run on
// with missing memory) and says why on crest's stderr; the image is untouched and restores
// eagerly, and the job passes its check from inside.
TEST(Lazy, AKilledPageServerTakesTheJobWithItAndTheImageStaysWhole) {
  const Deadlines d = deadlines_for({"mem1g", kBig, {}});
  WorkloadRun w("mem1g", "LazyKilled");
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  ASSERT_TRUE(dump(w, d));
  Restored r;
  ASSERT_TRUE(restore(w, Mode::InPlace, original, d, &r, {"--lazy"}));
  ASSERT_EQ(::kill(r.crest.pid, SIGKILL), 0);
  auto crest_st = wait_child(r.crest.pid, d.crest);
  ASSERT_TRUE(crest_st.has_value()) << w.diagnostics();
  // The root was crest's child: now the harness's (a subreaper), and killed by the guardian.
  auto root_st = wait_child(r.root, Seconds(20));
  ASSERT_TRUE(root_st.has_value()) << "the job runs on after its page server was killed\n"
                                   << w.diagnostics();
  EXPECT_TRUE(WIFSIGNALED(*root_st) && WTERMSIG(*root_st) == SIGKILL)
      << "the job ended " << describe_wait_status(*root_st) << ", expected SIGKILL";
  sleep_for(Seconds(0.2));  // the guardian's line is written before its kill; let it land
  CommandResult res = w.finish_crest(r.crest, *crest_st, false);
  EXPECT_NE(res.err.find("page server died"), std::string::npos)
      << "nothing on crest's stderr says why the job was killed\n" << res.err;
  ASSERT_TRUE(wait_no_children(d.tree_gone)) << describe_processes(our_tree());
  Restored again;
  ASSERT_TRUE(restore(w, Mode::Detached, original, d, &again));
  ASSERT_TRUE(check_restored(w, again, d));
}

// A checkpoint of a job whose pages are still being served would read the missing ones as
// absent: `crest dump` refuses it, naming the lazy restore, writes nothing, and the job goes on
// and passes its check. (If the 1 GiB were all resident before the dump looked, there is
// nothing to refuse: skipped, saying so.)
TEST(Lazy, ADumpWhilePagesAreServedIsRefused) {
  const Deadlines d = deadlines_for({"mem1g", kBig, {}});
  WorkloadRun w("mem1g", "LazyDump");
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  ASSERT_TRUE(dump(w, d));
  Restored r;
  ASSERT_TRUE(restore(w, Mode::InPlace, original, d, &r, {"--lazy"}));
  const std::string second = w.dir() + "/img2";
  CommandResult dumped = w.crest({"dump", "-R", "-t", str(r.root), "-D", second}, d.crest);
  const bool refused = !dumped.exited(0);
  if (refused) {
    EXPECT_NE(dumped.err.find("lazy restore"), std::string::npos)
        << "the refusal does not name the lazy restore\n" << dumped.err;
    EXPECT_FALSE(std::filesystem::exists(second + "/ckpt-000001.h5"))
        << "a refused dump left a checkpoint";
  }
  ASSERT_TRUE(check_restored(w, r, d));
  if (!refused) GTEST_SKIP() << "every page was resident before the dump looked";
}

// A chunk of the image that does not decode, found only when the lazy restore serves it (a
// lazy restore does not read the image through first): the job is killed, never left running
// on missing memory, and crest restore fails saying why, with the chunk.
TEST(Lazy, AnUnreadableChunkKillsTheJobAndFailsTheRestore) {
  if (std::system("/usr/bin/python3 -c 'import h5py' 2>/dev/null") != 0)
    GTEST_SKIP() << "python3-h5py is not installed (.ci/setup installs it)";
  const Deadlines d = deadlines_for({"mem1g", kBig, {}});
  WorkloadRun w("mem1g", "LazyCorrupt");
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  ASSERT_TRUE(dump(w, d));
  const std::string file = w.images() + "/ckpt-000001.h5";
  // A byte in the middle of the middle chunk of /pages/data, located by stock h5py.
  std::string cmd = "/usr/bin/python3 -c \"import h5py, sys\n"
                    "f = h5py.File(sys.argv[1], 'r')\n"
                    "d = f['pages/data']\n"
                    "i = d.id.get_chunk_info(d.id.get_num_chunks() // 2)\n"
                    "print(i.byte_offset + i.size // 2)\" " +
                    file + " > " + w.dir() + "/offset";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  long off = std::stol(read_text_file(w.dir() + "/offset"));
  int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd, &b, 1, off), 1);
  b ^= 0x5a;
  ASSERT_EQ(::pwrite(fd, &b, 1, off), 1);
  ::close(fd);
  Restored r;
  ASSERT_TRUE(restore(w, Mode::InPlace, original, d, &r, {"--lazy"}));
  auto st = wait_child(r.crest.pid, d.crest);
  ASSERT_TRUE(st.has_value()) << "crest restore --lazy did not end with its job\n" << w.diagnostics();
  CommandResult res = w.finish_crest(r.crest, *st, false);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 1)
      << "crest restore --lazy " << describe_wait_status(*st) << ", expected exit 1\n" << res.err;
  EXPECT_NE(res.err.find("the job was killed"), std::string::npos) << res.err;
  EXPECT_NE(res.err.find("chunk"), std::string::npos) << res.err;
  EXPECT_FALSE(process_exists(r.root)) << "the job runs on";
}

// A chain of three checkpoints of a job that keeps freeing, moving and forking (lazy_ops),
// restored lazily: pages come from each file of the chain as its index says, and the job,
// still working on its memory while pages arrive, finds all of it exact.
TEST(Lazy, AnIncrementalChainRestoresLazily) {
  const Deadlines d = deadlines_for({"lazy_ops", 0, {}});
  WorkloadRun w("lazy_ops", "LazyChain");
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  ASSERT_TRUE(w.crest({"dump", "-R", "-t", str(original), "-D", w.images()}, d.crest).exited(0))
      << w.diagnostics();
  sleep_for(Seconds(0.3));
  // The newest must hold the root alone: a child it had forked at that moment would be made
  // from it at restore, and a process that children are made from is restored eagerly.
  static const std::regex nprocs(R"(processes \(([0-9]+)\))");
  for (int i = 0;; ++i) {
    ASSERT_LT(i, 20) << "every checkpoint caught a child of lazy_ops\n" << w.diagnostics();
    sleep_for(Seconds(0.3));
    ASSERT_TRUE(
        w.crest({"dump", "-R", "--parent", "-t", str(original), "-D", w.images()}, d.crest).exited(0))
        << w.diagnostics();
    CommandResult show = w.crest({"show", w.images()}, d.crest);
    std::smatch m;
    if (i >= 1 && std::regex_search(show.out, m, nprocs) && m[1].str() == "1") break;
  }
  ASSERT_GE(w.checkpoint_files().size(), 3u) << w.diagnostics();
  ASSERT_TRUE(kill_tree(w, d, tree_of(original)));
  Restored r;
  ASSERT_TRUE(restore(w, Mode::InPlace, original, d, &r, {"--lazy"}));
  sleep_for(Seconds(0.5));  // the job works on while its pages arrive
  const std::string err_path = r.crest.err_path;
  ASSERT_TRUE(check_restored(w, r, d));
  EXPECT_GT(lazy_pages_served(read_text_file(err_path)), 10000)
      << "crest restore --lazy did not serve the job's memory lazily";
}

// ---- Failing storage ---------------------------------------------------------------------------

// A size-limited tmpfs mounted by the test on DIR/img, unmounted (lazily) when the test ends.
struct SmallImages {
  SmallImages(const WorkloadRun& w, const std::string& size) : path(w.images()) {
    ::mkdir(path.c_str(), 0700);
    ok = ::mount("crest-e2e-small", path.c_str(), "tmpfs", 0,
                 ("size=" + size + ",mode=0700").c_str()) == 0;
    if (!ok) error = std::strerror(errno);
  }
  ~SmallImages() {
    if (ok) ::umount2(path.c_str(), MNT_DETACH);
  }
  // Takes all but `leave` bytes of the free space with one file (not a ckpt-* name).
  bool fill(uint64_t leave) {
    struct statvfs sv {};
    if (::statvfs(path.c_str(), &sv) != 0) return false;
    const uint64_t free = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
    int fd = ::open((path + "/filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    int rc = free > leave ? ::posix_fallocate(fd, 0, static_cast<off_t>(free - leave)) : 0;
    ::close(fd);
    return rc == 0;
  }
  void unfill() { ::unlink((path + "/filler").c_str()); }
  std::string path, error;
  bool ok = false;
};

off_t size_of(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

// The images directory fills while `crest dump -R` writes its second checkpoint: the dump fails
// naming the kind (io) and the cause (ENOSPC), removes what it wrote, and lets the job go on
// untouched; the first checkpoint still verifies. With room again, the job finishes its check
// from inside, and the first checkpoint restores and passes it too.
TEST(StorageFaults, ADiskFillingDuringADumpCostsNothingButThatCheckpoint) {
  const Deadlines d{Seconds(60), Seconds(60), Seconds(60), Seconds(30)};
  WorkloadRun w("counter", "DiskFills");
  SmallImages small(w, "32m");
  ASSERT_TRUE(small.ok) << "cannot mount a tmpfs: " << small.error;
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  std::vector<pid_t> tree = tree_of(original);
  std::sort(tree.begin(), tree.end());
  CommandResult first = w.crest({"dump", "-R", "-t", str(original), "-D", w.images()}, d.crest);
  ASSERT_TRUE(first.exited(0)) << w.diagnostics();
  const std::string ckpt1 = w.images() + "/ckpt-000001.h5";
  const off_t size1 = size_of(ckpt1);
  ASSERT_GT(size1, 0) << w.diagnostics();
  const off_t log_at_ckpt = size_of(w.dir() + "/out.log");

  // Less room than a checkpoint takes: the second dump runs out while writing.
  ASSERT_TRUE(small.fill(static_cast<uint64_t>(size1) / 2));
  for (const bool incremental : {false, true}) {
    std::vector<std::string> args{"dump", "-R", "-t", str(original), "-D", w.images()};
    if (incremental) args.push_back("--parent");
    CommandResult r = w.crest(args, d.crest);
    ASSERT_FALSE(r.timed_out) << w.diagnostics();
    ASSERT_TRUE(WIFEXITED(r.wstatus)) << "crest dump crashed\n" << w.diagnostics();
    ASSERT_FALSE(r.exited(0)) << "crest dump onto a full file system succeeded\n"
                              << w.diagnostics();
    EXPECT_NE(r.err.find("crest: io: "), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.describe();
    std::vector<pid_t> now = tree_of(original);
    std::sort(now.begin(), now.end());
    ASSERT_EQ(now, tree) << "the failed dump changed the tree\n" << w.diagnostics();
    for (pid_t p : now) {
      EXPECT_EQ(proc_status(p, "TracerPid"), "0") << "pid " << p << " is still traced";
      EXPECT_NE(proc_status(p, "State").substr(0, 1), "T") << "pid " << p << " is stopped";
    }
    EXPECT_EQ(w.checkpoint_files(), std::vector<std::string>{"ckpt-000001.h5"})
        << "the failed dump left a file behind";
    CommandResult v = w.crest({"verify", ckpt1}, d.crest);
    EXPECT_TRUE(v.exited(0)) << "the committed checkpoint no longer verifies\n" << v.describe();
  }
  small.unfill();
  ASSERT_TRUE(check_native(w, d));

  // The first checkpoint, restored with its log as it was then, passes the check as well.
  ASSERT_EQ(::truncate((w.dir() + "/out.log").c_str(), log_at_ckpt), 0);
  Restored r;
  ASSERT_TRUE(restore(w, Mode::Detached, original, d, &r));
  ASSERT_TRUE(check_restored(w, r, d));
}

// A restore in place while the checkpointed job still runs (its pids taken, by itself): refused
// after a short wait (a short-lived process holding a pid would have ended), naming each pid
// with its holder and --pidns; nothing is made, and the job runs on untouched and passes its
// check.
TEST(PidsTaken, AnInPlaceRestoreBesideTheRunningJobIsRefusedNamingItsPids) {
  const Deadlines d{Seconds(60), Seconds(60), Seconds(60), Seconds(30)};
  WorkloadRun w("counter", "PidsTaken");
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  std::vector<pid_t> tree = tree_of(original);
  std::sort(tree.begin(), tree.end());
  ASSERT_TRUE(w.crest({"dump", "-R", "-t", str(original), "-D", w.images()}, d.crest).exited(0))
      << w.diagnostics();
  const auto t0 = std::chrono::steady_clock::now();
  CommandResult r = w.crest({"restore", "-d", "-D", w.images()}, d.crest);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(r.timed_out) << w.diagnostics();
  ASSERT_TRUE(WIFEXITED(r.wstatus)) << "crest restore crashed\n" << r.describe();
  ASSERT_FALSE(r.exited(0)) << "a restore onto the pids of a running job succeeded\n" << r.describe();
  EXPECT_NE(r.err.find("crest: busy: pids of the checkpoint are taken on this node: " +
                       str(original) + " ("),
            std::string::npos)
      << r.describe();
  EXPECT_NE(r.err.find("--pidns"), std::string::npos) << r.describe();
  EXPECT_GE(waited, 1.5) << "refused without waiting for a short-lived holder to end";
  std::vector<pid_t> now = tree_of(original);
  std::sort(now.begin(), now.end());
  EXPECT_EQ(now, tree) << "the refused restore changed the job's tree\n" << w.diagnostics();
  ASSERT_TRUE(check_native(w, d));
}

// A damaged or missing file of a chain is found before the tree is made: `crest restore` fails
// with one error naming the file and what is wrong with it, and no process of the tree exists
// (none was ever made: the harness, a subreaper, would see it). The undamaged chain then
// restores and passes the workload's check.
TEST(StorageFaults, RestoreRefusesADamagedChainBeforeMakingAnything) {
  const Deadlines d{Seconds(60), Seconds(60), Seconds(60), Seconds(30)};
  WorkloadRun w("counter", "BadChain");
  ASSERT_TRUE(w.start(d.ready));
  const pid_t original = w.root();
  for (const char* parent : {"", "--parent"}) {
    std::vector<std::string> args{"dump", "-R", "-t", str(original), "-D", w.images()};
    if (*parent) args.push_back(parent);
    ASSERT_TRUE(w.crest(args, d.crest).exited(0)) << w.diagnostics();
  }
  ASSERT_TRUE(
      w.crest({"dump", "--parent", "-t", str(original), "-D", w.images()}, d.crest).exited(0))
      << w.diagnostics();
  ASSERT_TRUE(wait_no_children(d.tree_gone)) << w.diagnostics();
  ASSERT_EQ(w.checkpoint_files(),
            (std::vector<std::string>{"ckpt-000001.h5", "ckpt-000002.h5", "ckpt-000003.h5"}));

  // A setpriv wrapper runs crest without the capabilities that let root read any file.
  const bool have_setpriv = ::access("/usr/bin/setpriv", X_OK) == 0;
  const bool have_h5py = std::system("/usr/bin/python3 -c 'import h5py' 2>/dev/null") == 0;
  struct Damage {
    std::string name, file;  // the file named in the error
    std::function<void(const std::string& dir)> apply;
    std::vector<std::string> says;  // what the error says besides the file's name
    bool no_dac = false;
    std::vector<std::string> args{};  // added to crest restore's
  };
  auto halve = [](const std::string& f) { ASSERT_EQ(::truncate(f.c_str(), size_of(f) / 2), 0); };
  std::vector<Damage> damages{
      {"truncated newest, named",
       "ckpt-000003.h5",
       [&](const std::string& dir) { halve(dir + "/ckpt-000003.h5"); },
       {"crest: truncated: "},
       false,
       {"--checkpoint", "ckpt-000003.h5"}},
      {"truncated ancestor",
       "ckpt-000001.h5",
       [&](const std::string& dir) { halve(dir + "/ckpt-000001.h5"); },
       {"crest: truncated: "}},
      {"missing ancestor",
       "ckpt-000001.h5",
       [](const std::string& dir) { ASSERT_EQ(::unlink((dir + "/ckpt-000001.h5").c_str()), 0); },
       {"crest: missing-ancestor: "}},
      {"unreadable ancestor",
       "ckpt-000002.h5",
       [](const std::string& dir) { ASSERT_EQ(::chmod((dir + "/ckpt-000002.h5").c_str(), 0), 0); },
       {"Permission denied"},
       true},
      {"corrupted chunk",
       "ckpt-000001.h5",
       [&](const std::string& dir) {
         // Seven bytes spread over every chunk of /pages/data, located by stock h5py. Every
         // chunk: a restore reads only the chunks the newest checkpoint still needs, and the
         // pages of any one chunk of the full may all have been written again since (the
         // restore is then exact, and succeeds). Several bytes: a flipped byte of an LZ4 match
         // offset that points at equal bytes (in a run of zeros) changes nothing decoded.
         std::string cmd =
             "/usr/bin/python3 -c \"import h5py, sys\n"
             "d = h5py.File(sys.argv[1], 'r')['pages/data'].id\n"
             "for n in range(d.get_num_chunks()):\n"
             "    i = d.get_chunk_info(n)\n"
             "    for k in range(1, 8):\n"
             "        print(i.byte_offset + i.size * k // 8)\" " +
             dir + "/ckpt-000001.h5 > " + dir + "/../offset";
         ASSERT_EQ(std::system(cmd.c_str()), 0);
         std::istringstream offsets(read_text_file(dir + "/../offset"));
         int fd = ::open((dir + "/ckpt-000001.h5").c_str(), O_RDWR);
         ASSERT_GE(fd, 0);
         int chunks = 0;
         for (long off; offsets >> off; ++chunks) {
           unsigned char b = 0;
           ASSERT_EQ(::pread(fd, &b, 1, off), 1);
           b ^= 0x5a;
           ASSERT_EQ(::pwrite(fd, &b, 1, off), 1);
         }
         ::close(fd);
         ASSERT_GT(chunks, 0) << "ckpt-000001.h5 has no chunk of pages";
       },
       {"crest: corrupt: ", "chunk "}},
  };
  int n = 0;
  for (const Damage& dmg : damages) {
    if (dmg.no_dac && !have_setpriv) {
      note("skipped '" + dmg.name + "': setpriv (util-linux) is not installed");
      continue;
    }
    if (dmg.name == "corrupted chunk" && !have_h5py) {
      note("skipped '" + dmg.name + "': python3-h5py is not installed (.ci/setup installs it)");
      continue;
    }
    const std::string copy = w.dir() + "/bad" + std::to_string(++n) + "/img";
    std::filesystem::create_directories(copy);
    for (const auto& f : w.checkpoint_files())
      std::filesystem::copy_file(w.images() + "/" + f, copy + "/" + f);
    std::filesystem::copy_symlink(w.images() + "/latest", copy + "/latest");
    ASSERT_NO_FATAL_FAILURE(dmg.apply(copy));
    std::vector<std::string> args{"restore", "-d", "-D", copy};
    args.insert(args.end(), dmg.args.begin(), dmg.args.end());
    if (dmg.no_dac) {
      // Root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: the mode bits apply to it.
      args.insert(args.begin(),
                  {"--bounding-set", "-dac_override,-dac_read_search", "--", crest_path()});
    }
    CommandResult r;
    if (dmg.no_dac) {
      ::setenv("CREST_E2E_CREST", "/usr/bin/setpriv", 1);
      r = w.crest(args, d.crest);
      ::unsetenv("CREST_E2E_CREST");
    } else {
      r = w.crest(args, d.crest);
    }
    ASSERT_FALSE(r.timed_out) << dmg.name << "\n" << w.diagnostics();
    ASSERT_TRUE(WIFEXITED(r.wstatus)) << dmg.name << ": crest restore crashed\n" << r.describe();
    EXPECT_FALSE(r.exited(0)) << dmg.name << ": crest restore succeeded\n" << r.describe();
    EXPECT_NE(r.err.find(dmg.file), std::string::npos)
        << dmg.name << ": the error does not name " << dmg.file << "\n"
        << r.describe();
    for (const auto& words : dmg.says)
      EXPECT_NE(r.err.find(words), std::string::npos)
          << dmg.name << ": the error does not say '" << words << "'\n"
          << r.describe();
    std::map<pid_t, int> reaped;
    EXPECT_TRUE(wait_no_children(Seconds(5), &reaped)) << describe_processes(our_tree());
    EXPECT_TRUE(reaped.empty()) << dmg.name << ": " << reaped.size()
                                << " processes were made and died\n"
                                << r.describe();
    EXPECT_FALSE(process_exists(original)) << dmg.name << ": the root exists";
    note("restore with " + dmg.name + ": " + r.err.substr(0, r.err.find('\n')));
  }

  // Restoring the directory, whose newest file is damaged: the newest complete checkpoint is
  // restored (README: crest restore) and the damaged one is named on stderr, never passed over
  // in silence.
  {
    const std::string copy = w.dir() + "/bad-newest/img";
    std::filesystem::create_directories(copy);
    for (const auto& f : w.checkpoint_files())
      std::filesystem::copy_file(w.images() + "/" + f, copy + "/" + f);
    std::filesystem::copy_symlink(w.images() + "/latest", copy + "/latest");
    halve(copy + "/ckpt-000003.h5");
    CommandResult fallback = w.crest({"restore", "-d", "-D", copy}, d.crest);
    ASSERT_TRUE(fallback.exited(0)) << fallback.describe();
    EXPECT_NE(fallback.err.find("crest: warning: " + copy +
                                "/ckpt-000003.h5 is newer but cannot be read (truncated: "),
              std::string::npos)
        << fallback.describe();
    EXPECT_NE(fallback.err.find("restored ckpt-000002.h5"), std::string::npos)
        << fallback.describe();
    forget_pid(original);
    ASSERT_TRUE(kill_tree(w, d, tree_of(original)));
  }

  Restored r;
  ASSERT_TRUE(restore(w, Mode::Detached, original, d, &r));
  ASSERT_TRUE(check_restored(w, r, d));
}

void register_tests() {
  const Scenario all[] = {Scenario::Baseline, Scenario::InPlace, Scenario::Detached,
                          Scenario::PidNs,    Scenario::Twice,   Scenario::Refusal,
                          Scenario::Memory,   Scenario::Cow,     Scenario::DiskFull,
                          Scenario::Killed,   Scenario::Lazy};
  for (Scenario s : all) {
    std::string suite = std::string("E2E/") + scenario_name(s);
    for (const auto& w : workloads()) {
      if (!applies(s, w)) continue;
      const WorkloadSpec* spec = &w;
      testing::RegisterTest(suite.c_str(), w.name, nullptr, nullptr, __FILE__, __LINE__,
                            [s, spec]() -> E2ETest* { return new E2ETest(s, spec); });
    }
  }
}

}  // namespace
}  // namespace crest::e2e

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  crest::e2e::init_harness();
  crest::e2e::register_tests();
  return RUN_ALL_TESTS();
}
