// For each interface of core/kernel/features.h that is missing here or switched off by
// CREST_DISABLE: what crest does instead and what that costs. `crest check` prints them.
#pragma once

#include <string>
#include <vector>

namespace crest::kernel {

struct Fallback {
  std::string missing;  // the interface, and why ("not in this kernel" or "switched off")
  std::string instead;  // the fallback in use, or the refusal
  std::string cost;     // what it costs compared with the interface
};
std::vector<Fallback> fallbacks();
// The oldest upstream kernel on which no fallback is needed, and what older ones still run.
std::string full_function_from();

}  // namespace crest::kernel
