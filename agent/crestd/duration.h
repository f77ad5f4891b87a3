// Durations as people write them in configs and on the command line: "30s", "10m", "2h",
// "1h30m", "500ms", "1.5s"; a bare number is seconds.
#pragma once

#include <chrono>
#include <string>

namespace crest::agent {

using Millis = std::chrono::milliseconds;

// Throws crest::Error(Errc::usage) naming `what` when text is not a duration.
Millis parse_duration(const std::string& text, const std::string& what = "duration");
// The shortest exact spelling: 90000 ms -> "1m30s", 1500 ms -> "1.5s", 0 -> "0s".
std::string format_duration(Millis d);

}  // namespace crest::agent
