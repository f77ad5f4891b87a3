// End-to-end tests of the crest binary: show and verify on good images, help, usage errors.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <cstring>

#include <fstream>
#include <set>
#include <sstream>

#include "storage/schema.h"

#include "tests/cli/harness.h"

namespace crest::test {
namespace {

using nlohmann::json;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override { names_ = write_chain(dir_.path()); }

  std::string file(int i) const { return dir_ / names_.at(static_cast<size_t>(i)); }

  TempDir dir_;
  std::vector<std::string> names_;
};

TEST(CliHelp, TopLevelHelpListsVerbsAndGlobalOptions) {
  Outcome r = run_crest({"--help"});
  EXPECT_TRUE(exited_with(r, 0));
  for (const char* part : {"show", "verify", "--log-level", "--version", "Exit status"}) {
    EXPECT_TRUE(contains(r.out, part)) << part << "\n" << r.out;
  }
}

TEST(CliHelp, EachVerbHelpMentionsItsOptions) {
  Outcome show = run_crest({"show", "--help"});
  EXPECT_TRUE(exited_with(show, 0));
  for (const char* part : {"PATH", "--json", "--verbose", "--no-verify"}) {
    EXPECT_TRUE(contains(show.out, part)) << part << "\n" << show.out;
  }
  Outcome verify = run_crest({"verify", "--help"});
  EXPECT_TRUE(exited_with(verify, 0));
  for (const char* part : {"PATH", "--json", "checksum"}) {
    EXPECT_TRUE(contains(verify.out, part)) << part << "\n" << verify.out;
  }
}

TEST(CliHelp, DumpHelpNamesTcpEstablishedAndUnlock) {
  Outcome dump = run_crest({"dump", "--help"});
  EXPECT_TRUE(exited_with(dump, 0));
  for (const char* part : {"--tcp-established", "nftables", "crest unlock"})
    EXPECT_TRUE(contains(dump.out, part)) << part << "\n" << dump.out;
  Outcome unlock = run_crest({"unlock", "--help"});
  EXPECT_TRUE(exited_with(unlock, 0));
  for (const char* part : {"--images-dir", "--all", "crest_<uuid>"})
    EXPECT_TRUE(contains(unlock.out, part)) << part << "\n" << unlock.out;
  // One of -D and --all, not both, not neither.
  EXPECT_TRUE(exited_with(run_crest({"unlock"}), 2));
  EXPECT_TRUE(exited_with(run_crest({"unlock", "-D", "x", "--all"}), 2));
}

TEST(CliHelp, VersionPrintsTheVersion) {
  Outcome r = run_crest({"--version"});
  EXPECT_TRUE(exited_with(r, 0));
  EXPECT_EQ(r.out, std::string("crest ") + CREST_VERSION + "\n");
}

TEST(CliUsage, MistakesAreUsageErrorsWithStatus2) {
  for (const auto& args :
       std::vector<std::vector<std::string>>{{},
                                             {"show"},
                                             {"frobnicate"},
                                             {"show", "--bogus", "x"},
                                             {"--log-level", "loud", "show", "x"}}) {
    Outcome r = run_crest(args);
    EXPECT_TRUE(exited_with(r, 2));
    auto lines = r.err_lines();
    ASSERT_EQ(lines.size(), 1u) << r.describe();
    EXPECT_TRUE(lines[0].starts_with("crest: usage: ")) << lines[0];
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TEST(CliUsage, JsonUsageErrorIsAJsonDocument) {
  Outcome r = run_crest({"show", "--json"});
  EXPECT_TRUE(exited_with(r, 2));
  json doc = json::parse(r.out);
  EXPECT_EQ(doc["error"]["kind"], "usage");
  EXPECT_FALSE(doc["error"]["message"].get<std::string>().empty());
}

TEST_F(CliTest, ShowFilePrintsChainProcessesAndPages) {
  Outcome r = run_crest({"show", file(2)});
  EXPECT_TRUE(exited_with(r, 0));
  EXPECT_TRUE(r.err.empty()) << r.err;
  for (const std::string part : {"ckpt-000003.h5 <- ckpt-000002.h5 <- ckpt-000001.h5",
                                 "solver",
                                 "/usr/bin/solver",
                                 "4242",
                                 "dirty tracking",
                                 "hash",
                                 "stop-copy",
                                 "testhost",
                                 "slurm:1234.0",
                                 "/home/user/run/data.bin",
                                 "O_RDWR|O_APPEND|O_CLOEXEC",
                                 "inherited",
                                 "present",
                                 "600 (2.34 MiB)",
                                 "stored here",
                                 "5 (20.0 KiB)",
                                 "in ancestors",
                                 "545",
                                 "frozen_ns",
                                 "12.5 ms",
                                 "integrity",
                                 "ok: "}) {
    EXPECT_TRUE(contains(r.out, part)) << "missing '" << part << "' in\n" << r.out;
  }
  // Without -v, VMAs are only counted.
  EXPECT_FALSE(contains(r.out, "[heap]")) << r.out;
}

TEST_F(CliTest, ShowVerboseListsEveryVma) {
  Outcome r = run_crest({"show", "-v", file(0)});
  EXPECT_TRUE(exited_with(r, 0));
  for (const std::string part : {"memory maps of pid 4242", "[heap]", "[stack]", "rw-p",
                                 "0x10000000", "0x10400000", "anon-private"}) {
    EXPECT_TRUE(contains(r.out, part)) << "missing '" << part << "' in\n" << r.out;
  }
}

TEST_F(CliTest, ShowJsonHasTheFacts) {
  Outcome r = run_crest({"show", "--json", file(2)});
  EXPECT_TRUE(exited_with(r, 0));
  json doc = json::parse(r.out);
  EXPECT_EQ(doc["name"], "ckpt-000003.h5");
  EXPECT_EQ(doc["chain"], json({"ckpt-000003.h5", "ckpt-000002.h5", "ckpt-000001.h5"}));
  EXPECT_EQ(doc["info"]["sequence"], 3);
  EXPECT_EQ(doc["info"]["parent_file"], "ckpt-000002.h5");
  EXPECT_EQ(doc["info"]["tracker"], "hash");
  EXPECT_EQ(doc["info"]["root_pid"], kPid);
  EXPECT_EQ(doc["info"]["incremental"], true);
  ASSERT_EQ(doc["processes"].size(), 1u);
  const json& p = doc["processes"][0];
  EXPECT_EQ(p["pid"], kPid);
  EXPECT_EQ(p["comm"], "solver");
  EXPECT_EQ(p["threads"], 2);
  EXPECT_EQ(p["vma_count"], 2);
  EXPECT_EQ(p["pages_present"], kPresentPages);
  ASSERT_EQ(p["vmas"].size(), 2u);
  EXPECT_EQ(p["vmas"][0]["name"], "[heap]");
  EXPECT_EQ(p["vmas"][0]["pages_present"], kPresentPages);
  EXPECT_EQ(p["vmas"][1]["pages_present"], 0);
  ASSERT_EQ(p["fds"].size(), 2u);
  EXPECT_EQ(p["fds"][1]["fd"], 3);
  EXPECT_EQ(p["fds"][1]["cloexec"], true);
  EXPECT_EQ(p["fds"][1]["file"]["kind_name"], "regular");
  EXPECT_EQ(p["fds"][1]["file"]["pos"], 8192);
  EXPECT_EQ(doc["pages"]["present"], kPresentPages);
  EXPECT_EQ(doc["pages"]["zero"], kZeroPages);
  EXPECT_EQ(doc["pages"]["stored"], 5);
  EXPECT_EQ(doc["pages"]["in_ancestors"], kDataPages - 5);
  EXPECT_EQ(doc["bytes"]["input"], kPresentPages * 4096);
  EXPECT_EQ(doc["bytes"]["data"], 5 * 4096);
  EXPECT_EQ(doc["chunks"]["total"], 1);
  EXPECT_EQ(doc["stats"]["frozen_ns"], 12'500'000);
  EXPECT_EQ(doc["tables"]["processes"], 1);
  EXPECT_EQ(doc["integrity"]["ok"], true);
  EXPECT_EQ(doc["integrity"]["files"].size(), 3u);
  EXPECT_TRUE(doc["problems"].empty());
}

TEST_F(CliTest, ShowJsonOfTheFullCheckpointCountsItsChunks) {
  Outcome r = run_crest({"show", "--json", file(0)});
  EXPECT_TRUE(exited_with(r, 0));
  json doc = json::parse(r.out);
  EXPECT_EQ(doc["info"]["incremental"], false);
  EXPECT_EQ(doc["pages"]["stored"], kDataPages);
  EXPECT_EQ(doc["pages"]["in_ancestors"], 0);
  EXPECT_EQ(doc["chunks"]["total"], 3);  // 550 pages in 256-page chunks
  // The pages are very compressible: the stored bytes are well below the data.
  EXPECT_LT(doc["bytes"]["stored"].get<uint64_t>(), doc["bytes"]["data"].get<uint64_t>() / 2);
}

TEST_F(CliTest, ShowDirectoryListsCheckpointsAndDescribesTheNewest) {
  Outcome r = run_crest({"show", dir_.path()});
  EXPECT_TRUE(exited_with(r, 0));
  for (const std::string part :
       {"3 checkpoints", "latest -> ckpt-000003.h5", "ckpt-000001.h5", "full",
        "incremental of ckpt-000002.h5", "newest readable checkpoint: ckpt-000003.h5", "solver"}) {
    EXPECT_TRUE(contains(r.out, part)) << "missing '" << part << "' in\n" << r.out;
  }

  Outcome j = run_crest({"show", dir_.path(), "--json"});
  EXPECT_TRUE(exited_with(j, 0));
  json doc = json::parse(j.out);
  ASSERT_EQ(doc["checkpoints"].size(), 3u);
  EXPECT_EQ(doc["checkpoints"][0]["name"], "ckpt-000001.h5");
  EXPECT_EQ(doc["checkpoints"][0]["incremental"], false);
  EXPECT_EQ(doc["checkpoints"][2]["parent_file"], "ckpt-000002.h5");
  EXPECT_EQ(doc["checkpoints"][2]["readable"], true);
  EXPECT_GT(doc["checkpoints"][2]["size_bytes"].get<uint64_t>(), 0u);
  EXPECT_EQ(doc["latest"], "ckpt-000003.h5");
  EXPECT_EQ(doc["newest"]["name"], "ckpt-000003.h5");
  EXPECT_TRUE(doc["problems"].empty());
}

TEST_F(CliTest, VerifyGoodChainExitsZero) {
  Outcome r = run_crest({"verify", dir_.path()});
  EXPECT_TRUE(exited_with(r, 0));
  EXPECT_TRUE(contains(r.out, "ok: 3 files, 5 chunks")) << r.out;
  EXPECT_TRUE(r.err.empty()) << r.err;

  Outcome j = run_crest({"verify", "--json", file(1)});
  EXPECT_TRUE(exited_with(j, 0));
  json doc = json::parse(j.out);
  EXPECT_EQ(doc["ok"], true);
  EXPECT_EQ(doc["checkpoint"], "ckpt-000002.h5");
  ASSERT_EQ(doc["files"].size(), 2u);
  EXPECT_EQ(doc["files"][0]["name"], "ckpt-000002.h5");
  EXPECT_EQ(doc["files"][1]["chunks"], 3);
  EXPECT_EQ(doc["chunks_bad"], 0);
}

// What the Slurm plugin runs from slurmstepd before it restores a requeued job: the checks of a
// restore, and nothing restored.
TEST_F(CliTest, RestoreCheckOnlyChecksAndRestoresNothing) {
  Outcome ok = run_crest({"restore", "--check-only", "-D", dir_.path()});
  EXPECT_TRUE(exited_with(ok, 0)) << ok.err;
  EXPECT_TRUE(contains(ok.out, "ckpt-000003.h5 in " + dir_.path() + " can be restored")) << ok.out;

  // The chain's processes are root's: not images a job of uid 65534 may have restored.
  Outcome other = run_crest({"restore", "--check-only", "--owner", "65534:65534", "-D", dir_.path()});
  EXPECT_TRUE(exited_with(other, 1)) << other.err;
  EXPECT_TRUE(contains(other.err, "uid 65534")) << other.err;

  Outcome bad = run_crest({"restore", "--check-only", "--owner", "nobody", "-D", dir_.path()});
  EXPECT_TRUE(exited_with(bad, 2)) << bad.err;
  EXPECT_TRUE(contains(bad.err, "--owner wants UID:GID")) << bad.err;

  // A damaged chunk anywhere in the chain fails the check.
  {
    std::fstream f(file(0), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    const auto size = static_cast<long>(f.tellg());
    std::string junk(4096, '\x5a');
    f.seekp(size / 2);
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  Outcome damaged = run_crest({"restore", "--check-only", "-D", dir_.path()});
  EXPECT_TRUE(exited_with(damaged, 1)) << damaged.out;
}

TEST_F(CliTest, LogLevelIsAcceptedBeforeAndAfterTheVerb) {
  EXPECT_TRUE(exited_with(run_crest({"--log-level", "debug", "verify", dir_.path()}), 0));
  EXPECT_TRUE(exited_with(run_crest({"verify", dir_.path(), "--log-level", "error"}), 0));
}

// ---- The audit: every field this kernel shows is decided -----------------------------------

namespace {

std::set<std::pair<std::string, std::string>> audited() {
  Outcome r = run_crest({"check", "--audit", "--json"});
  EXPECT_TRUE(exited_with(r, 0));
  auto j = nlohmann::json::parse(r.out);
  std::set<std::pair<std::string, std::string>> out;
  for (auto& e : j["fields"]) {
    EXPECT_TRUE(e["handling"] == "restored" || e["handling"] == "refused" ||
                e["handling"] == "irrelevant")
        << e.dump();
    EXPECT_FALSE(e["how"].get<std::string>().empty()) << e.dump();
    out.emplace(e["source"], e["field"]);
  }
  return out;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST(CliAudit, EveryStatusFieldOfThisKernelIsInTheAudit) {
  auto table = audited();
  std::istringstream status(slurp("/proc/self/status"));
  std::string line;
  size_t fields = 0;
  while (std::getline(status, line)) {
    std::string key = line.substr(0, line.find(':'));
    ++fields;
    EXPECT_TRUE(table.count({"status", key})) << "/proc/PID/status field '" << key
                                              << "' is not in crest's audit (core/audit.cpp)";
  }
  EXPECT_GT(fields, 40u);
}

TEST(CliAudit, EveryStatFieldAndVmFlagIsInTheAudit) {
  auto table = audited();
  size_t stat_entries = 0;
  for (auto& [source, field] : table) stat_entries += source == "stat";
  std::istringstream stat(slurp("/proc/self/stat").substr(slurp("/proc/self/stat").rfind(')') + 2));
  size_t fields = 2;  // pid and (comm)
  std::string f;
  while (stat >> f) ++fields;
  EXPECT_EQ(fields, stat_entries) << "/proc/PID/stat has " << fields << " fields, the audit "
                                  << stat_entries << " (core/audit.cpp)";
  // Every VmFlag crest knows, and every one this process shows.
  for (const char* name : schema::kVmFlagNames)
    EXPECT_TRUE(table.count({"VmFlags", name})) << "VmFlag " << name << " is not in the audit";
  std::istringstream smaps(slurp("/proc/self/smaps"));
  std::string line;
  while (std::getline(smaps, line)) {
    if (line.rfind("VmFlags:", 0) != 0) continue;
    std::istringstream flags(line.substr(8));
    std::string flag;
    while (flags >> flag)
      EXPECT_TRUE(table.count({"VmFlags", flag})) << "VmFlag " << flag << " is not in the audit";
  }
}

TEST(CliAudit, EveryFdinfoFieldOfAFileIsInTheAudit) {
  auto table = audited();
  // A plain file, and one of each event descriptor crest restores (with a target, a watch).
  std::vector<int> fds;
  fds.push_back(::open("/proc/self/status", O_RDONLY | O_CLOEXEC));
  fds.push_back(::eventfd(3, EFD_CLOEXEC | EFD_SEMAPHORE));
  fds.push_back(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC));
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR1);
  fds.push_back(::signalfd(-1, &mask, SFD_CLOEXEC));
  fds.push_back(::epoll_create1(EPOLL_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ASSERT_EQ(::epoll_ctl(fds.back(), EPOLL_CTL_ADD, fds[1], &ev), 0);
  fds.push_back(::inotify_init1(IN_CLOEXEC));
  ASSERT_GE(::inotify_add_watch(fds.back(), "/", IN_CREATE), 1);
  fds.push_back(static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0)));
  for (int fd : fds) {
    ASSERT_GE(fd, 0) << std::strerror(errno);
    std::istringstream info(slurp("/proc/self/fdinfo/" + std::to_string(fd)));
    ::close(fd);
    std::string line;
    while (std::getline(info, line)) {
      std::string key = line.substr(0, line.find(':'));
      EXPECT_TRUE(table.count({"fdinfo", key})) << "fdinfo field '" << key << "' is not in the audit";
    }
  }
}

}  // namespace
}  // namespace crest::test
