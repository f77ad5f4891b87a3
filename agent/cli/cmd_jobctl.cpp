// The job-control verbs of crestd: crest register PID, crest pause|resume JOB (the checkpoint
// timer), crest forget JOB (stop watching it; it runs on).
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

struct JobArgs {
  std::string job;
  std::string socket;
  bool remove_images = false;
};

int simple_request(const std::string& op, const JobArgs& args, const Context& ctx,
                   const std::string& done) {
  auto client = agent::Client::connect(agent::Client::socket_path(args.socket));
  json req = {{"op", op}, {"job", args.job}};
  if (op == "forget") req["remove_images"] = args.remove_images;
  json reply = client.call(req);
  reply.erase("ok");
  if (ctx.json)
    print_json(std::cout, reply);
  else
    std::cout << "job " << args.job << ": " << done << "\n";
  return kExitOk;
}

Verb job_verb(CLI::App& app, Context& ctx, const std::string& name, const std::string& help,
              const std::string& done) {
  auto args = std::make_shared<JobArgs>();
  CLI::App* cmd = app.add_subcommand(name, help);
  cmd->add_option("job", args->job, "Job id or name")->required();
  if (name == "forget")
    cmd->add_flag("--remove-images", args->remove_images, "Remove the job's images too");
  agent::JobFlags::add_socket(*cmd, args->socket);
  add_json_flag(*cmd, ctx);
  return {cmd, [args, &ctx, name, done] { return simple_request(name, *args, ctx, done); }};
}

struct RegisterArgs {
  agent::JobFlags flags;
  pid_t pid = 0;
};

int run_register(const RegisterArgs& args, const Context& ctx) {
  auto client = agent::Client::connect(agent::Client::socket_path(args.flags.socket));
  json req = {{"op", "register"}, {"pid", args.pid}};
  args.flags.fill(req);
  if (!args.flags.dir.empty()) {
    std::string dir = args.flags.dir;
    if (dir[0] != '/') {
      char cwd[4096];
      if (::getcwd(cwd, sizeof cwd) != nullptr) dir = std::string(cwd) + "/" + dir;
    }
    req["dir"] = dir;
  }
  json reply = client.call(req);
  if (ctx.json) {
    print_json(std::cout, {{"job", reply["job"]}});
  } else {
    const json& j = reply["job"];
    std::cout << "job " << j.value("id", "") << ": pid " << args.pid << ", checkpoint every "
              << j.value("every", "") << " into " << j.value("dir", "") << "\n";
  }
  return kExitOk;
}

}  // namespace

Verb register_register(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<RegisterArgs>();
  CLI::App* cmd = app.add_subcommand("register", "Hand a running process tree to crestd");
  cmd->add_option("pid", args->pid, "Root pid of the tree")->required();
  args->flags.add(*cmd, false);
  add_json_flag(*cmd, ctx);
  cmd->footer(
      "The tree must be yours (root may register any) and checkpointable: crestd checks it first\n"
      "and refuses with the reasons. It is checkpointed every --every and, if it dies by a\n"
      "signal, restored automatically (crestd learns the exit status of a process it did not\n"
      "start from the kernel, Linux 6.15 or later; without that, an end counts as normal).");
  return {cmd, [args, &ctx] { return run_register(*args, ctx); }};
}

Verb register_pause(CLI::App& app, Context& ctx) {
  return job_verb(app, ctx, "pause", "Stop a job's checkpoint timer (crest checkpoint still works)",
                  "timer paused");
}

Verb register_resume(CLI::App& app, Context& ctx) {
  return job_verb(app, ctx, "resume", "Restart a job's checkpoint timer", "timer resumed");
}

Verb register_forget(CLI::App& app, Context& ctx) {
  return job_verb(app, ctx, "forget", "Stop watching a job (it runs on, unsupervised)",
                  "forgotten");
}

}  // namespace crest::cli
