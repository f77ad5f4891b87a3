// crest jobs [JOB]: the jobs crestd watches (root sees every user's; others their own), or one
// job in detail: state, interval, last and next checkpoint, sizes, frozen times, chain length,
// dirty-page tracker, restores.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "agent/cli/report.h"
#include "agent/cli/verbs.h"
#include "agent/crestd/cli_options.h"
#include "agent/crestd/protocol.h"

namespace crest::cli {
namespace {

using nlohmann::json;

struct JobsArgs {
  std::string job;
  std::string socket;
  bool metrics = false;
};

std::string str(const json& j, const char* key, const std::string& dflt = "-") {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (j[key].is_string()) return j[key].get<std::string>().empty() ? dflt : j[key].get<std::string>();
  return j[key].dump();
}

std::string seconds_text(double s) {
  return format_duration(static_cast<int64_t>(s * 1e9));
}

std::string status_text(const json& j) {
  std::string state = str(j, "state");
  if (j.value("paused", false) && state == "running") state = "paused";
  if (j.value("checkpointing", false)) state += "*";
  if (j.contains("exit") && j["exit"].is_object()) {
    const json& e = j["exit"];
    if (e.contains("code")) state += " (" + std::to_string(e["code"].get<int>()) + ")";
    if (e.contains("signal_name")) state += " (" + e["signal_name"].get<std::string>() + ")";
  }
  return state;
}

std::string every_text(const json& j) {
  std::string every = str(j, "every");
  if (every == "auto" && j.contains("interval_s"))
    every += " (" + seconds_text(j["interval_s"].get<double>()) + ")";
  return every;
}

void print_table(const json& jobs) {
  if (jobs.empty()) {
    std::cout << "no jobs\n";
    return;
  }
  // A column for the batch system's job ids (slurm:1234) when some job has one.
  bool sched = false;
  for (auto& j : jobs) sched = sched || j.contains("scheduler_job");
  std::vector<std::string> head{"JOB", "NAME", "UID", "STATE", "PID", "EVERY", "CKPTS", "LAST",
                                "NEXT IN", "CHAIN", "IMAGES", "FROZEN", "TRACKER", "RESTORES"};
  if (sched) head.insert(head.begin() + 2, "SCHED JOB");
  TextTable t(head);
  for (auto& j : jobs) {
    const json& last = j["last_checkpoint"];
    std::string next = j["next_checkpoint_in_s"].is_number()
                           ? seconds_text(j["next_checkpoint_in_s"].get<double>())
                           : "-";
    std::vector<std::string> row{
        str(j, "id"), str(j, "name"), str(j, "uid"), status_text(j),
        j.value("pid", 0) ? std::to_string(j["pid"].get<int>()) : "-", every_text(j),
        std::to_string(j.value("checkpoints", 0)),
        // With node-local staging, a checkpoint not yet safe on shared storage: "(local)".
        last.is_object() ? last.value("name", "-") + (last.value("safe", true) ? "" : " (local)")
                         : "-",
        next,
        std::to_string(j.value("chain_length", 0)),
        format_bytes(j["images"].value("bytes", uint64_t{0})),
        last.is_object() ? format_duration(last.value("frozen_ns", int64_t{0})) : "-",
        str(j, "tracker"), std::to_string(j.value("restores", 0))};
    if (sched) row.insert(row.begin() + 2, str(j, "scheduler_job"));
    t.add(row);
  }
  t.print(std::cout, 0);
}

void print_job(const json& j) {
  FieldList f;
  f.add("job", str(j, "id") + (str(j, "name") == "-" ? "" : " (" + str(j, "name") + ")"));
  if (j.contains("scheduler_job")) f.add("scheduler job", str(j, "scheduler_job"));
  f.add("state", status_text(j));
  if (j.contains("end_reason")) f.add("ended", str(j, "ended") + ": " + str(j, "end_reason"));
  f.add("uid", str(j, "uid"));
  f.add("kind", str(j, "kind"));
  std::string cmd;
  for (auto& a : j["command"]) cmd += (cmd.empty() ? "" : " ") + a.get<std::string>();
  f.add("command", cmd.empty() ? "-" : cmd);
  f.add("pid", j.value("pid", 0) ? std::to_string(j["pid"].get<int>()) : "-");
  f.add("images", str(j, "dir") + " (" + std::to_string(j["images"].value("files", 0)) +
                      " files, " + format_bytes(j["images"].value("bytes", uint64_t{0})) + ")");
  f.add("every", every_text(j) + (j.value("paused", false) ? ", paused" : "") +
                     (j.value("lazy_serving", false)
                          ? "; waiting: restored lazily, its memory is still being served"
                          : ""));
  if (j.contains("auto")) {
    const json& a = j["auto"];
    f.add("auto interval",
          "MTBF " + seconds_text(a.value("mtbf_s", 0.0)) + ", checkpoint cost " +
              seconds_text(a.value("cost_s", 0.0)) + " -> " +
              seconds_text(a.value("interval_s", 0.0)) +
              (a.value("measured", false) ? " (Daly)" : " (first checkpoint: not measured yet)"));
  }
  f.add("checkpoints", std::to_string(j.value("checkpoints", 0)) + " (" +
                           std::to_string(j.value("checkpoint_failures", 0)) + " failed)");
  const json& last = j["last_checkpoint"];
  if (last.is_object()) {
    f.add("last checkpoint",
          last.value("name", "") + " at " + last.value("time", "") +
              (last.value("incremental", false) ? ", incremental on " + last.value("parent", "")
                                                : ", full"));
    if (j.contains("staging"))
      f.add("  safe", last.value("safe", false)
                          ? "yes: committed and verified on shared storage"
                          : "not yet: committed in " + j["staging"].value("local_dir", std::string()) +
                                ", being copied to shared storage");
    f.add("  frozen", format_duration(last.value("frozen_ns", int64_t{0})));
    f.add("  duration", format_duration(last.value("total_ns", int64_t{0})));
    f.add("  stored", format_bytes(static_cast<uint64_t>(last.value("bytes_stored", int64_t{0}))) +
                          " (" + std::to_string(last.value("pages_stored", 0)) + " pages; " +
                          std::to_string(last.value("pages_kept", 0)) + " kept in ancestors)");
  } else {
    f.add("last checkpoint", "-");
  }
  f.add("next checkpoint", j["next_checkpoint_in_s"].is_number()
                               ? "in " + seconds_text(j["next_checkpoint_in_s"].get<double>()) +
                                     " (" + str(j, "next_checkpoint") + ")"
                               : "-");
  if (j.contains("staging")) {
    const json& st = j["staging"];
    std::string safe = st.value("last_safe", "");
    f.add("staging", "local " + st.value("local_dir", "") + " (" +
                         format_bytes(st.value("local_bytes", uint64_t{0})) + "), " +
                         std::to_string(st.value("unflushed", 0)) + " not yet safe" +
                         (st.value("flushing", "").empty() ? "" : ", copying " + st.value("flushing", "")) +
                         "; newest safe: " + (safe.empty() ? "-" : safe + " at " + st.value("last_safe_time", "")));
    if (!st.value("flush_error", "").empty()) f.add("  copy error", st.value("flush_error", ""));
  }
  f.add("chain length", std::to_string(j.value("chain_length", 0)));
  if (j.contains("compactions") && j["compactions"].value("count", 0) > 0) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%d (the last took %.1f ms)", j["compactions"].value("count", 0),
                  j["compactions"].value("last_ms", 0.0));
    f.add("compactions", buf);
  }
  const json& fr = j["frozen_ns"];
  f.add("frozen", "last " + format_duration(fr.value("last", int64_t{0})) + ", max " +
                      format_duration(fr.value("max", int64_t{0})) + ", mean " +
                      format_duration(static_cast<int64_t>(fr.value("mean", 0.0))));
  f.add("tracker", str(j, "tracker"));
  f.add("restores", std::to_string(j.value("restores", 0)) + " (automatic: " +
                        std::to_string(j["auto_restore"].value("used", 0)) + " of " +
                        std::to_string(j["auto_restore"].value("budget", 0)) + ")");
  if (j["last_restore"].is_object())
    f.add("last restore", j["last_restore"].value("time", "") + " from " +
                              j["last_restore"].value("checkpoint", "") + ": " +
                              j["last_restore"].value("reason", ""));
  const json& sch = j["schedule"];
  f.add("schedule", std::to_string(sch.value("scheduled", 0)) + " timed, " +
                        std::to_string(sch.value("late", 0)) + " late (max " +
                        std::to_string(sch.value("late_max_ms", 0)) + " ms)");
  if (!str(j, "last_error", "").empty()) f.add("last error", str(j, "last_error"));
  f.print(std::cout, 0);
}

int run_jobs(const JobsArgs& args, const Context& ctx) {
  auto client = agent::Client::connect(agent::Client::socket_path(args.socket));
  if (args.metrics) {
    json reply = client.call({{"op", "metrics"}});
    if (ctx.json)
      print_json(std::cout, {{"metrics", reply["text"]}});
    else
      std::cout << reply["text"].get<std::string>();
    return kExitOk;
  }
  if (!args.job.empty()) {
    json reply = client.call({{"op", "status"}, {"job", args.job}});
    if (ctx.json)
      print_json(std::cout, {{"job", reply["job"]}});
    else
      print_job(reply["job"]);
    return kExitOk;
  }
  json reply = client.call({{"op", "jobs"}});
  if (ctx.json)
    print_json(std::cout, {{"jobs", reply["jobs"]}});
  else
    print_table(reply["jobs"]);
  return kExitOk;
}

}  // namespace

Verb register_jobs(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<JobsArgs>();
  CLI::App* cmd = app.add_subcommand("jobs", "List the jobs crestd watches, or show one");
  auto* job = cmd->add_option("job", args->job, "A job id or name: show it in detail");
  cmd->add_flag("--metrics", args->metrics,
                "Print crestd's node metrics in Prometheus text format (what it writes for "
                "node_exporter's textfile collector)")
      ->excludes(job);
  agent::JobFlags::add_socket(*cmd, args->socket);
  add_json_flag(*cmd, ctx);
  cmd->footer(
      "STATE is running, paused, restore-wait, restoring, ended, failed or lost (ended while\n"
      "crestd was not running); a * marks a checkpoint in progress. --json gives every field.");
  return {cmd, [args, &ctx] { return run_jobs(*args, ctx); }};
}

}  // namespace crest::cli
