// The README's opening commands are what CI runs: both markers must exist, each with exactly one
// command line, and .ci/run must find the test command (without running it).
#include <gtest/gtest.h>

#include "tests/cli/harness.h"

namespace crest::test {
namespace {

const std::string kSource = CREST_SOURCE_DIR;

std::string readme_command(const std::string& marker) {
  Outcome r =
      run_program({"/bin/bash", kSource + "/.ci/readme-command", marker, kSource + "/README.md"});
  EXPECT_TRUE(exited_with(r, 0)) << marker;
  return r.out;
}

TEST(Readme, MarksTheTestCommand) {
  std::string cmd = readme_command("test-command");
  ASSERT_FALSE(cmd.empty());
  EXPECT_EQ(cmd.find('\n'), cmd.size() - 1) << "one line: " << cmd;
  EXPECT_NE(cmd.find(".ci/setup"), std::string::npos) << "sets everything up first: " << cmd;
  EXPECT_NE(cmd.find("ctest"), std::string::npos) << "runs the test suite: " << cmd;
}

TEST(Readme, MarksTheMainCommand) {
  std::string cmd = readme_command("main-command");
  ASSERT_FALSE(cmd.empty());
  EXPECT_EQ(cmd.find('\n'), cmd.size() - 1) << "one line: " << cmd;
  EXPECT_NE(cmd.find(".ci/setup"), std::string::npos) << "sets everything up first: " << cmd;
}

TEST(Readme, CiRunRunsExactlyTheReadmeTestCommand) {
  Outcome r = run_program({"/bin/bash", kSource + "/.ci/run", "--print"});
  EXPECT_TRUE(exited_with(r, 0));
  EXPECT_EQ(r.out, readme_command("test-command"));
}

TEST(Readme, MissingMarkerIsALoudFailure) {
  TempDir dir;
  write_text(dir / "README.md", "# no markers here\n");
  Outcome r = run_program(
      {"/bin/bash", kSource + "/.ci/readme-command", "test-command", dir / "README.md"});
  EXPECT_TRUE(exited_with(r, 1));
  EXPECT_TRUE(r.out.empty());
  EXPECT_NE(r.err.find("test-command"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace crest::test
