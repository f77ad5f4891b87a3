// crest dump -t PID -D DIR: checkpoint a live process tree into an images directory.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "agent/cli/report.h"
#include "agent/cli/verbs.h"
#include "core/checkpoint.h"
#include "core/util/error.h"
#include "core/tracker.h"
#include "storage/image_store.h"

namespace crest::cli {
namespace {

struct DumpArgs {
  pid_t pid = 0;
  std::string dir;
  bool leave_running = false;
  bool parent = false;
  bool cow = false;
  bool stop_copy = false;
  bool tcp_established = false;
  std::string job_id;
  bool shell_job = false;
  bool ext_unix_sk = false;
};

void print_summary(std::ostream& out, const std::string& name, const schema::Stats& s) {
  auto get = [&](const char* k) -> int64_t {
    auto it = s.find(k);
    return it == s.end() ? 0 : it->second;
  };
  uint64_t in = static_cast<uint64_t>(get("pages_read")) * 4096;
  uint64_t stored = static_cast<uint64_t>(get("bytes_stored"));
  out << "crest: checkpoint " << name << ": " << get("processes") << " processes, "
      << get("threads") << " threads; frozen " << format_duration(get("frozen_ns")) << "; "
      << get("pages_read") << " pages read (" << format_bytes(in) << ", " << get("pages_zero")
      << " zero, " << get("pages_kept")
      << " unchanged since the parent, " << get("pages_cow_shared")
      << " shared with a parent process); " << get("pages_stored") << " stored in "
      << format_bytes(stored) << " (ratio " << format_ratio(in, stored) << "); total "
      << format_duration(get("total_ns")) << "\n";
}

int run_dump(const DumpArgs& args, const Context& ctx) {
  auto store = storage::ImageStore::open_directory(args.dir, /*create=*/true);
  std::string parent;
  if (args.parent) {
    // Incremental against the newest checkpoint, by page content: nothing to keep between runs
    // of the CLI. No checkpoint yet: a full one, and we say so. A newest checkpoint that is
    // damaged, or whose chain is, is named — never skipped for an older one.
    auto entries = store->list();
    if (entries.empty()) {
      if (!ctx.json)
        std::cerr << "crest: no checkpoint in " << args.dir
                  << " to be incremental against: taking a full one\n";
    } else {
      const auto& newest = entries.back();
      if (!newest.readable)
        fail(Errc::missing_ancestor, store->location() + "/" + newest.name +
                                         " cannot be the parent: " + newest.error);
      auto report = store->verify(newest.name);
      if (!report.ok())
        fail(Errc::missing_ancestor, newest.name + " cannot be the parent: " + report.errors[0]);
      parent = newest.name;
    }
  }
  auto writer = store->begin(parent);
  std::unique_ptr<Tracker> tracker;
  if (!parent.empty()) tracker = Tracker::create(TrackerKind::hash);
  DumpOptions opts;
  opts.pid = args.pid;
  opts.leave_running = args.leave_running;
  opts.tracker = tracker.get();
  opts.mode = args.cow ? SnapshotMode::cow : args.stop_copy ? SnapshotMode::stop_copy
                                                             : SnapshotMode::automatic;
  opts.job_id = args.job_id;
  opts.tcp_established = args.tcp_established;
  opts.shell_job = args.shell_job;
  opts.ext_unix_sk = args.ext_unix_sk;
  opts.progress = [&](const std::string& stage) {
    if (!ctx.json) std::cerr << "crest: " << stage << "\n";
  };
  DumpResult result = dump(*writer, opts);
  if (ctx.json) {
    nlohmann::json stats = nlohmann::json::object();
    for (auto& [k, v] : result.stats) stats[k] = v;
    print_json(std::cout, {{"checkpoint", result.checkpoint},
                           {"directory", args.dir},
                           {"left_running", args.leave_running},
                           {"notes", result.notes},
                           {"stats", stats}});
  } else {
    for (const auto& n : result.notes) std::cerr << "crest: note: " << n << "\n";
    print_summary(std::cerr, result.checkpoint, result.stats);
  }
  return kExitOk;
}

}  // namespace

Verb register_dump(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<DumpArgs>();
  CLI::App* cmd = app.add_subcommand("dump", "Checkpoint a running process tree");
  cmd->add_option("-t,--tree", args->pid, "Root pid of the tree to checkpoint")->required();
  cmd->add_option("-D,--images-dir", args->dir, "Images directory (created if missing)")->required();
  cmd->add_flag("-R,--leave-running", args->leave_running,
                "Let the tree run on after the checkpoint (default: kill it once committed)");
  cmd->add_flag("--parent", args->parent,
                "Incremental: store only pages that differ from the newest checkpoint in DIR");
  auto* cow = cmd->add_flag("--cow", args->cow,
                            "Copy-on-write snapshot: thaw the tree before reading its memory "
                            "(needs -R; default for large trees with -R)");
  cmd->add_flag("--stop-copy", args->stop_copy, "Read all memory while the tree is frozen")
      ->excludes(cow);
  cmd->add_option("--job-id", args->job_id, "Job name recorded in the image");
  cmd->add_flag("--tcp-established", args->tcp_established,
                "Dump TCP connections to peers outside the tree too (refused without it): their "
                "packets are dropped by an nftables lock while frozen and, without -R, until "
                "`crest restore` brings them back (`crest unlock` drops a lock left behind)");
  cmd->add_flag("--shell-job", args->shell_job,
                "The tree is a job of a shell: its session and controlling terminal are outside "
                "it (restore it with crest restore --shell-job on a terminal); without this such "
                "a tree is refused");
  cmd->add_flag("--ext-unix-sk", args->ext_unix_sk,
                "Dump Unix sockets connected to a named socket outside the tree (syslog's "
                "/dev/log, a daemon's socket) instead of refusing them: at restore a datagram "
                "socket connects to that name again; a stream or seqpacket socket gets a NEW "
                "connection to the listener there (the listener sees a new client, bytes it had "
                "not read stay on the old connection; unread data from it is refused). An "
                "outside peer without a name (a socketpair end) is refused even so");
  add_json_flag(*cmd, ctx);
  cmd->footer(
      "The tree is frozen with ptrace (never SIGSTOP), saved, and killed after the checkpoint is\n"
      "committed unless -R is given. Anything crest cannot restore faithfully (a TCP connection to\n"
      "a process outside the tree without --tcp-established, a Unix socket connected outside it\n"
      "without --ext-unix-sk, io_uring, ...; `crest check --pid` lists them) makes the dump fail\n"
      "before anything is written, naming every problem; the tree then runs on untouched. Progress\n"
      "and a summary go to stderr (with notes on what the restored tree will find different, such\n"
      "as a new connection to a listener outside it); --json prints a document.");
  return {cmd, [args, &ctx] { return run_dump(*args, ctx); }};
}

}  // namespace crest::cli
