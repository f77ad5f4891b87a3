// The verbs of the crest CLI.
//
// Adding a verb: write agent/cli/cmd_<verb>.cpp defining register_<verb>() (it adds a CLI11
// subcommand with its options and returns what to run once the command line is parsed), and add
// one X(<verb>) line below. CMake picks up every cmd_*.cpp by itself. The order here is the order
// of `crest --help`.
#pragma once

#include <functional>

#include "agent/cli/report.h"

#define CREST_CLI_VERBS(X) \
  X(dump)                  \
  X(restore)               \
  X(check)                 \
  X(show)                  \
  X(verify)                \
  X(compact)               \
  X(unlock)                \
  X(run)                   \
  X(jobs)                  \
  X(register)              \
  X(checkpoint)            \
  X(snapshot)              \
  X(pause)                 \
  X(resume)                \
  X(forget)

namespace CLI {
class App;
}

namespace crest::cli {

struct Verb {
  CLI::App* command = nullptr;  // the subcommand; main runs `run` when it was given
  std::function<int()> run;     // returns the exit status; errors are thrown as crest::Error
};

#define CREST_DECLARE_VERB(name) Verb register_##name(CLI::App& app, Context& ctx);
CREST_CLI_VERBS(CREST_DECLARE_VERB)
#undef CREST_DECLARE_VERB

}  // namespace crest::cli
