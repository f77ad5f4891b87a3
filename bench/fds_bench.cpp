// crest-bench-fds: dump and restore of a tree holding many descriptors of mixed kinds, with the
// `crest` command as a user runs it, beside this machine's limits measured in the same run.
//
//   crest-bench-fds [--runs 5] [--fds 10000] [--procs 4] [--dir DIR] [--keep]
//
// The job (crest-bench-fds-job, see fds_job.cpp): --fds descriptors in all in the fd tables of
// --procs processes — pipes (half with bytes buffered), Unix stream socketpairs (some with bytes
// queued), eventfds, timerfds, epoll instances with 3 watches each, regular files (64 files in
// a scratch directory), memfds, in about equal numbers; 1/8 of them made by the root before it
// forks, so the same descriptions are in every table.
//
// Every run starts a fresh job (fresh processes, fresh memory, nothing of it looked at before
// the dump), then times
//   dump     `crest dump -t ROOT -D DIR --json` from fork to exit (the tree is killed once the
//            checkpoint is committed, as by default); crest's own figures from its --json stats
//   restore  `crest restore -D DIR --detach --json` from fork to exit: it returns once the tree
//            runs (with --verify-restore, the default)
// and checks the restored tree: the same pids alive, each process's /proc/PID/fd the same count
// and kinds at the same numbers as a reference job (made at the end, never dumped), and each
// process's own check of every descriptor it made (SIGUSR1; see fds_job.cpp). The first run is
// printed beside the median of the runs: warm-up runs would hide costs a user meets.
//
// Target (this 2-core machine): >= 20,000 fds/s for dump and for restore (wall times).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_job.h"

namespace {

using namespace crest::bench;
using nlohmann::json;

constexpr double kTarget = 20000;  // fds/s, dump and restore

std::string g_bin;  // the directory of this binary (crest and the job are beside it)

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

std::string last_line(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  auto nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

// Reaps one process (a child of ours, or one reparented to us: we are a subreaper).
void reap(pid_t pid) {
  int st;
  while (::waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {
  }
}

// Runs `args` with stdin /dev/null and stdout, stderr in files `<base>.out`, `<base>.err` (not
// pipes: a restored tree would hold them); the time from fork to exit.
struct Ran {
  int status = -1;
  double wall_s = 0;
  std::string out, err;
};

Ran run(const std::vector<std::string>& args, const std::string& base) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const std::string out = base + ".out", err = base + ".err";
  Ran r;
  int64_t t0 = now_ns();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    int in = ::open("/dev/null", O_RDONLY);
    int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || o < 0 || e < 0 || ::dup2(in, 0) < 0 || ::dup2(o, 1) < 0 || ::dup2(e, 2) < 0)
      ::_exit(126);
    ::syscall(SYS_close_range, 3, ~0U, 0);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  r.wall_s = seconds_since_ns(t0);
  r.status = st;
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

std::string failure(const std::string& what, const Ran& r) {
  std::string why = WIFEXITED(r.status) ? "exit status " + std::to_string(WEXITSTATUS(r.status))
                                        : "signal " + std::to_string(WTERMSIG(r.status));
  return what + " failed (" + why + "): " + last_line(r.err.empty() ? r.out : r.err);
}

// ---- the job ----------------------------------------------------------------------------------

struct Tree {
  std::string dir;
  std::vector<pid_t> pids;   // root first
  std::vector<int> counts;   // descriptors of each process, as the job made them
  int64_t made_ns = 0;       // the root making its private set
  int made_fds = 0;
  bool alive = false;

  int total() const {
    int n = 0;
    for (int c : counts) n += c;
    return n;
  }
  void kill() {
    if (!alive) return;
    for (pid_t p : pids) ::kill(p, SIGKILL);
    for (pid_t p : pids) reap(p);
    alive = false;
  }
  ~Tree() { kill(); }
};

void start_job(Tree& t, const std::string& dir, int fds, int procs) {
  t.dir = dir;
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
  std::string job = g_bin + "/crest-bench-fds-job", nfds = std::to_string(fds),
              nprocs = std::to_string(procs), log = dir + "/job.log";
  if (::access(job.c_str(), X_OK) != 0) throw std::runtime_error(job + " is missing (build crest-bench-fds-job)");
  std::vector<char*> argv{job.data(), nfds.data(), nprocs.data(), t.dir.data(), nullptr};
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    int w = ::fcntl(ready[1], F_DUPFD, 10);
    int in = ::open("/dev/null", O_RDONLY);
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (w < 0 || in < 0 || out < 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 ||
        ::dup2(out, 2) < 0 || ::dup2(w, 3) < 0 || ::chdir(dir.c_str()) != 0)
      ::_exit(126);
    ::syscall(SYS_close_range, 4, ~0U, 0);
    ::execv(job.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(ready[1]);
  t.pids = {pid};
  t.alive = true;
  std::string line;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(ready[0], buf, sizeof buf)) != 0) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    line.append(buf, static_cast<size_t>(n));
  }
  ::close(ready[0]);
  std::istringstream in(line);
  std::string word;
  in >> word;
  if (word != "READY") {
    t.kill();
    throw std::runtime_error("the job did not come up: " + last_line(read_text(log)));
  }
  t.pids.clear();
  for (int i = 0; i < procs; ++i) {
    pid_t p;
    in >> p;
    t.pids.push_back(p);
  }
  for (int i = 0; i < procs; ++i) {
    int c;
    in >> c;
    t.counts.push_back(c);
  }
  in >> t.made_ns >> t.made_fds;
}

// fd number -> what it is (its link, without inode numbers or the run's directory).
using LinkMap = std::map<int, std::string>;

LinkMap links(pid_t pid, const std::string& run_dir) {
  LinkMap m;
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return m;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char buf[4096];
    ssize_t n = ::readlink((dir + "/" + e->d_name).c_str(), buf, sizeof buf - 1);
    std::string l = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
    if (l.rfind("pipe:[", 0) == 0) l = "pipe";
    else if (l.rfind("socket:[", 0) == 0) l = "socket";
    else if (l.rfind(run_dir, 0) == 0) l = "RUN" + l.substr(run_dir.size());
    m[std::atoi(e->d_name)] = l;
  }
  ::closedir(d);
  return m;
}

bool alive(pid_t pid) {
  std::string st = read_text("/proc/" + std::to_string(pid) + "/stat");
  auto close = st.rfind(')');
  return close != std::string::npos && close + 2 < st.size() && st[close + 2] != 'Z' &&
         st[close + 2] != 'X';
}

// Asks every process of the tree to check its descriptors; "" if all say ok.
std::string self_check(const Tree& t) {
  for (size_t i = 0; i < t.pids.size(); ++i)
    ::unlink((t.dir + "/verify." + std::to_string(i)).c_str());
  for (pid_t p : t.pids) ::kill(p, SIGUSR1);
  std::string problems;
  for (size_t i = 0; i < t.pids.size(); ++i) {
    std::string path = t.dir + "/verify." + std::to_string(i);
    int64_t t0 = now_ns();
    while (::access(path.c_str(), F_OK) != 0 && seconds_since_ns(t0) < 60)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::string text = read_text(path);
    if (text.rfind("ok ", 0) != 0)
      problems += "process " + std::to_string(i) + " (pid " + std::to_string(t.pids[i]) + "): " +
                  (text.empty() ? "no answer" : last_line(text)) + "; ";
  }
  return problems;
}

// ---- this machine's limits ----------------------------------------------------------------

// readlink + fdinfo + stat of every descriptor of the tree, as a /proc reader must; fds/s.
double proc_scan_rate(const Tree& t) {
  int64_t t0 = now_ns();
  int n = 0;
  for (pid_t p : t.pids) {
    std::string base = "/proc/" + std::to_string(p);
    DIR* d = ::opendir((base + "/fd").c_str());
    if (!d) continue;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      char buf[4096];
      std::string fd = base + "/fd/" + e->d_name;
      (void)::readlink(fd.c_str(), buf, sizeof buf);
      int f = ::open((base + "/fdinfo/" + e->d_name).c_str(), O_RDONLY | O_CLOEXEC);
      if (f >= 0) {
        while (::read(f, buf, sizeof buf) > 0) {
        }
        ::close(f);
      }
      struct stat st {};
      ::stat(fd.c_str(), &st);
      ++n;
    }
    ::closedir(d);
  }
  return n / seconds_since_ns(t0);
}

// pidfd_getfd + close of every descriptor of the tree; fds/s.
double getfd_rate(const Tree& t, const std::vector<LinkMap>& maps) {
  int64_t t0 = now_ns();
  int n = 0;
  for (size_t i = 0; i < t.pids.size(); ++i) {
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, t.pids[i], 0));
    if (pidfd < 0) continue;
    for (auto& [fd, link] : maps[i]) {
      int copy = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, fd, 0));
      if (copy >= 0) {
        ::close(copy);
        ++n;
      }
    }
    ::close(pidfd);
  }
  return n / seconds_since_ns(t0);
}

// Traced syscalls: a child calling getppid() in a loop, stopped at each syscall's entry and exit
// (PTRACE_SYSCALL, as crest injects a syscall), registers read and written at each: what one
// injected syscall costs at least here; per second.
double traced_syscall_rate(int n) {
  pid_t child = ::fork();
  if (child < 0) throw std::runtime_error("fork");
  if (child == 0) {
    ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
    ::raise(SIGSTOP);
    for (;;) ::syscall(SYS_getppid);
  }
  int st;
  ::waitpid(child, &st, WUNTRACED);
  ::ptrace(PTRACE_SETOPTIONS, child, nullptr, reinterpret_cast<void*>(PTRACE_O_TRACESYSGOOD));
  user_regs_struct regs {};
  int64_t t0 = now_ns();
  int done = 0;
  for (; done < n; ++done) {
    bool ok = true;
    for (int stop = 0; stop < 2 && ok; ++stop) {
      ok = ::ptrace(PTRACE_SYSCALL, child, nullptr, nullptr) == 0 && ::waitpid(child, &st, 0) == child &&
           WIFSTOPPED(st);
    }
    if (!ok || ::ptrace(PTRACE_GETREGS, child, nullptr, &regs) != 0 ||
        ::ptrace(PTRACE_SETREGS, child, nullptr, &regs) != 0)
      break;
  }
  double s = seconds_since_ns(t0);
  ::kill(child, SIGKILL);
  reap(child);
  return done / s;
}

// ---- output ---------------------------------------------------------------------------------

struct Sample {
  double dump_wall = 0, dump_total = 0, frozen = 0, collect = 0, commit = 0, image_mib = 0;
  double restore_wall = 0, restore = 0, verify = 0, injections = 0;
  double crest_fds = 0;
};

std::string secs(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f s", s);
  return buf;
}
std::string rate(double fds, double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f", s > 0 ? fds / s : 0);
  return buf;
}

double ns_stat(const json& j, const char* key) {
  return j.contains(key) ? j[key].get<double>() / 1e9 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 5, fds = 10000, procs = 4;
  std::string base_dir;
  bool keep = false;
  CLI::App app{"crest-bench-fds: crest dump and crest restore of a tree holding many descriptors "
               "of mixed kinds (a fresh job each run), beside this machine's own limits"};
  app.add_option("--runs", runs, "Measured runs (each on a fresh job; the first is printed beside "
                                 "the median)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--fds", fds, "Descriptors in the whole tree (all fd tables, stdio included)")
      ->check(CLI::Range(64, 1 << 22))
      ->capture_default_str();
  app.add_option("--procs", procs, "Processes in the tree")->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--dir", base_dir, "Where the scratch files and images go (default: a temporary "
                                    "directory here)");
  app.add_flag("--keep", keep, "Keep the working directory (images, logs)");
  CLI11_PARSE(app, argc, argv);

  g_bin = std::filesystem::read_symlink("/proc/self/exe").parent_path();
  const std::string crest = g_bin + "/crest";
  if (::access(crest.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "crest-bench-fds: %s is missing (build crest)\n", crest.c_str());
    return 1;
  }
  ::signal(SIGPIPE, SIG_IGN);
  // The restored root (detached: crest restore exits) and the children of a dead root come to
  // us, so that we can reap them by pid.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);

  std::string dir;
  try {
    dir = std::filesystem::absolute(make_temp_dir(base_dir)).lexically_normal().string();
    double load_start = 0;
    ::getloadavg(&load_start, 1);

    std::vector<Sample> samples;
    std::vector<std::vector<LinkMap>> restored_maps;
    std::vector<std::string> restored_dirs;
    std::vector<double> made_rate;
    std::vector<std::string> problems;
    int counts_ok = 0, checks_ok = 0;
    for (int r = 0; r < runs; ++r) {
      const std::string run_dir = dir + "/run" + std::to_string(r);
      std::filesystem::create_directories(run_dir);
      Tree t;
      start_job(t, run_dir, fds, procs);
      made_rate.push_back(t.made_fds / (static_cast<double>(t.made_ns) / 1e9));
      if (t.total() != fds) throw std::runtime_error("the job made " + std::to_string(t.total()) + " descriptors");

      Sample s;
      Ran d = run({crest, "dump", "-t", std::to_string(t.pids[0]), "-D", run_dir + "/images", "--json"},
                  run_dir + "/dump");
      if (!WIFEXITED(d.status) || WEXITSTATUS(d.status) != 0) throw std::runtime_error(failure("crest dump", d));
      for (pid_t p : t.pids) reap(p);  // killed by crest once committed
      t.alive = false;
      json dj = json::parse(d.out);
      const json& st = dj["stats"];
      s.dump_wall = d.wall_s;
      s.dump_total = ns_stat(st, "total_ns");
      s.frozen = ns_stat(st, "frozen_ns");
      s.collect = ns_stat(st, "collect_ns");
      s.commit = ns_stat(st, "commit_ns");
      s.crest_fds = st.value("fds", 0.0);
      s.image_mib = static_cast<double>(file_bytes(run_dir + "/images/" + dj["checkpoint"].get<std::string>())) / 1048576;

      Ran rs = run({crest, "restore", "-D", run_dir + "/images", "--detach", "--json"}, run_dir + "/restore");
      if (!WIFEXITED(rs.status) || WEXITSTATUS(rs.status) != 0) throw std::runtime_error(failure("crest restore", rs));
      json rj = json::parse(rs.out);
      t.alive = true;  // the same pids, ours to kill (the root is reparented to us)
      s.restore_wall = rs.wall_s;
      s.restore = ns_stat(rj, "restore_ns");
      s.verify = ns_stat(rj, "verify_restore_ns");
      s.injections = rj.value("injections", 0.0);
      if (rj["root_pid"].get<pid_t>() != t.pids[0])
        problems.push_back("run " + std::to_string(r) + ": restored root pid " +
                           std::to_string(rj["root_pid"].get<pid_t>()) + ", was " + std::to_string(t.pids[0]));

      // The restored tree: every process alive, with as many descriptors as the job made.
      std::vector<LinkMap> maps;
      bool counts = true;
      for (size_t i = 0; i < t.pids.size(); ++i) {
        maps.push_back(links(t.pids[i], run_dir));
        if (!alive(t.pids[i]) || static_cast<int>(maps.back().size()) != t.counts[i]) {
          counts = false;
          problems.push_back("run " + std::to_string(r) + ": process " + std::to_string(i) + " (pid " +
                             std::to_string(t.pids[i]) + ") " +
                             (alive(t.pids[i]) ? "has " + std::to_string(maps.back().size()) +
                                                     " descriptors, made " + std::to_string(t.counts[i])
                                               : std::string("is not running")));
        }
      }
      counts_ok += counts;
      std::string bad = self_check(t);
      if (bad.empty()) ++checks_ok;
      else problems.push_back("run " + std::to_string(r) + ": self-check: " + bad);
      restored_maps.push_back(std::move(maps));
      t.kill();
      if (!keep) {
        remove_tree(run_dir);
      }
      samples.push_back(s);
      std::printf("  run %d%s: dump %s (%s fds/s; crest: total %s, frozen %s)  restore %s (%s fds/s; "
                  "crest: %s, verify %s)  %s\n",
                  r + 1, r == 0 ? " (first)" : "", secs(s.dump_wall).c_str(), rate(fds, s.dump_wall).c_str(),
                  secs(s.dump_total).c_str(), secs(s.frozen).c_str(), secs(s.restore_wall).c_str(),
                  rate(fds, s.restore_wall).c_str(), secs(s.restore).c_str(), secs(s.verify).c_str(),
                  counts && bad.empty() ? "checked ok" : "CHECK FAILED");
      std::fflush(stdout);
    }

    // The reference job, never dumped: the kinds per fd number the restored trees must show,
    // and this machine's limits on a fresh tree.
    const std::string ref_dir = dir + "/reference";
    std::filesystem::create_directories(ref_dir);
    Tree ref;
    start_job(ref, ref_dir, fds, procs);
    double scan = proc_scan_rate(ref);  // the first look at this tree's /proc/PID/fd
    std::vector<LinkMap> ref_maps;
    for (pid_t p : ref.pids) ref_maps.push_back(links(p, ref_dir));
    std::vector<double> getfd;
    for (int i = 0; i < 3; ++i) getfd.push_back(getfd_rate(ref, ref_maps));
    std::string ref_bad = self_check(ref);
    if (!ref_bad.empty()) problems.push_back("the reference job's self-check (never dumped): " + ref_bad);
    ref.kill();
    if (!keep) remove_tree(ref_dir);
    int kinds_ok = 0;
    for (size_t r = 0; r < restored_maps.size(); ++r) {
      bool same = restored_maps[r] == ref_maps;
      for (size_t i = 0; !same && i < ref_maps.size(); ++i)
        for (auto& [fd, link] : ref_maps[i]) {
          auto it = restored_maps[r][i].find(fd);
          if (it == restored_maps[r][i].end() || it->second != link) {
            problems.push_back("run " + std::to_string(r) + ": process " + std::to_string(i) + " fd " +
                               std::to_string(fd) + ": " +
                               (it == restored_maps[r][i].end() ? "missing" : it->second) + ", made " + link);
            break;
          }
        }
      kinds_ok += same;
    }
    std::map<std::string, int> mix;
    for (auto& m : ref_maps)
      for (auto& [fd, link] : m) {
        std::string k = link == "pipe" || link == "socket" ? link
                        : link.rfind("anon_inode:[", 0) == 0 ? link.substr(12, link.size() - 13)
                        : link.rfind("/memfd:", 0) == 0      ? "memfd"
                        : link.rfind("RUN/files/", 0) == 0   ? "file"
                                                             : "stdio";
        ++mix[k];
      }

    std::vector<double> traced;
    for (int i = 0; i < 3; ++i) traced.push_back(traced_syscall_rate(20000));
    std::vector<double> spawn;
    for (int i = 0; i < std::max(runs, 3); ++i) {
      Ran v = run({crest, "--version"}, dir + "/version");
      spawn.push_back(v.wall_s);
    }

    double load[3] = {};
    ::getloadavg(load, 3);
    auto med = [&](double Sample::*f) {
      std::vector<double> x;
      for (auto& s : samples) x.push_back(s.*f);
      return median(x);
    };
    const Sample& first = samples.front();
    const int shared = fds / (8 * procs);

    std::printf("\ncrest fds benchmark: %d descriptors in %d processes, %d run%s (a fresh job each), "
                "%u cores, load average %.1f at the start, %.1f now\n",
                fds, procs, runs, runs == 1 ? "" : "s",
                std::max(1u, std::thread::hardware_concurrency()), load_start, load[0]);
    std::printf("  the tree:");
    const char* order[] = {"pipe", "socket", "eventfd", "timerfd", "eventpoll", "file", "memfd", "stdio"};
    for (const char* k : order)
      if (mix.count(k)) std::printf(" %d %s%s", mix[k], k, std::strcmp(k, "stdio") == 0 ? "" : ",");
    std::printf("\n    (eventpoll: 3 watches each; %d descriptions made before the forks are in all %d "
                "tables: %d descriptors; crest counted %.0f)\n",
                shared, procs, shared * procs, first.crest_fds);
    std::printf("\n  %-42s %12s %12s %18s\n", "", "first run", "median", "target");
    auto row = [](const char* name, const std::string& a, const std::string& b, const std::string& c) {
      std::printf("  %-42s %12s %12s %18s\n", name, a.c_str(), b.c_str(), c.c_str());
    };
    auto verdict = [&](double fds_s) {
      return std::string(fds_s >= kTarget ? ">= 20000: ok" : ">= 20000: MISSED");
    };
    row("dump: crest dump (wall, fork to exit)", secs(first.dump_wall), secs(med(&Sample::dump_wall)), "");
    row("      fds/s", rate(fds, first.dump_wall), rate(fds, med(&Sample::dump_wall)),
        verdict(fds / med(&Sample::dump_wall)));
    row("      crest's total", secs(first.dump_total), secs(med(&Sample::dump_total)), "");
    row("      job frozen", secs(first.frozen), secs(med(&Sample::frozen)), "");
    row("      of it collecting (fds and the rest)", secs(first.collect), secs(med(&Sample::collect)), "");
    row("      commit", secs(first.commit), secs(med(&Sample::commit)), "");
    char mib[2][32];
    std::snprintf(mib[0], sizeof mib[0], "%.1f MiB", first.image_mib);
    std::snprintf(mib[1], sizeof mib[1], "%.1f MiB", med(&Sample::image_mib));
    row("      image", mib[0], mib[1], "");
    row("restore: crest restore --detach (wall)", secs(first.restore_wall), secs(med(&Sample::restore_wall)), "");
    row("      fds/s", rate(fds, first.restore_wall), rate(fds, med(&Sample::restore_wall)),
        verdict(fds / med(&Sample::restore_wall)));
    row("      crest's restore (until the tree runs)", secs(first.restore), secs(med(&Sample::restore)), "");
    row("      of it --verify-restore", secs(first.verify), secs(med(&Sample::verify)), "");
    row("      injected calls", std::to_string(static_cast<long>(first.injections)),
        std::to_string(static_cast<long>(med(&Sample::injections))), "");

    std::printf("\n  restored trees: %d of %d with every process running with its descriptors' count, "
                "%d of %d with their kinds at the same numbers, %d of %d passing their own check of "
                "every descriptor\n",
                counts_ok, runs, kinds_ok, runs, checks_ok, runs);
    for (auto& p : problems) std::printf("    %s\n", p.c_str());

    std::printf("\n  this machine (same run)\n");
    std::printf("    crest --version (fork, exec, exit): %.1f ms (median of %zu)\n", median(spawn) * 1e3,
                spawn.size());
    std::printf("    the job making its descriptors (the root's private set, one process): %.0f fds/s "
                "(median)\n", median(made_rate));
    std::printf("    /proc/PID/fd of a fresh tree, readlink + fdinfo + stat per descriptor (first look): "
                "%.0f fds/s\n", scan);
    std::printf("    pidfd_getfd + close per descriptor: %.0f fds/s\n", median(getfd));
    std::printf("    a traced syscall (PTRACE_SYSCALL to its entry and exit stops, registers read and "
                "written: the least an injected syscall costs): %.0f/s, %.1f us each\n",
                median(traced), 1e6 / median(traced));
    if (keep) std::printf("\n  working directory: %s\n", dir.c_str());
    int rc = problems.empty() ? 0 : 1;
    if (!keep) remove_tree(dir);
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crest-bench-fds: %s\n", e.what());
    if (keep)
      std::fprintf(stderr, "  working directory: %s\n", dir.c_str());
    else if (!dir.empty())
      remove_tree(dir);
    return 1;
  }
}
