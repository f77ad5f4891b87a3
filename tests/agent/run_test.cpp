// crest run, with a crestd and without one (the embedded supervisor): the job's output and exit
// status come through, signals are passed on, a killed job comes back by itself.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>

#include "agent/crestd/protocol.h"
#include "tests/agent/harness.h"

namespace crest::agent_test {
namespace {

std::string reference(const TempDir& dir, const std::vector<std::string>& args) {
  std::vector<std::string> argv{testjob_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out = dir / "reference.out";
  pid_t pid = spawn(argv, output_to(out));
  auto st = wait_child(pid, 120s);
  EXPECT_TRUE(st && WIFEXITED(*st));
  return job_result(read_text(out));
}

std::vector<std::string> run_cmd(std::vector<std::string> opts, const std::vector<std::string>& args) {
  std::vector<std::string> argv{crest_bin(), "run"};
  argv.insert(argv.end(), opts.begin(), opts.end());
  argv.push_back("--");
  argv.push_back(testjob_bin());
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

size_t checkpoints_in(const std::string& dir) {
  size_t n = 0;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::string name = e.path().filename();
    if (name.rfind("ckpt-", 0) == 0 && name.ends_with(".h5")) ++n;
  }
  return n;
}

// crest run -> crest-init -> testjob: the testjob process.
pid_t job_under(pid_t crest_run) {
  auto inits = children_of(crest_run);
  if (inits.empty()) return 0;
  auto jobs = children_of(inits.front());
  return jobs.empty() ? 0 : jobs.front();
}

TEST(CrestRun, WithoutDaemonTheOutputAndExitStatusComeThrough) {
  TempDir dir;
  std::string out = dir / "out", err = dir / "err";
  pid_t pid = spawn(run_cmd({"--no-daemon", "-D", dir / "img"}, {"-n", "5", "-m", "10", "-x", "7"}),
                    output_to(out, err));
  auto st = wait_child(pid, 60s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 7) << describe_status(*st) << read_text(err);
  EXPECT_TRUE(file_contains(out, "step 5\n")) << read_text(out);
  EXPECT_FALSE(job_result(read_text(out)).empty());
  // The job ran as pid 1's child in its own namespace (testjob prints its own pid).
  EXPECT_TRUE(file_contains(out, "testjob: pid 2,")) << read_text(out);
}

TEST(CrestRun, WithoutDaemonAKilledJobComesBackWithTheSameResult) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  std::vector<std::string> args{"-n", "60", "-m", "50", "-M", "16"};
  std::string want = reference(dir, args);
  std::string out = dir / "out", err = dir / "err", img = dir / "img";
  pid_t pid = spawn(run_cmd({"--no-daemon", "--every", "500ms", "-D", img}, args),
                    output_to(out, err));
  reaper.add(pid);
  ASSERT_TRUE(wait_until([&] { return checkpoints_in(img) >= 2; }, 30s)) << read_text(err);
  pid_t victim = job_under(pid);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  auto st = wait_child(pid, 90s);
  ASSERT_TRUE(st) << read_text(err);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << describe_status(*st) << read_text(err);
  EXPECT_EQ(job_result(read_text(out)), want) << read_text(out);
  // The job's output was rolled back to the checkpoint and written again: every step once, in
  // order, as if nothing had happened.
  std::string text = read_text(out), expect;
  for (int k = 1; k <= 60; ++k) expect += "step " + std::to_string(k) + "\n";
  std::string steps;
  for (size_t at = 0; (at = text.find("step ", at)) != std::string::npos;) {
    size_t eol = text.find('\n', at);
    steps += text.substr(at, eol - at + 1);
    at = eol;
  }
  EXPECT_EQ(steps, expect) << text;
  // crest run's own stderr is the job's too here (a file, one description shared by both): the
  // restore rolled it back to the checkpoint and both write on from there, with no hole and
  // nothing overwritten.
  std::string said = read_text(err);
  EXPECT_EQ(said.find('\0'), std::string::npos) << "a hole in the shared stderr file";
  EXPECT_TRUE(file_contains(err, "restored from ckpt-")) << said;
  EXPECT_TRUE(file_contains(err, "the job ended")) << said;
}

TEST(CrestRun, WithoutDaemonAFatalSignalIsMirroredWhenRestoreIsOff) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  std::string out = dir / "out", err = dir / "err", img = dir / "img";
  pid_t pid = spawn(run_cmd({"--no-daemon", "--auto-restore=0", "--every", "300ms", "-D", img},
                            {"-n", "100000", "-m", "20"}),
                    output_to(out, err));
  reaper.add(pid);
  ASSERT_TRUE(wait_until([&] { return checkpoints_in(img) >= 1; }, 30s)) << read_text(err);
  pid_t victim = job_under(pid);
  ASSERT_GT(victim, 0);
  ::kill(victim, SIGSEGV);
  auto st = wait_child(pid, 30s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFSIGNALED(*st) && WTERMSIG(*st) == SIGSEGV) << describe_status(*st) << read_text(err);
}

TEST(CrestRun, WithDaemonTheJobIsCrestdsAndItsOutputAndStatusComeThrough) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::string out = dir / "out", err = dir / "err";
  pid_t pid = spawn(run_cmd({"--socket", d.socket, "--every", "300ms", "--name", "viad"},
                            {"-n", "40", "-m", "25", "-x", "3"}),
                    output_to(out, err));
  reaper.add(pid);
  // While it runs, crestd lists it (as this user's, started by crest run) and checkpoints it.
  ASSERT_TRUE(wait_until(
      [&] {
        json jobs = d.call({{"op", "jobs"}})["jobs"];
        return jobs.size() == 1 && jobs[0]["checkpoints"].get<int>() >= 1;
      },
      30s))
      << read_text(err);
  json job = d.call({{"op", "jobs"}})["jobs"][0];
  EXPECT_EQ(job["kind"], "run");
  EXPECT_EQ(job["name"], "viad");
  EXPECT_EQ(job["uid"], ::getuid());
  auto st = wait_child(pid, 60s);
  ASSERT_TRUE(st) << read_text(err);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 3) << describe_status(*st) << read_text(err);
  EXPECT_TRUE(file_contains(out, "step 40\n"));
  EXPECT_FALSE(job_result(read_text(out)).empty()) << read_text(out);
  EXPECT_TRUE(file_contains(err, "started by crestd")) << read_text(err);
  // crest run's jobs leave crestd's list when they end.
  EXPECT_TRUE(wait_until([&] { return d.call({{"op", "jobs"}})["jobs"].empty(); }, 10s));
}

TEST(CrestRun, WithDaemonSignalsArePassedOnAndTheirEndIsMirrored) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::string out = dir / "out", err = dir / "err";
  pid_t pid = spawn(run_cmd({"--socket", d.socket, "--every", "1h"}, {"-n", "100000", "-m", "20"}),
                    output_to(out, err));
  reaper.add(pid);
  ASSERT_TRUE(wait_until([&] { return file_contains(out, "step 2\n"); }, 30s)) << read_text(err);
  ::kill(pid, SIGTERM);
  auto st = wait_child(pid, 30s);
  ASSERT_TRUE(st) << read_text(err);
  // The job died of the SIGTERM crest run passed on; that is a stop, not a failure: no restore.
  EXPECT_TRUE(WIFSIGNALED(*st) && WTERMSIG(*st) == SIGTERM) << describe_status(*st) << read_text(err);
  EXPECT_FALSE(file_contains(err, "restor")) << read_text(err);
}

TEST(CrestRun, WithDaemonAKilledJobComesBackWithTheSameResult) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir, {"--restore-backoff", "200ms"});
  d.start();
  std::vector<std::string> args{"-n", "60", "-m", "50", "-M", "16"};
  std::string want = reference(dir, args);
  std::string out = dir / "out", err = dir / "err";
  pid_t pid = spawn(run_cmd({"--socket", d.socket, "--every", "500ms"}, args),
                    output_to(out, err));
  reaper.add(pid);
  ASSERT_TRUE(wait_until(
      [&] {
        json jobs = d.call({{"op", "jobs"}})["jobs"];
        return jobs.size() == 1 && jobs[0]["checkpoints"].get<int>() >= 2;
      },
      30s));
  pid_t init = d.call({{"op", "jobs"}})["jobs"][0]["pid"];
  auto kids = children_of(init);
  ASSERT_FALSE(kids.empty());
  ::kill(kids.front(), SIGKILL);
  auto st = wait_child(pid, 90s);
  ASSERT_TRUE(st) << read_text(err);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << describe_status(*st) << read_text(err);
  EXPECT_EQ(job_result(read_text(out)), want) << read_text(out);
  EXPECT_TRUE(file_contains(err, "restored from")) << read_text(err);
}

}  // namespace
}  // namespace crest::agent_test
