// crest: the command-line front end. Parses the command line, runs one verb, and is the one place
// where failures become a message and an exit status (see report.h).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "agent/cli/report.h"
#include "core/kernel/features.h"
#include "agent/cli/verbs.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace {

using crest::cli::kExitUsage;

// Whether --json was asked for, read straight from argv: when parsing itself fails, CLI11 has not
// stored the flag yet, and a script that asked for JSON must still get its error as JSON.
bool json_requested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) return true;
    if (std::strcmp(argv[i], "--") == 0) break;
  }
  return false;
}

std::string verb_names(const std::vector<crest::cli::Verb>& verbs) {
  std::string names;
  for (const auto& verb : verbs) names += (names.empty() ? "" : ", ") + verb.command->get_name();
  return names;
}

int run(int argc, char** argv) {
  crest::cli::Context ctx;
  CLI::App app{"crest: transparent checkpoint/restore of HPC jobs.", "crest"};
  app.set_version_flag("--version", std::string("crest ") + CREST_VERSION,
                       "Print crest's version and exit");
  app.set_help_flag("-h,--help", "Print this help and exit (also after a verb: crest VERB --help)");
  app.get_formatter()->label("SUBCOMMAND", "VERB");
  app.add_option("--log-level", ctx.log_level, "Log diagnostics on stderr from this level up")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  // Global options may also follow the verb (crest show DIR --log-level debug).
  app.fallthrough();
  app.require_subcommand(1);
  app.footer(
      "Exit status: 0 success; 1 the image is bad or the operation failed; 2 usage error.\n"
      "Errors are one line on stderr: crest: <kind>: <message>.\n"
      "Run 'crest VERB --help' for the options of a verb.");

  std::vector<crest::cli::Verb> verbs;
#define CREST_REGISTER_VERB(name) verbs.push_back(crest::cli::register_##name(app, ctx));
  CREST_CLI_VERBS(CREST_REGISTER_VERB)
#undef CREST_REGISTER_VERB
  for (auto& verb : verbs) {
    verb.command->group("Verbs");
    verb.command->set_help_flag("-h,--help", "Print this help and exit");
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version arrive as "errors" with status 0: CLI11 prints them on stdout.
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    std::string message = e.what();
    std::string help = "crest --help";
    if (auto selected = app.get_subcommands(); !selected.empty()) {
      help = "crest " + selected.front()->get_name() + " --help";
    } else if (dynamic_cast<const CLI::RequiredError*>(&e) != nullptr) {
      auto rest = app.remaining();
      auto word = std::find_if(rest.begin(), rest.end(),
                               [](const std::string& arg) { return !arg.starts_with("-"); });
      message = word == rest.end()
                    ? "a verb is required (" + verb_names(verbs) + ")"
                    : "unknown verb '" + *word + "' (the verbs are " + verb_names(verbs) + ")";
    }
    return crest::cli::report_error(crest::kind_name(crest::Errc::usage), message + "; see " + help,
                                    json_requested(argc, argv));
  }

  crest::log::set_level(spdlog::level::from_str(ctx.log_level));
  for (auto& verb : verbs) {
    if (verb.command->parsed()) return verb.run();
  }
  return kExitUsage;  // unreachable: require_subcommand(1)
}

}  // namespace

int main(int argc, char** argv) {
  // Whatever goes wrong is reported here, once, as one line: never a trace or an abort.
  bool json = json_requested(argc, argv);
  try {
    crest::kernel::check_disable_list();
    return run(argc, argv);
  } catch (const crest::Error& e) {
    return crest::cli::report_error(e, json);
  } catch (const std::exception& e) {
    return crest::cli::report_error(crest::kind_name(crest::Errc::internal), e.what(), json);
  } catch (...) {
    return crest::cli::report_error(crest::kind_name(crest::Errc::internal), "unknown exception",
                                    json);
  }
}
