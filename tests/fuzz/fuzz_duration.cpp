// The duration parser (crestd's config, its requests, crest run's flags): any text either parses
// or is refused with Errc::usage, and what parses prints back to the same duration.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "agent/crestd/duration.h"
#include "core/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  crest::agent::Millis d;
  try {
    d = crest::agent::parse_duration(text, "fuzz");
  } catch (const crest::Error& e) {
    if (e.kind() != crest::Errc::usage) std::abort();
    return 0;
  }
  if (d.count() < 0) std::abort();  // no spelling of a negative duration exists
  // format_duration's output is a duration again, and the same one.
  std::string back = crest::agent::format_duration(d);
  if (crest::agent::parse_duration(back, "fuzz") != d) std::abort();
  return 0;
}
