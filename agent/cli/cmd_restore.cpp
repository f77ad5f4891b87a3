// crest restore -D DIR: bring a checkpointed tree back, in place or detached.
//
// In place (the default) this process stays the restored root's parent: it forwards the signals
// a batch system or shell sends it to the root, and when the root ends it ends the same way (the
// same exit code, or the same fatal signal), so whoever started `crest restore` sees the job's
// own status. Detached (-d) it returns as soon as the tree runs.
#include <CLI/CLI.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <iostream>
#include <memory>

#include "agent/cli/report.h"
#include "agent/cli/verbs.h"
#include "agent/crestd/protocol.h"
#include "agent/crestd/trust.h"
#include "core/checkpoint.h"
#include "core/lazy.h"
#include "core/util/error.h"
#include "storage/image_store.h"

namespace crest::cli {
namespace {

struct RestoreArgs {
  std::string dir;
  std::string job;     // --job: the images directory of a crestd job
  std::string local;   // --local: the job's node-local staging directory (crestd [storage] local)
  std::string socket;
  std::string checkpoint = "latest";
  bool detach = false;
  bool pidns = false;
  int status_fd = -1;
  std::string file_changes = "fail";
  bool verify_restore = true;
  bool shell_job = false;
  bool check_only = false;
  bool launcher_session = false;
  bool lazy = false;
  std::string owner;  // UID:GID whose images these must be (the Slurm plugin restores as root)
};

// "UID:GID" -> the ids; Errc::usage otherwise.
std::pair<uid_t, gid_t> parse_owner(const std::string& text) {
  auto colon = text.find(':');
  auto number = [&](const std::string& s) -> uint32_t {
    if (s.empty() || s.size() > 10 || s.find_first_not_of("0123456789") != std::string::npos)
      fail(Errc::usage, "--owner wants UID:GID (numbers), got '" + text + "'");
    uint64_t v = std::stoull(s);
    if (v > 0xfffffffeu) fail(Errc::usage, "--owner: '" + s + "' is not an id");
    return static_cast<uint32_t>(v);
  };
  if (colon == std::string::npos) fail(Errc::usage, "--owner wants UID:GID, got '" + text + "'");
  return {number(text.substr(0, colon)), number(text.substr(colon + 1))};
}

// Signals an in-place restore passes on to the job.
const int kForwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGCONT,
                          SIGWINCH, SIGXCPU, SIGPWR};

sigset_t forwarded_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kForwarded) sigaddset(&set, s);
  sigaddset(&set, SIGCHLD);
  return set;
}

// Waits for the root while passing signals on; returns its wait status.
int wait_forwarding(pid_t root) {
  sigset_t set = forwarded_set();
  for (;;) {
    int st = 0;
    pid_t r = ::waitpid(root, &st, WNOHANG);
    if (r == root) return st;
    if (r < 0 && errno != EINTR) throw_errno("waitpid of the restored root", errno, Errc::kernel);
    siginfo_t info;
    int sig = ::sigwaitinfo(&set, &info);
    if (sig > 0 && sig != SIGCHLD) ::kill(root, sig);
  }
}

// Ends this process the way the root ended.
[[noreturn]] void mirror(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    std::cout.flush();
    ::signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
    ::raise(sig);
    ::_exit(128 + sig);  // the signal did not end us (it is not fatal by default)
  }
  std::cout.flush();
  ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

// --lazy: waits until every page is resident (or the job has ended); throws if serving failed.
void finish_lazy(const RestoreResult& result, const Context& ctx) {
  if (!result.lazy) return;
  result.lazy->wait();
  auto st = result.lazy->stats();
  if (!ctx.json)
    std::cerr << "crest: lazy restore: all " << st.pages_total << " pages resident "
              << format_duration(st.resident_ns - st.released_ns) << " after the job ran ("
              << st.pages_faulted << " served on fault, " << st.pages_prefetched
              << " prefetched)\n";
}

int run_restore(const RestoreArgs& args, const Context& ctx) {
  // Block what we forward before any helper thread exists, so that every thread inherits the
  // mask and the signals wait for sigwaitinfo instead of killing us.
  if (!args.detach) {
    sigset_t set = forwarded_set();
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  }
  std::string dir = args.dir;
  std::string local = args.local;
  if (!args.job.empty()) {
    auto client = agent::Client::connect(agent::Client::socket_path(args.socket));
    nlohmann::json st = client.call({{"op", "status"}, {"job", args.job}})["job"];
    dir = st.value("dir", "");
    if (local.empty() && st.contains("staging"))
      local = st["staging"].value("local_dir", "");
  }
  if (dir.empty()) fail(Errc::usage, "say which images to restore: -D DIR or --job JOB");
  auto store = storage::ImageStore::open_directory(dir);
  std::unique_ptr<storage::CheckpointReader> reader;
  if (!local.empty()) {
    // Node-local staging: the local copy when it is the checkpoint asked for (by default the
    // newest of both sides) and its chain verifies; else the shared one.
    try {
      auto lstore = storage::ImageStore::open_directory(local);
      std::string name;
      if (args.checkpoint == "latest" || args.checkpoint.empty()) {
        auto ln = lstore->newest();
        auto sn = store->newest();
        if (ln && (!sn || ln->sequence >= sn->sequence)) name = ln->name;
      } else {
        name = lstore->open(args.checkpoint)->name();
      }
      if (!name.empty()) {
        auto report = lstore->verify(name);
        if (report.ok()) {
          reader = lstore->open(name);
          std::cerr << "crest: restoring " << name << " from its local copy in " << local << "\n";
          store = std::move(lstore);
          dir = local;
        } else {
          std::cerr << "crest: warning: the local copy of " << name << " does not verify ("
                    << report.errors[0] << "); restoring from " << dir << "\n";
        }
      }
    } catch (const Error& e) {
      std::cerr << "crest: warning: no usable local copy in " << local << " (" << e.what()
                << "); restoring from " << dir << "\n";
    }
  }
  if (!reader) reader = store->open(args.checkpoint);
  if (args.checkpoint == "latest" || args.checkpoint.empty()) {
    // The newest complete checkpoint is restored; newer files that cannot be read are named, so
    // that a damaged newest one is never passed over in silence.
    for (const auto& e : store->list())
      if (!e.readable && e.sequence > reader->info().sequence)
        std::cerr << "crest: warning: " << dir << "/" << e.name << " is newer but cannot be read ("
                  << e.error << "); restoring " << reader->name() << "\n";
  }
  if (!args.owner.empty()) {
    // The images are the user's, who can rewrite them, and we may be root: nothing in them may
    // exceed what that user may do (their identity in every process, files they may open).
    auto [uid, gid] = parse_owner(args.owner);
    agent::check_image_for_owner(reader->meta(), uid, gid);
  }
  if (args.check_only) {
    // Every page of the checkpoint and its chain, decompressed and checksummed, delivered nowhere.
    struct Discard : storage::PageSink {
      void on_pages(const storage::PageExtent&, schema::PageKind, const std::byte*) override {}
      bool concurrent() const override { return true; }
    } discard;
    reader->read_pages({}, discard);
    // When it was taken: the Slurm plugin tells a restored job how much work the restore lost.
    int64_t taken_ns = reader->info().created_ns;
    if (ctx.json)
      print_json(std::cout, {{"checkpoint", reader->name()},
                             {"ok", true},
                             {"created_ns", taken_ns},
                             {"created", format_time_iso(taken_ns)}});
    else
      std::cout << "crest: " << reader->name() << " in " << dir << " can be restored (taken "
                << format_time_iso(taken_ns) << ")\n";
    return kExitOk;
  }
  RestoreOptions opts;
  opts.pid_namespace = args.pidns;
  opts.status_fd = args.status_fd;
  opts.verify_restore = args.verify_restore;
  opts.shell_job = args.shell_job;
  opts.launcher_session = args.launcher_session;
  opts.lazy = args.lazy;
  if (args.shell_job && (::tcgetsid(0) < 0 || ::tcgetsid(0) != ::getsid(0)))
    fail(Errc::usage, "--shell-job: crest's stdin must be its controlling terminal (run crest "
                      "restore --shell-job from a shell on a terminal)");
  opts.file_changes = args.file_changes == "truncate" ? FileChangePolicy::truncate
                      : args.file_changes == "ignore" ? FileChangePolicy::ignore
                                                      : FileChangePolicy::fail;
  opts.progress = [&](const std::string& stage) {
    if (!ctx.json) std::cerr << "crest: " << stage << "\n";
  };
  RestoreResult result = restore(*reader, opts);
  if (args.status_fd >= 0) ::close(args.status_fd);

  auto ns = result.stats["restore_ns"];
  if (ctx.json) {
    print_json(std::cout, {{"checkpoint", reader->name()},
                           {"root_pid", result.root_pid},
                           {"restore_ns", ns},
                           {"verify_restore_ns", result.stats["verify_restore_ns"]},
                           {"injections", result.stats["injections"]},
                           {"detached", args.detach}});
  } else {
    std::cerr << "crest: restored " << reader->name() << " in " << format_duration(ns)
              << "; root pid " << result.root_pid << (args.detach ? "" : " (waiting for it)")
              << "\n";
  }
  if (args.detach) {
    finish_lazy(result, ctx);
    return kExitOk;
  }
  std::cout.flush();
  int status = wait_forwarding(result.root_pid);
  // The job's status is its own only once every page it had was served: a page server that
  // failed killed it, and that is the restore's failure, not the job's.
  finish_lazy(result, ctx);
  mirror(status);
}

}  // namespace

Verb register_restore(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<RestoreArgs>();
  CLI::App* cmd = app.add_subcommand("restore", "Restore a checkpointed process tree");
  auto* dir_opt = cmd->add_option("-D,--images-dir", args->dir, "Images directory");
  cmd->add_option("--job", args->job, "The images of this crestd job (id or name)")
      ->excludes(dir_opt);
  cmd->add_option("--local", args->local,
                  "The job's node-local staging directory (crestd's [storage] local): its copy is "
                  "restored when it is the checkpoint asked for and verifies (with --job: asked "
                  "of crestd)");
  cmd->add_option("--socket", args->socket,
                  "crestd's socket for --job (default $CREST_SOCKET, else /run/crest/crestd.sock)");
  cmd->add_option("--checkpoint", args->checkpoint,
                  "Checkpoint to restore: file name, sequence number, uuid (prefix) or latest")
      ->capture_default_str();
  cmd->add_flag("-d,--detach", args->detach, "Return once the tree runs instead of waiting for it");
  cmd->add_flag("--pidns", args->pidns,
                "Restore inside a fresh pid namespace, so pids taken on this node do not matter");
  cmd->add_option("--status-fd", args->status_fd,
                  "Write \"RESTORED <root pid>\" to this descriptor once the tree runs");
  cmd->add_option("--file-changes", args->file_changes,
                  "Files the job had open that changed size since the checkpoint: fail, truncate "
                  "(roll grown output files back) or ignore")
      ->check(CLI::IsMember({"fail", "truncate", "ignore"}))
      ->capture_default_str();
  cmd->add_flag("--verify-restore,!--no-verify-restore", args->verify_restore,
                "Before the tree runs, read back every process's mappings, credentials, signals, "
                "fds, locks and timers and fail the restore if any differs from the checkpoint "
                "(default: on)");
  cmd->add_flag("--shell-job", args->shell_job,
                "The checkpoint is of a shell's job (crest dump --shell-job): attach it to the "
                "terminal on crest's stdin as its controlling terminal, in the foreground if it "
                "was");
  cmd->add_flag("--launcher-session", args->launcher_session,
                "The job's session was its launcher's (slurmstepd's), outside the tree: make its "
                "processes of that session in crest's own session (the new launcher's)");
  cmd->add_flag("--check-only", args->check_only,
                "Only check that the checkpoint can be restored (complete, every checksum right, "
                "and --owner's if given); restore nothing");
  cmd->add_flag("--lazy", args->lazy,
                "Let the job run before its memory is back: anonymous private memory is served "
                "from the image on first touch and prefetched meanwhile (crest stays until all "
                "is resident; if it dies first, the job is killed)");
  cmd->add_option("--owner", args->owner,
                  "UID:GID: refuse images whose processes are not all this user's, or that "
                  "open files this user may not (for root restoring a user's job)");
  add_json_flag(*cmd, ctx);
  cmd->footer(
      "In place (default), crest stays the parent of the restored root, forwards signals to it\n"
      "and exits with the job's own status. The newest complete checkpoint is used unless\n"
      "--checkpoint says otherwise; a missing, incomplete or corrupt image is refused before\n"
      "anything starts. Without --pidns every original pid must be free on this node.");
  return {cmd, [args, &ctx] { return run_restore(*args, ctx); }};
}

}  // namespace crest::cli
