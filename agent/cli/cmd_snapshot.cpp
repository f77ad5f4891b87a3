// crest snapshot PID|JOB -D DIR [--keep N]: one incremental checkpoint of a running tree, the tree
// running on, then retention — what cron or a systemd timer runs. Quiet when it works; one line
// on stderr and a non-zero status when it does not.
//
// Incremental snapshots need a dirty-page tracker that lives from one snapshot to the next, and
// a crest process lives for one. With a crestd listening, the snapshot is crestd's work: the tree
// becomes a job of crestd on its first snapshot (no timer, no automatic restore, forgotten when
// it ends), and crestd keeps its tracker, so every later snapshot reads only the pages written
// since the one before. Without crestd, crest does the checkpoint itself, incremental by page
// content: it reads every page, and stores only those that changed.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "agent/cli/report.h"
#include "agent/cli/verbs.h"
#include "agent/crestd/cli_options.h"
#include "agent/crestd/images.h"
#include "agent/crestd/protocol.h"
#include "core/checkpoint.h"
#include "core/tracker.h"
#include "core/util/error.h"
#include "core/util/log.h"
#include "storage/image_store.h"

namespace crest::cli {
namespace {

using nlohmann::json;

constexpr unsigned kDefaultKeep = 3;

struct SnapshotArgs {
  std::string target;
  std::string dir;
  unsigned keep = 0;  // 0: not given
  std::string socket;
  bool no_daemon = false;
  bool tcp_established = false;
  bool ext_unix_sk = false;
};

// The target: a process id (digits), or a crestd job ("%ID", or its name).
struct Target {
  pid_t pid = 0;
  std::string job;
};

Target parse_target(const std::string& text) {
  Target t;
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    if (text.size() > 9 || std::stol(text) <= 1)
      fail(Errc::usage, "'" + text + "' is not a process id that can be snapshotted");
    t.pid = static_cast<pid_t>(std::stol(text));
  } else if (text.size() > 1 && text[0] == '%') {
    t.job = text.substr(1);
  } else if (!text.empty()) {
    t.job = text;
  } else {
    fail(Errc::usage, "no process id or job given");
  }
  return t;
}

std::string absolute(const std::string& dir) {
  if (dir.empty() || dir[0] == '/') return dir;
  char cwd[4096];
  if (::getcwd(cwd, sizeof cwd) == nullptr) throw_errno("getcwd");
  return std::string(cwd) + "/" + dir;
}

json stats_json(const schema::Stats& stats) {
  json j = json::object();
  for (auto& [k, v] : stats) j[k] = v;
  return j;
}

// Through crestd, which keeps the tree's tracker between snapshots.
json through_crestd(agent::Client& client, const SnapshotArgs& args, const Target& target) {
  json req = {{"op", "snapshot"}};
  if (target.pid != 0)
    req["pid"] = target.pid;
  else
    req["job"] = target.job;
  if (!args.dir.empty()) req["dir"] = absolute(args.dir);
  if (args.keep > 0) req["keep"] = args.keep;
  if (args.tcp_established) req["tcp_established"] = true;
  if (args.ext_unix_sk) req["ext_unix_sk"] = true;
  json reply = client.call(req);
  if (reply.contains("retention_error"))
    fail(Errc::io, "snapshot " + reply.value("checkpoint", "") + " taken, but " +
                       reply["retention_error"].get<std::string>());
  return {{"checkpoint", reply.value("checkpoint", "")},
          {"parent", reply.value("parent", "")},
          {"directory", reply.value("dir", "")},
          {"job", reply.value("job", "")},
          {"by", "crestd"},
          {"tracker", reply.value("tracker", "")},
          {"images", reply.value("images", json::object())},
          {"stats", reply.value("stats", json::object())}};
}

// Without crestd: incremental by page content against the newest checkpoint in DIR.
json by_itself(const SnapshotArgs& args, const Target& target) {
  if (target.pid == 0)
    fail(Errc::not_found, "job '" + args.target + "' is a crestd job, and no crestd is listening on " +
                              agent::Client::socket_path(args.socket));
  if (args.dir.empty()) fail(Errc::usage, "a snapshot of a process needs -D DIR");
  auto store = storage::ImageStore::open_directory(args.dir, /*create=*/true);
  std::string why;
  std::string parent = agent::snapshot_parent(*store, why);
  // A damaged newest checkpoint: this snapshot starts a new chain (said, not fatal: the
  // snapshot itself is good). Retention never removes what cannot be read.
  if (!why.empty()) report_problem("warning: " + why + "; taking a full snapshot");
  DumpResult result;
  {
    auto writer = store->begin(parent);
    std::unique_ptr<Tracker> tracker;
    if (!parent.empty()) tracker = Tracker::create(TrackerKind::hash);
    DumpOptions opts;
    opts.pid = target.pid;
    opts.leave_running = true;
    opts.tracker = tracker.get();
    opts.tcp_established = args.tcp_established;
    opts.ext_unix_sk = args.ext_unix_sk;
    result = dump(*writer, opts);
  }
  const unsigned keep = args.keep > 0 ? args.keep : kDefaultKeep;
  try {
    agent::snapshot_retention(*store, result.checkpoint, keep);
  } catch (const Error& e) {
    fail(e.kind(), "snapshot " + result.checkpoint + " taken, but retention failed: " + e.what());
  }
  return {{"checkpoint", result.checkpoint},
          {"parent", parent},
          {"directory", store->location()},
          {"by", "crest"},
          {"tracker", parent.empty() ? "none" : "hash"},
          {"notes", result.notes},
          {"stats", stats_json(result.stats)}};
}

int run_snapshot(const SnapshotArgs& args, const Context& ctx) {
  // Cron mails whatever is printed: the engine's warnings stay quiet unless asked for.
  if (ctx.log_level == "warn") log::set_level(spdlog::level::off);
  try {
    Target target = parse_target(args.target);
    std::optional<agent::Client> client;
    if (!args.no_daemon) client = agent::Client::try_connect(agent::Client::socket_path(args.socket));
    json doc = client ? through_crestd(*client, args, target) : by_itself(args, target);
    if (ctx.json) print_json(std::cout, doc);
    return kExitOk;
  } catch (const Error& e) {
    // Exactly one line: a list of problems (a refusal's reasons) joined into it.
    std::string msg = e.what();
    for (size_t at; (at = msg.find("\n  ")) != std::string::npos;) msg.replace(at, 3, "; ");
    for (auto& c : msg)
      if (c == '\n') c = ' ';
    throw Error(e.kind(), msg);
  }
}

}  // namespace

Verb register_snapshot(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<SnapshotArgs>();
  CLI::App* cmd = app.add_subcommand(
      "snapshot", "Incremental checkpoint of a running tree, with retention (for cron)");
  cmd->add_option("target", args->target,
                  "Root pid of the tree, or a crestd job (%ID or its name)")
      ->required();
  cmd->add_option("-D,--images-dir", args->dir,
                  "Images directory (created if missing; for a crestd job: its own, the default)");
  cmd->add_option("--keep", args->keep,
                  "Snapshots to keep (default 3, or crestd's configured keep when crestd takes "
                  "the snapshot; for a tree that already is a crestd job, the job's keep)")
      ->check(CLI::Range(1, 100000));
  agent::JobFlags::add_socket(*cmd, args->socket);
  cmd->add_flag("--no-daemon", args->no_daemon,
                "Take the snapshot here even if a crestd is listening");
  cmd->add_flag("--tcp-established", args->tcp_established,
                "Save TCP connections to peers outside the tree (as crest dump "
                "--tcp-established) instead of failing on them");
  cmd->add_flag("--ext-unix-sk", args->ext_unix_sk,
                "Save Unix sockets connected to a named socket outside the tree (as crest dump "
                "--ext-unix-sk) instead of failing on them");
  add_json_flag(*cmd, ctx);
  cmd->footer(
      "The tree runs on. Each snapshot is incremental on the newest one in DIR (the first is\n"
      "full); then only the newest N stay, with what they depend on: the chain is compacted into\n"
      "a full checkpoint every max(2, N) snapshots, so DIR holds N files (N <= 2) or between N\n"
      "and 2N-2. Restore the newest with crest restore -D DIR. Prints nothing when it works\n"
      "(--json: a document); when it fails, one line on stderr and exit status 1 (2: bad\n"
      "arguments).\n"
      "With a crestd listening (--socket, $CREST_SOCKET), crestd takes the snapshot: the tree\n"
      "becomes a crestd job on its first snapshot (no timer, no automatic restore, forgotten when\n"
      "it ends) and crestd keeps its dirty-page tracker, so each later snapshot reads only the\n"
      "pages written since the last. WITHOUT crestd, every snapshot reads all of the tree's\n"
      "memory and stores only the pages whose content changed.");
  return {cmd, [args, &ctx] { return run_snapshot(*args, ctx); }};
}

}  // namespace crest::cli
