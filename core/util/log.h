// One named spdlog logger per module ("core.mem", "storage.h5", "agent.sched"), all writing to
// the same sink (stderr unless the agent sets a file). Lines carry job and pid context where known.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace crest::log {

// The logger for a module; created on first use with the process-wide sink and level.
std::shared_ptr<spdlog::logger> get(const std::string& module);

// Process-wide settings. The CLI calls these once from main before any work starts.
void set_level(spdlog::level::level_enum level);
void set_file(const std::string& path);  // throws crest::Error on failure

}  // namespace crest::log
