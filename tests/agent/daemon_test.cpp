// crestd end to end: a real daemon on a temporary socket and storage root, real jobs, real
// checkpoints and restores.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <thread>
#include <regex>
#include <set>

#include "agent/crestd/protocol.h"
#include "core/util/error.h"
#include "storage/image_store.h"
#include "tests/agent/harness.h"

namespace crest::agent_test {
namespace {

// What testjob prints for these arguments when nothing interrupts it.
std::string expected_result(const TempDir& dir, const std::vector<std::string>& args) {
  std::vector<std::string> argv{testjob_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out = dir / "expected.out";
  ::unlink(out.c_str());
  pid_t pid = spawn(argv, output_to(out));
  auto st = wait_child(pid, 120s);
  EXPECT_TRUE(st && WIFEXITED(*st)) << "the reference run did not finish";
  return job_result(read_text(out));
}

// Starts a job through crestd's `run` op, as crest run does: stdin /dev/null, stdout and stderr
// the file `out`. The connection is closed at once (no watch), the job record kept.
std::string run_job(const Daemon& d, const std::vector<std::string>& args, const std::string& out,
                    json extra = json::object()) {
  int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  std::vector<std::string> argv{testjob_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  json req = {{"op", "run"}, {"argv", argv}, {"cwd", "/"}, {"env", {"PATH=/usr/bin:/bin"}},
              {"watch", false}, {"transient", false}};
  for (auto& [k, v] : extra.items()) req[k] = v;
  json reply = d.call(req, {in, fo, fo});
  ::close(in);
  ::close(fo);
  return reply["job"]["id"].get<std::string>();
}

// The testjob process of a job started by `run`: the child of its crest-init.
pid_t job_process(const Daemon& d, const std::string& id) {
  pid_t init = d.status(id).value("pid", 0);
  auto kids = children_of(init);
  return kids.empty() ? 0 : kids.front();
}

int count_of(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) ++n;
  return n;
}

TEST(Daemon, RegisteredTreeGetsPeriodicIncrementalCheckpoints) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::string out = dir / "job.out";
  pid_t pid = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "8"}, output_to(out));
  reaper.add(pid);
  ASSERT_TRUE(wait_until([&] { return file_contains(out, "step 1\n"); }, 10s));

  json job = d.call({{"op", "register"}, {"pid", pid}, {"every", "1s"}, {"keep", 10}})["job"];
  std::string id = job["id"];
  EXPECT_EQ(job["state"], "running");
  EXPECT_EQ(job["kind"], "registered");
  EXPECT_EQ(job["pid"], pid);
  ASSERT_TRUE(d.wait_checkpoints(id, 3, 30s)) << d.status(id).dump(2);

  json st = d.status(id);
  EXPECT_EQ(st["checkpoint_failures"], 0) << st.dump(2);
  EXPECT_TRUE(st["last_checkpoint"]["incremental"].get<bool>()) << st.dump(2);
  EXPECT_NE(st["last_checkpoint"]["parent"], "");
  EXPECT_GE(st["chain_length"].get<int>(), 3);
  EXPECT_GT(st["last_checkpoint"]["frozen_ns"].get<int64_t>(), 0);
  EXPECT_NE(st["tracker"], "");
  EXPECT_GT(st["images"]["bytes"].get<uint64_t>(), 0u);
  EXPECT_GE(st["next_checkpoint_in_s"].get<double>(), 0.0);

  // The chain on disk: one full checkpoint, then incremental ones, each naming its parent; every
  // file the job's user's (here root's), 0600; the newest verifies with its whole chain.
  std::string images = st["dir"];
  auto store = storage::ImageStore::open_directory(images);
  auto entries = store->list();
  ASSERT_GE(entries.size(), 3u);
  EXPECT_EQ(entries[0].parent_file, "");
  for (size_t i = 1; i < entries.size(); ++i) EXPECT_EQ(entries[i].parent_file, entries[i - 1].name);
  for (auto& e : entries) {
    struct stat sb {};
    ASSERT_EQ(::stat((images + "/" + e.name).c_str(), &sb), 0);
    EXPECT_EQ(sb.st_mode & 0777, 0600u) << e.name;
    EXPECT_EQ(sb.st_uid, 0u);
  }
  EXPECT_TRUE(store->verify().ok());
  // The job ran on all along.
  EXPECT_TRUE(alive(pid));
  EXPECT_EQ(proc_field(pid, "TracerPid"), "0");
}

// A test job started by `run` with `args`, checkpointed every 500 ms, SIGKILLed once it has two
// checkpoints and before it ends. Sets the job's id and the result its uninterrupted run gives.
void run_and_kill(Daemon& d, const TempDir& dir, Reaper& reaper, const std::vector<std::string>& args,
                  const std::string& out, std::string& id, std::string& want) {
  want = expected_result(dir, args);
  ASSERT_FALSE(want.empty());
  id = run_job(d, args, out, {{"every", "500ms"}});
  json st = d.status(id);
  reaper.add(st["pid"].get<pid_t>());
  EXPECT_EQ(st["kind"], "run");
  ASSERT_TRUE(d.wait_checkpoints(id, 2, 30s)) << d.status(id).dump(2);
  pid_t victim = job_process(d, id);
  ASSERT_GT(victim, 0);
  ASSERT_TRUE(file_contains(out, "step ")) << read_text(out);
  ASSERT_FALSE(file_contains(out, "result ")) << "the job ended before it could be killed";
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
}

TEST(Daemon, KilledJobIsRestoredAndCompletesWithTheRightResult) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir, {"--restore-backoff", "200ms"});
  d.start();
  std::string out = dir / "job.out", id, want;
  ASSERT_NO_FATAL_FAILURE(run_and_kill(d, dir, reaper, {"-n", "60", "-m", "50", "-M", "16"}, out, id, want));
  json st;

  ASSERT_TRUE(wait_until([&] { return d.status(id)["state"] == "ended"; }, 60s))
      << d.status(id).dump(2) << read_text(d.log);
  st = d.status(id);
  EXPECT_EQ(st["exit"], (json{{"code", 0}})) << st.dump(2);
  EXPECT_EQ(st["restores"], 1);
  EXPECT_EQ(st["auto_restore"]["used"], 1);
  EXPECT_NE(st["last_restore"]["reason"].get<std::string>().find("SIGKILL"), std::string::npos)
      << st.dump(2);
  std::string text = read_text(out);
  EXPECT_EQ(job_result(text), want) << text;
  // The output file was rolled back to the checkpoint on restore: every step is there once.
  EXPECT_EQ(count_of(text, "step 60\n"), 1) << text;
  EXPECT_EQ(count_of(text, "step 1\n"), 1) << text;
  EXPECT_EQ(count_of(text, "result "), 1) << text;
  // Every restore is in the log with its reason.
  EXPECT_TRUE(wait_until([&] { return file_contains(d.log, "restored from"); }, 5s));
  EXPECT_TRUE(file_contains(d.log, "killed by SIGKILL"));
}

// crestd --lazy-restore: the killed job is restored lazily (its 64 MiB served from the image as
// it runs), every page is in place soon after, the checkpoints on its timer go on after that
// (none is taken, nor fails, while pages are missing), and the job ends with the reference
// result.
TEST(Daemon, ALazyRestoreServesTheJobsMemoryAndItsCheckpointsGoOnAfter) {
  TempDir dir;
  Reaper reaper;
  Daemon d(dir, {"--restore-backoff", "200ms", "--lazy-restore"});
  d.start();
  std::string out = dir / "job.out", id, want;
  ASSERT_NO_FATAL_FAILURE(
      run_and_kill(d, dir, reaper, {"-n", "60", "-m", "50", "-M", "64", "-z"}, out, id, want));
  json st = d.status(id);
  EXPECT_EQ(st["policy"]["lazy_restore"], true) << st.dump(2);

  ASSERT_TRUE(wait_until([&] { return d.status(id)["restores"] == 1; }, 60s))
      << d.status(id).dump(2) << read_text(d.log);
  const uint64_t before = d.status(id)["checkpoints"];
  ASSERT_TRUE(wait_until([&] { return file_contains(d.log, "lazy restore: all"); }, 30s))
      << read_text(d.log);
  ASSERT_TRUE(wait_until([&] { return d.status(id)["state"] == "ended"; }, 60s))
      << d.status(id).dump(2) << read_text(d.log);
  st = d.status(id);
  EXPECT_EQ(st["exit"], (json{{"code", 0}})) << st.dump(2);
  EXPECT_EQ(st["last_restore"]["lazy"], true) << st.dump(2);
  EXPECT_EQ(st["checkpoint_failures"], 0) << st.dump(2) << read_text(d.log);
  EXPECT_GT(st["checkpoints"].get<uint64_t>(), before) << "no checkpoint after the lazy restore\n"
                                                       << st.dump(2);
  EXPECT_FALSE(st["lazy_serving"].get<bool>());
  EXPECT_TRUE(file_contains(d.log, "its memory served lazily")) << read_text(d.log);
  std::string text = read_text(out);
  EXPECT_EQ(job_result(text), want) << text;
  EXPECT_EQ(count_of(text, "result "), 1) << text;
}

TEST(Daemon, RegisteredTreeKilledIsRestoredFromItsExitStatus) {
  // crestd is not this job's parent: it learns how the job ended from its pidfd (the kernel's
  // PIDFD_INFO_EXIT), once the parent (this test) has reaped it.
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir, {"--restore-backoff", "200ms"});
  d.start();
  std::vector<std::string> args{"-n", "50", "-m", "50", "-M", "8"};
  std::string want = expected_result(dir, args);
  std::string out = dir / "job.out";
  std::vector<std::string> argv{testjob_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  pid_t pid = spawn(argv, output_to(out));
  reaper.add(pid);
  ASSERT_TRUE(wait_until([&] { return file_contains(out, "step 1\n"); }, 10s));
  std::string id = d.call({{"op", "register"}, {"pid", pid}, {"every", "500ms"}})["job"]["id"];
  ASSERT_TRUE(d.wait_checkpoints(id, 2, 30s));
  ::kill(pid, SIGKILL);
  auto st = wait_child(pid, 10s);
  ASSERT_TRUE(st && WIFSIGNALED(*st));

  ASSERT_TRUE(wait_until([&] { return d.status(id)["state"] == "ended"; }, 60s))
      << d.status(id).dump(2) << read_text(d.log);
  json s = d.status(id);
  EXPECT_EQ(s["restores"], 1) << s.dump(2);
  EXPECT_EQ(s["exit"], (json{{"code", 0}})) << s.dump(2);
  EXPECT_EQ(job_result(read_text(out)), want) << read_text(out);
}

TEST(Daemon, RetentionKeepsTheNewestAndWhatTheyDependOn) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::string id = run_job(d, {"-n", "100000", "-m", "30", "-M", "4"}, dir / "job.out",
                           {{"every", "300ms"}, {"keep", 2}, {"policy", {{"full_every", 2}}}});
  reaper.add(d.status(id)["pid"].get<pid_t>());
  ASSERT_TRUE(d.wait_checkpoints(id, 9, 60s)) << d.status(id).dump(2);
  d.call({{"op", "pause"}, {"job", id}});
  // Wait for a checkpoint (and its retention) that may still be running when the timer paused.
  ASSERT_TRUE(wait_until([&] { return !d.status(id)["checkpointing"].get<bool>(); }, 30s));
  json st = d.status(id);
  std::string images = st["dir"];
  auto store = storage::ImageStore::open_directory(images);
  auto entries = store->list();
  // 9+ committed in chains of three (full, incremental, incremental); on disk at most
  // keep + full_every (4): the newest two and the chain they need, never a chain cut in two.
  EXPECT_LE(entries.size(), 4u) << st.dump(2);
  EXPECT_GE(entries.size(), 2u);
  EXPECT_LT(entries.size(), st["checkpoints"].get<size_t>());
  EXPECT_EQ(st["checkpoint_failures"], 0) << st.dump(2);
  ASSERT_FALSE(entries.empty());
  EXPECT_EQ(entries.front().parent_file, "") << "the oldest file left must be a full checkpoint";
  std::set<std::string> names;
  for (auto& e : entries) names.insert(e.name);
  for (auto& e : entries) {
    EXPECT_TRUE(e.readable) << e.name << ": " << e.error;
    if (!e.parent_file.empty()) {
      EXPECT_TRUE(names.count(e.parent_file)) << e.name << " lost its parent";
    }
    EXPECT_TRUE(store->verify(e.name).ok()) << e.name;
  }
  EXPECT_EQ(entries.back().name, st["last_checkpoint"]["name"]);
  EXPECT_LE(st["chain_length"].get<int>(), 3);
  // The newest two are what a restore needs: both readable with their chains (checked above).
}

// The default way chains stay short: the newest checkpoint is compacted in the background once
// its chain is compact_after files long; the job is never stopped for a full checkpoint after
// the first, every checkpoint after a compaction is still incremental on the compacted one, and
// what is kept verifies and restores to the right result.
TEST(Daemon, LongChainsAreCompactedInTheBackgroundAndStayIncremental) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::vector<std::string> args{"-n", "250", "-m", "30", "-M", "4"};
  std::string want = expected_result(dir, args);
  std::string id = run_job(d, args, dir / "job.out",
                           {{"every", "200ms"}, {"keep", 2}, {"policy", {{"compact_after", 3}}}});
  reaper.add(d.status(id)["pid"].get<pid_t>());
  ASSERT_TRUE(wait_until([&] { return d.status(id)["compactions"]["count"].get<int>() >= 2; }, 60s))
      << d.status(id).dump(2);
  d.call({{"op", "pause"}, {"job", id}});
  ASSERT_TRUE(wait_until([&] { return !d.status(id)["checkpointing"].get<bool>(); }, 30s));
  json st = d.status(id);
  EXPECT_EQ(st["checkpoint_failures"], 0) << st.dump(2);
  EXPECT_EQ(st["last_error"], "") << st.dump(2);
  EXPECT_LE(st["chain_length"].get<int>(), 3) << st.dump(2);
  auto store = storage::ImageStore::open_directory(st["dir"].get<std::string>());
  auto entries = store->list();
  // keep (2) and the chain the older of them needs: never more than keep + compact_after.
  EXPECT_LE(entries.size(), 5u) << st.dump(2);
  int full = 0;
  for (auto& e : entries) {
    EXPECT_TRUE(e.readable) << e.name << ": " << e.error;
    EXPECT_TRUE(store->verify(e.name).ok()) << e.name;
    if (e.parent_file.empty()) ++full;
  }
  EXPECT_GE(full, 1);
  // Only the first checkpoint was taken full: the crestd log names every full one.
  EXPECT_EQ(count_of(read_text(d.log), "(full)"), 1) << read_text(d.log);
  // The newest, compacted or not, brings the job back to the right result.
  d.call({{"op", "resume"}, {"job", id}});
  ASSERT_TRUE(d.wait_checkpoints(id, st["checkpoints"].get<uint64_t>() + 1, 30s));
  pid_t victim = job_process(d, id);
  ASSERT_GT(victim, 0);
  ::kill(victim, SIGKILL);
  ASSERT_TRUE(wait_until([&] { return d.status(id)["state"] == "ended"; }, 90s))
      << d.status(id).dump(2);
  EXPECT_EQ(d.status(id)["restores"], 1);
  EXPECT_EQ(job_result(read_text(dir / "job.out")), want);
}

// A compaction keeps what retention keeps: with keep 4 and a compaction after every second
// file of a chain, the compacted checkpoint's ancestors that are among the newest four stay on
// disk (the compaction itself removes nothing; retention then drops only what keep lets go).
TEST(Daemon, CompactionKeepsTheCheckpointsKeepKeeps) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::string id = run_job(d, {"-n", "250", "-m", "30", "-M", "4"}, dir / "job.out",
                           {{"every", "200ms"}, {"keep", 4}, {"policy", {{"compact_after", 2}}}});
  reaper.add(d.status(id)["pid"].get<pid_t>());
  ASSERT_TRUE(wait_until([&] { return d.status(id)["compactions"]["count"].get<int>() >= 3; }, 60s))
      << d.status(id).dump(2);
  d.call({{"op", "pause"}, {"job", id}});
  // Settled: no checkpoint running, and none started since the last look (one queued before
  // the pause may still start after it).
  uint64_t seen = 0;
  ASSERT_TRUE(wait_until([&] {
    std::this_thread::sleep_for(300ms);
    json s = d.status(id);
    if (s["checkpointing"].get<bool>()) return false;
    uint64_t n = s["checkpoints"].get<uint64_t>();
    bool same = n == seen;
    seen = n;
    return same;
  }, 30s));
  json st = d.status(id);
  EXPECT_EQ(st["checkpoint_failures"], 0) << st.dump(2);
  EXPECT_EQ(st["last_error"], "") << st.dump(2);
  ASSERT_GE(st["checkpoints"].get<uint64_t>(), 4u) << st.dump(2);
  auto store = storage::ImageStore::open_directory(st["dir"].get<std::string>());
  auto entries = store->list();
  // Every chain is at most two files long and each newest one is compacted: the newest four
  // are exactly what is left, each readable, its chain whole.
  std::set<std::string> names;
  for (auto& e : entries) names.insert(e.name);
  ASSERT_EQ(entries.size(), 4u) << st.dump(2);
  std::string newest = st["last_checkpoint"]["name"].get<std::string>();
  EXPECT_EQ(entries.back().name, newest);
  uint64_t newest_seq = entries.back().sequence;
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    EXPECT_EQ(e.sequence, newest_seq - (entries.size() - 1 - i)) << e.name << " is not one of "
                                                                    "the newest four";
    EXPECT_TRUE(e.readable) << e.name << ": " << e.error;
    if (!e.parent_file.empty()) {
      EXPECT_TRUE(names.count(e.parent_file)) << e.name;
    }
    EXPECT_TRUE(store->verify(e.name).ok()) << e.name;
  }
  d.call({{"op", "resume"}, {"job", id}});
}

TEST(Daemon, TwoJobsCheckpointInParallelWithoutBlockingEachOtherOrTheSocket) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir, {"--concurrency", "2", "--snapshot", "stop-copy"});
  d.start();
  // A big, incompressible job whose checkpoint takes a while, and a small one.
  std::string big = run_job(d, {"-n", "100000", "-m", "100", "-M", "1024", "-z"}, dir / "big.out",
                            {{"every", "1h"}});
  std::string small = run_job(d, {"-n", "100000", "-m", "20", "-M", "4"}, dir / "small.out",
                              {{"every", "1h"}});
  reaper.add(d.status(big)["pid"].get<pid_t>());
  reaper.add(d.status(small)["pid"].get<pid_t>());
  ASSERT_TRUE(wait_until([&] { return file_contains(dir / "big.out", "step 1\n"); }, 30s));

  d.call({{"op", "checkpoint"}, {"job", big}, {"wait", false}});
  ASSERT_TRUE(wait_until([&] { return d.status(big)["checkpointing"].get<bool>(); }, 10s));
  // While the big one is being checkpointed: the socket answers, and the small job's checkpoint
  // is taken and committed.
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(d.call({{"op", "hello"}})["ok"].get<bool>());
  auto hello_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(hello_ms, 1000);
  json r = d.call({{"op", "checkpoint"}, {"job", small}});
  EXPECT_TRUE(r["ok"].get<bool>());
  json bs = d.status(big);
  EXPECT_TRUE(bs["checkpointing"].get<bool>())
      << "the big job's checkpoint was over before the small one's: " << bs.dump(2);
  EXPECT_EQ(bs["checkpoints"], 0);
  ASSERT_TRUE(d.wait_checkpoints(big, 1, 120s));
  json both = d.call({{"op", "jobs"}});
  EXPECT_EQ(both["jobs"].size(), 2u);
}

// Many clients start jobs at the same moment (a batch system's prologues, a job array): every
// one starts, as a different user's job would too (credentials switched in each new process).
TEST(Daemon, JobsStartedAtTheSameMomentAllStart) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  constexpr int kJobs = 12;
  std::vector<std::string> ids(kJobs), errors(kJobs);
  std::vector<std::thread> clients;
  for (int i = 0; i < kJobs; ++i)
    clients.emplace_back([&, i] {
      try {
        int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        int out = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
        json req = {{"op", "run"}, {"argv", {testjob_bin(), "-n", "100000", "-m", "50"}},
                    {"cwd", "/"}, {"watch", false}, {"transient", false}, {"every", "1h"}};
        // A launch that hangs must fail this test, not hold it until ctest's timeout.
        json reply = agent::Client::connect(d.socket).call(req, {in, out, out}, 20000);
        ::close(in);
        ::close(out);
        ids[static_cast<size_t>(i)] = reply["job"]["id"];
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(i)] = e.what();
      }
    });
  for (auto& c : clients) c.join();
  json jobs = d.call({{"op", "jobs"}})["jobs"];
  for (auto& j : jobs) reaper.add(j["pid"].get<pid_t>());
  for (int i = 0; i < kJobs; ++i)
    EXPECT_TRUE(errors[static_cast<size_t>(i)].empty()) << "client " << i << ": " << errors[static_cast<size_t>(i)];
  ASSERT_EQ(jobs.size(), static_cast<size_t>(kJobs));
  for (auto& j : jobs) {
    EXPECT_EQ(j["state"], "running") << j.dump(2);
    pid_t init = j["pid"];
    EXPECT_TRUE(wait_until([&] { return children_of(init).size() == 1; }, 10s))
        << "job " << j["id"] << ": crest-init started no job";
  }
}

TEST(Daemon, TwoJobsOnShortTimersBothKeepTheirSchedule) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::string a = run_job(d, {"-n", "100000", "-m", "20", "-M", "8"}, dir / "a.out", {{"every", "500ms"}});
  std::string b = run_job(d, {"-n", "100000", "-m", "20", "-M", "8"}, dir / "b.out", {{"every", "500ms"}});
  reaper.add(d.status(a)["pid"].get<pid_t>());
  reaper.add(d.status(b)["pid"].get<pid_t>());
  ASSERT_TRUE(d.wait_checkpoints(a, 4, 30s));
  ASSERT_TRUE(d.wait_checkpoints(b, 4, 30s));
  for (auto& id : {a, b}) EXPECT_EQ(d.status(id)["checkpoint_failures"], 0) << d.status(id).dump(2);
}

TEST(Daemon, EveryAutoUsesDalysIntervalFromTheMeasuredCost) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir, {"--mtbf", "1h", "--min-interval", "300ms"});
  d.start();
  std::string id = run_job(d, {"-n", "100000", "-m", "20", "-M", "8"}, dir / "job.out",
                           {{"every", "auto"}});
  reaper.add(d.status(id)["pid"].get<pid_t>());
  json st = d.status(id);
  EXPECT_EQ(st["every"], "auto");
  EXPECT_FALSE(st["auto"]["measured"].get<bool>());
  EXPECT_NEAR(st["interval_s"].get<double>(), 0.3, 1e-9);  // the first, measuring checkpoint
  ASSERT_TRUE(d.wait_checkpoints(id, 1, 30s));
  st = d.status(id);
  double cost = st["auto"]["cost_s"].get<double>();
  ASSERT_GT(cost, 0);
  double x = cost / 7200;
  double daly = std::sqrt(2 * cost * 3600) * (1 + std::sqrt(x) / 3 + x / 9) - cost;
  EXPECT_NEAR(st["interval_s"].get<double>(), std::max(daly, 0.3), 0.002) << st.dump(2);
  EXPECT_TRUE(st["auto"]["measured"].get<bool>());
}

TEST(Daemon, PauseResumeAndForget) {
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::string id = run_job(d, {"-n", "100000", "-m", "20", "-M", "4"}, dir / "job.out",
                           {{"every", "300ms"}, {"name", "pauser"}});
  pid_t root = d.status(id)["pid"];
  reaper.add(root);
  ASSERT_TRUE(d.wait_checkpoints(id, 1, 30s));
  json st = d.call({{"op", "pause"}, {"job", "pauser"}})["job"];  // by name
  EXPECT_TRUE(st["paused"].get<bool>());
  ASSERT_TRUE(wait_until([&] { return !d.status(id)["checkpointing"].get<bool>(); }, 30s));
  uint64_t n = d.status(id)["checkpoints"];
  // No event tells that nothing happened: give the timer ample time to misbehave.
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(d.status(id)["checkpoints"], n);
  // A checkpoint on demand still works while paused.
  EXPECT_EQ(d.call({{"op", "checkpoint"}, {"job", id}})["job"], id);
  EXPECT_EQ(d.status(id)["checkpoints"], n + 1);
  d.call({{"op", "resume"}, {"job", id}});
  ASSERT_TRUE(d.wait_checkpoints(id, n + 3, 30s));
  std::string cg = d.status(id)["cgroup"];
  std::string scratch = d.status(id)["scratch"];
  ASSERT_FALSE(scratch.empty());
  d.call({{"op", "forget"}, {"job", id}});
  EXPECT_EQ(d.call_error({{"op", "status"}, {"job", id}}), "not-found");
  EXPECT_TRUE(alive(root)) << "forget must leave the job running";
  EXPECT_TRUE(std::filesystem::is_directory(scratch)) << "the running job lost its scratch directory";
  // crestd still reaps it when it ends (it is crestd's child), and removes its cgroup and its
  // scratch directory.
  ::kill(root, SIGKILL);
  EXPECT_TRUE(wait_until([&] { return !std::filesystem::exists(cg); }, 10s)) << cg;
  EXPECT_TRUE(wait_until([&] { return !std::filesystem::exists(scratch); }, 10s)) << scratch;
}

TEST(Daemon, ASlurmJobsCheckpointHoldingTheStopSignalIsDiscarded) {
  // Slurm stops a job (requeue, cancel, time limit) with SIGTERM to its processes: a checkpoint
  // caught at that moment would bring the job back only to die. crestd removes it and counts a
  // failure naming the signal. Here the signal is pending because the job blocks it.
  if (::geteuid() != 0) GTEST_SKIP() << "slurm_job may be given only by root (the plugin)";
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "python3 is not installed";
  TempDir dir;
  Reaper reaper;
  Daemon d(dir);
  d.start();
  std::string out = dir / "job.out";
  pid_t pid = spawn({"/usr/bin/python3", "-c",
                     "import os, signal, time\n"
                     "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])\n"
                     "os.kill(os.getpid(), signal.SIGTERM)\n"
                     "print('ready', flush=True)\n"
                     "time.sleep(600)\n"},
                    output_to(out));
  reaper.add(pid);
  ASSERT_TRUE(wait_until([&] { return file_contains(out, "ready"); }, 10s)) << read_text(out);
  json job = d.call({{"op", "register"}, {"pid", pid}, {"every", "1h"}, {"slurm_job", 77}})["job"];
  std::string id = job["id"];
  try {
    d.call({{"op", "checkpoint"}, {"job", id}});
    ADD_FAILURE() << "the checkpoint of a job with SIGTERM pending was kept";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Errc::busy) << e.what();
    EXPECT_NE(std::string(e.what()).find("the job was being stopped (SIGTERM pending"),
              std::string::npos) << e.what();
  }
  json s = d.status(id);
  EXPECT_EQ(s["checkpoints"], 0) << s.dump(2);
  EXPECT_EQ(s["checkpoint_failures"], 1) << s.dump(2);
  auto store = storage::ImageStore::open_directory(job["dir"].get<std::string>());
  EXPECT_TRUE(store->list().empty()) << "the checkpoint is still on disk";
  // The same request by Slurm id, as the plugin's "checkpoint now" signal sends it.
  EXPECT_EQ(d.call_error({{"op", "checkpoint"}, {"slurm_job", 77}}), "busy");
  EXPECT_EQ(d.call_error({{"op", "checkpoint"}, {"slurm_job", 78}}), "not-found");
}

}  // namespace
}  // namespace crest::agent_test
