// crestd and failing storage: a job's images directory on a small file system that fills up. Each
// checkpoint that cannot be written fails, is reported (status, log, metrics) and tried again at
// the next interval; the job runs on untouched, the checkpoints committed before stay whole, no
// temporary file is left, and checkpoints succeed again once there is room.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "tests/agent/harness.h"

namespace crest::agent_test {
namespace {

// A size-limited tmpfs made by the test, unmounted (lazily) when it ends.
struct SmallFs {
  explicit SmallFs(const std::string& at, const std::string& size) : path(at) {
    ::mkdir(path.c_str(), 0755);
    std::string opts = "size=" + size + ",mode=0755";
    ok = ::mount("crest-test-small", path.c_str(), "tmpfs", 0, opts.c_str()) == 0;
    if (!ok) error = std::strerror(errno);
  }
  ~SmallFs() {
    if (ok) ::umount2(path.c_str(), MNT_DETACH);
  }
  uint64_t free_bytes() const {
    struct statvfs sv {};
    if (::statvfs(path.c_str(), &sv) != 0) return 0;
    return static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
  }
  // Takes all but `leave` bytes of the free space with one file.
  bool fill(const std::string& filler, uint64_t leave) {
    int fd = ::open(filler.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    uint64_t free = free_bytes();
    int rc = free > leave ? ::posix_fallocate(fd, 0, static_cast<off_t>(free - leave)) : 0;
    ::close(fd);
    return rc == 0;
  }
  std::string path, error;
  bool ok = false;
};

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    out.push_back(e.path().filename());
  return out;
}

std::string run_crest(const TempDir& dir, const std::vector<std::string>& args, int* status) {
  std::vector<std::string> argv{crest_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out = dir / "crest.out";
  pid_t p = spawn(argv, output_to(out));
  auto st = wait_child(p, 60s);
  *status = st.value_or(-1);
  return read_text(out);
}

TEST(Storage, AFullDiskFailsCheckpointsUntilThereIsRoomAgain) {
  TempDir dir;
  Reaper reaper;
  SmallFs small(dir / "small", "16m");
  ASSERT_TRUE(small.ok) << "cannot mount a tmpfs: " << small.error;
  Daemon d(dir);
  d.start();

  // The job, run straight through first for its result.
  const std::vector<std::string> args{"-n", "160", "-m", "50", "-M", "2"};
  std::vector<std::string> argv{testjob_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string ref = dir / "ref.out";
  pid_t rp = spawn(argv, output_to(ref));
  ASSERT_TRUE(wait_child(rp, 60s).has_value());
  const std::string expected = job_result(read_text(ref));
  ASSERT_FALSE(expected.empty()) << read_text(ref);

  const std::string images = small.path + "/job";
  const std::string out = dir / "job.out";
  pid_t job = spawn(argv, output_to(out));
  reaper.add(job);
  ASSERT_TRUE(wait_until([&] { return file_contains(out, "step 1\n"); }, 10s));
  std::string id = d.call({{"op", "register"},
                           {"pid", job},
                           {"every", "300ms"},
                           {"keep", 10},
                           {"dir", images}})["job"]["id"];
  ASSERT_TRUE(d.wait_checkpoints(id, 1, 20s)) << d.status(id).dump(2);

  // The disk fills: every checkpoint fails now, each at its interval.
  ASSERT_TRUE(small.fill(small.path + "/filler", 4096));
  const uint64_t before = d.status(id)["checkpoints"];
  ASSERT_TRUE(wait_until([&] { return d.status(id).value("checkpoint_failures", 0) >= 3; }, 20s))
      << d.status(id).dump(2) << read_text(d.log);
  json st = d.status(id);
  EXPECT_LE(st["checkpoints"].get<uint64_t>(), before + 1)
      << "checkpoints kept succeeding on a full disk";
  const std::string err = st.value("last_error", "");
  EXPECT_TRUE(err.rfind("io: ", 0) == 0) << err;
  EXPECT_NE(err.find("No space left on device"), std::string::npos) << err;
  EXPECT_NE(err.find(images + "/ckpt-"), std::string::npos) << "the file is not named: " << err;
  EXPECT_EQ(st["state"], "running");
  // The log is written by crestd's logger thread: give it a moment under load.
  EXPECT_TRUE(wait_until([&] { return file_contains(d.log, "checkpoint failed"); }, 10s))
      << read_text(d.log);
  std::string metrics = d.call({{"op", "metrics"}})["text"];
  EXPECT_NE(metrics.find("crest_job_checkpoint_failures_total{"), std::string::npos) << metrics;
  // The job runs on: not stopped, not traced, not frozen.
  EXPECT_TRUE(alive(job));
  EXPECT_EQ(proc_field(job, "TracerPid"), "0");
  EXPECT_NE(proc_field(job, "State").substr(0, 1), "T") << proc_field(job, "State");
  // Nothing half-written is left; every committed checkpoint verifies.
  for (const auto& name : entries(images))
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << "left behind: " << name;
  int status = 0;
  std::string v = run_crest(dir, {"verify", images}, &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << v;

  // Room again: the next interval's checkpoint succeeds.
  ASSERT_EQ(::unlink((small.path + "/filler").c_str()), 0);
  const uint64_t failed = d.status(id)["checkpoint_failures"];
  const uint64_t done = d.status(id)["checkpoints"];
  ASSERT_TRUE(d.wait_checkpoints(id, done + 1, 20s)) << d.status(id).dump(2) << read_text(d.log);
  EXPECT_LE(d.status(id)["checkpoint_failures"].get<uint64_t>(), failed + 1);

  // And the job ends with the result it would have had.
  auto end = wait_child(job, 60s);
  ASSERT_TRUE(end.has_value());
  EXPECT_TRUE(WIFEXITED(*end) && WEXITSTATUS(*end) == 0) << describe_status(*end);
  EXPECT_EQ(job_result(read_text(out)), expected) << read_text(out);
  v = run_crest(dir, {"verify", images}, &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << v;
}

}  // namespace
}  // namespace crest::agent_test
