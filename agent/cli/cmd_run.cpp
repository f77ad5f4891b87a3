// crest run [--every DUR|auto] [-D DIR] [--auto-restore[=N]] -- CMD ARGS...
//
// Runs CMD as a job: in its own pid namespace under crest-init (pid 1: reaps, forwards signals,
// exits with the job's status), checkpointed periodically and restored automatically when it
// dies abnormally. With a crestd listening, the job is handed to it (our stdin, stdout and
// stderr travel with the request, and the job runs as us, in our cwd, with our environment);
// without one, this process supervises the job itself with the same supervisor code (the
// embedded default). Either way crest run waits for the job's end, passing on the signals it
// gets, and ends the way the job ended: the same exit code, or the same fatal signal.
#include <fcntl.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <poll.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <climits>
#include <ctime>
#include <deque>
#include <iostream>
#include <memory>
#include <mutex>
#include <filesystem>
#include <thread>

#include "agent/cli/report.h"
#include "agent/cli/verbs.h"
#include "agent/crestd/cli_options.h"
#include "agent/crestd/config.h"
#include "agent/crestd/protocol.h"
#include "agent/crestd/server.h"
#include "agent/crestd/supervisor.h"
#include "core/cgroup.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

extern char** environ;

namespace crest::cli {
namespace {

using nlohmann::json;

struct RunArgs {
  agent::JobFlags flags;
  std::vector<std::string> argv;
  bool daemon = false;     // require crestd
  bool no_daemon = false;  // never use crestd
  bool quiet = false;
};

// Signals passed on to the job (SIGCHLD and the unblockable ones excepted).
const int kForwarded[] = {SIGTERM, SIGINT,  SIGHUP,   SIGQUIT, SIGUSR1, SIGUSR2,
                          SIGALRM, SIGCONT, SIGWINCH, SIGXCPU, SIGPWR,  SIGTSTP};

sigset_t forwarded_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kForwarded) sigaddset(&set, s);
  return set;
}

std::vector<std::string> environment() {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) env.emplace_back(*e);
  return env;
}

std::string absolute(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  char buf[PATH_MAX];
  if (::getcwd(buf, sizeof buf) == nullptr) throw_errno("getcwd");
  return std::string(buf) + "/" + path;
}

// Ends this process the way the job ended.
[[noreturn]] void mirror(const json& status) {
  std::cout.flush();
  std::cerr.flush();
  if (status.contains("signal")) {
    int sig = status["signal"].get<int>();
    ::signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
    ::raise(sig);
    ::_exit(128 + sig);  // not fatal by default (SIGCHLD, SIGWINCH...)
  }
  if (status.contains("code")) ::_exit(status["code"].get<int>());
  ::_exit(kExitFailed);
}

// One line on stderr per event, for the person watching.
void narrate(const json& ev, bool quiet) {
  if (quiet) return;
  std::string kind = ev.value("event", "");
  std::string line;
  if (kind == "checkpoint") {
    std::string parent = ev.value("parent", "");
    line = "checkpoint " + ev.value("checkpoint", "") +
           (parent.empty() ? " (full)" : " (incremental on " + parent + ")") + ": job frozen " +
           format_duration(ev.value("frozen_ns", int64_t{0})) + ", " +
           format_bytes(static_cast<uint64_t>(ev.value("bytes_stored", int64_t{0}))) + " stored";
  } else if (kind == "checkpoint-failed") {
    line = "checkpoint failed: " + ev["error"].value("kind", "") + ": " +
           ev["error"].value("message", "");
  } else if (kind == "restoring") {
    line = ev.value("reason", "the job failed") + "; restoring it from its newest checkpoint in " +
           format_duration(ev.value("delay_ms", int64_t{0}) * 1000000) + " (automatic restore " +
           std::to_string(ev.value("attempt", 0)) + " of " + std::to_string(ev.value("of", 0)) +
           ")";
  } else if (kind == "restored") {
    line = "restored from " + ev.value("checkpoint", "") + " in " +
           format_duration(ev.value("restore_ns", int64_t{0})) + "; the job runs on (pid " +
           std::to_string(ev.value("pid", 0)) + ")";
  } else if (kind == "restore-failed") {
    line = "restore failed: " + ev["error"].value("message", "");
  } else if (kind == "end") {
    line = "the job ended: " + ev.value("reason", "");
  } else {
    return;
  }
  std::cerr << "crest: " << line << std::endl;
}

// Events from the embedded supervisor's threads to this one.
json final_doc(const std::string& id, const json& end, const json& job) {
  json doc = {{"job", id}, {"status", end.value("status", json::object())},
              {"reason", end.value("reason", "")}};
  if (!job.is_null()) {
    doc["checkpoints"] = job.value("checkpoints", 0);
    doc["restores"] = job.value("restores", 0);
    doc["dir"] = job.value("dir", "");
  }
  return doc;
}

// ---- embedded: this process supervises the job -----------------------------------------------

// Whether a pid named in a file name is of a process that is gone.
bool pid_gone(const std::string& digits) {
  if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos)
    return false;
  return ::kill(std::stoi(digits), 0) != 0 && errno == ESRCH;
}

// What a crest run killed (kill -9) could not remove: the control socket directories
// (crest-run-PID-XXXXXX) of ours in `base`, and the empty job cgroups (crest/run-PID-JOB) of
// crest runs that are gone. Best effort: a directory in use is never empty, or its pid lives.
void remove_stale_leftovers(const std::vector<std::string>& bases) {
  std::error_code ec;
  for (auto& base : bases) {
    for (auto it = std::filesystem::directory_iterator(base, ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      std::string name = it->path().filename().string();
      if (name.rfind("crest-run-", 0) != 0) continue;
      size_t dash = name.find('-', 10);
      struct stat st {};
      if (dash == std::string::npos || !pid_gone(name.substr(10, dash - 10)) ||
          ::lstat(it->path().c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::getuid())
        continue;
      std::error_code rm;
      std::filesystem::remove_all(it->path(), rm);
    }
    ec.clear();
  }
  std::string cg = cgroup::v2_mount();
  if (cg.empty()) return;
  for (auto it = std::filesystem::directory_iterator(cg + "/crest", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    size_t dash = name.find('-', 4);
    if (name.rfind("run-", 0) == 0 && dash != std::string::npos && pid_gone(name.substr(4, dash - 4)))
      cgroup::remove(it->path().string());  // rmdir: only if empty
  }
}

// The embedded supervisor's own control socket, served while the job runs, so that the job can
// ask for checkpoints of itself (libcrest-mpi; the job gets its path as CREST_JOB_SOCKET). It
// lives in a private directory (mode 0700: only our uid reaches it) under $XDG_RUNTIME_DIR,
// else $TMPDIR, else /tmp, removed when crest run ends (or, if crest run was killed, by the
// next crest run: the directory's name has the pid). Same protocol as crestd's socket.
class PrivateServer {
 public:
  // Never fails crest run: without a directory for the socket, the job runs without one (and
  // libcrest-mpi in it says that no agent listens), after a warning.
  PrivateServer() {
    std::vector<std::string> bases;
    for (const char* var : {"XDG_RUNTIME_DIR", "TMPDIR"})
      if (const char* v = ::getenv(var); v != nullptr && *v == '/') bases.emplace_back(v);
    bases.emplace_back("/tmp");
    remove_stale_leftovers(bases);
    for (auto& base : bases) {
      std::string tmpl = base + "/crest-run-" + std::to_string(::getpid()) + "-XXXXXX";
      if (tmpl.size() + 14 >= sizeof(sockaddr_un{}.sun_path)) continue;  // + "/control.sock"
      std::vector<char> buf(tmpl.begin(), tmpl.end());
      buf.push_back('\0');
      if (::mkdtemp(buf.data()) == nullptr) continue;
      dir_ = buf.data();
      cfg_.socket = dir_ + "/control.sock";
      cfg_.max_connections = 16;
      return;
    }
    std::string tried;
    for (auto& b : bases) tried += (tried.empty() ? "" : ", ") + b;
    log::get("agent.server")->warn("no directory for crest run's control socket (tried {}): the job "
                                   "cannot ask for checkpoints", tried);
  }
  ~PrivateServer() { stop(); }
  // The socket's path ("" when there is none).
  std::string socket() const { return dir_.empty() ? "" : cfg_.socket; }
  void start(agent::Supervisor& sup) {
    if (dir_.empty()) return;
    try {
      server_ = std::make_unique<agent::Server>(cfg_, sup);
      server_->listen();
    } catch (const Error& e) {
      log::get("agent.server")->warn("crest run's control socket: {}: the job cannot ask for checkpoints",
                                     e.what());
      server_.reset();
      return;
    }
    thread_ = std::thread([this] {
      try {
        server_->serve();
      } catch (const Error& e) {
        log::get("agent.server")->warn("crest run's control socket: {}", e.what());
      }
    });
  }
  void stop() {
    if (server_) {
      server_->request_stop();
      if (thread_.joinable()) thread_.join();
      server_.reset();
    }
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      dir_.clear();
    }
  }

 private:
  std::string dir_;
  agent::Config cfg_;
  std::unique_ptr<agent::Server> server_;
  std::thread thread_;
};

int run_embedded(const RunArgs& args, const Context& ctx, int sigfd) {
  agent::SupervisorOptions so;
  so.concurrency = 1;
  so.init_path = agent::default_init_path();
  agent::JobPolicy policy;  // the built-in defaults: every 10m, keep 3, auto-restore 3
  json overrides = json::object();
  args.flags.fill(overrides);
  overrides.erase("name");
  policy.update(overrides);
  so.defaults = policy;

  std::string dir = args.flags.dir;
  if (dir.empty()) {
    std::string base = fs::basename(args.argv[0]);
    dir = "crest-images/" + base + "-" + std::to_string(::time(nullptr)) + "-" +
          std::to_string(::getpid());
  }
  dir = absolute(dir);

  // The narration below tells the user what the agent does; its own log lines would say it
  // twice (unless a --log-level was asked for).
  if (ctx.log_level == "warn")
    for (const char* m : {"agent.job", "agent.watch", "agent.sched"})
      log::get(m)->set_level(spdlog::level::err);
  PrivateServer control;
  so.control_socket = control.socket();
  agent::Supervisor sup(so);
  control.start(sup);
  auto inbox = std::make_shared<agent::EventQueue>();
  agent::JobRequest req;
  req.name = args.flags.name;
  req.uid = ::getuid();
  req.gid = ::getgid();
  req.dir = dir;
  req.policy = policy;
  req.transient = false;  // keep its record to report on it at the end
  agent::LaunchSpec spec;
  spec.argv = args.argv;
  spec.env = environment();
  spec.init_path = so.init_path;
  std::array<UniqueFd, 3> stdio;
  for (int i = 0; i < 3; ++i) {
    stdio[i].reset(::fcntl(i, F_DUPFD_CLOEXEC, 3));
    if (!stdio[i]) throw_errno("fd " + std::to_string(i) + " is not open");
  }
  std::string id = sup.launch(req, spec, std::move(stdio), [inbox](const json& ev) { inbox->push(ev); });
  sup.start();
  json st = sup.status(id);
  if (!args.quiet && !ctx.json)
    std::cerr << "crest: running " << args.argv[0] << " as pid " << st.value("pid", 0)
              << " (crest-init, pid 1 of its own pid namespace), checkpoint every "
              << st.value("every", "") << " into " << dir << ", automatic restore "
              << (policy.auto_restore ? "up to " + std::to_string(policy.auto_restore) + " times"
                                      : std::string("off"))
              << std::endl;

  json end;
  while (end.is_null()) {
    pollfd fds[2] = {{sigfd, POLLIN, 0}, {inbox->fd(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      throw_errno("poll", errno, Errc::kernel);
    }
    if (fds[0].revents) {
      signalfd_siginfo si{};
      if (::read(sigfd, &si, sizeof si) == sizeof si) {
        try {
          sup.send_signal(id, static_cast<int>(si.ssi_signo));
        } catch (const Error&) {
          // Between a failure and its restore there is nobody to signal.
        }
      }
    }
    for (auto& ev : inbox->take()) {
      narrate(ev, args.quiet || ctx.json);
      if (ev.value("event", "") == "end") end = ev;
    }
  }
  json job = sup.status(id);
  control.stop();
  sup.stop();
  if (ctx.json) print_json(std::cout, final_doc(id, end, job));
  mirror(end.value("status", json::object()));
}

// ---- through crestd ----------------------------------------------------------------------------

int run_with_daemon(agent::Client client, const std::string& path, const RunArgs& args,
                    const Context& ctx, int sigfd) {
  char cwd[PATH_MAX];
  if (::getcwd(cwd, sizeof cwd) == nullptr) throw_errno("getcwd");
  json req = {{"op", "run"}, {"argv", args.argv}, {"env", environment()}, {"cwd", cwd},
              {"watch", true}, {"transient", true}};
  args.flags.fill(req);
  if (!args.flags.dir.empty()) req["dir"] = absolute(args.flags.dir);
  json reply = client.call(req, {0, 1, 2});
  json job = reply["job"];
  std::string id = job.value("id", "");
  if (!args.quiet && !ctx.json)
    std::cerr << "crest: job " << id << " started by crestd as pid " << job.value("pid", 0)
              << " (crest-init, pid 1 of its own pid namespace), checkpoint every "
              << job.value("every", "") << " into " << job.value("dir", "") << std::endl;

  json end;
  std::optional<agent::Client> conn(std::move(client));
  while (end.is_null()) {
    try {
      // Everything that has arrived (some may have come with the reply above), then wait.
      while (end.is_null()) {
        auto msg = conn->next_message(0);
        if (!msg) break;
        if (!msg->contains("event")) continue;  // replies to our signal requests
        narrate(*msg, args.quiet || ctx.json);
        if (msg->value("event", "") == "end") end = *msg;
      }
      if (!end.is_null()) break;
      pollfd fds[2] = {{sigfd, POLLIN, 0}, {conn->fd(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) throw_errno("poll", errno, Errc::kernel);
      if (fds[0].revents) {
        signalfd_siginfo si{};
        if (::read(sigfd, &si, sizeof si) == sizeof si)
          conn->send({{"op", "signal"}, {"job", id}, {"signal", static_cast<int>(si.ssi_signo)}});
      }
    } catch (const Error& e) {
      if (e.kind() != Errc::io) throw;
      // crestd went away (a restart): the job runs on; find it again when crestd is back.
      if (!args.quiet && !ctx.json)
        std::cerr << "crest: lost crestd (" << e.what() << "); waiting for it to come back" << std::endl;
      conn.reset();
      for (int i = 0; i < 600 && !conn && end.is_null(); ++i) {
        ::usleep(100000);
        if (auto c = agent::Client::try_connect(path)) {
          try {
            c->call({{"op", "watch"}, {"job", id}});
            conn = std::move(c);
          } catch (const Error& w) {
            if (w.kind() == Errc::not_found)
              end = {{"event", "end"}, {"status", {{"known", false}}},
                     {"reason", "crestd restarted and no longer knows the job"}};
          }
        }
      }
      if (!conn && end.is_null()) fail(Errc::io, "crestd did not come back; job " + id + " may run on");
    }
  }
  if (end.value("forgotten", false)) {
    if (!args.quiet && !ctx.json)
      std::cerr << "crest: job " << id << " was forgotten by crestd; it runs on unsupervised" << std::endl;
    if (ctx.json) print_json(std::cout, final_doc(id, end, json()));
    return kExitOk;
  }
  if (ctx.json) print_json(std::cout, final_doc(id, end, json()));
  mirror(end.value("status", json::object()));
}

int run_run(const RunArgs& args, const Context& ctx) {
  if (args.argv.empty()) fail(Errc::usage, "no command to run (crest run [OPTIONS] -- CMD ARGS...)");
  if (args.daemon && args.no_daemon) fail(Errc::usage, "--daemon and --no-daemon exclude each other");
  // Forwarded signals are taken from a signalfd by this thread; every thread created later
  // (the supervisor's) inherits them blocked. The job's own mask is reset when it starts.
  sigset_t set = forwarded_set();
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  UniqueFd sigfd(::signalfd(-1, &set, SFD_CLOEXEC));
  if (!sigfd) throw_errno("signalfd", errno, Errc::kernel);

  std::string path = agent::Client::socket_path(args.flags.socket);
  if (!args.no_daemon) {
    if (auto client = agent::Client::try_connect(path))
      return run_with_daemon(std::move(*client), path, args, ctx, sigfd.get());
    if (args.daemon) fail(Errc::not_found, "no crestd listening on " + path);
  }
  return run_embedded(args, ctx, sigfd.get());
}

}  // namespace

Verb register_run(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand("run", "Run a command as a checkpointed, self-healing job");
  args->flags.add(*cmd, true);
  cmd->add_flag("--daemon", args->daemon, "Fail unless crestd is listening");
  cmd->add_flag("--no-daemon", args->no_daemon,
                "Supervise the job in this process even if crestd is listening");
  cmd->add_flag("-q,--quiet", args->quiet, "Say nothing on stderr about checkpoints and restores");
  cmd->add_option("command", args->argv, "The command and its arguments (after --)")->required();
  add_json_flag(*cmd, ctx);
  cmd->footer(
      "The command runs in its own pid namespace under crest-init, is checkpointed every --every\n"
      "(incrementally, the job running on), and is restored from its newest checkpoint when it\n"
      "dies abnormally (killed by a signal it was not asked to stop by), up to --auto-restore\n"
      "times. crest run waits for it, forwards signals to it and exits with its status. With a\n"
      "crestd listening the job is crestd's (crest jobs lists it); without one crest run\n"
      "supervises it itself and keeps the images in -D (default ./crest-images/...).");
  return {cmd, [args, &ctx] { return run_run(*args, ctx); }};
}

}  // namespace crest::cli
