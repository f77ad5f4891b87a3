// A writer killed at a random moment (fork + exec of a writer, SIGKILL after a random delay, many
// trials) never leaves a file that reads as complete unless it was fully committed; the previous
// checkpoint still verifies and stays the newest; the next writer succeeds and clears the debris.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <set>

#include "tests/storage/test_util.h"

namespace crest::test {
namespace {

constexpr uint64_t kPages = 6144;  // 24 MiB per checkpoint
constexpr int kTrials = 30;

// Runs the writer; kills it after `delay` unless negative. Returns the wait status.
int run_writer(const std::string& dir, uint64_t seed, bool incremental,
               std::chrono::microseconds delay) {
  std::string pages = std::to_string(kPages), s = std::to_string(seed);
  pid_t pid = ::fork();
  if (pid == 0) {
    int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) ::dup2(devnull, STDOUT_FILENO);
    const char* argv[] = {CREST_CRASH_WRITER,
                          dir.c_str(),
                          pages.c_str(),
                          s.c_str(),
                          incremental ? "incremental" : "full",
                          nullptr};
    ::execv(CREST_CRASH_WRITER, const_cast<char* const*>(argv));
    ::_exit(127);
  }
  if (pid < 0) return -1;
  if (delay.count() >= 0) {
    // The delay is the experiment's variable (where the writer dies), not synchronisation.
    timespec ts{static_cast<time_t>(delay.count() / 1000000),
                static_cast<long>(delay.count() % 1000000) * 1000};
    ::nanosleep(&ts, nullptr);
    ::kill(pid, SIGKILL);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::vector<std::string> tmp_files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) out.push_back(n);
  }
  ::closedir(d);
  return out;
}

// Checks a readable checkpoint completely: every chunk, and every page present.
void expect_whole(storage::ImageStore& store, const std::string& name) {
  auto report = store.verify(name);
  EXPECT_TRUE(report.ok()) << name << ": " << (report.errors.empty() ? "" : report.errors[0]);
  auto r = store.open(name);
  EXPECT_EQ(r->meta().stats.at("pages_present"), static_cast<int64_t>(kPages + 64)) << name;
}

TEST(CrashDuringWrite, KilledWriterNeverLeavesAFalseCheckpoint) {
  TempDir dir;
  std::string images = dir.path() + "/images";
  std::random_device rd;
  uint64_t seed = rd();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);

  // A first, complete run: the baseline, and how long a whole write takes.
  auto t0 = std::chrono::steady_clock::now();
  int status = run_writer(images, 1, false, std::chrono::microseconds(-1));
  auto full =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  auto store = storage::ImageStore::open_directory(images);
  std::set<std::string> committed{store->newest()->name};
  expect_whole(*store, *committed.begin());

  int killed = 0, finished = 0, killed_after_commit = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    std::string before = store->newest()->name;
    auto delay =
        std::chrono::microseconds(rng() % static_cast<uint64_t>(full.count() * 12 / 10 + 1));
    status = run_writer(images, rng(), trial % 2 == 1, delay);
    bool exited_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (WIFSIGNALED(status)) ++killed;
    if (exited_ok) ++finished;
    ASSERT_TRUE(exited_ok || (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
        << "status " << status;

    // Every file that reads as complete is one that was fully committed.
    std::vector<std::string> fresh;
    for (const auto& e : store->list()) {
      if (!e.readable) {
        ADD_FAILURE() << e.name << " is unreadable: " << e.error;
        continue;
      }
      if (!committed.count(e.name)) fresh.push_back(e.name);
    }
    ASSERT_LE(fresh.size(), 1u);
    for (const auto& n : fresh) {
      expect_whole(*store, n);
      committed.insert(n);
      if (!exited_ok) ++killed_after_commit;
    }
    if (exited_ok) {
      EXPECT_EQ(fresh.size(), 1u);
    }
    // The previous checkpoint is intact, and the newest unless a new one was committed.
    expect_whole(*store, before);
    EXPECT_EQ(store->newest()->name, fresh.empty() ? before : fresh[0]);
    // `latest` always names a committed checkpoint (the previous one if the writer died between
    // its rename and moving the link).
    char target[256] = {};
    ASSERT_GT(::readlink((images + "/latest").c_str(), target, sizeof target - 1), 0);
    EXPECT_TRUE(committed.count(target)) << target;
  }
  RecordProperty("killed", killed);
  RecordProperty("finished", finished);
  std::printf(
      "[ crash    ] %d trials: %d killed (%d after the rename), %d finished; whole write %lld us\n",
      kTrials, killed, killed_after_commit, finished, static_cast<long long>(full.count()));
  EXPECT_GT(killed, 0);

  // The next writer succeeds and removes what the killed ones left.
  {
    auto w = store->begin();
    EXPECT_EQ(tmp_files(images).size(), 1u);  // its own .tmp only
    w->commit({});
  }
  EXPECT_TRUE(tmp_files(images).empty());
}

}  // namespace
}  // namespace crest::test
