// crest snapshot as cron runs it: the exact command line of examples/cron/crontab, run several
// times against a running python3 program, with and without crestd; then the newest snapshot is
// restored and the program checks its own state from inside. Also: retention keeps N (the exact
// sequence of files the README promises), and failures are one line on stderr with a non-zero
// exit status.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "core/tracker.h"
#include "storage/image_store.h"
#include "tests/agent/harness.h"

namespace crest::agent_test {
namespace {

const std::string kSource = CREST_AGENT_SOURCE;

struct Outcome {
  int status = -1;  // wait status
  std::string out, err;
  int code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

// Runs a shell command line (as cron does: /bin/sh -c) with the given variables exported first.
Outcome sh(const TempDir& dir, const std::string& exports, const std::string& line) {
  static int n = 0;
  std::string out = dir / ("sh" + std::to_string(++n) + ".out");
  std::string err = dir / ("sh" + std::to_string(n) + ".err");
  pid_t pid = spawn({"/bin/sh", "-c", exports + line}, output_to(out, err));
  Outcome o;
  auto st = wait_child(pid, 120s);
  if (!st) {
    ::kill(pid, SIGKILL);
    wait_child(pid, 10s);
    o.err = "timed out";
    return o;
  }
  o.status = *st;
  o.out = read_text(out);
  o.err = read_text(err);
  return o;
}

std::string shq(const std::string& s) { return "'" + s + "'"; }

// The environment cron gives the line (HOME, PATH) with crest from this build first in PATH.
std::string cron_env(const std::string& home, const std::string& socket) {
  std::string bindir = crest_bin().substr(0, crest_bin().rfind('/'));
  return "export HOME=" + shq(home) + " PATH=" + shq(bindir + ":/usr/bin:/bin") +
         " CREST_SOCKET=" + shq(socket) + "; ";
}

// The command of the crontab example's one schedule line (what follows its five time fields).
std::string crontab_command() {
  std::ifstream in(kSource + "/examples/cron/crontab");
  std::string line, command;
  int schedules = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream words(line);
    std::string first;
    words >> first;
    if (first.find('=') != std::string::npos) continue;  // PATH=...
    ++schedules;
    size_t pos = 0;
    for (int field = 0; field < 5; ++field) {
      pos = line.find_first_not_of(" \t", pos);
      pos = line.find_first_of(" \t", pos);
    }
    command = line.substr(line.find_first_not_of(" \t", pos));
  }
  EXPECT_EQ(schedules, 1) << "examples/cron/crontab has one schedule line";
  return command;
}

std::string snapshot_job() { return kSource + "/tests/agent/snapshot_job.py"; }

long progress(const std::string& work) {
  std::string p = read_text(work + "/progress");
  return p.empty() ? 0 : std::stol(p);
}

// Waits until the program has made `steps` more steps.
bool advances(const std::string& work, long steps) {
  long from = progress(work);
  return wait_until([&] { return progress(work) >= from + steps; }, 20s);
}

// Asks the (restored) program to check itself; its verdict line.
std::string verdict(const std::string& work) {
  ::unlink((work + "/verdict").c_str());
  std::ofstream(work + "/check").flush();
  wait_until([&] { return !read_text(work + "/verdict").empty(); }, 20s);
  return read_text(work + "/verdict");
}

long verdict_step(const std::string& v) {
  auto pos = v.find("step=");
  return pos == std::string::npos ? -1 : std::stol(v.substr(pos + 5));
}

pid_t start_program(const std::string& work, int mib) {
  ::mkdir(work.c_str(), 0755);
  // In a session of its own, as a program cron's user left running would be.
  pid_t pid = spawn({"/usr/bin/setsid", "/usr/bin/python3", snapshot_job(), work, std::to_string(mib)});
  EXPECT_TRUE(wait_until([&] { return progress(work) >= 3; }, 20s)) << "the program did not start";
  return pid;
}

// Kills the program (our child) and reaps it, so that its pid is free for the restore.
void kill_program(pid_t pid) {
  ::kill(pid, SIGKILL);
  wait_child(pid, 20s);
}

std::vector<std::string> checkpoint_names(const std::string& images) {
  std::vector<std::string> out;
  for (auto& e : storage::ImageStore::open_directory(images)->list()) out.push_back(e.name);
  return out;
}

std::string name_of(int seq) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "ckpt-%06d.h5", seq);
  return buf;
}

bool python_present() { return ::access("/usr/bin/python3", X_OK) == 0; }

TEST(Snapshot, CronLineWithCrestdKeepsTheTrackerAndTheNewestRestores) {
  if (!python_present()) GTEST_SKIP() << "python3 is not installed (/usr/bin/python3)";
  TempDir dir;
  Reaper reaper;
  Daemon d(dir);
  d.start();
  std::string home = dir / "home", work = dir / "work";
  ::mkdir(home.c_str(), 0755);
  pid_t pid = start_program(work, 32);
  reaper.add(pid);
  std::ofstream(home + "/sim.pid") << pid << "\n";
  const std::string line = crontab_command();
  ASSERT_NE(line.find("crest snapshot"), std::string::npos) << line;
  const std::string env = cron_env(home, d.socket);

  Outcome first = sh(dir, env, line);
  ASSERT_EQ(first.code(), 0) << first.err;
  EXPECT_EQ(first.out, "");
  EXPECT_EQ(first.err, "") << "quiet when it works";
  json jobs = d.call({{"op", "jobs"}})["jobs"];
  ASSERT_EQ(jobs.size(), 1u) << jobs.dump(2);
  const std::string id = jobs[0]["id"];
  EXPECT_EQ(jobs[0]["pid"], pid);
  EXPECT_EQ(jobs[0]["every"], "never");
  EXPECT_TRUE(jobs[0]["next_checkpoint_in_s"].is_null());
  const int64_t first_read = jobs[0]["last_checkpoint"]["pages_read"];
  EXPECT_GE(first_read, 32 * 256) << "the first snapshot reads all of the program's memory";

  long before_last = 0;
  for (int run = 2; run <= 4; ++run) {
    ASSERT_TRUE(advances(work, 3));
    before_last = progress(work);
    Outcome o = sh(dir, env, line);
    ASSERT_EQ(o.code(), 0) << "run " << run << ": " << o.err;
    EXPECT_EQ(o.out, "");
    EXPECT_EQ(o.err, "") << "run " << run;
  }
  json st = d.status(id);
  EXPECT_EQ(st["checkpoints"], 4) << st.dump(2);
  EXPECT_EQ(st["checkpoint_failures"], 0) << st.dump(2);
  // The kernel's best tracker (uffd-wp here; content hashes where the kernel has none).
  const TrackerKind best = Tracker::best_available();
  EXPECT_EQ(st["tracker"], Tracker::kind_name(best)) << st.dump(2);
  EXPECT_TRUE(st["last_checkpoint"]["incremental"].get<bool>()) << st.dump(2);
  // crestd kept the tracker: a later snapshot reads only what the program wrote in between (a
  // few 1 MiB slices and python's own churn), not its 32 MiB.
  const int64_t last_read = st["last_checkpoint"]["pages_read"];
  if (best != TrackerKind::hash) {
    EXPECT_LT(last_read * 2, first_read) << st.dump(2);
  }
  const std::string images = home + "/snapshots/sim";
  EXPECT_EQ(st["dir"], images);
  EXPECT_EQ(checkpoint_names(images).size(), 4u);

  // The program dies; crestd lets go of it (no automatic restore for snapshots).
  kill_program(pid);
  ASSERT_TRUE(wait_until([&] { return d.call({{"op", "jobs"}})["jobs"].empty(); }, 20s))
      << d.call({{"op", "jobs"}}).dump(2);

  Outcome r = sh(dir, env, "crest restore -D " + shq(images) + " -d");
  ASSERT_EQ(r.code(), 0) << r.err;
  ASSERT_TRUE(advances(work, 2)) << "the restored program runs";
  std::string v = verdict(work);
  EXPECT_EQ(v.rfind("PASS", 0), 0u) << v;
  // The newest snapshot came back: taken after the program had made before_last steps.
  EXPECT_GE(verdict_step(v), before_last) << v;
}

TEST(Snapshot, CronLineWithoutCrestdIsIncrementalByContentAndRestores) {
  if (!python_present()) GTEST_SKIP() << "python3 is not installed (/usr/bin/python3)";
  TempDir dir;
  Reaper reaper;
  std::string home = dir / "home", work = dir / "work";
  ::mkdir(home.c_str(), 0755);
  pid_t pid = start_program(work, 16);
  reaper.add(pid);
  std::ofstream(home + "/sim.pid") << pid << "\n";
  const std::string line = crontab_command();
  const std::string env = cron_env(home, dir / "no-crestd.sock");

  long before_last = 0;
  for (int run = 1; run <= 3; ++run) {
    ASSERT_TRUE(advances(work, 3));
    before_last = progress(work);
    Outcome o = sh(dir, env, line);
    ASSERT_EQ(o.code(), 0) << "run " << run << ": " << o.err;
    EXPECT_EQ(o.out, "");
    EXPECT_EQ(o.err, "") << "run " << run;
  }
  const std::string images = home + "/snapshots/sim";
  auto entries = storage::ImageStore::open_directory(images)->list();
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0].parent_file, "");
  EXPECT_EQ(entries[1].parent_file, entries[0].name) << "incremental on the chain in DIR";
  EXPECT_EQ(entries[2].parent_file, entries[1].name);

  kill_program(pid);
  Outcome r = sh(dir, env, "crest restore -D " + shq(images) + " -d");
  ASSERT_EQ(r.code(), 0) << r.err;
  ASSERT_TRUE(advances(work, 2)) << "the restored program runs";
  std::string v = verdict(work);
  EXPECT_EQ(v.rfind("PASS", 0), 0u) << v;
  EXPECT_GE(verdict_step(v), before_last) << v;
}

// --keep N: the newest N stay restorable with what they depend on; the chain is compacted every
// max(2, N) files. With N = 3 the files after each of six snapshots are exactly these.
void expect_retention(Daemon* d) {
  TempDir dir;
  Reaper reaper;
  std::string work = dir / "work", images = dir / "images";
  pid_t pid = start_program(work, 8);
  reaper.add(pid);
  std::string env = cron_env(dir.path, d ? d->socket : dir / "no-crestd.sock");
  const std::vector<std::set<int>> expected{{1}, {1, 2}, {1, 2, 3}, {1, 2, 3, 4}, {3, 4, 5}, {3, 4, 5, 6}};
  for (size_t i = 0; i < expected.size(); ++i) {
    Outcome o = sh(dir, env, "crest snapshot " + std::to_string(pid) + " -D " + shq(images) + " --keep 3");
    ASSERT_EQ(o.code(), 0) << o.err;
    EXPECT_EQ(o.err, "");
    std::set<std::string> want, have;
    for (int s : expected[i]) want.insert(name_of(s));
    for (auto& n : checkpoint_names(images)) have.insert(n);
    EXPECT_EQ(have, want) << "after snapshot " << i + 1;
  }
  // The three newest all restorable (whole chains, every checksum).
  auto store = storage::ImageStore::open_directory(images);
  for (int s : {4, 5, 6}) EXPECT_TRUE(store->verify(name_of(s)).ok()) << name_of(s);
  kill_program(pid);
}

TEST(Snapshot, RetentionKeepsNWithCrestd) {
  if (!python_present()) GTEST_SKIP() << "python3 is not installed (/usr/bin/python3)";
  TempDir dir;
  Daemon d(dir);
  d.start();
  expect_retention(&d);
}

TEST(Snapshot, RetentionKeepsNWithoutCrestd) {
  if (!python_present()) GTEST_SKIP() << "python3 is not installed (/usr/bin/python3)";
  expect_retention(nullptr);
}

// One line on stderr, nothing on stdout, a non-zero exit status.
void expect_one_line_failure(const Outcome& o, int code, const std::string& needle) {
  EXPECT_EQ(o.code(), code) << o.err;
  EXPECT_EQ(o.out, "");
  ASSERT_FALSE(o.err.empty());
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_EQ(o.err.back(), '\n') << o.err;
  EXPECT_EQ(o.err.rfind("crest: ", 0), 0u) << o.err;
  EXPECT_NE(o.err.find(needle), std::string::npos) << "wanted '" << needle << "' in: " << o.err;
}

void expect_failures(const TempDir& dir, const std::string& socket) {
  std::string env = cron_env(dir.path, socket);
  // A pid nobody has: a child that has exited and been reaped.
  pid_t gone = spawn({"/bin/true"});
  wait_child(gone, 10s);
  expect_one_line_failure(
      sh(dir, env, "crest snapshot " + std::to_string(gone) + " -D " + shq(dir / "images")), 1,
      std::to_string(gone));

  // A directory that cannot be made: under a regular file.
  std::ofstream(dir / "plain").flush();
  pid_t pid = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "2"});
  Reaper reaper;
  reaper.add(pid);
  expect_one_line_failure(
      sh(dir, env, "crest snapshot " + std::to_string(pid) + " -D " + shq(dir / "plain/images")),
      1, "plain/images");
  EXPECT_TRUE(alive(pid)) << "a failed snapshot leaves the tree running";
  EXPECT_EQ(proc_field(pid, "TracerPid"), "0");

  // Usage: no target; a pid that cannot be one.
  expect_one_line_failure(sh(dir, env, "crest snapshot -D " + shq(dir / "images")), 2, "usage");
  expect_one_line_failure(sh(dir, env, "crest snapshot 1 -D " + shq(dir / "images")), 2, "usage");
  // A crestd job named by a name when there is no such job (or no crestd).
  expect_one_line_failure(sh(dir, env, "crest snapshot no-such-job"), 1, "no-such-job");
  ::kill(pid, SIGKILL);
  wait_child(pid, 10s);
}

TEST(Snapshot, FailuresAreOneLineWithCrestd) {
  TempDir dir;
  Daemon d(dir);
  d.start();
  expect_failures(dir, d.socket);
  EXPECT_TRUE(d.call({{"op", "jobs"}})["jobs"].empty()) << "nothing adopted by a failed snapshot";
}

TEST(Snapshot, FailuresAreOneLineWithoutCrestd) {
  TempDir dir;
  expect_failures(dir, dir / "no-crestd.sock");
}

// A newest snapshot that is damaged is never built on, nor is an older one chosen instead: the
// snapshot is full (a new chain), says so in one line, and succeeds.
TEST(Snapshot, ADamagedNewestStartsAFullOneAndSaysSo) {
  TempDir dir;
  Reaper reaper;
  pid_t pid = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "4"});
  reaper.add(pid);
  std::string images = dir / "images";
  std::string env = cron_env(dir.path, dir / "no-crestd.sock");
  std::string cmd = "crest snapshot " + std::to_string(pid) + " -D " + shq(images) + " --keep 5";
  for (int i = 0; i < 2; ++i) ASSERT_EQ(sh(dir, env, cmd).code(), 0);
  std::string newest = images + "/" + name_of(2);
  struct stat sb {};
  ASSERT_EQ(::stat(newest.c_str(), &sb), 0);
  ASSERT_EQ(::truncate(newest.c_str(), sb.st_size / 2), 0);
  Outcome o = sh(dir, env, cmd);
  EXPECT_EQ(o.code(), 0) << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_NE(o.err.find("warning"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find(name_of(2)), std::string::npos) << o.err;
  auto entries = storage::ImageStore::open_directory(images)->list();
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[2].name, name_of(3));
  EXPECT_TRUE(entries[2].readable);
  EXPECT_EQ(entries[2].parent_file, "") << "a full snapshot";
  EXPECT_TRUE(storage::ImageStore::open_directory(images)->verify(name_of(3)).ok());
}

}  // namespace
}  // namespace crest::agent_test
