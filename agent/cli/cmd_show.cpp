// crest show PATH: what a checkpoint holds, or what an images directory holds and its newest
// checkpoint in detail.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "agent/cli/describe.h"
#include "agent/cli/image_target.h"
#include "agent/cli/report.h"
#include "agent/cli/verbs.h"

namespace crest::cli {
namespace {

using nlohmann::json;

struct ShowOptions {
  std::string path;
  bool no_verify = false;
};

// Checks the described checkpoint's chunks and chain, adds the result to its document and the
// problems to `problems`. A checkpoint whose data is damaged is not one to show as healthy.
void add_integrity(json& doc, const ImageTarget& target, const std::string& name, bool skip,
                   std::vector<std::string>& problems) {
  if (skip) {
    doc["integrity"] = nullptr;
    return;
  }
  ChainCheck check = check_chain(target, name);
  problems.insert(problems.end(), check.problems.begin(), check.problems.end());
  doc["integrity"] = check.to_json();
}

void print_integrity(const json& doc) {
  const json& integrity = doc["integrity"];
  print_heading(std::cout, "integrity");
  if (integrity.is_null()) {
    std::cout << "  not checked (--no-verify)\n";
    return;
  }
  uint64_t chunks = integrity["chunks"], bad = integrity["chunks_bad"];
  size_t files = integrity["files"].size();
  if (integrity["ok"].get<bool>()) {
    std::cout << "  ok: " << chunks << " chunks in " << files << (files == 1 ? " file" : " files")
              << " of the chain, every checksum matches\n";
  } else {
    std::cout << "  BAD: " << bad << " of " << chunks << " chunks fail their checksum; "
              << integrity["problems"].size() << " problems (on stderr)\n";
  }
}

int show_file(ImageTarget& target, const ShowOptions& opts, const Context& ctx) {
  std::unique_ptr<storage::CheckpointReader> reader;
  try {
    reader = target.store->open(target.ref);
  } catch (Error& e) {
    // The file exists (open_target checked): if the store does not know it as a checkpoint, it is
    // an HDF5 file that is not one of ours, not a missing one.
    if (e.kind() == Errc::not_found && e.message().find(target.ref) != std::string::npos)
      throw Error(Errc::not_image, target.path + ": not a checkpoint of this images directory (" +
                                       e.message() + ")");
    throw name_file(e, target.path);
  }
  json doc = describe_checkpoint(*reader, target.path);
  std::vector<std::string> problems;
  add_integrity(doc, target, target.ref, opts.no_verify, problems);
  if (ctx.json) {
    doc["problems"] = problems;
    print_json(std::cout, doc);
  } else {
    print_checkpoint(std::cout, doc, ctx.verbose);
    print_integrity(doc);
    for (const auto& line : problems) report_problem(line);
  }
  return problems.empty() ? kExitOk : kExitFailed;
}

int show_directory(ImageTarget& target, const ShowOptions& opts, const Context& ctx) {
  json doc;
  doc["directory"] = target.path;
  std::string latest = latest_link(target.directory);
  doc["latest"] = latest.empty() ? json(nullptr) : json(latest);

  std::vector<std::string> problems;
  json list = json::array();
  for (const auto& e : target.store->list()) {
    std::string file = target.file_path(e.name);
    bool incremental = !e.parent_uuid.empty() || !e.parent_file.empty();
    list.push_back({{"name", e.name},
                    {"file", file},
                    {"sequence", e.sequence},
                    {"uuid", e.uuid},
                    {"parent_uuid", e.parent_uuid},
                    {"parent_file", e.parent_file},
                    {"incremental", e.readable ? json(incremental) : json(nullptr)},
                    {"created_ns", e.created_ns},
                    {"created", format_time_iso(e.created_ns)},
                    {"size_bytes", file_size(file)},
                    {"readable", e.readable},
                    {"error", e.readable ? json(nullptr) : json(e.error)}});
    if (!e.readable) problems.push_back(problem_line(file, e.error));
  }
  doc["checkpoints"] = list;

  // The newest readable checkpoint is the one a restore would start from (ImageStore::newest(),
  // taken from the listing above rather than listing, and so opening, every file again).
  doc["newest"] = nullptr;
  for (auto it = list.rbegin(); it != list.rend(); ++it) {
    if (!(*it)["readable"].get<bool>()) continue;
    std::string name = (*it)["name"], file = (*it)["file"];
    try {
      auto reader = target.store->open(name);
      doc["newest"] = describe_checkpoint(*reader, file);
      add_integrity(doc["newest"], target, name, opts.no_verify, problems);
    } catch (Error& e) {
      problems.push_back(std::string(kind_name(e.kind())) + ": " + name_file(e, file).what());
    }
    break;
  }
  doc["problems"] = problems;

  if (ctx.json) {
    print_json(std::cout, doc);
    return problems.empty() ? kExitOk : kExitFailed;
  }

  std::cout << "images directory  " << target.path << "  (" << list.size()
            << (list.size() == 1 ? " checkpoint" : " checkpoints")
            << (latest.empty() ? "" : ", latest -> " + latest) << ")\n";
  if (!list.empty()) {
    std::cout << '\n';
    TextTable t({"NAME", "SEQ", "CREATED", "TYPE", "SIZE", "STATUS"});
    for (const auto& e : list) {
      std::string type = e["incremental"].is_null() ? "?"
                         : e["incremental"].get<bool>()
                             ? "incremental of " + e["parent_file"].get<std::string>()
                             : "full";
      std::string status = e["readable"].get<bool>() ? "ok" : e["error"].get<std::string>();
      t.add({e["name"], std::to_string(e["sequence"].get<uint64_t>()),
             format_time(e["created_ns"].get<int64_t>()), type,
             format_bytes(e["size_bytes"].get<uint64_t>()), status});
    }
    t.print(std::cout);
  }
  if (!doc["newest"].is_null()) {
    std::cout << "\nnewest readable checkpoint: " << doc["newest"]["name"].get<std::string>()
              << "\n\n";
    print_checkpoint(std::cout, doc["newest"], ctx.verbose);
    print_integrity(doc["newest"]);
  } else if (!list.empty()) {
    std::cout << "\nno readable checkpoint\n";
  }
  for (const auto& line : problems) report_problem(line);
  return problems.empty() ? kExitOk : kExitFailed;
}

}  // namespace

Verb register_show(CLI::App& app, Context& ctx) {
  auto opts = std::make_shared<ShowOptions>();
  CLI::App* cmd = app.add_subcommand(
      "show", "Describe a checkpoint file, or an images directory and its newest checkpoint");
  cmd->footer(
      "Describes a checkpoint: its chain, identity, processes, memory maps, open files, page and\n"
      "byte counts, compression and timings. PATH is a checkpoint file (ckpt-NNNNNN.h5) or an\n"
      "images directory, for which every checkpoint is listed and the newest readable one is\n"
      "described. The described checkpoint's chunks and chain are verified as `crest verify`\n"
      "does (skip with --no-verify). Exits 1 if a checkpoint cannot be read or is damaged.");
  cmd->add_option("PATH", opts->path, "A checkpoint file or an images directory")->required();
  cmd->add_flag("-v,--verbose", ctx.verbose, "Also list every memory map (VMA) of every process");
  cmd->add_flag("--no-verify", opts->no_verify,
                "Skip reading the chunks to check their checksums (faster on large images)");
  add_json_flag(*cmd, ctx);
  return {cmd, [opts, &ctx] {
            ImageTarget target = open_target(opts->path);
            return target.is_directory() ? show_directory(target, *opts, ctx)
                                         : show_file(target, *opts, ctx);
          }};
}

}  // namespace crest::cli
