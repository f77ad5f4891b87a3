// The audit: every field the kernel shows of a task, a thread, a mapping, an open file and a
// tree — /proc/PID/status, stat, smaps VmFlags, fdinfo, /proc/locks, other /proc/PID files,
// prctl, arch_prctl and ptrace getters — and what crest does with it: saves and gives it back,
// refuses a tree that has it (naming it), or leaves it because it is not the program's state
// (a statistic, a kernel choice, a value that follows from restored state). `crest check
// --audit` prints it; tests/cli checks that every field this kernel shows is in it, so that a
// new one cannot be lost without anyone deciding.
#pragma once

#include <string>
#include <vector>

namespace crest {

enum class Handling { restored, refused, irrelevant };

struct AuditEntry {
  const char* source;  // "status", "stat", "VmFlags", "fdinfo", "locks", "proc", "prctl", ...
  const char* field;   // as the kernel names it
  Handling handling;
  const char* how;     // restored: how; refused: when and why; irrelevant: why
};

const std::vector<AuditEntry>& audit_table();
const char* handling_name(Handling h);

}  // namespace crest
