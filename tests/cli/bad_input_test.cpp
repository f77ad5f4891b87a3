// Bad input must give a one-line error naming the file and the problem, a non-zero exit, and never
// a crash: truncated files, a flipped byte in a chunk, a missing ancestor, a newer format version,
// files that are not crest images, paths that do not exist.
#include <gtest/gtest.h>

#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>

#include "tests/cli/harness.h"

namespace crest::test {
namespace {

using nlohmann::json;

struct BadCase {
  std::string name;
  // Damages the chain in `dir` (names oldest first) and returns the PATH to give the CLI.
  std::function<std::string(const TempDir& dir, const std::vector<std::string>& names)> damage;
  std::string kind;                 // the error kind name expected in the line
  std::vector<std::string> naming;  // what else the line must say (the file, the chunk)
};

std::ostream& operator<<(std::ostream& out, const BadCase& c) { return out << c.name; }

class BadInput : public ::testing::TestWithParam<BadCase> {
 protected:
  void SetUp() override {
    names_ = write_chain(dir_.path());
    path_ = GetParam().damage(dir_, names_);
  }

  // One line on stderr, "crest: <kind>: ..." naming the file (and the chunk).
  void expect_one_line(const Outcome& r) {
    const BadCase& c = GetParam();
    EXPECT_TRUE(exited_with(r, 1));
    auto lines = r.err_lines();
    ASSERT_EQ(lines.size(), 1u) << r.describe();
    const std::string& line = lines[0];
    EXPECT_TRUE(line.starts_with("crest: " + c.kind + ": ")) << line;
    for (const auto& part : c.naming)
      EXPECT_NE(line.find(part), std::string::npos) << part << " not in: " << line;
  }

  // The JSON document reports the same kind, as an error or among its problems.
  void expect_json_kind(const Outcome& r) {
    const BadCase& c = GetParam();
    EXPECT_TRUE(exited_with(r, 1));
    json doc = json::parse(r.out, nullptr, false);
    ASSERT_FALSE(doc.is_discarded()) << r.describe();
    if (doc.contains("error")) {
      EXPECT_EQ(doc["error"]["kind"], c.kind) << r.out;
      return;
    }
    ASSERT_TRUE(doc.contains("problems")) << r.out;
    bool found = false;
    for (const auto& line : doc["problems"])
      found |= line.get<std::string>().starts_with(c.kind + ": ");
    EXPECT_TRUE(found) << r.out;
  }

  TempDir dir_;
  std::vector<std::string> names_;
  std::string path_;
};

TEST_P(BadInput, ShowFailsWithOneLine) { expect_one_line(run_crest({"show", path_})); }
TEST_P(BadInput, VerifyFailsWithOneLine) { expect_one_line(run_crest({"verify", path_})); }
TEST_P(BadInput, ShowJsonNamesTheKind) { expect_json_kind(run_crest({"show", "--json", path_})); }
TEST_P(BadInput, VerifyJsonNamesTheKind) {
  expect_json_kind(run_crest({"verify", "--json", path_}));
}

std::vector<BadCase> bad_cases() {
  return {
      {"truncated_file",
       [](const TempDir& d, const std::vector<std::string>& n) {
         std::string f = d / n[1];
         truncate_file(f, file_size(f) / 2);
         return f;
       },
       "truncated",
       {"ckpt-000002.h5"}},
      {"flipped_byte_in_chunk",
       [](const TempDir& d, const std::vector<std::string>& n) {
         flip_byte_in_chunk(d / n[0], 1);
         return d / n[0];
       },
       "corrupt",
       {"ckpt-000001.h5", "chunk 1"}},
      {"flipped_byte_in_an_ancestor_of_the_newest",
       [](const TempDir& d, const std::vector<std::string>& n) {
         flip_byte_in_chunk(d / n[0], 2);
         return d.path();
       },
       "corrupt",
       {"ckpt-000001.h5", "chunk 2"}},
      {"missing_ancestor",
       [](const TempDir& d, const std::vector<std::string>& n) {
         std::remove((d / n[0]).c_str());
         return d / n[2];
       },
       "missing-ancestor",
       {"ckpt-000001.h5"}},
      {"newer_format_version",
       [](const TempDir& d, const std::vector<std::string>& n) {
         set_format_version(d / n[2], 99);
         return d / n[2];
       },
       "version",
       {"ckpt-000003.h5", "99"}},
      {"plain_text_file",
       [](const TempDir& d, const std::vector<std::string>&) {
         write_text(d / "notes.txt", "not a checkpoint\n");
         return d / "notes.txt";
       },
       "not-an-image",
       {"notes.txt"}},
      {"hdf5_file_without_crest_attributes",
       [](const TempDir& d, const std::vector<std::string>&) {
         write_foreign_hdf5(d / "simulation.h5");
         return d / "simulation.h5";
       },
       "not-an-image",
       {"simulation.h5"}},
      {"newest_of_a_directory_truncated",
       [](const TempDir& d, const std::vector<std::string>& n) {
         truncate_file(d / n[2], 1000);
         return d.path();
       },
       "truncated",
       {"ckpt-000003.h5"}},
      {"no_such_file",
       [](const TempDir& d, const std::vector<std::string>&) { return d / "ckpt-000099.h5"; },
       "not-found",
       {"ckpt-000099.h5"}},
  };
}

INSTANTIATE_TEST_SUITE_P(Cli, BadInput, ::testing::ValuesIn(bad_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace crest::test
