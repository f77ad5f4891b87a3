// crest compact DIR: fold an incremental chain into one full checkpoint.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "agent/cli/report.h"
#include "agent/cli/verbs.h"
#include "storage/image_store.h"

namespace crest::cli {
namespace {

struct CompactArgs {
  std::string dir;
  std::string checkpoint = "latest";
};

int run_compact(const CompactArgs& args, const Context& ctx) {
  auto store = storage::ImageStore::open_directory(args.dir);
  if (!ctx.json) std::cerr << "crest: compacting " << args.checkpoint << " in " << args.dir << "\n";
  auto result = store->compact(args.checkpoint);
  if (ctx.json) {
    print_json(std::cout, {{"checkpoint", result.checkpoint},
                           {"files_before", result.files_before},
                           {"removed", result.removed}});
    return kExitOk;
  }
  if (result.files_before == 1) {
    std::cout << result.checkpoint << " is already a full checkpoint; nothing to do\n";
    return kExitOk;
  }
  std::cout << result.checkpoint << ": a chain of " << result.files_before
            << " files is now one full checkpoint";
  if (result.removed.empty()) {
    std::cout << "; every ancestor is still needed by another checkpoint\n";
  } else {
    std::cout << "; removed";
    for (auto& r : result.removed) std::cout << " " << r;
    std::cout << "\n";
  }
  return kExitOk;
}

}  // namespace

Verb register_compact(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<CompactArgs>();
  CLI::App* cmd = app.add_subcommand("compact", "Fold an incremental chain into one full checkpoint");
  cmd->add_option("DIR", args->dir, "Images directory")->required();
  cmd->add_option("--checkpoint", args->checkpoint,
                  "Checkpoint to compact: file name, sequence number, uuid (prefix) or latest")
      ->capture_default_str();
  add_json_flag(*cmd, ctx);
  cmd->footer(
      "The checkpoint is rewritten whole under its own name and uuid (so references and running\n"
      "incremental tracking stay valid); its ancestors are removed afterwards, each only when no\n"
      "other checkpoint depends on it. A crash leaves either the old chain or the new file.");
  return {cmd, [args, &ctx] { return run_compact(*args, ctx); }};
}

}  // namespace crest::cli
