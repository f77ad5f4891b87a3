// Output of the crest CLI: the one place errors are reported, human-readable tables and fields,
// JSON documents, and the formatting of sizes, durations, times and stats.
//
// Every verb prints either an aligned report for people or exactly one JSON document on stdout
// (--json), never both. Errors travel up as crest::Error to main, which hands them to
// report_error(): one line "crest: <kind>: <message>" on stderr, or {"error": {...}} on stdout in
// JSON mode, and the exit status scripts rely on.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "core/util/error.h"

namespace CLI {
class App;
}

namespace crest::cli {

// Exit statuses of every verb; documented in `crest --help` and README.md.
enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,  // the image is bad, or the operation failed
  kExitUsage = 2,   // bad arguments
};

// Settings shared by every verb. The verbs bind their --json and -v flags here so that main knows
// the output mode when it reports an error that a verb threw.
struct Context {
  bool json = false;
  bool verbose = false;
  std::string log_level = "warn";
};

// Adds the --json flag every verb offers.
void add_json_flag(CLI::App& verb, Context& ctx);

// ---- errors ----------------------------------------------------------------------------------

// Reports a failure once and returns the exit status for it (kExitUsage for Errc::usage).
int report_error(const Error& error, bool json);
int report_error(std::string_view kind, std::string_view message, bool json);
// A problem found while the verb goes on (e.g. one bad file of several): "crest: <line>" on
// stderr in human mode; in JSON mode the verb puts it into its document instead.
void report_problem(std::string_view line);

// ---- human output ----------------------------------------------------------------------------

// Columns aligned to their widest cell; the last column is not padded.
class TextTable {
 public:
  explicit TextTable(std::vector<std::string> headers);
  void add(std::vector<std::string> row);
  bool empty() const { return rows_.empty(); }
  void print(std::ostream& out, int indent = 2) const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// "key   value" lines with the values aligned.
class FieldList {
 public:
  FieldList& add(std::string key, std::string value);
  void print(std::ostream& out, int indent = 2) const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

void print_heading(std::ostream& out, std::string_view title);
void print_json(std::ostream& out, const nlohmann::json& doc);

// ---- formatting ------------------------------------------------------------------------------

std::string format_bytes(uint64_t bytes);          // "1.50 MiB", "512 B"
std::string format_duration(int64_t ns);           // "12.3 ms", "1.20 s"
std::string format_time(int64_t realtime_ns);      // "2025-11-27 08:31:02 +0000", local time zone
std::string format_time_iso(int64_t realtime_ns);  // "2025-11-27T08:31:02.123Z" for JSON
std::string format_ratio(uint64_t numerator, uint64_t denominator);  // "3.21", "-" if undefined
std::string format_hex(uint64_t value);                              // "0x7f12a000"
// A /stats value with the unit its name implies: *_ns durations, *_bytes/bytes_* sizes,
// *_pages/pages_* page counts; anything else as a plain number.
std::string format_stat(std::string_view name, int64_t value);

// ---- JSON records ----------------------------------------------------------------------------

inline nlohmann::json json_value(const std::vector<uint8_t>& bytes) {
  // Binary blobs (xstate, siginfo, pipe data) as hex: readable and unambiguous in any language.
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    hex.push_back(kDigits[b >> 4]);
    hex.push_back(kDigits[b & 0xf]);
  }
  return hex;
}
template <class V>
nlohmann::json json_value(const V& value) {
  return nlohmann::json(value);
}

// Serializes a schema record from its field list (crest::schema::Table<T>::fields()), so a column
// added to the schema shows up in `--json` output without touching the CLI.
template <class Table, class Record>
nlohmann::json record_to_json(const Record& record) {
  nlohmann::json out = nlohmann::json::object();
  std::apply(
      [&](const auto&... field) { ((out[field.name] = json_value(record.*(field.member))), ...); },
      Table::fields());
  return out;
}

}  // namespace crest::cli
