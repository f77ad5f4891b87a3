#include "tests/agent/harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "agent/crestd/protocol.h"
#include "core/util/error.h"

namespace crest::agent_test {

std::string crest_bin() { return CREST_AGENT_CREST; }
std::string crestd_bin() { return CREST_AGENT_CRESTD; }
std::string testjob_bin() { return CREST_AGENT_TESTJOB; }

// ---- files and time -----------------------------------------------------------------------------

TempDir::TempDir() {
  std::string root = CREST_AGENT_SCRATCH;
  if (const char* env = ::getenv("CREST_AGENT_TMPDIR")) root = env;
  ::mkdir(root.c_str(), 0755);
  std::string tmpl = root + "/t.XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back(0);
  if (::mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp in " + root);
  path = buf.data();
  // Other users (the security tests) must be able to reach their own directories in here.
  ::chmod(path.c_str(), 0755);
}

TempDir::~TempDir() {
  if (const char* keep = ::getenv("CREST_AGENT_KEEP"); keep && *keep == '1') return;
  pid_t pid = spawn({"/bin/rm", "-rf", "--", path});
  wait_child(pid, 60s);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool file_contains(const std::string& path, const std::string& needle) {
  return read_text(path).find(needle) != std::string::npos;
}

std::string job_result(const std::string& text) {
  auto pos = text.rfind("result ");
  if (pos == std::string::npos) return "";
  auto end = text.find('\n', pos);
  return text.substr(pos + 7, end == std::string::npos ? std::string::npos : end - pos - 7);
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds deadline) {
  auto until = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(20ms);
  }
}

// ---- processes ----------------------------------------------------------------------------------

SpawnOptions output_to(const std::string& out, const std::string& err) {
  SpawnOptions o;
  o.stdout_path = out;
  o.stderr_path = err;
  return o;
}

pid_t spawn(const std::vector<std::string>& argv, const SpawnOptions& o) {
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
  for (auto& e : o.env) env_store.push_back(e);
  std::vector<char*> args, envp;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string out = o.stdout_path.empty() ? "/dev/null" : o.stdout_path;
  std::string err = o.stderr_path.empty() ? out : o.stderr_path;

  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    int in = ::open(o.stdin_path.c_str(), O_RDONLY);
    int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = err == out ? ::dup(fo) : ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || fo < 0 || fe < 0) ::_exit(125);
    ::dup2(in, 0);
    ::dup2(fo, 1);
    ::dup2(fe, 2);
    ::close_range(3, ~0U, 0);
    if (o.gid) {
      ::setgroups(0, nullptr);
      if (::setresgid(*o.gid, *o.gid, *o.gid) != 0) ::_exit(124);
    }
    if (o.uid && ::setresuid(*o.uid, *o.uid, *o.uid) != 0) ::_exit(124);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  int pfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pfd >= 0) {
    pollfd p{pfd, POLLIN, 0};
    int r;
    while ((r = ::poll(&p, 1, static_cast<int>(timeout.count()))) < 0 && errno == EINTR) {
    }
    ::close(pfd);
    if (r == 0) return std::nullopt;
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) return std::nullopt;
  }
  return st;
}

std::string describe_status(int st) {
  if (WIFEXITED(st)) return "exited " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return std::string("killed by ") + ::strsignal(WTERMSIG(st));
  return "status " + std::to_string(st);
}

std::string proc_field(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

bool alive(pid_t pid) {
  std::string state = proc_field(pid, "State");
  return !state.empty() && state[0] != 'Z' && state[0] != 'X';
}

std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  std::string base = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(base.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::istringstream in(read_text(base + "/" + e->d_name + "/children"));
    pid_t c;
    while (in >> c) out.push_back(c);
  }
  ::closedir(d);
  return out;
}

Reaper::~Reaper() {
  for (pid_t p : pids)
    if (p > 1) ::kill(p, SIGKILL);
  for (pid_t p : pids) {
    int st;
    ::waitpid(p, &st, WNOHANG);  // ours: collect; others' (reparented): nothing to do
  }
}

// ---- crestd -------------------------------------------------------------------------------------

Daemon::Daemon(const TempDir& dir, std::vector<std::string> more)
    : socket(dir / "crestd.sock"),
      storage(dir / "images"),
      state(dir / "state.json"),
      log(dir / "crestd.log"),
      extra(std::move(more)),
      out_(dir / "crestd.out") {}

Daemon::~Daemon() {
  if (pid_ <= 0) return;
  // Whatever the test left with crestd (a failed assertion, a restored job with a new pid):
  // forgotten first, so that crestd does not restore it, then killed, and its cgroup removed.
  try {
    json jobs = call({{"op", "jobs"}})["jobs"];
    for (auto& job : jobs) {
      pid_t pid = job.value("pid", 0);
      std::string cg = job.value("cgroup", "");
      call({{"op", "forget"}, {"job", job["id"]}});
      if (pid > 1) ::kill(pid, SIGKILL);
      // Removable once the killed tree is reaped (crestd reaps what it forgot, or init does).
      if (!cg.empty()) wait_until([&] { return ::rmdir(cg.c_str()) == 0 || errno == ENOENT; }, 10s);
    }
  } catch (const std::exception&) {
  }
  stop();
}

void Daemon::start() {
  std::vector<std::string> argv{crestd_bin(),   "--config",      "/dev/null/none",
                                "--socket",     socket,          "--storage-root",
                                storage,        "--state-file",  state,
                                "--log",        log,             "--log-level",
                                "debug"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  // A missing --config file is an error: give an empty one instead.
  std::string empty_config = storage + ".toml";
  std::ofstream(empty_config).flush();
  argv[2] = empty_config;
  pid_ = spawn(argv, output_to(out_));
  bool ready = wait_until(
      [&] {
        if (auto st = wait_child(pid_, 0ms)) {
          pid_ = -1;
          throw std::runtime_error("crestd exited at start (" + describe_status(*st) +
                                   "): " + read_text(out_));
        }
        try {
          auto c = agent::Client::try_connect(socket);
          return c && c->call({{"op", "hello"}}, {}, 2000).value("ok", false);
        } catch (const std::exception&) {
          return false;
        }
      },
      10s);
  if (!ready) throw std::runtime_error("crestd did not answer hello within 10 s: " + read_text(out_));
}

void Daemon::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  if (!wait_child(pid_, 30s)) {
    ::kill(pid_, SIGKILL);
    wait_child(pid_, 10s);
  }
  pid_ = -1;
}

void Daemon::kill9() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  wait_child(pid_, 10s);
  pid_ = -1;
}

json Daemon::call(const json& request, const std::vector<int>& fds) const {
  auto c = agent::Client::connect(socket);
  return c.call(request, fds, 120000);
}

std::string Daemon::call_error(const json& request) const {
  try {
    call(request);
    return "";
  } catch (const Error& e) {
    return std::string(kind_name(e.kind()));
  }
}

bool Daemon::wait_checkpoints(const std::string& job, uint64_t n,
                              std::chrono::milliseconds deadline) const {
  return wait_until(
      [&] {
        try {
          return status(job).value("checkpoints", uint64_t{0}) >= n;
        } catch (const Error&) {
          return false;
        }
      },
      deadline);
}

// ---- another user ------------------------------------------------------------------------------

json as_user(uid_t uid, gid_t gid, const std::function<json()>& fn) {
  int p[2];
  if (::pipe(p) != 0) throw std::runtime_error("pipe");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    json out;
    if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 ||
        ::setresuid(uid, uid, uid) != 0) {
      out = {{"setup_error", std::strerror(errno)}};
    } else {
      try {
        out = fn();
      } catch (const std::exception& e) {
        out = {{"exception", e.what()}};
      }
    }
    std::string s = out.dump();
    (void)!::write(p[1], s.data(), s.size());
    ::_exit(0);
  }
  ::close(p[1]);
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(p[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  ::close(p[0]);
  wait_child(pid, 60s);
  auto doc = json::parse(text, nullptr, false);
  return doc.is_discarded() ? json{{"exception", "no result from the child: " + text}} : doc;
}

TestUser::TestUser() {
  if (::getpwnam(name.c_str()) == nullptr) {
    pid_t pid = spawn({"/usr/sbin/useradd", "--system", "--no-create-home", "--shell",
                       "/usr/sbin/nologin", name});
    auto st = wait_child(pid, 60s);
    created = st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0;
  }
  if (passwd* pw = ::getpwnam(name.c_str())) {
    uid = pw->pw_uid;
    gid = pw->pw_gid;
    ok = uid != 0;
  }
}

TestUser::~TestUser() {
  if (!created) return;
  pid_t pid = spawn({"/usr/sbin/userdel", name});
  wait_child(pid, 60s);
}

}  // namespace crest::agent_test
