// crest check [--pid PID]: the kernel features crest relies on, or whether a tree can be
// checkpointed (the same inspection as dump, without saving anything).
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "agent/cli/report.h"
#include "agent/cli/verbs.h"
#include "core/audit.h"
#include "core/checkpoint.h"
#include "core/kernel/fallbacks.h"

namespace crest::cli {
namespace {

struct CheckArgs {
  pid_t pid = 0;
  bool audit = false;
  bool tcp_established = false;
  bool shell_job = false;
  bool ext_unix_sk = false;
};

// Every field the kernel shows of a task, mapping, file and tree, and what crest does with it.
int check_audit(const Context& ctx) {
  const auto& table = audit_table();
  const auto kinds = descriptor_kinds();
  if (ctx.json) {
    nlohmann::json fields = nlohmann::json::array(), kind_list = nlohmann::json::array();
    for (auto& e : table)
      fields.push_back({{"source", e.source}, {"field", e.field},
                        {"handling", handling_name(e.handling)}, {"how", e.how}});
    for (auto& k : kinds)
      kind_list.push_back({{"kind", k.name}, {"restored", k.restored}, {"refused", k.refused}});
    print_json(std::cout, {{"fields", fields}, {"descriptor_kinds", kind_list}});
    return kExitOk;
  }
  TextTable t({"SOURCE", "FIELD", "HANDLING", "HOW / WHY"});
  for (auto& e : table) t.add({e.source, e.field, handling_name(e.handling), e.how});
  t.print(std::cout);
  std::cout << "\ndescriptor kinds (asked in this order):\n";
  for (auto& k : kinds) {
    std::cout << "  " << k.name << "\n";
    for (auto& r : k.restored) std::cout << "    restored: " << r << "\n";
    for (auto& r : k.refused) std::cout << "    refused:  " << r << "\n";
  }
  return kExitOk;
}

int check_features(const Context& ctx) {
  auto features = kernel_features();
  bool all = true;
  for (auto& f : features) all &= f.present;
  auto fallbacks = kernel::fallbacks();
  if (ctx.json) {
    nlohmann::json list = nlohmann::json::array(), fb = nlohmann::json::array();
    for (auto& f : features)
      list.push_back({{"name", f.name}, {"present", f.present}, {"needed_for", f.needed_for},
                      {"detail", f.detail}});
    for (auto& f : fallbacks)
      fb.push_back({{"missing", f.missing}, {"instead", f.instead}, {"cost", f.cost}});
    print_json(std::cout, {{"features", list}, {"all_present", all}, {"fallbacks", fb},
                           {"full_function_from", kernel::full_function_from()}});
    return kExitOk;
  }
  TextTable t({"FEATURE", "PRESENT", "NEEDED FOR", "DETAIL"});
  for (auto& f : features) t.add({f.name, f.present ? "yes" : "NO", f.needed_for, f.detail});
  t.print(std::cout);
  if (!fallbacks.empty()) {
    std::cout << "\nfallbacks in use:\n";
    for (auto& f : fallbacks)
      std::cout << "  " << f.missing << "\n    instead: " << f.instead << "\n    cost:    "
                << f.cost << "\n";
  }
  std::cout << "\nfull function from: " << kernel::full_function_from() << "\n";
  std::cout << "\nSee kernel-patches/README.md for the 2011 patches these interfaces replaced.\n";
  return kExitOk;
}

int check_pid(const CheckArgs& args, const Context& ctx) {
  const pid_t pid = args.pid;
  CheckResult r = check_tree(pid, args.tcp_established, args.shell_job, args.ext_unix_sk);
  bool ok = r.problems.empty();
  if (ctx.json) {
    print_json(std::cout, {{"pid", pid},
                           {"checkpointable", ok},
                           {"processes", r.processes},
                           {"threads", r.threads},
                           {"vmas", r.vmas},
                           {"fds", r.fds},
                           {"pages", r.pages},
                           {"problems", r.problems},
                           {"notes", r.notes}});
    return ok ? kExitOk : kExitFailed;
  }
  std::cout << "tree of pid " << pid << ": " << r.processes << " processes, " << r.threads
            << " threads, " << r.vmas << " mappings, " << r.fds << " fds, " << r.pages
            << " present pages (" << format_bytes(r.pages * 4096) << ")\n";
  for (auto& n : r.notes) std::cout << "note: " << n << "\n";
  if (ok) {
    std::cout << "ok: crest can checkpoint and restore this tree (what it saves of each "
                 "process, mapping and file: crest check --audit)\n";
    return kExitOk;
  }
  std::cout << "NOT checkpointable: " << r.problems.size()
            << (r.problems.size() == 1 ? " problem" : " problems") << " (on stderr)\n";
  for (auto& p : r.problems) report_problem(p);
  std::cout << "(what crest saves and what it refuses, field by field: crest check --audit)\n";
  return kExitFailed;
}

}  // namespace

Verb register_check(CLI::App& app, Context& ctx) {
  auto args = std::make_shared<CheckArgs>();
  CLI::App* cmd = app.add_subcommand(
      "check", "List the kernel features crest uses, or check whether a tree can be checkpointed");
  auto* pid = cmd->add_option("-p,--pid", args->pid,
                               "Inspect the tree of this pid (frozen briefly, then resumed)");
  cmd->add_flag("--audit", args->audit,
                "List every field the kernel shows of a task, mapping, file and tree, and whether "
                "crest restores it, refuses a tree that has it, or leaves it (and why)")
      ->excludes(pid);
  cmd->add_flag("--tcp-established", args->tcp_established,
                "With --pid: accept TCP connections to peers outside the tree, as dump "
                "--tcp-established does")
      ->needs(pid);
  cmd->add_flag("--shell-job", args->shell_job,
                "With --pid: the tree is a shell's job, as crest dump --shell-job takes it")
      ->needs(pid);
  cmd->add_flag("--ext-unix-sk", args->ext_unix_sk,
                "With --pid: accept Unix sockets connected to a named socket outside the tree, as "
                "dump --ext-unix-sk does")
      ->needs(pid);
  add_json_flag(*cmd, ctx);
  return {cmd, [args, &ctx] {
            return args->audit ? check_audit(ctx)
                   : args->pid ? check_pid(*args, ctx)
                               : check_features(ctx);
          }};
}

}  // namespace crest::cli
