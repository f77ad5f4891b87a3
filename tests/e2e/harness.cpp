#include "tests/e2e/harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#ifndef CREST_E2E_CREST
#error "CREST_E2E_CREST (path of the crest binary) must be defined by the build"
#endif
#ifndef CREST_E2E_WORKLOADS
#error "CREST_E2E_WORKLOADS (directory of the workload binaries) must be defined by the build"
#endif
#ifndef CREST_E2E_SCRATCH
#error "CREST_E2E_SCRATCH (default scratch directory) must be defined by the build"
#endif

namespace crest::e2e {
namespace {

using Clock = std::chrono::steady_clock;

int g_sigchld_fd = -1;
std::map<pid_t, int> g_reaped;  // children reaped but not yet asked for

std::string env_or(const char* name, const char* fallback) {
  const char* v = getenv(name);
  return v && *v ? v : fallback;
}

std::string errno_text(int err) { return std::string(strerror(err)); }

Clock::time_point deadline_after(Seconds s) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(s);
}

int ms_until(Clock::time_point deadline, int cap_ms) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<long long>(left.count(), 0, cap_ms));
}

// Reaps every exited child. Returns false once no child is left at all (ECHILD).
bool collect() {
  for (;;) {
    int st = 0;
    pid_t p = waitpid(-1, &st, WNOHANG | __WALL);
    if (p > 0) {
      g_reaped[p] = st;
      continue;
    }
    if (p == 0) return true;
    if (errno == EINTR) continue;
    return false;  // ECHILD
  }
}

// Sleeps until a SIGCHLD arrives or `slice_ms` passes (children started with exit_signal 0,
// such as a checkpointer's copy-on-write clone adopted by us, send no SIGCHLD: hence the slice).
void wait_sigchld(Clock::time_point deadline, int slice_ms = 100) {
  pollfd pfd{g_sigchld_fd, POLLIN, 0};
  if (poll(&pfd, 1, ms_until(deadline, slice_ms)) > 0) {
    signalfd_siginfo si;
    while (read(g_sigchld_fd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
    }
  }
}

struct FdMap {
  int target;
  int source;
};

// fork + exec with exactly the given fds (everything else closed) and a clean signal state.
// Returns the pid, or -1 with `error` set when the exec failed (reported through a CLOEXEC pipe).
pid_t spawn(const std::vector<std::string>& argv, const std::vector<FdMap>& fds,
            std::string* error) {
  int errpipe[2];
  if (pipe2(errpipe, O_CLOEXEC) != 0) {
    *error = "pipe: " + errno_text(errno);
    return -1;
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  pid_t pid = fork();
  if (pid < 0) {
    *error = "fork: " + errno_text(errno);
    close(errpipe[0]);
    close(errpipe[1]);
    return -1;
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig = 1; sig < NSIG; sig++) {
      if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    }
    // Move the exec-error pipe and every source out of the way first, so that no dup2 clobbers
    // a later source; then close every low fd that is not a target, and mark all high ones
    // close-on-exec (the error pipe must stay open until the exec succeeds).
    constexpr int kHigh = 512;
    int errfd = fcntl(errpipe[1], F_DUPFD_CLOEXEC, kHigh);
    std::vector<int> moved;
    for (const auto& m : fds) moved.push_back(fcntl(m.source, F_DUPFD_CLOEXEC, kHigh));
    for (size_t i = 0; i < fds.size(); i++) {
      if (errfd < 0 || moved[i] < 0 || dup2(moved[i], fds[i].target) < 0) _exit(126);
    }
    for (int fd = 0; fd < kHigh; fd++) {
      bool target = false;
      for (const auto& m : fds) target = target || fd == m.target;
      if (!target) close(fd);
    }
    close_range(kHigh, ~0U, CLOSE_RANGE_CLOEXEC);
    errpipe[1] = errfd;
    execv(args[0], args.data());
    int err = errno;
    ssize_t ignored = write(errpipe[1], &err, sizeof err);
    (void)ignored;
    _exit(127);
  }
  close(errpipe[1]);
  int err = 0;
  ssize_t n;
  while ((n = read(errpipe[0], &err, sizeof err)) < 0 && errno == EINTR) {
  }
  close(errpipe[0]);
  forget_pid(pid);
  if (n == static_cast<ssize_t>(sizeof err)) {
    *error = "exec " + argv[0] + ": " + errno_text(err);
    wait_child(pid, Seconds(5));
    return -1;
  }
  return pid;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

int open_or_throw(const std::string& path, int flags, mode_t mode = 0644) {
  int fd = open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) throw std::runtime_error("open " + path + ": " + errno_text(errno));
  return fd;
}

// Lines of a log, without the harness's own diagnostics ("# ...").
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

}  // namespace

void init_harness() {
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    fprintf(stderr, "e2e: PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
    exit(2);
  }
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, nullptr);
  g_sigchld_fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (g_sigchld_fd < 0) {
    fprintf(stderr, "e2e: signalfd: %s\n", strerror(errno));
    exit(2);
  }
}

std::string crest_path() { return env_or("CREST_E2E_CREST", CREST_E2E_CREST); }

std::string workload_path(const std::string& name) {
  return env_or("CREST_E2E_WORKLOADS", CREST_E2E_WORKLOADS) + "/" + name;
}

std::string describe_wait_status(int st) {
  char buf[128];
  if (st == -1) {
    snprintf(buf, sizeof buf, "still running");
  } else if (WIFEXITED(st)) {
    snprintf(buf, sizeof buf, "exited %d", WEXITSTATUS(st));
  } else if (WIFSIGNALED(st)) {
    snprintf(buf, sizeof buf, "killed by signal %d (%s)%s", WTERMSIG(st), strsignal(WTERMSIG(st)),
             WCOREDUMP(st) ? ", core dumped" : "");
  } else {
    snprintf(buf, sizeof buf, "wait status 0x%x", st);
  }
  return buf;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// ---- Processes ---------------------------------------------------------------------------

std::optional<int> wait_child(pid_t pid, Seconds timeout) {
  auto deadline = deadline_after(timeout);
  for (;;) {
    collect();
    auto it = g_reaped.find(pid);
    if (it != g_reaped.end()) {
      int st = it->second;
      g_reaped.erase(it);
      return st;
    }
    if (Clock::now() >= deadline) return std::nullopt;
    wait_sigchld(deadline);
  }
}

bool wait_no_children(Seconds timeout, std::map<pid_t, int>* reaped) {
  auto deadline = deadline_after(timeout);
  for (;;) {
    bool any = collect();
    if (reaped) reaped->insert(g_reaped.begin(), g_reaped.end());
    g_reaped.clear();
    if (!any) return true;
    if (Clock::now() >= deadline) return false;
    wait_sigchld(deadline);
  }
}

bool wait_exited(pid_t pid, Seconds timeout) {
  // glibc 2.36 declares pidfd_open() without C linkage for C++: use the raw syscall.
  int pfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pfd < 0) return errno == ESRCH;
  pollfd p{pfd, POLLIN, 0};
  auto deadline = deadline_after(timeout);
  bool done = false;
  for (;;) {
    int r = poll(&p, 1, ms_until(deadline, 1000));
    if (r > 0) {
      done = true;
      break;
    }
    if (r < 0 && errno != EINTR) break;
    if (Clock::now() >= deadline) break;
  }
  close(pfd);
  return done;
}

void forget_pid(pid_t pid) { g_reaped.erase(pid); }

void kill_descendants() {
  auto deadline = deadline_after(Seconds(30));
  for (;;) {
    bool any = collect();
    g_reaped.clear();
    if (!any) return;
    // Kill whole subtrees at once; anything they leave is adopted by us and killed next round.
    for (pid_t child : children_of(getpid())) {
      for (pid_t p : tree_of(child)) kill(p, SIGKILL);
    }
    if (Clock::now() >= deadline) {
      fprintf(stderr, "e2e: processes survive SIGKILL for 30 s; giving up on them\n");
      return;
    }
    wait_sigchld(deadline, 50);
  }
}

std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(task_dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::istringstream in(read_text_file(task_dir + "/" + e->d_name + "/children"));
    pid_t c;
    while (in >> c) out.push_back(c);
  }
  closedir(d);
  return out;
}

std::vector<pid_t> tree_of(pid_t root) {
  std::vector<pid_t> out{root};
  for (size_t i = 0; i < out.size(); i++) {
    for (pid_t c : children_of(out[i])) {
      if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
    }
  }
  return out;
}

std::string proc_status(pid_t pid, const std::string& key) {
  std::istringstream in(read_text_file("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size() + 1, key + ":") == 0) {
      size_t start = line.find_first_not_of(" \t", key.size() + 1);
      return start == std::string::npos ? "" : line.substr(start);
    }
  }
  return {};
}

bool process_exists(pid_t pid) { return kill(pid, 0) == 0 || errno == EPERM; }

uint64_t pss_bytes(const std::vector<pid_t>& pids) {
  uint64_t total_kb = 0;
  for (pid_t p : pids) {
    std::istringstream in(read_text_file("/proc/" + std::to_string(p) + "/smaps_rollup"));
    std::string key;
    uint64_t kb;
    std::string unit;
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream l(line);
      if (l >> key >> kb && key == "Pss:") {
        total_kb += kb;
        break;
      }
    }
  }
  return total_kb * 1024;
}

// ---- Commands ----------------------------------------------------------------------------

bool CommandResult::exited(int code) const {
  return !timed_out && WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == code;
}

std::string CommandResult::describe() const {
  std::ostringstream s;
  s << "$ " << command << "\n  -> "
    << (timed_out ? "timed out (killed) after " : describe_wait_status(wstatus) + " after ")
    << seconds << " s\n";
  s << "  stdout: " << (out.empty() ? "(empty)\n" : "\n" + out + (out.back() == '\n' ? "" : "\n"));
  s << "  stderr: " << (err.empty() ? "(empty)\n" : "\n" + err + (err.back() == '\n' ? "" : "\n"));
  return s.str();
}

LineResult read_line(int fd, Seconds timeout) {
  LineResult r;
  auto deadline = deadline_after(timeout);
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int n = poll(&p, 1, ms_until(deadline, 1000));
    if (n < 0 && errno != EINTR) return r;
    if (n > 0) {
      char c;
      ssize_t got = read(fd, &c, 1);
      if (got == 1) {
        if (c == '\n') {
          r.complete = true;
          return r;
        }
        r.line += c;
        continue;
      }
      if (got == 0) {
        r.eof = true;
        return r;
      }
      if (errno != EINTR && errno != EAGAIN) return r;
    }
    if (Clock::now() >= deadline) return r;
  }
}

// ---- WorkloadRun ---------------------------------------------------------------------------

WorkloadRun::WorkloadRun(std::string workload, const std::string& label)
    : workload_(std::move(workload)) {
  std::string base = env_or("CREST_E2E_TMPDIR", CREST_E2E_SCRATCH);
  std::filesystem::create_directories(base);
  std::string tmpl = base + "/" + label + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back(0);
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp " + tmpl + ": " + errno_text(errno));
  dir_ = buf.data();
}

WorkloadRun::~WorkloadRun() {
  kill_descendants();
  const char* keep = getenv("CREST_E2E_KEEP");
  if (keep && *keep && std::string(keep) != "0") {
    fprintf(stderr, "e2e: kept %s\n", dir_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

testing::AssertionResult WorkloadRun::start(Seconds ready_timeout, const std::vector<std::string>& launcher) {
  std::string path = workload_path(workload_);
  if (access(path.c_str(), X_OK) != 0) {
    return testing::AssertionFailure() << "workload binary " << path << " is missing";
  }
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0)
    return testing::AssertionFailure() << "pipe: " << errno_text(errno);
  int null = open_or_throw("/dev/null", O_RDONLY);
  int out = open_or_throw(dir_ + "/out.log", O_WRONLY | O_APPEND | O_CREAT);
  std::string error;
  std::vector<std::string> argv = launcher;
  argv.push_back(path);
  argv.push_back(dir_);
  pid_t pid = spawn(argv, {{0, null}, {1, out}, {2, out}, {3, ready[1]}}, &error);
  close(null);
  close(out);
  close(ready[1]);
  if (pid < 0) {
    close(ready[0]);
    return testing::AssertionFailure() << error;
  }
  root_ = pid;

  pollfd p{ready[0], POLLIN, 0};
  auto deadline = deadline_after(ready_timeout);
  int r;
  do {
    r = poll(&p, 1, ms_until(deadline, 1000));
  } while ((r == 0 && Clock::now() < deadline) || (r < 0 && errno == EINTR));
  char byte = 0;
  ssize_t n = r > 0 ? read(ready[0], &byte, 1) : -1;
  close(ready[0]);
  if (n == 1) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "workload " << workload_ << " (pid " << pid << ") "
         << (r == 0 ? "was not ready within " + std::to_string(ready_timeout.count()) + " s"
                    : "closed its ready pipe without signalling ready")
         << "\n"
         << diagnostics();
}

testing::AssertionResult WorkloadRun::start_program(const std::vector<std::string>& argv) {
  int null = open_or_throw("/dev/null", O_RDONLY);
  int out = open_or_throw(dir_ + "/out.log", O_WRONLY | O_APPEND | O_CREAT);
  std::string error;
  pid_t pid = spawn(argv, {{0, null}, {1, out}, {2, out}}, &error);
  close(null);
  close(out);
  if (pid < 0) return testing::AssertionFailure() << error;
  root_ = pid;
  return testing::AssertionSuccess();
}

pid_t WorkloadRun::spawn_client(const std::string& name, const std::vector<std::string>& argv) {
  int null = open_or_throw("/dev/null", O_RDONLY);
  int out = open_or_throw(dir_ + "/" + name + ".log", O_WRONLY | O_APPEND | O_CREAT);
  std::string error;
  pid_t pid = spawn(argv, {{0, null}, {1, out}, {2, out}}, &error);
  close(null);
  close(out);
  return pid;
}

std::string WorkloadRun::log() const { return read_text_file(dir_ + "/out.log"); }

testing::AssertionResult WorkloadRun::verdict_pass() const {
  std::vector<std::string> verdicts;
  for (const auto& line : lines_of(log())) {
    if (line == "PASS" || line.rfind("FAIL", 0) == 0) verdicts.push_back(line);
  }
  if (verdicts.size() == 1 && verdicts[0] == "PASS") return testing::AssertionSuccess();
  auto f = testing::AssertionFailure();
  if (verdicts.empty()) {
    f << "the workload printed no verdict";
  } else if (verdicts.size() > 1) {
    f << "the workload printed " << verdicts.size() << " verdicts";
  } else {
    f << "the workload reports: " << verdicts[0];
  }
  return f << "\n" << diagnostics();
}

std::string WorkloadRun::diagnostics() const {
  std::ostringstream s;
  s << "---- " << dir_ << "/out.log ----\n" << log() << "---- end of out.log ----\n";
  for (const auto& h : history_) s << h;
  return s.str();
}

CommandResult WorkloadRun::crest(const std::vector<std::string>& args, Seconds timeout) {
  CrestProcess proc = spawn_crest(args, false);
  if (proc.pid < 0) {
    CommandResult r;
    r.command = proc.command;
    r.err = proc.err_path;  // spawn error text
    history_.push_back(r.describe());
    return r;
  }
  auto st = wait_child(proc.pid, timeout);
  bool timed_out = !st.has_value();
  if (timed_out) {
    kill(proc.pid, SIGKILL);
    st = wait_child(proc.pid, Seconds(10));
  }
  return finish_crest(proc, st.value_or(-1), timed_out);
}

CrestProcess WorkloadRun::spawn_crest(const std::vector<std::string>& args, bool with_status_fd) {
  CrestProcess proc;
  std::vector<std::string> argv{crest_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  proc.command = join(argv);
  int n = ++ncommands_;
  proc.out_path = dir_ + "/crest-" + std::to_string(n) + ".out";
  proc.err_path = dir_ + "/crest-" + std::to_string(n) + ".err";
  if (access(argv[0].c_str(), X_OK) != 0) {
    proc.err_path = "crest binary " + argv[0] + " is missing (build the crest target)";
    return proc;
  }
  int null = open_or_throw("/dev/null", O_RDONLY);
  int out = open_or_throw(proc.out_path, O_WRONLY | O_CREAT | O_TRUNC);
  int err = open_or_throw(proc.err_path, O_WRONLY | O_CREAT | O_TRUNC);
  std::vector<FdMap> fds{{0, null}, {1, out}, {2, err}};
  int status[2] = {-1, -1};
  if (with_status_fd) {
    if (pipe2(status, O_CLOEXEC) != 0) throw std::runtime_error("pipe: " + errno_text(errno));
    fds.push_back({3, status[1]});
  }
  std::string error;
  proc.started = Clock::now();
  proc.pid = spawn(argv, fds, &error);
  close(null);
  close(out);
  close(err);
  if (with_status_fd) {
    close(status[1]);
    proc.status_fd = status[0];
  }
  if (proc.pid < 0) {
    if (proc.status_fd >= 0) close(proc.status_fd);
    proc.status_fd = -1;
    proc.err_path = error;
  }
  return proc;
}

CommandResult WorkloadRun::finish_crest(CrestProcess& proc, int wstatus, bool timed_out) {
  CommandResult r;
  r.command = proc.command;
  r.wstatus = wstatus;
  r.timed_out = timed_out;
  r.seconds = std::chrono::duration<double>(Clock::now() - proc.started).count();
  r.out = read_text_file(proc.out_path);
  r.err = read_text_file(proc.err_path);
  history_.push_back(r.describe());
  return r;
}

std::vector<std::string> WorkloadRun::checkpoint_files() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(images(), ec)) {
    std::string name = e.path().filename().string();
    if (name.rfind("ckpt-", 0) == 0) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t WorkloadRun::checkpoint_bytes() const {
  uint64_t total = 0;
  for (const auto& name : checkpoint_files()) {
    struct stat st;
    if (stat((images() + "/" + name).c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_size);
  }
  return total;
}

}  // namespace crest::e2e

namespace crest::e2e {

namespace {
unsigned char peer_byte(uint64_t i, int dir) {  // as tcp_external.c's tx_byte
  return static_cast<unsigned char>(((i >> 16) * 151 + (i >> 8) * 31 + i * 7 + static_cast<uint64_t>(dir) * 89) & 0xff);
}
}  // namespace

struct TcpPeer::State {
  std::thread thread;
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Result result;
};

TcpPeer::TcpPeer() : state_(new State) {
  listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(listener_, 1) != 0 || ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error("TcpPeer: cannot listen on 127.0.0.1: " + errno_text(errno));
  port_ = ntohs(a.sin_port);
  state_->thread = std::thread([this] { run(); });
}

TcpPeer::~TcpPeer() {
  state_->stop = true;
  if (state_->thread.joinable()) state_->thread.join();
  if (listener_ >= 0) ::close(listener_);
  delete state_;
}

TcpPeer::Result TcpPeer::finish(Seconds timeout) {
  std::unique_lock lock(state_->mu);
  if (!state_->cv.wait_for(lock, timeout, [this] { return state_->done; })) {
    Result r = state_->result;
    r.error = "the peer's exchange did not end within " + std::to_string(timeout.count()) + " s";
    return r;
  }
  return state_->result;
}

void TcpPeer::run() {
  Result r;
  int fd = -1;
  const auto deadline = Clock::now() + std::chrono::seconds(300);
  auto fail_with = [&](const std::string& why) {
    if (r.error.empty()) r.error = why;
  };
  while (fd < 0 && !state_->stop && Clock::now() < deadline) {
    pollfd p{listener_, POLLIN, 0};
    if (::poll(&p, 1, 100) == 1) fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  }
  if (fd < 0) fail_with("no connection came");
  bool eof = false;
  std::vector<unsigned char> out(16384), in(4096);
  while (fd >= 0 && !eof && !state_->stop && r.error.empty()) {
    if (Clock::now() > deadline) fail_with("the exchange went on for 300 s");
    pollfd p{fd, POLLIN | POLLOUT, 0};
    ::poll(&p, 1, 10);
    ssize_t n = ::recv(fd, in.data(), in.size(), MSG_DONTWAIT);
    if (n == 0) {
      eof = true;
    } else if (n > 0) {
      for (ssize_t k = 0; k < n; k++)
        if (in[static_cast<size_t>(k)] != peer_byte(r.received + static_cast<uint64_t>(k), 0)) {
          fail_with("byte " + std::to_string(r.received + static_cast<uint64_t>(k)) +
                    " of the workload's stream is not the one it sent");
          break;
        }
      r.received += static_cast<uint64_t>(n);
    } else if (errno != EAGAIN && errno != EINTR) {
      fail_with("recv after " + std::to_string(r.received) + " bytes: " + errno_text(errno));
    }
    if (eof || !r.error.empty()) break;
    for (size_t k = 0; k < out.size(); k++) out[k] = peer_byte(r.sent + k, 1);
    ssize_t m = ::send(fd, out.data(), out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (m > 0)
      r.sent += static_cast<uint64_t>(m);
    else if (m < 0 && errno != EAGAIN && errno != EINTR)
      fail_with("send after " + std::to_string(r.sent) + " bytes: " + errno_text(errno));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (eof) {
    // Everything the workload sent is read; our side ends once all we sent is acknowledged
    // (the workload reads it all before it sees our FIN).
    if (::shutdown(fd, SHUT_WR) != 0) fail_with("shutdown: " + errno_text(errno));
    else r.ended = true;
    // Keep the socket until the workload has our FIN (its close then ends the connection).
    const auto until = Clock::now() + std::chrono::seconds(60);
    while (!state_->stop && Clock::now() < until) {
      int outq = 0;
      if (::ioctl(fd, SIOCOUTQ, &outq) != 0 || outq == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  if (fd >= 0) ::close(fd);
  std::lock_guard lock(state_->mu);
  state_->result = r;
  state_->done = true;
  state_->cv.notify_all();
}

}  // namespace crest::e2e
