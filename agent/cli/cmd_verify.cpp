// crest verify PATH: checks every chunk checksum of a checkpoint and of its whole chain.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <memory>

#include "agent/cli/image_target.h"
#include "agent/cli/report.h"
#include "agent/cli/verbs.h"

namespace crest::cli {
namespace {

using nlohmann::json;

struct VerifyOptions {
  std::string path;
};

int verify(const VerifyOptions& opts, const Context& ctx) {
  ImageTarget target = open_target(opts.path);

  std::vector<std::string> problems;
  std::string ref = target.ref;
  if (target.is_directory()) {
    // The newest file by sequence, readable or not: a damaged newest checkpoint must fail the
    // check rather than be skipped in favour of an older good one.
    auto entries = target.store->list();
    if (entries.empty()) fail(Errc::not_found, target.path + ": no checkpoints in this directory");
    ref = entries.back().name;
    // Damage outside the newest chain is still damage in the directory.
    for (const auto& e : entries) {
      if (!e.readable && e.name != ref)
        problems.push_back(problem_line(target.file_path(e.name), e.error));
    }
  }

  ChainCheck check = check_chain(target, ref);
  problems.insert(problems.begin(), check.problems.begin(), check.problems.end());
  bool ok = problems.empty();

  if (ctx.json) {
    print_json(std::cout, {{"target", target.path},
                           {"checkpoint", ref},
                           {"ok", ok},
                           {"chunks", check.chunks},
                           {"chunks_bad", check.chunks_bad},
                           {"files", check.files},
                           {"problems", problems}});
    return ok ? kExitOk : kExitFailed;
  }

  std::cout << "verifying " << target.file_path(ref) << " and its chain\n\n";
  if (!check.files.empty()) {
    TextTable t({"FILE", "CHUNKS", "OK", "BAD", "STORED"});
    for (const auto& f : check.files) {
      uint64_t chunks = f["chunks"], bad = f["chunks_bad"];
      t.add({f["name"], std::to_string(chunks), std::to_string(chunks - std::min(chunks, bad)),
             std::to_string(bad), format_bytes(f["bytes_stored"].get<uint64_t>())});
    }
    t.print(std::cout);
    std::cout << '\n';
  }
  if (ok) {
    std::cout << "ok: " << check.files.size() << (check.files.size() == 1 ? " file, " : " files, ")
              << check.chunks << " chunks, every checksum matches and the chain is whole\n";
  } else {
    std::cout << "BAD: " << problems.size() << (problems.size() == 1 ? " problem" : " problems")
              << " (on stderr)\n";
    for (const auto& line : problems) report_problem(line);
  }
  return ok ? kExitOk : kExitFailed;
}

}  // namespace

Verb register_verify(CLI::App& app, Context& ctx) {
  auto opts = std::make_shared<VerifyOptions>();
  CLI::App* cmd =
      app.add_subcommand("verify", "Check every checksum of a checkpoint and its whole chain");
  cmd->footer(
      "Reads every chunk of the checkpoint (PATH a checkpoint file, or an images directory for "
      "its\n"
      "newest checkpoint) and of every ancestor it depends on, and checks each chunk's checksum\n"
      "and that no ancestor is missing. Prints one line per file and one per problem.\n"
      "Exits 0 only if all is well, 1 if anything is wrong.");
  cmd->add_option("PATH", opts->path, "A checkpoint file or an images directory")->required();
  add_json_flag(*cmd, ctx);
  return {cmd, [opts, &ctx] { return verify(*opts, ctx); }};
}

}  // namespace crest::cli
