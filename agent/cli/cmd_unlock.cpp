// crest unlock -D DIR | --all | --stale: removes network locks left behind. A dump with
// --tcp-established that kills its tree leaves an nftables table of the checkpoint's own
// (`crest_` and its uuid) dropping the packets of the tree's connections to the outside until
// `crest restore` brings them back and removes it. When no restore is to come, this drops it:
// the peers then see their connections reset by the kernel, as for any process that died.
// --stale drops only the locks whose tree still runs (a dump that died before its kill).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>
#include <memory>

#include "agent/cli/report.h"
#include "agent/cli/verbs.h"
#include "core/netlock.h"
#include "core/util/error.h"
#include "storage/image_store.h"

namespace crest::cli {
namespace {

struct UnlockArgs {
  std::string dir;
  bool all = false;
  bool stale = false;
};

int run_unlock(const UnlockArgs& args, const Context& ctx) {
  std::vector<std::string> present, wanted, removed;
  for (auto& k : netlock::kept()) present.push_back(k.table);
  if (args.stale) {
    removed = netlock::remove_stale();
  } else if (args.all) {
    wanted = present;
  } else {
    auto store = storage::ImageStore::open_directory(args.dir, /*create=*/false);
    for (auto& e : store->list()) {
      if (e.uuid.empty()) continue;
      const std::string t = netlock::table_for(e.uuid);
      if (std::find(present.begin(), present.end(), t) != present.end()) wanted.push_back(t);
    }
  }
  for (auto& t : wanted)
    if (netlock::unlock(t)) removed.push_back(t);
  if (ctx.json) {
    print_json(std::cout, {{"removed", removed}});
  } else if (removed.empty()) {
    std::cerr << "crest: no network lock to remove\n";
  } else {
    for (auto& t : removed) std::cerr << "crest: removed the network lock inet " << t << "\n";
  }
  return kExitOk;
}

}  // namespace

Verb register_unlock(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<UnlockArgs>();
  CLI::App* cmd = app.add_subcommand("unlock", "Remove the network lock a dump left for its restore");
  auto* dir = cmd->add_option("-D,--images-dir", args->dir,
                              "Images directory: the locks of its checkpoints");
  auto* all = cmd->add_flag("--all", args->all, "Every network lock of crest on this node");
  auto* stale = cmd->add_flag("--stale", args->stale,
                              "The locks whose tree still runs: its dump died before the kill "
                              "(crestd removes these when it starts)");
  dir->excludes(all)->excludes(stale);
  all->excludes(stale);
  cmd->require_option(1);
  add_json_flag(*cmd, ctx);
  cmd->footer(
      "`crest dump --tcp-established` without -R keeps the packets of the tree's connections to\n"
      "the outside dropped (nftables table inet crest_<uuid>) from the kill until `crest restore`\n"
      "has them back, so that their peers see no reset and lose no byte. When the restore will\n"
      "not come, `crest unlock` removes the lock; the peers' next packets are then answered by a\n"
      "reset. `nft list tables` shows the locks. While a dump runs, its lock belongs to it\n"
      "(table inet crestheld_…) and goes if crest dies.");
  return {cmd, [args, &ctx] { return run_unlock(*args, ctx); }};
}

}  // namespace crest::cli
