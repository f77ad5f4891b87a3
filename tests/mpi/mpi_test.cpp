// Open MPI jobs under crest: `mpirun -np 4` of the MPI heat solver (examples/mpi/heat.c) on this
// node, the whole tree (mpirun with its PMIx server and I/O forwarding, four ranks with their
// progress threads, vader shared-memory segments, TCP connections) checkpointed and restored.
//
//   - under `crest run --every 2s`, one rank SIGKILLed mid-run (mpirun then aborts the job and
//     removes its session files and segments): the job comes back from its newest checkpoint
//     and prints the same answer as a run that was never interrupted; with the default
//     transports (self,vader,tcp) and with TCP only (self,tcp);
//   - the same job dumped by hand (crest dump -t <mpirun pid>) and restored (crest restore),
//     twice;
//   - the image of a 4-rank job holds each vader segment once;
//   - libcrest-mpi: the solver asking for checkpoints (crest_mpi_checkpoint) under crest run's
//     supervisor, under crestd, and as a registered mpirun restored by hand; the unchanged
//     solver under the PMPI wrapper, and a Fortran solver (use mpi, use mpi_f08) under it; each
//     killed, restored, told so (CREST_MPI_RESTORED), with the same answer; and the program told
//     why when no agent runs it;
//   - refusals: a network adapter's device (InfiniBand/RDMA verbs, Omni-Path, Slingshot) named
//     with the Open MPI setting that avoids it, and a real device refused naming its class.
//
// The solver's answer depends only on the grid and the number of sweeps, not on the number of
// ranks, so the reference is one quick single-rank run. Its output shows that the job was restored,
// not started again: one start line, and sweep numbers that only go up.
//
// Skipped, saying why, when Open MPI is not installed (mpirun missing, or the solver not built
// because libopenmpi-dev was missing at configure time). .ci/setup installs both.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "core/fds/device.h"

#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

const std::string kCrest = CREST_MPI_CREST;
const std::string kHeat = CREST_MPI_HEAT;  // "" when examples/mpi was not built
// The solver with -c (crest_mpi_checkpoint), and the PMPI wrapper: "" when not built.
const std::string kHeatCkpt = CREST_MPI_HEAT_CKPT;
const std::string kAuto = CREST_MPI_AUTO;
const std::string kCrestd = CREST_MPI_CRESTD;
// tests/mpi/heat_fortran.F90 built with `use mpi` and with `use mpi_f08`: "" when not built.
const std::string kHeatFortran = CREST_MPI_HEAT_FORTRAN;
const std::string kHeatFortranF08 = CREST_MPI_HEAT_FORTRAN_F08;

// The job: 200 x 200 grid, 240 sweeps, a pause of 25 ms per sweep (about 6 s whatever the
// machine), progress every 10 sweeps.
const std::vector<std::string> kHeatArgs = {"-n", "200", "-s", "240", "-r", "10", "-w", "25000"};

std::string find_mpirun() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string p = dir + "/mpirun";
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

// Skips the test, saying why, when Open MPI is missing. Returns mpirun's path.
#define REQUIRE_OPEN_MPI(mpirun)                                                                 \
  std::string mpirun = find_mpirun();                                                            \
  if (mpirun.empty())                                                                            \
    GTEST_SKIP() << "Open MPI is not installed (no mpirun in PATH): install openmpi-bin and "    \
                    "libopenmpi-dev (.ci/setup does) to run the MPI job tests";                  \
  if (kHeat.empty())                                                                             \
    GTEST_SKIP() << "the MPI solver examples/mpi was not built (libopenmpi-dev was missing when " \
                    "the build was configured): install it and configure again";                 \
  if (::geteuid() != 0) GTEST_SKIP() << "crest run and crest restore of a tree need root here"

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds deadline) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return pred();
}

struct TempDir {
  TempDir() {
    std::string base = fs::temp_directory_path() / "crest-mpi-XXXXXX";
    std::vector<char> buf(base.begin(), base.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp");
    path = buf.data();
  }
  ~TempDir() {
    if (const char* keep = std::getenv("CREST_MPI_KEEP"); keep && *keep == '1') return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
  std::string path;
};

// The environment of every job: root may run mpirun, only loopback is used, 4 ranks may share
// 2 cores, and the session directory is on tmpfs (README "MPI jobs": mpirun removes it when a
// rank dies, and crest makes the job's files on tmpfs again). `tcp_only`: no shared-memory
// transport between the ranks. `ports`: the first of the 100 ports the TCP transport listens on
// (by default it takes the first free one from 1024, so two jobs running at once, as tests under
// ctest -j, would each take the other's port while it is dumped and not yet restored, and the
// restore would find it held).
//
// The session directory and the vader segments go to a directory of this test process's own on
// /dev/shm, not to /dev/shm itself: mpirun under crest run is pid 2 of its pid namespace, and
// Open MPI derives the job's name (its session directory, pid.2/..., and its vader segments,
// vader_segment.<host>.<jobid>.<rank>) from the host name and mpirun's pid, so two such jobs on
// one node at once (tests of another checkout, say) would map each other's segments and crash.
// README "MPI jobs" gives users the same advice.
struct ShmBase {
  ShmBase() : path("/dev/shm/crest-mpi-test." + std::to_string(::getpid())) {}
  ~ShmBase() {
    if (const char* keep = std::getenv("CREST_MPI_KEEP"); keep && *keep == '1') return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string path;
};

// `own_dirs` false: no session and segment directories given (a job launched by crest gets its
// own, job_scratch.h; one started by hand then uses /tmp and /dev/shm).
std::vector<std::string> mpi_env(bool tcp_only, int ports, bool own_dirs = true) {
  static ShmBase shm;
  std::error_code ec;
  fs::create_directories(shm.path, ec);
  std::vector<std::string> env = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                                  "OMPI_MCA_oob_tcp_if_include=lo",
                                  "OMPI_MCA_btl_tcp_if_include=lo",
                                  "OMPI_MCA_rmaps_base_oversubscribe=1"};
  if (own_dirs) {
    env.push_back("OMPI_MCA_orte_tmpdir_base=" + shm.path);
    env.push_back("OMPI_MCA_btl_vader_backing_directory=" + shm.path);
  }
  if (tcp_only) env.push_back("OMPI_MCA_btl=self,tcp");
  for (const char* v : {"v4", "v6"}) {
    env.push_back(std::string("OMPI_MCA_btl_tcp_port_min_") + v + "=" + std::to_string(ports));
    env.push_back(std::string("OMPI_MCA_btl_tcp_port_range_") + v + "=100");
  }
  return env;
}

// Starts argv in a session of its own with stdin /dev/null, stdout and stderr appended to the
// given files (one description when they are the same file).
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
            const std::string& out, const std::string& err) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> args, envp;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::setsid();
    int in = ::open("/dev/null", O_RDONLY);
    int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    int fe = err == out ? ::dup(fo) : ::open(err.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (in < 0 || fo < 0 || fe < 0) ::_exit(125);
    ::dup2(in, 0);
    ::dup2(fo, 1);
    ::dup2(fe, 2);
    ::close_range(3, ~0U, 0);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int st = 0;
    pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) return st;
    if (r < 0) return std::nullopt;
    if (std::chrono::steady_clock::now() >= end) return std::nullopt;
    std::this_thread::sleep_for(20ms);
  }
}

std::string describe(int st) {
  if (WIFEXITED(st)) return "exited with " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return "killed by signal " + std::to_string(WTERMSIG(st));
  return "status " + std::to_string(st);
}

// Runs a command to its end (stdout and stderr to `log`); returns its wait status.
int run(const std::vector<std::string>& argv, const std::vector<std::string>& env,
        const std::string& log, std::chrono::milliseconds timeout = 120s) {
  pid_t pid = spawn(argv, env, log, log);
  auto st = wait_child(pid, timeout);
  if (!st) {
    ::kill(pid, SIGKILL);
    st = wait_child(pid, 10s);
    return -1;
  }
  return *st;
}

std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (auto& task : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::stringstream in(read_text(task.path().string() + "/children"));
    pid_t c;
    while (in >> c) out.push_back(c);
  }
  return out;
}

// Every process under pid (not pid itself), parents first.
std::vector<pid_t> descendants(pid_t pid) {
  std::vector<pid_t> out, todo{pid};
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    for (pid_t c : children_of(p)) {
      out.push_back(c);
      todo.push_back(c);
    }
  }
  return out;
}

std::string comm_of(pid_t pid) {
  std::string c = read_text("/proc/" + std::to_string(pid) + "/comm");
  if (!c.empty() && c.back() == '\n') c.pop_back();
  return c;
}

std::vector<pid_t> ranks_under(pid_t pid, const std::string& binary = kHeat) {
  std::vector<pid_t> out;
  std::string name = fs::path(binary).filename().string().substr(0, 15);
  for (pid_t p : descendants(pid))
    if (comm_of(p) == name) out.push_back(p);
  return out;
}

// The sweep numbers of lines "heat: sweep S: <what>" (crest-heat-mpi-ckpt's report of each
// crest_mpi_checkpoint), in order.
std::vector<int> sweeps_with(const std::string& text, const std::string& what) {
  std::vector<int> out;
  std::regex re("^heat: sweep ([0-9]+): " + what, std::regex::multiline);
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back(std::stoi((*it)[1].str()));
  return out;
}

// Kills every process under pid and pid itself (what the test started, whatever happened).
struct Reaper {
  ~Reaper() {
    for (pid_t p : pids) {
      for (pid_t d : descendants(p)) ::kill(d, SIGKILL);
      ::kill(p, SIGKILL);
      wait_child(p, 10s);
    }
  }
  std::vector<pid_t> pids;
};

std::string answer_of(const std::string& text) {
  std::smatch m;
  std::string last;
  std::regex re("^answer: .*$", std::regex::multiline);
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    last = it->str();
  return last;
}

// The sweep numbers of the progress lines, in order.
std::vector<int> sweeps_of(const std::string& text) {
  std::vector<int> out;
  std::regex re("^sweep +([0-9]+)/", std::regex::multiline);
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back(std::stoi((*it)[1].str()));
  return out;
}

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

size_t checkpoints_in(const std::string& dir) {
  size_t n = 0;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename();
    if (name.rfind("ckpt-", 0) == 0 && name.ends_with(".h5")) ++n;
  }
  return n;
}

// The answer of an uninterrupted run: one rank, no pause (the answer does not depend on either).
std::string reference_answer(const std::string& mpirun, const TempDir& dir, int ports) {
  std::string log = dir / "reference.log";
  std::vector<std::string> argv = {mpirun, "-np", "1", kHeat, "-n", kHeatArgs[1], "-s", kHeatArgs[3]};
  int st = run(argv, mpi_env(false, ports), log, 60s);
  EXPECT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << read_text(log);
  std::string a = answer_of(read_text(log));
  EXPECT_FALSE(a.empty()) << read_text(log);
  return a;
}

// The output of a job restored (not started again): one start line, sweeps that only go up and
// reach the end, and the reference answer.
void expect_restored_run(const std::string& out, const std::string& want, const std::string& why) {
  EXPECT_EQ(answer_of(out), want) << why << "\n" << out;
  EXPECT_EQ(count_of(out, "heat: 200 x 200 grid"), 1u) << "the job started again\n" << why << out;
  auto sweeps = sweeps_of(out);
  ASSERT_FALSE(sweeps.empty()) << out;
  EXPECT_EQ(sweeps.back(), 240) << out;
  for (size_t i = 1; i < sweeps.size(); ++i)
    EXPECT_LT(sweeps[i - 1], sweeps[i]) << "progress went back (line " << i << ")\n" << out;
}

class MpiRun : public ::testing::TestWithParam<bool> {};

// crest run --every 2s -- mpirun -np 4 heat; one rank SIGKILLed once a checkpoint exists.
TEST_P(MpiRun, ARankKilledMidRunIsRestoredWithTheSameAnswer) {
  REQUIRE_OPEN_MPI(mpirun);
  const bool tcp_only = GetParam();
  const int ports = tcp_only ? 21300 : 21200;
  TempDir dir;
  std::string want = reference_answer(mpirun, dir, ports);
  std::string out = dir / "out", err = dir / "err", img = dir / "img";
  std::vector<std::string> argv = {kCrest, "run", "--no-daemon", "--every", "2s", "--auto-restore",
                                   "-D", img, "--", mpirun, "--oversubscribe", "-np", "4", kHeat};
  argv.insert(argv.end(), kHeatArgs.begin(), kHeatArgs.end());
  auto t0 = std::chrono::steady_clock::now();
  Reaper reaper;
  pid_t pid = spawn(argv, mpi_env(tcp_only, ports), out, err);
  reaper.pids.push_back(pid);

  ASSERT_TRUE(wait_until([&] { return checkpoints_in(img) >= 1 && sweeps_of(read_text(out)).size() >= 4; }, 40s))
      << "no checkpoint, or no progress\n" << read_text(err) << read_text(out);
  auto ranks = ranks_under(pid);
  ASSERT_EQ(ranks.size(), 4u) << read_text(err);
  int before = sweeps_of(read_text(out)).back();
  ASSERT_LT(before, 240) << "the job ended before the kill; make it longer";
  ASSERT_EQ(::kill(ranks.back(), SIGKILL), 0);

  auto st = wait_child(pid, 90s);
  ASSERT_TRUE(st) << "crest run did not end\n" << read_text(err) << read_text(out);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string e = read_text(err), o = read_text(out);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << describe(*st) << "\n" << e << o;
  EXPECT_NE(e.find("restored from"), std::string::npos) << e;
  expect_restored_run(o, want, e);
  std::cout << "[ mpi ] " << (tcp_only ? "self,tcp" : "self,vader,tcp") << ": rank killed at sweep "
            << before << "; job restored and finished in " << secs << " s\n"
            << e;
}

INSTANTIATE_TEST_SUITE_P(Transports, MpiRun, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "TcpOnly" : "Vader"; });

// Two jobs under crest run at once, with nothing in their environment about where Open MPI
// keeps its files: mpirun is pid 2 in each job's namespace, so without a directory of each job's
// own (job_scratch.h) both would name their session directory and vader segments alike and map
// each other's. One of them loses a rank and is restored; both give the right answer, each kept
// its segments in its own directory, and the directories are gone when the jobs are.
TEST(MpiTwoJobs, EachJobCrestRunsHasItsOwnSessionDirectoryAndSegments) {
  REQUIRE_OPEN_MPI(mpirun);
  TempDir dir;
  std::string want = reference_answer(mpirun, dir, 21400);
  struct Job {
    std::string out, err, img;
    pid_t pid = 0;
  };
  std::array<Job, 2> jobs;
  Reaper reaper;
  auto scratch_dirs = [] {
    std::set<std::string> out;
    std::error_code ec;
    for (auto& e : fs::directory_iterator("/dev/shm", ec))
      if (e.path().filename().string().rfind("crest-job.", 0) == 0) out.insert(e.path().string());
    return out;
  };
  const auto before = scratch_dirs();
  for (int i = 0; i < 2; ++i) {
    auto& j = jobs[i];
    std::string n = std::to_string(i);
    j.out = dir / ("out" + n), j.err = dir / ("err" + n), j.img = dir / ("img" + n);
    std::vector<std::string> argv = {kCrest, "run", "--no-daemon", "--every", "2s", "--auto-restore",
                                     "-D", j.img, "--", mpirun, "--oversubscribe", "-np", "4", kHeat};
    argv.insert(argv.end(), kHeatArgs.begin(), kHeatArgs.end());
    j.pid = spawn(argv, mpi_env(false, 21420 + 100 * i, /*own_dirs=*/false), j.out, j.err);
    reaper.pids.push_back(j.pid);
  }
  for (auto& j : jobs)
    ASSERT_TRUE(wait_until([&] { return checkpoints_in(j.img) >= 1 && sweeps_of(read_text(j.out)).size() >= 4; }, 60s))
        << "no checkpoint, or no progress\n" << read_text(j.err) << read_text(j.out);
  // Each job's ranks map their segments from a directory of that job's own.
  std::array<std::set<std::string>, 2> mapped;
  for (int i = 0; i < 2; ++i) {
    for (pid_t r : ranks_under(jobs[i].pid)) {
      std::stringstream maps(read_text("/proc/" + std::to_string(r) + "/maps"));
      std::string line;
      while (std::getline(maps, line)) {
        auto at = line.find("/dev/shm/crest-job.");
        if (at != std::string::npos && line.find("vader_segment") != std::string::npos)
          mapped[i].insert(fs::path(line.substr(at)).parent_path().string());
      }
    }
    EXPECT_EQ(mapped[i].size(), 1u) << "job " << i << " maps vader segments from " << mapped[i].size()
                                    << " crest job directories";
  }
  EXPECT_NE(mapped[0], mapped[1]) << "both jobs map their segments from the same directory";

  auto ranks = ranks_under(jobs[0].pid);
  ASSERT_EQ(ranks.size(), 4u) << read_text(jobs[0].err);
  int killed_at = sweeps_of(read_text(jobs[0].out)).back();
  ASSERT_LT(killed_at, 240) << "the job ended before the kill; make it longer";
  ASSERT_EQ(::kill(ranks.back(), SIGKILL), 0);
  for (int i = 0; i < 2; ++i) {
    auto st = wait_child(jobs[i].pid, 120s);
    ASSERT_TRUE(st) << "job " << i << ": crest run did not end\n" << read_text(jobs[i].err);
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << "job " << i << ": " << describe(*st) << "\n"
                                                         << read_text(jobs[i].err) << read_text(jobs[i].out);
    expect_restored_run(read_text(jobs[i].out), want, read_text(jobs[i].err));
  }
  EXPECT_NE(read_text(jobs[0].err).find("restored from"), std::string::npos) << read_text(jobs[0].err);
  for (auto& m : mapped)
    for (auto& d : m) EXPECT_FALSE(fs::exists(d)) << d << " is left after its job ended";
  EXPECT_EQ(scratch_dirs(), before) << "crest job directories left on /dev/shm";
}

// mpirun started by hand, dumped with crest dump -t and restored with crest restore, twice.
TEST(MpiByHand, DumpedAndRestoredTwice) {
  REQUIRE_OPEN_MPI(mpirun);
  const int ports = 21000;
  TempDir dir;
  std::string want = reference_answer(mpirun, dir, ports);
  std::string out = dir / "out", img = dir / "img";
  std::vector<std::string> argv = {mpirun, "--oversubscribe", "-np", "4", kHeat};
  argv.insert(argv.end(), kHeatArgs.begin(), kHeatArgs.end());
  Reaper reaper;
  pid_t root = spawn(argv, mpi_env(false, ports), out, out);
  reaper.pids.push_back(root);
  ASSERT_TRUE(wait_until([&] { return sweeps_of(read_text(out)).size() >= 3; }, 30s)) << read_text(out);

  pid_t waiter = root;  // the process whose end is the job's end: mpirun, then crest restore
  for (int round = 1; round <= 2; ++round) {
    std::string log = dir / ("dump" + std::to_string(round) + ".log");
    int progress = sweeps_of(read_text(out)).back();
    std::vector<std::string> dump = {kCrest, "dump", "-t", std::to_string(root), "-D", img};
    if (round > 1) dump.push_back("--parent");
    int st = run(dump, {}, log);
    ASSERT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
        << "round " << round << ": crest dump " << (st >= 0 ? describe(st) : "timed out") << "\n"
        << read_text(log);
    ASSERT_TRUE(wait_child(waiter, 20s)) << "the dumped tree did not end";
    ASSERT_LT(progress, 240) << "the job ended before the dump; make it longer";

    std::string rlog = dir / ("restore" + std::to_string(round) + ".log");
    // crest restore waits for the tree; the job's stdout (mpirun's, from outside the tree) is
    // the restorer's: the same output file.
    waiter = spawn({kCrest, "restore", "-D", img}, mpi_env(false, ports), out, rlog);
    reaper.pids.push_back(waiter);
    ASSERT_TRUE(wait_until([&] { return sweeps_of(read_text(out)).back() > progress + 20 ||
                                        !answer_of(read_text(out)).empty(); }, 40s))
        << "round " << round << ": no progress after the restore\n" << read_text(rlog) << read_text(out);
  }
  auto st = wait_child(waiter, 60s);
  ASSERT_TRUE(st) << "the job did not end\n" << read_text(out);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << describe(*st) << read_text(dir / "restore2.log");
  expect_restored_run(read_text(out), want, read_text(dir / "restore2.log"));
}

// crest show --json of a 4-rank job's image: each vader segment is one saved object (one file
// row, one page owner) that all four ranks map.
TEST(MpiImage, EachVaderSegmentIsStoredOnce) {
  REQUIRE_OPEN_MPI(mpirun);
  TempDir dir;
  std::string out = dir / "out", img = dir / "img";
  std::vector<std::string> argv = {mpirun, "--oversubscribe", "-np", "4", kHeat};
  argv.insert(argv.end(), kHeatArgs.begin(), kHeatArgs.end());
  Reaper reaper;
  pid_t root = spawn(argv, mpi_env(false, 21100), out, out);
  reaper.pids.push_back(root);
  ASSERT_TRUE(wait_until([&] { return sweeps_of(read_text(out)).size() >= 2; }, 30s)) << read_text(out);
  // The dump kills the job before mpirun can remove the files it maps in /dev/shm (vader
  // segments, PMIx stores): this test does.
  std::set<std::string> leftovers;
  for (pid_t p : descendants(root)) {
    std::stringstream maps(read_text("/proc/" + std::to_string(p) + "/maps"));
    std::string line;
    while (std::getline(maps, line))
      if (auto at = line.find("/dev/shm/"); at != std::string::npos) leftovers.insert(line.substr(at));
  }
  struct Remove {
    std::set<std::string>& paths;
    ~Remove() {
      std::error_code ec;
      for (auto& p : paths) fs::remove(p, ec);
    }
  } remove{leftovers};
  std::string log = dir / "dump.log";
  int st = run({kCrest, "dump", "-t", std::to_string(root), "-D", img}, {}, log);
  ASSERT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << read_text(log);
  std::string file;
  for (auto& e : fs::directory_iterator(img))
    if (e.path().filename().string().rfind("ckpt-", 0) == 0) file = e.path();
  ASSERT_FALSE(file.empty());
  std::string show = dir / "show.json";
  pid_t p = spawn({kCrest, "show", file, "--json"}, {}, show, dir / "show.err");
  auto sst = wait_child(p, 60s);
  ASSERT_TRUE(sst && WIFEXITED(*sst) && WEXITSTATUS(*sst) == 0) << read_text(dir / "show.err");
  auto doc = nlohmann::json::parse(read_text(show));
  // segment name -> (file rows, page owners, processes mapping it, kinds)
  std::map<std::string, std::set<int64_t>> rows;
  std::map<std::string, std::set<uint64_t>> owners;
  std::map<std::string, std::set<int64_t>> holders;
  std::set<std::string> kinds;
  for (auto& proc : doc["processes"])
    for (auto& v : proc["vmas"]) {
      std::string name = v.value("name", "");
      if (name.find("/vader_segment.") == std::string::npos) continue;
      rows[name].insert(v["file_id"].get<int64_t>());
      owners[name].insert(v["owner"].get<uint64_t>());
      holders[name].insert(proc["pid"].get<int64_t>());
      kinds.insert(v.value("kind_name", ""));
    }
  EXPECT_EQ(rows.size(), 4u) << "vader segments in the image: " << rows.size();
  for (auto& [name, r] : rows) {
    EXPECT_EQ(r.size(), 1u) << name << " has " << r.size() << " file rows";
    EXPECT_EQ(owners[name].size(), 1u) << name << " is stored under " << owners[name].size() << " owners";
    EXPECT_EQ(holders[name].size(), 4u) << name << " is mapped by " << holders[name].size() << " processes";
  }
  EXPECT_EQ(kinds, std::set<std::string>{"memfd"}) << "vader segments are saved memory objects";
}

// ---- libcrest-mpi: checkpoints the program asks for ---------------------------------------------

#define REQUIRE_LIBCREST_MPI()                                                                   \
  if (kHeatCkpt.empty() || kAuto.empty())                                                        \
  GTEST_SKIP() << "libcrest-mpi was not built (libopenmpi-dev was missing when the build was "    \
                  "configured): install it and configure again"

// crestd on a temporary socket and storage root (the test's own), stopped at the end.
struct Crestd {
  explicit Crestd(const TempDir& dir) : socket(dir / "crestd.sock"), log(dir / "crestd.log") {
    std::string config = dir / "crestd.toml";
    std::ofstream(config).flush();
    pid = spawn({kCrestd, "--config", config, "--socket", socket, "--storage-root", dir / "storage",
                 "--state-file", dir / "crestd-state.json", "--log", log, "--log-level", "debug"},
                {}, dir / "crestd.out", dir / "crestd.out");
    ready = wait_until([&] { return fs::exists(socket); }, 10s);
  }
  ~Crestd() {
    // Whatever is left of the test's job goes with crestd (its children).
    for (pid_t d : descendants(pid)) ::kill(d, SIGKILL);
    ::kill(pid, SIGTERM);
    if (!wait_child(pid, 20s)) {
      ::kill(pid, SIGKILL);
      wait_child(pid, 10s);
    }
  }
  std::string socket, log;
  pid_t pid = -1;
  bool ready = false;
};

// The job: the solver asking for a checkpoint every 40 sweeps (crest_mpi_checkpoint) under
// crest run with no periodic checkpoint in its time (the default interval is 10 minutes): every
// checkpoint is one the program asked for. A rank is SIGKILLed after the one at sweep 80; the job
// comes back inside that call, which returns CREST_MPI_RESTORED to the program, and finishes
// with the answer of an uninterrupted run. With crest run's own supervisor, and with crestd's.
class LibCrestMpi : public ::testing::TestWithParam<bool> {};

TEST_P(LibCrestMpi, CheckpointsAskedForByTheProgramRestoreAfterARankIsKilled) {
  REQUIRE_OPEN_MPI(mpirun);
  REQUIRE_LIBCREST_MPI();
  const bool daemon = GetParam();
  const int ports = daemon ? 21700 : 21400;
  TempDir dir;
  std::string want = reference_answer(mpirun, dir, ports);
  std::string out = dir / "out", err = dir / "err", img = dir / "img";
  std::optional<Crestd> crestd;
  auto env = mpi_env(false, ports);
  if (daemon) {
    crestd.emplace(dir);
    ASSERT_TRUE(crestd->ready) << "crestd did not start\n" << read_text(dir / "crestd.out");
    env.push_back("CREST_SOCKET=" + crestd->socket);
  }
  std::vector<std::string> argv = {kCrest, "run", daemon ? "--daemon" : "--no-daemon",
                                   "--auto-restore", "-D", img, "--",
                                   mpirun, "--oversubscribe", "-np", "4", kHeatCkpt};
  argv.insert(argv.end(), kHeatArgs.begin(), kHeatArgs.end());
  argv.insert(argv.end(), {"-c", "40"});
  Reaper reaper;
  pid_t pid = spawn(argv, env, out, err);
  reaper.pids.push_back(pid);
  pid_t tree = daemon ? crestd->pid : pid;  // the job is crestd's child, or crest run's

  ASSERT_TRUE(wait_until([&] {
    auto done = sweeps_with(read_text(out), "checkpointed ckpt-");
    return !done.empty() && done.back() >= 80;
  }, 60s)) << "no checkpoint at sweep 80\n" << read_text(err) << read_text(out)
           << (daemon ? read_text(crestd->log) : "");
  auto ranks = ranks_under(tree, kHeatCkpt);
  ASSERT_EQ(ranks.size(), 4u) << read_text(err);
  std::string before = read_text(out);
  ASSERT_TRUE(answer_of(before).empty()) << "the job ended before the kill; make it longer";
  int last = sweeps_with(before, "checkpointed ckpt-").back();
  ASSERT_EQ(::kill(ranks.front(), SIGKILL), 0);

  auto st = wait_child(pid, 90s);
  ASSERT_TRUE(st) << "crest run did not end\n" << read_text(err) << read_text(out);
  std::string e = read_text(err), o = read_text(out);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << describe(*st) << "\n" << e << o;
  EXPECT_NE(e.find("restored from"), std::string::npos) << e;
  expect_restored_run(o, want, e);
  // The program was told: its newest checkpoint's call returned CREST_MPI_RESTORED (the output
  // written after that checkpoint, its "checkpointed" line included, was rolled back with it).
  // (The next one, 40 sweeps later, could just have been committed when the rank died.)
  auto restored = sweeps_with(o, "restored");
  ASSERT_EQ(restored.size(), 1u) << o;
  EXPECT_TRUE(restored[0] == last || restored[0] == last + 40) << "restored at " << restored[0] << "\n" << o;
  EXPECT_EQ(o.find("no checkpoint"), std::string::npos) << o;
  for (int s : sweeps_with(o, "checkpointed ckpt-")) EXPECT_EQ(s % 40, 0) << o;
  std::cout << "[ mpi ] crest_mpi_checkpoint (" << (daemon ? "crestd" : "crest run")
            << "): rank killed after the checkpoint of sweep " << last
            << "; the program saw CREST_MPI_RESTORED and finished\n" << o;
}

INSTANTIATE_TEST_SUITE_P(Agent, LibCrestMpi, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Crestd" : "CrestRun"; });

// An mpirun started by hand and registered with crestd: its ranks have no CREST_JOB, and crestd
// finds the job from the asking process. The job is then forgotten, killed, and restored by hand
// with crest restore (no agent at all): the program still learns that it was restored.
TEST(LibCrestMpiRegistered, RegisteredMpirunIsCheckpointedAndKnowsItWasRestoredByHand) {
  REQUIRE_OPEN_MPI(mpirun);
  REQUIRE_LIBCREST_MPI();
  const int ports = 21800;
  TempDir dir;
  std::string want = reference_answer(mpirun, dir, ports);
  std::string out = dir / "out", img = dir / "img";
  Crestd crestd(dir);
  ASSERT_TRUE(crestd.ready) << "crestd did not start\n" << read_text(dir / "crestd.out");
  auto env = mpi_env(false, ports);
  env.push_back("CREST_SOCKET=" + crestd.socket);
  env.push_back("CREST_JOB_SOCKET=");  // not from an enclosing crest run
  env.push_back("CREST_JOB=");
  std::vector<std::string> argv = {mpirun, "--oversubscribe", "-np", "4", kHeatCkpt};
  argv.insert(argv.end(), kHeatArgs.begin(), kHeatArgs.end());
  argv.insert(argv.end(), {"-c", "40"});
  Reaper reaper;
  pid_t root = spawn(argv, env, out, out);
  reaper.pids.push_back(root);
  std::string log = dir / "register.log";
  int st = run({kCrest, "register", std::to_string(root), "--auto-restore=0", "-D", img},
               {"CREST_SOCKET=" + crestd.socket}, log);
  ASSERT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << read_text(log);

  ASSERT_TRUE(wait_until([&] {
    auto done = sweeps_with(read_text(out), "checkpointed ckpt-");
    return !done.empty() && done.back() >= 80;
  }, 60s)) << "no checkpoint at sweep 80\n" << read_text(out) << read_text(crestd.log);
  st = run({kCrest, "forget", "1"}, {"CREST_SOCKET=" + crestd.socket}, log);
  ASSERT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << read_text(log);
  std::string before = read_text(out);
  ASSERT_TRUE(answer_of(before).empty()) << "the job ended before the kill; make it longer";
  int last = sweeps_with(before, "checkpointed ckpt-").back();
  auto ranks = ranks_under(root, kHeatCkpt);
  ASSERT_EQ(ranks.size(), 4u);
  ASSERT_EQ(::kill(root, SIGKILL), 0);  // mpirun: its ranks end with it
  ASSERT_TRUE(wait_child(root, 20s));
  for (pid_t r : ranks) ::kill(r, SIGKILL);
  ASSERT_TRUE(wait_until([&] {
    for (pid_t r : ranks)
      if (::kill(r, 0) == 0) return false;
    return true;
  }, 20s)) << "ranks left";

  std::string rlog = dir / "restore.log";
  pid_t restorer = spawn({kCrest, "restore", "-D", img, "--file-changes=truncate"}, env, out, rlog);
  reaper.pids.push_back(restorer);
  auto rst = wait_child(restorer, 90s);
  ASSERT_TRUE(rst) << "the restored job did not end\n" << read_text(rlog) << read_text(out);
  std::string o = read_text(out);
  EXPECT_TRUE(WIFEXITED(*rst) && WEXITSTATUS(*rst) == 0) << describe(*rst) << read_text(rlog);
  expect_restored_run(o, want, read_text(rlog));
  auto restored = sweeps_with(o, "restored");
  ASSERT_EQ(restored.size(), 1u) << o;
  EXPECT_TRUE(restored[0] == last || restored[0] == last + 40) << "restored at " << restored[0] << "\n" << o;
  // After the restore crestd no longer supervises the job: later calls say so, and it runs on.
  EXPECT_NE(o.find("no checkpoint: the crest agent refused: not-found: process"), std::string::npos) << o;
}

// `prog` (the heat solver's arguments) in `mpirun -np 4` under the PMPI wrapper
// (LD_PRELOAD=libcrest-mpi-auto.so, a checkpoint at the first collective after each second), in
// `crest run --auto-restore`; one rank SIGKILLed after two checkpoints, mid-run. What crest run
// printed once it ended with exit 0.
struct WrappedRun {
  std::string err, out;
};
void run_wrapped_and_kill_a_rank(const std::string& mpirun, const std::string& prog, int ports,
                                 const TempDir& dir, WrappedRun* r) {
  std::string out = dir / "out", err = dir / "err", img = dir / "img";
  std::vector<std::string> argv = {kCrest, "run", "--no-daemon", "--auto-restore", "-D", img, "--",
                                   mpirun, "--oversubscribe", "-np", "4",
                                   "-x", "LD_PRELOAD=" + kAuto, "-x", "CREST_MPI_INTERVAL=1s", prog};
  argv.insert(argv.end(), kHeatArgs.begin(), kHeatArgs.end());
  Reaper reaper;
  pid_t pid = spawn(argv, mpi_env(false, ports), out, err);
  reaper.pids.push_back(pid);
  ASSERT_TRUE(wait_until([&] { return count_of(read_text(err), "crest-mpi-auto: checkpoint ckpt-") >= 2; }, 60s))
      << "fewer than two checkpoints by the wrapper\n" << read_text(err) << read_text(out);
  auto ranks = ranks_under(pid, prog);
  ASSERT_EQ(ranks.size(), 4u) << read_text(err);
  ASSERT_TRUE(answer_of(read_text(out)).empty()) << "the job ended before the kill; make it longer";
  ASSERT_EQ(::kill(ranks.back(), SIGKILL), 0);
  auto st = wait_child(pid, 90s);
  ASSERT_TRUE(st) << "crest run did not end\n" << read_text(err) << read_text(out);
  r->err = read_text(err);
  r->out = read_text(out);
  ASSERT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << describe(*st) << "\n" << r->err << r->out;
}

// The unchanged solver with the PMPI wrapper (LD_PRELOAD=libcrest-mpi-auto.so, a checkpoint at
// the first MPI_Allreduce after each second), killed after two of them: restored, the wrapper
// reports the restore, the same answer.
TEST(LibCrestMpiAuto, PmpiWrapperCheckpointsAnUnchangedProgram) {
  REQUIRE_OPEN_MPI(mpirun);
  REQUIRE_LIBCREST_MPI();
  const int ports = 21500;
  TempDir dir;
  std::string want = reference_answer(mpirun, dir, ports);
  WrappedRun r;
  ASSERT_NO_FATAL_FAILURE(run_wrapped_and_kill_a_rank(mpirun, kHeat, ports, dir, &r));
  const std::string& e = r.err;
  const std::string& o = r.out;
  EXPECT_NE(e.find("restored from"), std::string::npos) << e;
  EXPECT_EQ(count_of(e, "crest-mpi-auto: restored from the checkpoint taken at MPI_Allreduce"), 1u) << e;
  EXPECT_EQ(e.find("no checkpoint"), std::string::npos) << e;
  expect_restored_run(o, want, e);
  std::cout << "[ mpi ] libcrest-mpi-auto: " << count_of(e, "crest-mpi-auto: checkpoint ckpt-")
            << " checkpoints kept in the output; restored after the kill\n" << e;
}

// A Fortran program under the PMPI wrapper. Open MPI's Fortran bindings call the C library's
// PMPI_Barrier and PMPI_Allreduce, never MPI_Barrier: the wrapper intercepts the Fortran names
// themselves (mpi_allreduce_ for mpif.h and `use mpi`, mpi_allreduce_f08_ for `use mpi_f08`).
// The unchanged Fortran solver (tests/mpi/heat_fortran.F90), a checkpoint at the first
// collective after each second, killed after two: restored, the wrapper reports the restore at
// a Fortran call, the same answer as an uninterrupted run.
class LibCrestMpiAutoFortran : public ::testing::TestWithParam<bool> {};

TEST_P(LibCrestMpiAutoFortran, PmpiWrapperCheckpointsAnUnchangedFortranProgram) {
  REQUIRE_OPEN_MPI(mpirun);
  REQUIRE_LIBCREST_MPI();
  const bool f08 = GetParam();
  const std::string prog = f08 ? kHeatFortranF08 : kHeatFortran;
  if (prog.empty())
    GTEST_SKIP() << "the Fortran MPI test program (" << (f08 ? "use mpi_f08" : "use mpi")
                 << ") was not built: gfortran or Open MPI's Fortran support was missing when the "
                    "build was configured (install gfortran, as .ci/setup does, and configure again)";
  const int ports = f08 ? 22000 : 21900;
  TempDir dir;
  std::string ref = dir / "reference.log";
  int rst = run({mpirun, "-np", "1", prog, "-n", kHeatArgs[1], "-s", kHeatArgs[3]}, mpi_env(false, ports),
                ref, 60s);
  ASSERT_TRUE(rst >= 0 && WIFEXITED(rst) && WEXITSTATUS(rst) == 0) << read_text(ref);
  std::string want = answer_of(read_text(ref));
  ASSERT_FALSE(want.empty()) << read_text(ref);

  // Where the Fortran calls are counted: the mpif.h names, or the mpi_f08 ones.
  const std::string where = f08 ? "MPI_Allreduce (mpi_f08)" : "MPI_ALLREDUCE";
  WrappedRun r;
  ASSERT_NO_FATAL_FAILURE(run_wrapped_and_kill_a_rank(mpirun, prog, ports, dir, &r));
  const std::string& e = r.err;
  const std::string& o = r.out;
  const std::string done = "crest-mpi-auto: checkpoint ckpt-";
  EXPECT_NE(e.find("restored from"), std::string::npos) << e;
  // Every checkpoint was taken at a Fortran call (every MPI_ALLREDUCE of the program goes through
  // the Fortran binding, and the C wrappers never see them).
  std::regex at("^crest-mpi-auto: checkpoint ckpt-[^ ]+ at (.*) \\(call [0-9]+\\)", std::regex::multiline);
  size_t seen = 0;
  for (auto it = std::sregex_iterator(e.begin(), e.end(), at); it != std::sregex_iterator(); ++it, ++seen)
    EXPECT_EQ((*it)[1].str(), where) << e;
  EXPECT_GE(seen, 1u) << e;
  EXPECT_EQ(count_of(e, "crest-mpi-auto: restored from the checkpoint taken at " + where), 1u) << e;
  EXPECT_EQ(e.find("no checkpoint"), std::string::npos) << e;
  EXPECT_EQ(answer_of(o), want) << e << "\n" << o;
  EXPECT_EQ(count_of(o, "heat: 200 x 200 grid (Fortran"), 1u) << "the job started again\n" << e << o;
  auto sweeps = sweeps_of(o);
  ASSERT_FALSE(sweeps.empty()) << o;
  EXPECT_EQ(sweeps.back(), 240) << o;
  for (size_t i = 1; i < sweeps.size(); ++i)
    EXPECT_LT(sweeps[i - 1], sweeps[i]) << "progress went back (line " << i << ")\n" << o;
  std::cout << "[ mpi ] libcrest-mpi-auto, Fortran (" << (f08 ? "use mpi_f08" : "use mpi") << "): "
            << count_of(e, done) << " checkpoints kept in the output; restored after the kill\n" << e;
}

INSTANTIATE_TEST_SUITE_P(Binding, LibCrestMpiAutoFortran, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "MpiF08" : "Mpi"; });

// ---- Refusals -----------------------------------------------------------------------------------
// A job whose ranks use a network adapter (InfiniBand or another RDMA verbs device, Omni-Path,
// Slingshot: Open MPI's UCX or openib, PSM2, OFI) holds the adapter's device open and mapped:
// refused, naming the device as the kernel knows it, what it is, and the Open MPI setting that
// keeps the job on shared memory and TCP. (Ranks started by srun --mpi=pmix, whose PMIx server is
// slurmstepd: tests/slurm/mpi_pmix_test.sh, on a real cluster.)
//
// No machine these tests run on has such an adapter (and a device node cannot be opened without
// its driver), so the naming is checked here on what sysfs would say for each (the class and
// name of /sys/dev/char/MAJ:MIN), and the whole path of a refused device, sysfs included, on a
// device this machine has (/dev/fuse).
TEST(MpiRefusal, InterconnectDevicesAreNamedWithTheOpenMpiSetting) {
  using crest::fds::DeviceClass;
  using crest::fds::interconnect_reason;
  const std::string setting = "mpirun --mca pml ob1 --mca btl self,vader,tcp --mca osc ^ucx";
  struct Case {
    DeviceClass d;
    std::string path, what;
  };
  const std::vector<Case> cases = {
      {{"infiniband_verbs", "infiniband/uverbs0"}, "/dev/infiniband/uverbs0", "an RDMA verbs device"},
      {{"infiniband_mad", "infiniband/umad0"}, "/dev/infiniband/umad0", "InfiniBand management device"},
      {{"misc", "infiniband/rdma_cm"}, "/dev/infiniband/rdma_cm", "RDMA connection manager"},
      {{"hfi1", "hfi1_0"}, "/dev/hfi1_0", "Omni-Path"},
      {{"cxi", "cxi0"}, "/dev/cxi0", "Slingshot"},
      // sysfs silent (another namespace's view): the path says it.
      {{"", ""}, "/dev/infiniband/uverbs1", "an RDMA verbs device"},
  };
  for (auto& c : cases) {
    std::string why = interconnect_reason(c.d, c.path);
    EXPECT_NE(why.find(c.what), std::string::npos) << c.path << ": " << why;
    EXPECT_NE(why.find(setting), std::string::npos) << c.path << ": " << why;
    EXPECT_NE(why.find("OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp"), std::string::npos) << why;
    EXPECT_NE(why.find("cannot be saved"), std::string::npos) << why;
  }
  EXPECT_EQ(interconnect_reason({"misc", "fuse"}, "/dev/fuse"), "");
  EXPECT_EQ(interconnect_reason({"", ""}, "/dev/sda"), "");
  EXPECT_EQ(crest::fds::device_label({"infiniband_verbs", "infiniband/uverbs0"}),
            "infiniband_verbs device infiniband/uverbs0");
}

// A real dump of a process holding a device crest does not save: refused, naming the device,
// its numbers and its kernel class as sysfs gives them, and leaving no checkpoint.
TEST(MpiRefusal, ADeviceIsRefusedNamingItsKernelClass) {
  if (::geteuid() != 0) GTEST_SKIP() << "crest dump needs root here (and /dev/fuse is root's)";
  struct stat st {};
  if (::stat("/dev/fuse", &st) != 0 || !S_ISCHR(st.st_mode))
    GTEST_SKIP() << "no /dev/fuse on this machine to hold";
  auto cls = crest::fds::device_class(false, st.st_rdev);
  if (cls.subsystem.empty()) GTEST_SKIP() << "sysfs does not list /dev/fuse's class here";
  TempDir dir;
  std::string log = dir / "holder.log";
  Reaper reaper;
  // A process holding /dev/fuse open (fd 3), doing nothing else.
  pid_t holder = spawn({"/bin/sh", "-c", "exec 3</dev/fuse; exec sleep 60"}, {}, log, log);
  reaper.pids.push_back(holder);
  ASSERT_TRUE(wait_until([&] {
    char buf[64] = {};
    std::string fd3 = "/proc/" + std::to_string(holder) + "/fd/3";
    return ::readlink(fd3.c_str(), buf, sizeof buf - 1) > 0 && std::string(buf) == "/dev/fuse" &&
           comm_of(holder) == "sleep";
  }, 10s)) << read_text(log);
  std::string out = dir / "dump.log";
  int st2 = run({kCrest, "dump", "-t", std::to_string(holder), "-D", dir / "img"}, {}, out, 60s);
  std::string err = read_text(out);
  ASSERT_TRUE(st2 >= 0 && WIFEXITED(st2) && WEXITSTATUS(st2) != 0) << "the dump was not refused\n" << err;
  const std::string want = "fd 3 is the device /dev/fuse (" + std::to_string(major(st.st_rdev)) + ":" +
                           std::to_string(minor(st.st_rdev)) + ", " + cls.subsystem + " device " +
                           cls.devname + "); devices other than";
  EXPECT_NE(err.find(want), std::string::npos) << "expected '" << want << "' in\n" << err;
  EXPECT_EQ(checkpoints_in(dir / "img"), 0u) << err;
  EXPECT_EQ(::kill(holder, 0), 0) << "the refused dump killed the process";
}

// Without crest around it, the program is told why there is no checkpoint, and runs on.
TEST(LibCrestMpiAlone, WithoutAnAgentTheProgramIsToldAndRunsOn) {
  REQUIRE_OPEN_MPI(mpirun);
  REQUIRE_LIBCREST_MPI();
  TempDir dir;
  std::string log = dir / "log";
  auto env = mpi_env(false, 21600);
  env.push_back("CREST_SOCKET=" + dir / "nobody.sock");  // not a crestd of this machine
  env.push_back("CREST_JOB_SOCKET=");
  int st = run({mpirun, "--oversubscribe", "-np", "2", kHeatCkpt, "-n", "64", "-s", "30", "-r", "10",
                "-c", "10"}, env, log, 60s);
  std::string o = read_text(log);
  EXPECT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << o;
  EXPECT_EQ(sweeps_with(o, "no checkpoint: no crest agent listening on " + dir / "nobody.sock"),
            (std::vector<int>{10, 20})) << o;
  EXPECT_FALSE(answer_of(o).empty()) << o;
}

}  // namespace
