// crest-bench-agent: the node agent under load (run by hand; not a test).
//
//   crest-bench-agent [--jobs 20] [--interval 2s] [--duration 2m]
//                     [--compute-interval 30s] [--compute-duration 2m] [--compute-mib 64]
//                     [--skip-fleet] [--skip-compute] [--keep-dir]
//
// 1. Fleet: a crestd with --jobs small jobs (started as crest run would start them: crest-init,
//    own pid namespace and cgroup), each checkpointed every --interval for --duration. Reports
//    checkpoints taken against the schedule (late: started more than a tenth of the interval
//    after its time), failures, frozen times and durations, and crestd's CPU and memory.
// 2. Steady slowdown: a compute job (a memory-bound sweep over --compute-mib MiB, which dirties
//    all of it between checkpoints) runs for --compute-duration without checkpoints, then with a
//    checkpoint every --compute-interval, then without again; the slowdown is the drop of its
//    sweep rate against the mean of the two baselines.
//
// The jobs are this binary itself (--as-job idle|compute), so the bench needs nothing else but
// crestd and crest-init from the same build.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "agent/crestd/duration.h"
#include "agent/crestd/protocol.h"

using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// ---- the jobs ------------------------------------------------------------------------------------

volatile sig_atomic_t g_stop = 0;
void on_term(int) { g_stop = 1; }

double mono() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

// A mostly idle job with a little memory that changes a little: what a fleet of small jobs does.
int idle_job() {
  std::vector<uint64_t> mem(16 << 17);  // 16 MiB
  for (size_t i = 0; i < mem.size(); ++i) mem[i] = i * 2654435761u;
  for (uint64_t k = 0;; ++k) {
    for (size_t p = 0; p < 64; ++p) mem[((k * 64 + p) * 512) % mem.size()] += k;
    std::this_thread::sleep_for(100ms);
  }
}

// A memory-bound compute loop; on SIGTERM prints its sweep rate after a 2 s warm-up.
int compute_job(size_t mib) {
  struct sigaction sa {};
  sa.sa_handler = on_term;
  ::sigaction(SIGTERM, &sa, nullptr);
  size_t n = mib * (1 << 20) / sizeof(double);
  std::vector<double> a(n);
  for (size_t i = 0; i < n; ++i) a[i] = static_cast<double>(i % 1000);
  double start = mono(), counted_from = 0;
  uint64_t sweeps = 0;
  while (!g_stop) {
    for (size_t i = 0; i + 1 < n; ++i) a[i] = 0.5 * a[i] + 0.25 * a[i + 1] + 1.0;
    if (counted_from == 0) {
      if (mono() - start >= 2.0) counted_from = mono();
    } else {
      ++sweeps;
    }
  }
  double secs = mono() - counted_from;
  std::printf("rate %.6f sweeps %llu seconds %.3f check %g\n", counted_from ? sweeps / secs : 0.0,
              static_cast<unsigned long long>(sweeps), secs, a[n / 2]);
  std::fflush(stdout);
  return 0;
}

// ---- helpers --------------------------------------------------------------------------------------

std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error("readlink /proc/self/exe");
  buf[n] = 0;
  return buf;
}

std::string sibling(const std::string& name) {
  std::string exe = self_exe();
  return exe.substr(0, exe.rfind('/') + 1) + name;
}

struct Daemon {
  pid_t pid = -1;
  std::string socket;

  Daemon(const std::string& dir, std::vector<std::string> extra) {
    socket = dir + "/crestd.sock";
    std::ofstream(dir + "/empty.toml").flush();
    std::vector<std::string> args{sibling("crestd"), "--config", dir + "/empty.toml", "--socket",
                                  socket, "--storage-root", dir + "/images", "--state-file",
                                  dir + "/state.json", "--log", dir + "/crestd.log"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid = ::fork();
    if (pid == 0) {
      int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    for (int i = 0; i < 500; ++i) {
      if (auto c = crest::agent::Client::try_connect(socket)) {
        try {
          if (c->call({{"op", "hello"}}, {}, 2000).value("ok", false)) return;
        } catch (const std::exception&) {
        }
      }
      std::this_thread::sleep_for(20ms);
    }
    throw std::runtime_error("crestd did not come up (see " + dir + "/crestd.log)");
  }
  ~Daemon() {
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      int st;
      ::waitpid(pid, &st, 0);
    }
  }
  json call(const json& req, const std::vector<int>& fds = {}) const {
    return crest::agent::Client::connect(socket).call(req, fds, 300000);
  }
  // utime + stime in seconds, VmRSS and VmHWM in KiB.
  double cpu_seconds() const {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    std::istringstream rest(text.substr(text.rfind(')') + 2));
    std::string f;
    std::vector<std::string> fields;
    while (rest >> f) fields.push_back(f);
    // After the comm: state is field 3, utime 14, stime 15 (1-based) -> indices 11, 12 here.
    return (std::stod(fields.at(11)) + std::stod(fields.at(12))) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }
  long status_kib(const std::string& key) const {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(key + ":", 0) == 0) return std::stol(line.substr(key.size() + 1));
    return 0;
  }
};

std::string run_job(const Daemon& d, const std::vector<std::string>& argv, const std::string& out,
                    const std::string& every, const std::string& name) {
  int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  json req = {{"op", "run"},      {"argv", argv},     {"cwd", "/"},       {"env", json::array()},
              {"every", every},   {"name", name},     {"watch", false},   {"transient", false},
              {"keep", 2},        {"snapshot", "stop-copy"}};
  json reply = d.call(req, {in, fo, fo});
  ::close(in);
  ::close(fo);
  return reply["job"]["id"];
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(std::lround(p * static_cast<double>(v.size() - 1)));
  return v[std::min(i, v.size() - 1)];
}

std::string ms(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f ms", v);
  return buf;
}

// ---- 1. fleet ---------------------------------------------------------------------------------

void fleet(const std::string& dir, int jobs, const std::string& interval_text, double duration_s) {
  Daemon d(dir + "/fleet", {"--concurrency", "2", "--log-level", "warn"});
  std::vector<std::string> ids;
  for (int i = 0; i < jobs; ++i)
    ids.push_back(run_job(d, {self_exe(), "--as-job", "idle"}, dir + "/fleet/job" + std::to_string(i) + ".out",
                          interval_text, "idle" + std::to_string(i)));
  double cpu0 = d.cpu_seconds();
  auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(duration_s));
  double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  double cpu = d.cpu_seconds() - cpu0;
  long rss = d.status_kib("VmRSS"), hwm = d.status_kib("VmHWM");

  double interval = static_cast<double>(crest::agent::parse_duration(interval_text).count()) / 1e3;
  std::vector<double> counts, frozen_ms, total_ms, late_max;
  uint64_t ckpts = 0, late = 0, scheduled = 0, failures = 0, missed = 0;
  for (auto& id : ids) {
    json st = d.call({{"op", "status"}, {"job", id}})["job"];
    d.call({{"op", "pause"}, {"job", id}});
    uint64_t n = st["checkpoints"];
    ckpts += n;
    counts.push_back(static_cast<double>(n));
    failures += st["checkpoint_failures"].get<uint64_t>();
    late += st["schedule"]["late"].get<uint64_t>();
    scheduled += st["schedule"]["scheduled"].get<uint64_t>();
    late_max.push_back(st["schedule"]["late_max_ms"].get<double>());
    frozen_ms.push_back(st["frozen_ns"]["mean"].get<double>() / 1e6);
    if (st["last_checkpoint"].is_object())
      total_ms.push_back(st["last_checkpoint"]["total_ns"].get<double>() / 1e6);
    // The schedule counts from the end of one checkpoint to the start of the next.
    double mean_total = st["last_checkpoint"].is_object() ? st["last_checkpoint"]["total_ns"].get<double>() / 1e9 : 0;
    auto expected = static_cast<uint64_t>(std::floor(duration_s / (interval + mean_total)));
    if (expected > n) missed += expected - n;
  }
  for (auto& id : ids) d.call({{"op", "signal"}, {"job", id}, {"signal", "KILL"}});

  std::printf("\n1. fleet: %d jobs (16 MiB each, crest-init in their own pid namespace), every %s, %.0f s, concurrency 2\n",
              jobs, interval_text.c_str(), duration_s);
  std::printf("  %-28s %s\n", "metric", "value");
  std::printf("  %-28s %llu (per job min %.0f, median %.0f, max %.0f; ~%.0f expected)\n",
              "checkpoints", static_cast<unsigned long long>(ckpts), percentile(counts, 0),
              percentile(counts, 0.5), percentile(counts, 1), duration_s / interval);
  std::printf("  %-28s %llu\n", "missed (vs schedule)", static_cast<unsigned long long>(missed));
  std::printf("  %-28s %llu of %llu timed (worst %s late)\n", "late (> 10% of interval)",
              static_cast<unsigned long long>(late), static_cast<unsigned long long>(scheduled),
              ms(percentile(late_max, 1)).c_str());
  std::printf("  %-28s %llu\n", "failed", static_cast<unsigned long long>(failures));
  std::printf("  %-28s median %s, p95 %s, max %s (per-job means)\n", "job frozen",
              ms(percentile(frozen_ms, 0.5)).c_str(), ms(percentile(frozen_ms, 0.95)).c_str(),
              ms(percentile(frozen_ms, 1)).c_str());
  std::printf("  %-28s median %s, p95 %s, max %s\n", "checkpoint duration",
              ms(percentile(total_ms, 0.5)).c_str(), ms(percentile(total_ms, 0.95)).c_str(),
              ms(percentile(total_ms, 1)).c_str());
  std::printf("  %-28s %.1f%% of one core (%.1f s CPU in %.0f s)\n", "crestd CPU", 100 * cpu / wall,
              cpu, wall);
  std::printf("  %-28s RSS %.1f MiB, peak %.1f MiB\n", "crestd memory", rss / 1024.0, hwm / 1024.0);
}

// ---- 2. steady slowdown ----------------------------------------------------------------------

double compute_rate(const Daemon& d, const std::string& dir, const std::string& every, double secs,
                    size_t mib, const std::string& tag, uint64_t* checkpoints) {
  std::string out = dir + "/compute-" + tag + ".out";
  std::string id = run_job(d, {self_exe(), "--as-job", "compute", std::to_string(mib)}, out, every, tag);
  std::this_thread::sleep_for(std::chrono::duration<double>(secs));
  json st = d.call({{"op", "status"}, {"job", id}})["job"];
  *checkpoints = st["checkpoints"];
  d.call({{"op", "pause"}, {"job", id}});
  d.call({{"op", "signal"}, {"job", id}, {"signal", "TERM"}});
  for (int i = 0; i < 1000; ++i) {
    std::ifstream in(out);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    auto pos = text.find("rate ");
    if (pos != std::string::npos) return std::stod(text.substr(pos + 5));
    std::this_thread::sleep_for(20ms);
  }
  throw std::runtime_error("the compute job did not report its rate: " + out);
}

void slowdown(const std::string& dir, const std::string& every, double secs, size_t mib) {
  Daemon d(dir + "/compute", {"--log-level", "warn"});
  uint64_t n0 = 0, n1 = 0, n2 = 0;
  double base1 = compute_rate(d, dir + "/compute", "1000h", secs, mib, "base1", &n0);
  double with = compute_rate(d, dir + "/compute", every, secs, mib, "ckpt", &n1);
  double base2 = compute_rate(d, dir + "/compute", "1000h", secs, mib, "base2", &n2);
  double base = (base1 + base2) / 2;
  std::printf("\n2. steady slowdown: compute job (%zu MiB, all of it dirty between checkpoints), %.0f s per run\n",
              mib, secs);
  std::printf("  %-28s %s\n", "run", "sweeps/s");
  std::printf("  %-28s %.4f\n", "no checkpoints", base1);
  std::printf("  %-28s %.4f (%llu checkpoints)\n", ("every " + every).c_str(), with,
              static_cast<unsigned long long>(n1));
  std::printf("  %-28s %.4f\n", "no checkpoints, again", base2);
  std::printf("  %-28s %.2f%% (baselines differ by %.2f%%: the noise floor here)\n", "slowdown",
              100 * (base - with) / base, 100 * std::fabs(base1 - base2) / base);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "--as-job") == 0) {
    if (std::strcmp(argv[2], "idle") == 0) return idle_job();
    if (std::strcmp(argv[2], "compute") == 0) return compute_job(argc > 3 ? std::stoul(argv[3]) : 64);
    return 2;
  }
  CLI::App app{"crest-bench-agent: crestd under load (fleet of jobs; steady slowdown)"};
  int jobs = 20;
  std::string interval = "2s", duration = "2m", compute_interval = "30s", compute_duration = "2m";
  size_t compute_mib = 64;
  bool skip_fleet = false, skip_compute = false, keep_dir = false;
  app.add_option("--jobs", jobs, "Jobs on the agent")->capture_default_str();
  app.add_option("--interval", interval, "Their checkpoint interval")->capture_default_str();
  app.add_option("--duration", duration, "How long the fleet runs")->capture_default_str();
  app.add_option("--compute-interval", compute_interval, "Checkpoint interval of the compute job")
      ->capture_default_str();
  app.add_option("--compute-duration", compute_duration, "Length of each compute run")
      ->capture_default_str();
  app.add_option("--compute-mib", compute_mib, "Memory of the compute job")->capture_default_str();
  app.add_flag("--skip-fleet", skip_fleet);
  app.add_flag("--skip-compute", skip_compute);
  app.add_flag("--keep-dir", keep_dir, "Keep the working directory (logs, images)");
  CLI11_PARSE(app, argc, argv);

  char tmpl[] = "/tmp/crest-bench-agent.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return 1;
  std::string dir = tmpl;
  ::mkdir((dir + "/fleet").c_str(), 0755);
  ::mkdir((dir + "/compute").c_str(), 0755);
  ::signal(SIGPIPE, SIG_IGN);
  try {
    if (!skip_fleet)
      fleet(dir, jobs, interval,
            static_cast<double>(crest::agent::parse_duration(duration).count()) / 1e3);
    if (!skip_compute)
      slowdown(dir, compute_interval,
               static_cast<double>(crest::agent::parse_duration(compute_duration).count()) / 1e3,
               compute_mib);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crest-bench-agent: %s (working directory %s)\n", e.what(), dir.c_str());
    return 1;
  }
  if (keep_dir) {
    std::printf("\nworking directory: %s\n", dir.c_str());
  } else {
    std::string cmd = "rm -rf -- '" + dir + "'";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", dir.c_str());
  }
  return 0;
}
