#include "agent/cli/report.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <vector>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <iostream>

namespace crest::cli {

void add_json_flag(CLI::App& verb, Context& ctx) {
  verb.add_flag("--json", ctx.json,
                "Print one JSON document on stdout instead of the report (errors too, as "
                "{\"error\": {\"kind\", \"message\"}})");
}

// ---- errors ----------------------------------------------------------------------------------

int report_error(std::string_view kind, std::string_view message, bool json) {
  if (json) {
    nlohmann::json doc = {{"error", {{"kind", kind}, {"message", message}}}};
    print_json(std::cout, doc);
  } else {
    // Flush what the verb printed so far first, so the error line comes after it on a terminal.
    std::cout.flush();
    // One error line, whatever the message quotes (file content, HDF5 text); crest's own lists
    // of problems ("\n  " before each item: refusals, differences) follow it, one indented
    // item per line.
    std::string text(message);
    std::vector<std::string> parts;
    for (size_t at = 0;;) {
      size_t next = text.find("\n  ", at);
      parts.push_back(text.substr(at, next == std::string::npos ? std::string::npos : next - at));
      if (next == std::string::npos) break;
      at = next + 3;
    }
    for (auto& p : parts) std::replace(p.begin(), p.end(), '\n', ' ');
    std::cerr << "crest: " << kind << ": " << parts[0] << '\n';
    for (size_t i = 1; i < parts.size(); ++i) std::cerr << "  " << parts[i] << '\n';
  }
  return kind == kind_name(Errc::usage) ? kExitUsage : kExitFailed;
}

int report_error(const Error& error, bool json) {
  return report_error(kind_name(error.kind()), error.what(), json);
}

void report_problem(std::string_view line) {
  std::cout.flush();
  std::cerr << "crest: " << line << '\n';
}

// ---- human output ----------------------------------------------------------------------------

TextTable::TextTable(std::vector<std::string> headers) : headers_(std::move(headers)) {}

void TextTable::add(std::vector<std::string> row) {
  row.resize(headers_.size());
  rows_.push_back(std::move(row));
}

void TextTable::print(std::ostream& out, int indent) const {
  std::vector<size_t> width(headers_.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  };
  measure(headers_);
  for (const auto& row : rows_) measure(row);

  auto emit = [&](const std::vector<std::string>& row) {
    std::string line(static_cast<size_t>(indent), ' ');
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << '\n';
  };
  emit(headers_);
  for (const auto& row : rows_) emit(row);
}

FieldList& FieldList::add(std::string key, std::string value) {
  fields_.emplace_back(std::move(key), std::move(value));
  return *this;
}

void FieldList::print(std::ostream& out, int indent) const {
  size_t width = 0;
  for (const auto& [key, value] : fields_) width = std::max(width, key.size());
  for (const auto& [key, value] : fields_) {
    out << std::string(static_cast<size_t>(indent), ' ') << key
        << std::string(width - key.size() + 2, ' ') << value << '\n';
  }
}

void print_heading(std::ostream& out, std::string_view title) { out << '\n' << title << '\n'; }

void print_json(std::ostream& out, const nlohmann::json& doc) {
  // Invalid UTF-8 (a comm or path is whatever bytes the process had) must not make dump() throw.
  out << doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
}

// ---- formatting ------------------------------------------------------------------------------

std::string format_bytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf,
                value < 10    ? "%.2f %s"
                : value < 100 ? "%.1f %s"
                              : "%.0f %s",
                value, kUnits[unit]);
  return buf;
}

std::string format_duration(int64_t ns) {
  char buf[32];
  double v = static_cast<double>(ns);
  double a = std::fabs(v);
  if (a < 1e3) {
    std::snprintf(buf, sizeof buf, "%" PRId64 " ns", ns);
  } else if (a < 1e6) {
    std::snprintf(buf, sizeof buf, "%.1f us", v / 1e3);
  } else if (a < 1e9) {
    std::snprintf(buf, sizeof buf, "%.1f ms", v / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f s", v / 1e9);
  }
  return buf;
}

std::string format_time(int64_t realtime_ns) {
  if (realtime_ns <= 0) return "-";
  time_t secs = static_cast<time_t>(realtime_ns / 1000000000);
  struct tm tm {};
  if (localtime_r(&secs, &tm) == nullptr) return std::to_string(realtime_ns) + " ns";
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %z", &tm);
  return buf;
}

std::string format_time_iso(int64_t realtime_ns) {
  if (realtime_ns <= 0) return "";
  time_t secs = static_cast<time_t>(realtime_ns / 1000000000);
  struct tm tm {};
  if (gmtime_r(&secs, &tm) == nullptr) return "";
  char buf[64];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ",
                static_cast<int>((realtime_ns / 1000000) % 1000));
  return buf;
}

std::string format_ratio(uint64_t numerator, uint64_t denominator) {
  if (denominator == 0 || numerator == 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f",
                static_cast<double>(numerator) / static_cast<double>(denominator));
  return buf;
}

std::string format_hex(uint64_t value) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, value);
  return buf;
}

std::string format_stat(std::string_view name, int64_t value) {
  auto ends_with = [&](std::string_view s) { return name.ends_with(s); };
  auto starts_with = [&](std::string_view s) { return name.starts_with(s); };
  if (ends_with("_ns")) return format_duration(value);
  if (value >= 0 && (ends_with("_bytes") || starts_with("bytes_"))) {
    return format_bytes(static_cast<uint64_t>(value)) + " (" + std::to_string(value) + ")";
  }
  if (ends_with("_pages") || starts_with("pages_")) {
    return std::to_string(value) + (value == 1 ? " page" : " pages");
  }
  return std::to_string(value);
}

}  // namespace crest::cli
