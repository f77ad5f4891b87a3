// crest checkpoint JOB: checkpoint a job of crestd now (incrementally, the job running on) and
// wait for it to be committed; the timer starts again from there.
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

struct CheckpointArgs {
  std::string job;
  std::string socket;
  bool no_wait = false;
};

int run_checkpoint(const CheckpointArgs& args, const Context& ctx) {
  auto client = agent::Client::connect(agent::Client::socket_path(args.socket));
  json req = {{"op", "checkpoint"}, {"job", args.job}};
  if (args.no_wait) req["wait"] = false;
  json reply = client.call(req);
  reply.erase("ok");
  if (ctx.json) {
    print_json(std::cout, reply);
    return kExitOk;
  }
  if (args.no_wait) {
    std::cout << "checkpoint of job " << reply.value("job", "") << " queued\n";
    return kExitOk;
  }
  const json& s = reply["stats"];
  std::string parent = reply.value("parent", "");
  std::cout << "job " << reply.value("job", "") << ": checkpoint " << reply.value("checkpoint", "")
            << (parent.empty() ? " (full)" : " (incremental on " + parent + ")") << ": frozen "
            << format_duration(s.value("frozen_ns", int64_t{0})) << ", "
            << format_bytes(static_cast<uint64_t>(s.value("bytes_stored", int64_t{0})))
            << " stored, " << format_duration(s.value("total_ns", int64_t{0})) << " in all; in "
            << reply.value("dir", "") << "\n";
  return kExitOk;
}

}  // namespace

Verb register_checkpoint(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<CheckpointArgs>();
  CLI::App* cmd = app.add_subcommand("checkpoint", "Checkpoint a job of crestd now");
  cmd->add_option("job", args->job, "Job id or name")->required();
  cmd->add_flag("--no-wait", args->no_wait, "Queue the checkpoint and return at once");
  agent::JobFlags::add_socket(*cmd, args->socket);
  add_json_flag(*cmd, ctx);
  return {cmd, [args, &ctx] { return run_checkpoint(*args, ctx); }};
}

}  // namespace crest::cli
