#include "agent/crestd/duration.h"

#include <cctype>
#include <cmath>
#include <cstdio>

#include "core/util/error.h"

namespace crest::agent {

Millis parse_duration(const std::string& text, const std::string& what) {
  auto bad = [&](const std::string& why) -> Millis {
    fail(Errc::usage, "bad " + what + " '" + text + "': " + why +
                          " (write e.g. 30s, 10m, 2h, 1h30m or 500ms)");
  };
  if (text.empty()) return bad("empty");
  double total_ms = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t start = i;
    while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
      ++i;
    if (i == start) return bad("expected a number at '" + text.substr(start) + "'");
    double value = 0;
    try {
      size_t used = 0;
      value = std::stod(text.substr(start, i - start), &used);
      if (used != i - start) return bad("malformed number");
    } catch (const std::exception&) {
      return bad("malformed number");
    }
    size_t unit_start = i;
    while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i]))) ++i;
    std::string unit = text.substr(unit_start, i - unit_start);
    double scale = 0;
    if (unit.empty()) {
      if (start != 0 || i != text.size()) return bad("every number needs a unit");
      scale = 1000;  // a bare number: seconds
    } else if (unit == "ms") {
      scale = 1;
    } else if (unit == "s") {
      scale = 1000;
    } else if (unit == "m" || unit == "min") {
      scale = 60e3;
    } else if (unit == "h") {
      scale = 3600e3;
    } else if (unit == "d") {
      scale = 86400e3;
    } else {
      return bad("unknown unit '" + unit + "'");
    }
    total_ms += value * scale;
  }
  if (!std::isfinite(total_ms) || total_ms > 1e15) return bad("too large");
  return Millis(static_cast<int64_t>(std::llround(total_ms)));
}

std::string format_duration(Millis d) {
  int64_t ms = d.count();
  if (ms == 0) return "0s";
  std::string out;
  if (ms < 0) {
    out = "-";
    ms = -ms;
  }
  if (ms < 1000) return out + std::to_string(ms) + "ms";
  int64_t h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, rest = ms % 1000;
  if (h) out += std::to_string(h) + "h";
  if (m) out += std::to_string(m) + "m";
  if (s || rest) {
    out += std::to_string(s);
    if (rest) {
      char buf[8];
      std::snprintf(buf, sizeof buf, ".%03lld", static_cast<long long>(rest));
      std::string frac = buf;
      while (frac.back() == '0') frac.pop_back();
      out += frac;
    }
    out += "s";
  }
  return out;
}

}  // namespace crest::agent
