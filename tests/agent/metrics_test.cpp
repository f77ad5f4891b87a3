// crestd's node metrics: the file for node_exporter's textfile collector and `crest jobs
// --metrics`, parsed as Prometheus text format (every line checked), and counters that move
// after a checkpoint.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>
#include <set>

#include "tests/agent/harness.h"

namespace crest::agent_test {
namespace {

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses the text exposition format strictly: HELP and TYPE once per family, before its samples;
// metric and label names as the format allows; label values with their escapes; a number for
// every value; counters named *_total; no sample twice. Problems are test failures.
std::vector<Sample> parse(const std::string& text) {
  static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*)");
  static const std::regex type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  static const std::regex sample(R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+))");
  static const std::regex label(R"(^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)\"(,|$))");
  std::vector<Sample> out;
  EXPECT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n') << "the last line ends with a newline";
  std::map<std::string, std::string> types;
  std::set<std::string> helped, seen;
  size_t at = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    std::string line = text.substr(at, nl == std::string::npos ? std::string::npos : nl - at);
    at = nl == std::string::npos ? text.size() : nl + 1;
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      EXPECT_TRUE(helped.insert(m[1]).second) << "HELP twice: " << line;
    } else if (std::regex_match(line, m, type)) {
      EXPECT_TRUE(types.emplace(m[1], m[2]).second) << "TYPE twice: " << line;
      if (m[2] == "counter") {
        EXPECT_TRUE(std::string(m[1]).ends_with("_total")) << "a counter is *_total: " << line;
      }
    } else if (std::regex_match(line, m, sample)) {
      Sample s;
      s.name = m[1];
      EXPECT_TRUE(types.count(s.name)) << "sample before its TYPE: " << line;
      EXPECT_TRUE(helped.count(s.name)) << "sample without HELP: " << line;
      std::string labels = m[3];
      while (!labels.empty()) {
        std::smatch l;
        if (!std::regex_search(labels, l, label)) {
          ADD_FAILURE() << "bad labels: " << line;
          break;
        }
        EXPECT_TRUE(s.labels.emplace(l[1], l[2]).second) << "label twice: " << line;
        labels = l.suffix();
      }
      char* end = nullptr;
      std::string v = m[4];
      s.value = std::strtod(v.c_str(), &end);
      EXPECT_TRUE(end != nullptr && *end == 0 && std::isfinite(s.value)) << "bad value: " << line;
      EXPECT_TRUE(seen.insert(line.substr(0, line.rfind(' '))).second) << "sample twice: " << line;
      out.push_back(std::move(s));
    } else {
      ADD_FAILURE() << "not Prometheus text format: '" << line << "'";
    }
  }
  return out;
}

// The value of a sample (with these labels among its own); NaN when absent.
double value(const std::vector<Sample>& samples, const std::string& name,
             const std::map<std::string, std::string>& labels = {}) {
  for (auto& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (auto& [k, v] : labels) match = match && s.labels.count(k) && s.labels.at(k) == v;
    if (match) return s.value;
  }
  return std::nan("");
}

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d))
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") out.push_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

std::string crest_metrics(const Daemon& d, const TempDir& dir) {
  std::string out = dir / "metrics.out";
  pid_t p = spawn({crest_bin(), "jobs", "--metrics", "--socket", d.socket}, output_to(out, dir / "metrics.err"));
  auto st = wait_child(p, 30s);
  EXPECT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << read_text(dir / "metrics.err");
  return read_text(out);
}

TEST(Metrics, TextfileAndCrestJobsMetricsCountCheckpoints) {
  TempDir dir;
  Reaper reaper;
  const std::string prom_dir = dir / "node-exporter";
  ASSERT_EQ(::mkdir(prom_dir.c_str(), 0755), 0);
  const std::string prom = prom_dir + "/crest.prom";
  Daemon d(dir, {"--metrics-file", prom});
  d.start();
  const std::string out = dir / "job.out";
  pid_t pid = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "8"}, output_to(out));
  reaper.add(pid);
  // Its 8 MiB are filled before its first step; the checkpoint must find them all.
  ASSERT_TRUE(wait_until([&] { return file_contains(out, "step 1\n"); }, 10s)) << read_text(out);
  // No timer: the only checkpoint is the one asked for.
  json job = d.call({{"op", "register"}, {"pid", pid}, {"every", "never"}, {"name", "m\"x"}})["job"];
  const std::string id = job["id"];
  EXPECT_EQ(job["every"], "never");

  ASSERT_TRUE(wait_until([&] { return !read_text(prom).empty(); }, 10s)) << "written on register";
  auto before = parse(read_text(prom));
  const std::map<std::string, std::string> mine{{"job", id}, {"name", "m\\\"x"}, {"uid", "0"}};
  EXPECT_EQ(value(before, "crest_checkpoints_total"), 0);
  EXPECT_EQ(value(before, "crest_job_checkpoints_total", mine), 0);
  EXPECT_EQ(value(before, "crest_jobs", {{"state", "running"}}), 1);
  EXPECT_EQ(value(before, "crest_job_running", mine), 1);

  json reply = d.call({{"op", "checkpoint"}, {"job", id}});
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump(2);
  // Rewritten after the commit, and again once retention has measured the images.
  ASSERT_TRUE(wait_until([&] {
    auto s = parse(read_text(prom));
    return value(s, "crest_checkpoints_total") == 1 && value(s, "crest_job_images_bytes", mine) > 0;
  }, 10s)) << read_text(prom);
  auto after = parse(read_text(prom));
  EXPECT_EQ(value(after, "crest_job_checkpoints_total", mine), 1);
  EXPECT_EQ(value(after, "crest_checkpoint_failures_total"), 0);
  EXPECT_GT(value(after, "crest_checkpoint_frozen_seconds_total"), 0);
  EXPECT_GT(value(after, "crest_job_frozen_seconds_total", mine), 0);
  EXPECT_GT(value(after, "crest_checkpoint_stored_bytes_total"), 0);
  EXPECT_GE(value(after, "crest_checkpoint_read_bytes_total"), 8 << 20);
  EXPECT_GT(value(after, "crest_job_images_bytes", mine), 0);
  EXPECT_NEAR(value(after, "crest_job_last_checkpoint_timestamp_seconds", mine),
              static_cast<double>(::time(nullptr)), 60);
  EXPECT_EQ(value(after, "crest_restores_total"), 0);

  // For the collector: readable by others, and nothing half-written left beside it.
  struct stat st {};
  ASSERT_EQ(::stat(prom.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  EXPECT_EQ(entries(prom_dir), std::vector<std::string>{"crest.prom"});

  // crest jobs --metrics: the same text format, the same counts.
  auto shown = parse(crest_metrics(d, dir));
  EXPECT_EQ(value(shown, "crest_checkpoints_total"), 1);
  EXPECT_EQ(value(shown, "crest_job_checkpoints_total", mine), 1);

  d.call({{"op", "forget"}, {"job", id}});
  ::kill(pid, SIGKILL);
  wait_child(pid, 10s);
}

TEST(Metrics, NoFileWhenTheCollectorDirectoryIsMissing) {
  TempDir dir;
  Daemon d(dir, {"--metrics-file", dir / "missing/crest.prom"});
  d.start();
  pid_t pid = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "2"});
  Reaper reaper;
  reaper.add(pid);
  std::string id = d.call({{"op", "register"}, {"pid", pid}, {"every", "never"}})["job"]["id"];
  ASSERT_TRUE(d.call({{"op", "checkpoint"}, {"job", id}}).value("ok", false));
  EXPECT_NE(::access((dir / "missing").c_str(), F_OK), 0) << "crestd does not make the directory";
  // The metrics are still there to ask for.
  auto shown = parse(crest_metrics(d, dir));
  EXPECT_EQ(value(shown, "crest_checkpoints_total"), 1);
}

}  // namespace
}  // namespace crest::agent_test
