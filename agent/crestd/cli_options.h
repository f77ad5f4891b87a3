// Options the job verbs of the crest CLI share (crest run, crest register): the policy flags
// and --socket, turned into the fields of a crestd request.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "core/util/error.h"

namespace crest::agent {

struct JobFlags {
  std::string every;        // "" : the agent's default
  std::string dir;
  std::string name;
  unsigned keep = 0;        // 0: default
  std::string auto_restore;  // used only when --auto-restore was given (alone: 3)
  CLI::Option* auto_restore_opt = nullptr;
  std::string socket;
  std::string snapshot;     // "" : default
  bool tcp_established = false;
  bool ext_unix_sk = false;

  void add(CLI::App& cmd, bool with_dir_help_embedded) {
    cmd.add_option("--every", every,
                   "Checkpoint interval (30s, 10m, 2h) or auto (Daly's formula from the measured "
                   "checkpoint cost and the agent's MTBF)");
    cmd.add_option("-D,--images-dir", dir,
                   with_dir_help_embedded
                       ? "Images directory (default: crestd's storage root; without crestd "
                         "./crest-images/<command>-<time>)"
                       : "Images directory (default: under crestd's storage root)");
    cmd.add_option("--name", name, "A name for the job (crest jobs, crest checkpoint NAME)");
    cmd.add_option("--keep", keep, "Checkpoints to keep (with what they depend on)");
    // A flag whose value, if any, is attached with '=' (as getopt's optional arguments): an
    // option with an optional separate value would take the next word, and CLI11 drops a '--'
    // that follows it, so the job's own options after '--' would be parsed as ours.
    auto_restore_opt = cmd.add_flag("--auto-restore", auto_restore,
                                    "Restore the job automatically when it dies abnormally, at "
                                    "most N times (--auto-restore[=N]; alone: 3; 0: never)");
    cmd.add_option("--snapshot", snapshot,
                   "How memory is snapshotted: auto (copy-on-write for large jobs), stop-copy or cow")
        ->check(CLI::IsMember({"auto", "stop-copy", "cow"}));
    cmd.add_flag("--tcp-established", tcp_established,
                 "Checkpoints save TCP connections to peers outside the job (as crest dump "
                 "--tcp-established) instead of failing on them");
    cmd.add_flag("--ext-unix-sk", ext_unix_sk,
                 "Checkpoints save Unix sockets connected to a named socket outside the job (as "
                 "crest dump --ext-unix-sk) instead of failing on them");
    add_socket(cmd, socket);
  }

  // The N of --auto-restore[=N]: digits only; the flag alone (CLI11 gives it "true") is 3.
  unsigned auto_restore_count() const {
    if (auto_restore == "true") return 3;
    bool digits = !auto_restore.empty() && auto_restore.size() <= 6 &&
                  auto_restore.find_first_not_of("0123456789") == std::string::npos;
    if (!digits)
      fail(Errc::usage, "--auto-restore=N takes a count of 0 or more (up to 100000), not '" +
                            auto_restore + "'");
    unsigned n = static_cast<unsigned>(std::stoul(auto_restore));
    if (n > 100000) fail(Errc::usage, "--auto-restore=N is at most 100000");
    return n;
  }

  static void add_socket(CLI::App& cmd, std::string& socket) {
    cmd.add_option("--socket", socket,
                   "crestd's socket (default $CREST_SOCKET, else /run/crest/crestd.sock)");
  }

  // The request fields for what was given.
  void fill(nlohmann::json& req) const {
    if (!every.empty()) req["every"] = every;
    if (keep > 0) req["keep"] = keep;
    if (auto_restore_opt != nullptr && auto_restore_opt->count() > 0) {
      req["auto_restore"] = auto_restore_count();
    }
    if (!name.empty()) req["name"] = name;
    if (!snapshot.empty()) req["snapshot"] = snapshot;
    if (tcp_established) req["tcp_established"] = true;
    if (ext_unix_sk) req["ext_unix_sk"] = true;
  }
};

}  // namespace crest::agent
