// Unit tests of the agent's pieces that need no daemon: Daly's interval, durations, policies,
// the TOML configuration.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <regex>

#include "agent/crestd/config.h"
#include "agent/crestd/daly.h"
#include "agent/crestd/duration.h"
#include "agent/crestd/images.h"
#include "agent/crestd/policy.h"
#include "agent/crestd/protocol.h"
#include "agent/crestd/slurm.h"
#include "agent/crestd/staging.h"
#include "agent/crestd/trust.h"
#include "core/util/error.h"
#include "tests/agent/harness.h"

namespace crest::agent {
namespace {

using namespace std::chrono_literals;

// Daly (2006), eq. (37): tau = sqrt(2 d M) [1 + 1/3 sqrt(d/2M) + 1/9 (d/2M)] - d for d < 2M.
TEST(Daly, MatchesTheHigherOrderFormula) {
  // One minute to checkpoint, a failure a day: sqrt(2*60*86400) = 3219.938, x = 60/172800.
  double tau = daly_interval(60, 86400);
  double root = std::sqrt(2.0 * 60 * 86400);
  double x = 60.0 / (2 * 86400);
  EXPECT_NEAR(tau, root * (1 + std::sqrt(x) / 3 + x / 9) - 60, 1e-9);
  EXPECT_NEAR(tau, 3180.062, 0.001);
  // Five seconds against an hour.
  EXPECT_NEAR(daly_interval(5, 3600), 186.418, 0.001);
}

TEST(Daly, IsYoungToFirstOrderAndBelowItWhenCheckpointsAreCheap) {
  // For delta << M: sqrt(2 delta M) * 1/3 sqrt(delta / 2M) = delta / 3, so
  // tau = sqrt(2 delta M) - 2/3 delta + O(delta^1.5 / M^0.5).
  double delta = 0.01, m = 1e6;
  EXPECT_NEAR(daly_interval(delta, m), std::sqrt(2 * delta * m) - 2 * delta / 3, 1e-6);
  EXPECT_NEAR(daly_interval(delta, m) / std::sqrt(2 * delta * m), 1.0, 1e-4);
  EXPECT_LT(daly_interval(delta, m), std::sqrt(2 * delta * m));
}

TEST(Daly, CapsAtTheMtbfWhenACheckpointCostsTwoMtbfOrMore) {
  EXPECT_DOUBLE_EQ(daly_interval(200, 100), 100);
  EXPECT_DOUBLE_EQ(daly_interval(2 * 3600, 3600), 3600);
  // Just below the threshold the formula still applies (and is continuous enough).
  double just_below = daly_interval(2 * 3600 - 1e-6, 3600);
  EXPECT_GT(just_below, 0);
  EXPECT_NEAR(just_below, std::sqrt(2.0 * 7200 * 3600) * (1 + 1.0 / 3 + 1.0 / 9) - 7200, 1e-3);
}

TEST(Daly, GrowsWithCostAndMtbf) {
  EXPECT_LT(daly_interval(1, 3600), daly_interval(10, 3600));
  EXPECT_LT(daly_interval(10, 3600), daly_interval(10, 36000));
  EXPECT_EQ(daly_interval(10, 0), 0);
  EXPECT_NEAR(daly_interval(0, 3600), 0, 1e-12);
}

TEST(Duration, ParsesUnitsAndCompounds) {
  EXPECT_EQ(parse_duration("30s"), 30s);
  EXPECT_EQ(parse_duration("10m"), 10min);
  EXPECT_EQ(parse_duration("2h"), 2h);
  EXPECT_EQ(parse_duration("1h30m"), 90min);
  EXPECT_EQ(parse_duration("500ms"), 500ms);
  EXPECT_EQ(parse_duration("1.5s"), 1500ms);
  EXPECT_EQ(parse_duration("45"), 45s);
  EXPECT_EQ(parse_duration("1d"), 24h);
  for (const char* bad : {"", "s", "10x", "1h30", "-5s", "abc", "1..5s"}) {
    try {
      parse_duration(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), Errc::usage) << bad;
    }
  }
}

TEST(Duration, FormatsShortestExact) {
  EXPECT_EQ(format_duration(30s), "30s");
  EXPECT_EQ(format_duration(90min), "1h30m");
  EXPECT_EQ(format_duration(1500ms), "1.5s");
  EXPECT_EQ(format_duration(250ms), "250ms");
  EXPECT_EQ(format_duration(0ms), "0s");
  for (const char* s : {"30s", "10m", "2h", "1h30m", "1.5s", "250ms", "1h0m1s"})
    EXPECT_EQ(parse_duration(format_duration(parse_duration(s))), parse_duration(s)) << s;
}

TEST(Policy, UpdatesFromJsonAndRefusesNonsense) {
  JobPolicy p;
  p.update({{"every", "30s"}, {"keep", 5}, {"auto_restore", 0}, {"on_success", "remove"},
            {"tcp_established", true}, {"ext_unix_sk", true}, {"time_limit_margin", "90s"}});
  EXPECT_FALSE(p.time_limit_margin_auto);
  EXPECT_EQ(p.time_limit_margin, 90s);
  EXPECT_EQ(p.time_limit_margin_text(), "1m30s");
  EXPECT_TRUE(p.tcp_established);
  EXPECT_TRUE(p.ext_unix_sk);
  EXPECT_FALSE(p.auto_interval);
  EXPECT_EQ(p.interval, 30s);
  EXPECT_EQ(p.keep, 5u);
  EXPECT_EQ(p.auto_restore, 0u);
  EXPECT_TRUE(p.remove_images_on_success);
  p.update({{"every", "auto"}});
  EXPECT_TRUE(p.auto_interval);
  EXPECT_EQ(p.every(), "auto");
  JobPolicy round;
  round.update(p.to_json());
  EXPECT_EQ(round.to_json(), p.to_json());
  // No timer: what crest snapshot's jobs get; kept through the state file's round trip.
  p.update({{"every", "never"}});
  EXPECT_TRUE(p.never);
  EXPECT_FALSE(p.auto_interval);
  EXPECT_EQ(p.every(), "never");
  JobPolicy never;
  never.update(p.to_json());
  EXPECT_TRUE(never.never);
  EXPECT_EQ(never.to_json(), p.to_json());
  p.update({{"every", "1m"}});
  EXPECT_FALSE(p.never);
  EXPECT_EQ(p.interval, 1min);
  for (auto bad : {nlohmann::json{{"keep", 0}}, nlohmann::json{{"keep", "3"}},
                   nlohmann::json{{"every", "soon"}}, nlohmann::json{{"colour", "red"}},
                   nlohmann::json{{"every", "10ms"}}, nlohmann::json{{"auto_restore", -1}},
                   nlohmann::json{{"tcp_established", "yes"}}, nlohmann::json{{"ext_unix_sk", 1}},
                   nlohmann::json{{"time_limit_margin", "soon"}},
                   nlohmann::json{{"time_limit_margin", 60}}}) {
    JobPolicy q;
    EXPECT_THROW(q.update(bad), Error) << bad.dump();
  }
}

TEST(Config, ReadsTomlAndNamesTheLineOfAMistake) {
  agent_test::TempDir dir;
  std::string path = dir / "crestd.toml";
  std::ofstream(path) << "socket = \"/tmp/x.sock\"\nconcurrency = 3\nsnapshot_buffer_mib = 64\n"
                         "scontrol = \"/opt/slurm/bin/scontrol\"\nslurm_poll = \"5s\"\n"
                         "[defaults]\nevery = \"auto\"\nmtbf = \"6h\"\nkeep = 4\n"
                         "time_limit_margin = \"5m\"\n"
                         "[limits]\nmax_request_bytes = 4096\nrequest_timeout = \"2s\"\n"
                         "max_connections = 300\nmax_connections_per_user = 7\n";
  Config c;
  load_toml(c, path);
  EXPECT_EQ(c.socket, "/tmp/x.sock");
  EXPECT_EQ(c.concurrency, 3u);
  EXPECT_EQ(c.snapshot_buffer_mib, 64u);
  EXPECT_TRUE(c.defaults.auto_interval);
  EXPECT_EQ(c.defaults.mtbf, 6h);
  EXPECT_EQ(c.defaults.keep, 4u);
  EXPECT_EQ(c.scontrol, "/opt/slurm/bin/scontrol");
  EXPECT_EQ(c.slurm_poll, 5s);
  EXPECT_FALSE(c.defaults.time_limit_margin_auto);
  EXPECT_EQ(c.defaults.time_limit_margin, 5min);
  EXPECT_EQ(c.max_request_bytes, 4096u);
  EXPECT_EQ(c.request_timeout, 2s);
  EXPECT_EQ(c.max_connections, 300u);
  EXPECT_EQ(c.max_connections_per_user, 7u);
  EXPECT_EQ(c.metrics_file, "/var/lib/prometheus/node-exporter/crest.prom");
  std::ofstream(path) << "metrics_file = \"/tmp/m/crest.prom\"\n[defaults]\nevery = \"never\"\n";
  Config m;
  load_toml(m, path);
  EXPECT_EQ(m.metrics_file, "/tmp/m/crest.prom");
  EXPECT_TRUE(m.defaults.never);

  std::ofstream(path) << "socket = \"/tmp/x.sock\"\n\n[defaults]\nkepe = 4\n";
  try {
    Config d;
    load_toml(d, path);
    ADD_FAILURE() << "an unknown key was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Errc::usage);
    EXPECT_NE(std::string(e.what()).find(":4:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("kepe"), std::string::npos) << e.what();
  }
  std::ofstream(path) << "concurrency = \"two\"\n";
  Config e;
  EXPECT_THROW(load_toml(e, path), Error);
  EXPECT_THROW(load_toml(e, dir / "missing.toml"), Error);
}

TEST(Config, TheExampleFileInTheRepositoryLoads) {
  Config c;
  load_toml(c, std::string(CREST_AGENT_SOURCE) + "/agent/crestd.toml");
  EXPECT_EQ(c.socket, kDefaultSocket);
  EXPECT_TRUE(c.defaults.time_limit_margin_auto);
  // The example states the built-in limits.
  Config defaults;
  EXPECT_EQ(c.max_connections, defaults.max_connections);
  EXPECT_EQ(c.max_connections_per_user, defaults.max_connections_per_user);
  EXPECT_EQ(c.max_request_bytes, defaults.max_request_bytes);
}

TEST(Config, StorageStagingSettings) {
  agent_test::TempDir dir;
  std::string path = dir / "crestd.toml";
  std::ofstream(path) << "[storage]\nshared = \"/lustre/crest\"\nlocal = \"/dev/shm/crest\"\n"
                         "flush_bandwidth = \"200MB/s\"\nlocal_keep = 2\n"
                         "local_max_bytes = \"8GiB\"\n";
  Config c;
  load_toml(c, path);
  EXPECT_EQ(c.storage_root, "/lustre/crest");
  EXPECT_EQ(c.storage_local, "/dev/shm/crest");
  EXPECT_EQ(c.flush_bandwidth, 200000000u);
  EXPECT_EQ(c.local_keep, 2u);
  EXPECT_EQ(c.local_max_bytes, 8ull << 30);
  EXPECT_EQ(parse_bandwidth("1.5GiB/s", "x"), static_cast<uint64_t>(1.5 * (1ull << 30)));
  EXPECT_EQ(parse_bandwidth("unlimited", "x"), 0u);
  EXPECT_EQ(parse_bandwidth("800M", "x"), 800000000u);
  EXPECT_EQ(parse_size("4096", "x"), 4096u);
  EXPECT_THROW(parse_bandwidth("fast", "x"), Error);
  EXPECT_THROW(parse_size("12 parsecs", "x"), Error);
  std::ofstream(path) << "[storage]\nflush_bandwidth = \"lots\"\n";
  try {
    Config d;
    load_toml(d, path);
    ADD_FAILURE() << "a bad bandwidth was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(":2"), std::string::npos) << e.what();
  }
}

TEST(Staging, PendingFlushesAreInOrderAndNeverOverwriteAnotherCheckpoint) {
  auto entry = [](uint64_t seq, std::string uuid, std::string parent_uuid) {
    storage::CheckpointEntry e;
    char buf[32];
    std::snprintf(buf, sizeof buf, "ckpt-%06llu.h5", static_cast<unsigned long long>(seq));
    e.name = buf;
    e.sequence = seq;
    e.uuid = std::move(uuid);
    e.parent_uuid = std::move(parent_uuid);
    e.readable = true;
    return e;
  };
  // Local: 3 (copied), 4 and 5 (not yet); 2 is older than shared storage's newest and not there.
  std::vector<storage::CheckpointEntry> local{entry(2, "b", ""), entry(5, "e", "d"),
                                              entry(3, "c", "b"), entry(4, "d", "c")};
  std::vector<storage::CheckpointEntry> shared{entry(1, "a", ""), entry(3, "c", "b")};
  auto p = pending_flushes(local, shared);
  ASSERT_EQ(p.items.size(), 2u);
  EXPECT_EQ(p.items[0].name, "ckpt-000004.h5");
  EXPECT_EQ(p.items[1].name, "ckpt-000005.h5");
  EXPECT_EQ(p.conflict, "");
  // Compacted locally since it was copied (same uuid, no parent now): copied again.
  local[2] = entry(3, "c", "");
  p = pending_flushes(local, shared);
  ASSERT_EQ(p.items.size(), 3u);
  EXPECT_EQ(p.items[0].name, "ckpt-000003.h5");
  // Another checkpoint under the same name there: a conflict, not a copy.
  local[2] = entry(3, "z", "b");
  p = pending_flushes(local, shared);
  EXPECT_NE(p.conflict, "");
  for (const auto& i : p.items) EXPECT_NE(i.name, "ckpt-000003.h5");
}

TEST(Protocol, NestingDepthIsMeasuredOutsideStrings) {
  EXPECT_FALSE(json_nesting_exceeds(R"({"op": "jobs"})", 1));
  EXPECT_TRUE(json_nesting_exceeds(R"({"a": {"b": 1}})", 1));
  EXPECT_FALSE(json_nesting_exceeds(R"({"a": {"b": 1}})", 2));
  EXPECT_FALSE(json_nesting_exceeds(R"({"a": "[[[[{{{{"})", 1));
  EXPECT_FALSE(json_nesting_exceeds(R"({"a": "\"[[[[{{{{"})", 1));  // an escaped quote
  EXPECT_TRUE(json_nesting_exceeds(R"({"a": "\\", "b": [[1]]})", 2));  // an escaped backslash
  EXPECT_FALSE(json_nesting_exceeds("[][][][][][]", 1));
  EXPECT_TRUE(json_nesting_exceeds(std::string(100000, '['), kMaxRequestDepth));
  EXPECT_FALSE(json_nesting_exceeds(std::string(kMaxRequestDepth, '[') +
                                        std::string(kMaxRequestDepth, ']'),
                                    kMaxRequestDepth));
  EXPECT_FALSE(json_nesting_exceeds("]]]]]]]]]]]]][", 1));  // malformed: the parser's business
}

TEST(Protocol, LineReaderSplitsManyLinesAndKeepsThePartialOne) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  LineReader r(sv[1], 64);
  std::string data = std::string(1000, '\n') + "one\ntwo\nthr";
  ASSERT_EQ(::write(sv[0], data.data(), data.size()), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(r.read_some(), LineReader::Status::line);
  std::string line;
  int blank = 0;
  std::vector<std::string> got;
  while (r.pop_line(line)) line.empty() ? (void)++blank : got.push_back(line);
  EXPECT_EQ(blank, 1000);
  EXPECT_EQ(got, (std::vector<std::string>{"one", "two"}));
  EXPECT_EQ(r.pending(), 3u);
  EXPECT_FALSE(r.over_limit());
  ASSERT_EQ(::write(sv[0], "ee\n", 3), 3);
  EXPECT_EQ(r.next(line, 1000), LineReader::Status::line);
  EXPECT_EQ(line, "three");
  EXPECT_EQ(r.pending(), 0u);
  std::string big(100, 'x');
  ASSERT_EQ(::write(sv[0], big.data(), big.size()), 100);
  EXPECT_EQ(r.next(line, 1000), LineReader::Status::too_long);
  ::close(sv[0]);
  ::close(sv[1]);
}

TEST(Slurm, JobIdsAndTheRunEndRecord) {
  EXPECT_EQ(slurm_job_of("slurm:1234"), "1234");
  EXPECT_EQ(slurm_job_of("slurm:"), "");
  EXPECT_EQ(slurm_job_of("slurm:12; rm -rf /"), "");
  EXPECT_EQ(slurm_job_of("pbs:12"), "");
  agent_test::TempDir dir;
  // A link a user left in their images directory is replaced, never written through.
  std::string victim = dir / "victim";
  std::ofstream(victim) << "keep me\n";
  ASSERT_EQ(::symlink(victim.c_str(), (dir / ".run-end.tmp").c_str()), 0);
  write_run_end(dir.path, ::getuid(), ::getgid(), 1234567890123);
  std::ifstream in(dir / kRunEndFile);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "1234567890123");
  std::ifstream v(victim);
  std::getline(v, line);
  EXPECT_EQ(line, "keep me");
}

// ---- What a user may not smuggle into their own image (crestd restores it as root) ----------

namespace trust_test {

constexpr uid_t kUser = 4242;
constexpr gid_t kGroup = 4242;

schema::CheckpointMeta users_image() {
  schema::CheckpointMeta meta;
  schema::ProcessRecord p;
  p.pid = 100;
  p.uid = p.euid = p.suid = p.fsuid = kUser;
  p.gid = p.egid = p.sgid = p.fsgid = kGroup;
  p.flags = schema::kProcessRoot | schema::kProcessZombie;  // nothing to open: state only
  for (int r = 0; r < RLIM_NLIMITS; ++r) {
    rlimit mine{};
    ::getrlimit(static_cast<__rlimit_resource>(r), &mine);
    p.rlimits.push_back(mine.rlim_cur);
    p.rlimits.push_back(mine.rlim_max);
  }
  meta.processes.push_back(p);
  schema::ThreadRecord t;
  t.pid = t.tid = 100;
  meta.threads.push_back(t);
  return meta;
}

// The image restores untouched; changed by `edit`, it is refused with a message saying `why`.
void expect_refused(const std::function<void(schema::CheckpointMeta&)>& edit, const std::string& why) {
  auto meta = users_image();
  meta.processes[0].flags &= ~schema::kProcessZombie;
  edit(meta);
  try {
    check_image_for_owner(meta, kUser, kGroup);
    ADD_FAILURE() << "not refused; expected: " << why;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Errc::refused) << e.what();
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
}

// What crestd reads of `scontrol show job -o N` to follow a time limit changed while the job
// runs: the end in scontrol's local time, none for UNLIMITED, and whether the job runs.
TEST(Slurm, TheJobsEndFromScontrolShowJob) {
  std::string line =
      "JobId=7 JobName=wrap UserId=root(0) JobState=RUNNING Reason=None Requeue=1 Restarts=0 "
      "RunTime=00:00:05 TimeLimit=00:02:00 TimeMin=N/A SubmitTime=2026-12-07T11:59:00 "
      "StartTime=2026-12-07T12:00:00 EndTime=2026-12-07T12:02:00 Deadline=N/A";
  struct tm tm {};
  ASSERT_NE(::strptime("2026-12-07T12:02:00", "%Y-%m-%dT%H:%M:%S", &tm), nullptr);
  tm.tm_isdst = -1;
  int64_t want = static_cast<int64_t>(::mktime(&tm)) * 1000000000;
  SlurmJobEnd e = parse_slurm_job_end(line);
  EXPECT_TRUE(e.running);
  EXPECT_EQ(e.end_ns, want);
  e = parse_slurm_job_end(std::regex_replace(line, std::regex("TimeLimit=00:02:00"),
                                             "TimeLimit=UNLIMITED"));
  EXPECT_TRUE(e.running);
  EXPECT_EQ(e.end_ns, 0);
  e = parse_slurm_job_end(std::regex_replace(line, std::regex("JobState=RUNNING"),
                                             "JobState=PENDING"));
  EXPECT_FALSE(e.running);
  try {
    parse_slurm_job_end("slurm_load_jobs error: Invalid job id specified");
    ADD_FAILURE() << "not refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Errc::corrupt) << e.what();
  }
}

TEST(Trust, TheUsersOwnStateIsAccepted) {
  auto meta = users_image();
  meta.processes[0].flags &= ~schema::kProcessZombie;
  meta.processes[0].oom_score_adj = 500;
  meta.processes[0].loginuid = kUser;
  meta.threads[0].sched_nice = 10;
  EXPECT_NO_THROW(check_image_for_owner(meta, kUser, kGroup));
}

TEST(Trust, LimitsSchedulingAndAuditIdsBeyondTheUsersAreRefused) {
  expect_refused([](auto& m) { m.processes[0].oom_score_adj = -1000; }, "oom_score_adj");
  expect_refused([](auto& m) { m.processes[0].loginuid = 0; }, "loginuid");
  expect_refused([](auto& m) { m.processes[0].rlimits[2 * RLIMIT_NOFILE + 1] = RLIM_INFINITY - 1; },
                 "hard limit");
  expect_refused([](auto& m) {
    m.processes[0].rlimits[2 * RLIMIT_MEMLOCK] = 65536;
    schema::VmaRecord v;
    v.pid = 100;
    v.start = 1 << 20;
    v.end = v.start + (1ull << 30);
    v.vmflags = schema::vmflag("lo");
    m.vmas.push_back(v);
  }, "locked in memory");
  expect_refused([](auto& m) {
    m.processes[0].rlimits[2 * RLIMIT_RTPRIO] = 0;
    m.threads[0].sched_policy = SCHED_FIFO;
    m.threads[0].sched_priority = 50;
  }, "real-time priority");
  expect_refused([](auto& m) {
    m.processes[0].rlimits[2 * RLIMIT_NICE] = 0;
    m.threads[0].sched_nice = -20;
  }, "nice");
  expect_refused([](auto& m) { m.threads[0].ioprio = 1 << 13; }, "real-time I/O class");
  expect_refused([](auto& m) { m.threads[0].io_flusher = 1; }, "I/O flusher");
}

TEST(Trust, FilesMadeAgainAreTheUsersOwnAndNeverDevices) {
  expect_refused([](auto& m) {
    schema::FileRecord f;
    f.kind = static_cast<uint32_t>(schema::FileKind::memfd);
    f.path = "/memfd:x";
    f.contents_owner = 7;
    f.mode = S_IFREG | 04755;
    f.uid = 0;
    f.gid = 0;
    m.files.push_back(f);
  }, "owned by 0:0");
  expect_refused([](auto& m) {
    schema::FileRecord f;
    f.kind = static_cast<uint32_t>(schema::FileKind::chardev);
    f.path = "/tmp/sda";
    f.deleted = 1;
    f.mode = S_IFCHR | 0600;
    f.rdev = makedev(8, 0);
    f.uid = kUser;
    f.gid = kGroup;
    m.files.push_back(f);
  }, "device node");
}

}  // namespace trust_test

// Request fields: numbers are range-checked before they are converted (a pid of 2^32 + 1234 is
// not process 1234), and a field of the wrong type is a usage error naming it, never an
// internal one (tests/fuzz/fuzz_request fuzzes these).
TEST(Protocol, RequestFieldsAreCheckedBeforeConversion) {
  using nlohmann::json;
  auto usage = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.kind() == Errc::usage;
    }
    return false;
  };
  EXPECT_EQ(pid_field(json{{"pid", 1234}}), 1234);
  EXPECT_TRUE(usage([] { pid_field(json{{"pid", 4294968530ull}}); }));
  EXPECT_TRUE(usage([] { pid_field(json{{"pid", 1}}); }));
  EXPECT_TRUE(usage([] { pid_field(json{{"pid", "12"}}); }));
  EXPECT_EQ(parse_signal(json(15)), 15);
  EXPECT_EQ(parse_signal(json("SIGTERM")), 15);
  EXPECT_TRUE(usage([] { parse_signal(json(4294967311ull)); }));
  EXPECT_TRUE(usage([] { parse_signal(json(-1)); }));
  EXPECT_EQ(id_field(json{{"uid", 1000}}, "uid", 7), 1000u);
  EXPECT_EQ(id_field(json::object(), "uid", 7), 7u);
  EXPECT_TRUE(usage([] { id_field(json{{"uid", "x"}}, "uid", 0); }));
  EXPECT_TRUE(usage([] { id_field(json{{"uid", 4294967295ull}}, "uid", 0); }));
  EXPECT_TRUE(bool_field(json::object(), "wait", true));
  EXPECT_TRUE(usage([] { bool_field(json{{"wait", 0}}, "wait", true); }));
  EXPECT_EQ(string_list(json{{"argv", {"a", "b"}}}, "argv", true).size(), 2u);
  EXPECT_TRUE(usage([] { string_list(json{{"argv", json::array()}}, "argv", true); }));
  EXPECT_TRUE(usage([] { string_list(json{{"env", {1}}}, "env", false); }));
  EXPECT_FALSE(parse_request(" \t"));
  EXPECT_TRUE(usage([] { parse_request("[1]"); }));
  EXPECT_TRUE(usage([] { parse_request("{\"op\": "); }));
}

// ---- Where crestd (root) may write a job's images ---------------------------------------------

// The message open_images_dir refuses `dir` with, or "" when it opens it.
std::string refusal(const std::string& dir, uid_t uid = 4321, gid_t gid = 4321) {
  try {
    UniqueFd fd = open_images_dir(dir, uid, gid);
    return fd ? "" : "no descriptor";
  } catch (const Error& e) {
    return e.kind() == Errc::refused ? e.what() : std::string("not refused but: ") + e.what();
  }
}

TEST(ImagesDir, OnlyWhereNoOtherUserCanRedirectIt) {
  agent_test::TempDir t;
  const std::string d = t.path;
  // Made when missing (root's parents 0755), given to the user, 0700.
  EXPECT_EQ(refusal(d + "/new/a/b"), "");
  struct stat st {};
  ASSERT_EQ(::stat((d + "/new/a/b").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 4321u);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(::stat((d + "/new/a").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  // The user's directory below it: theirs; links in it are not followed.
  ASSERT_EQ(::symlink((d + "/new").c_str(), (d + "/new/a/b/up").c_str()), 0);
  ASSERT_EQ(::lchown((d + "/new/a/b/up").c_str(), 4321, 4321), 0);
  EXPECT_NE(
      refusal(d + "/new/a/b/up/x").find(d + "/new/a/b/up is a symbolic link owned by uid 4321"),
      std::string::npos)
      << refusal(d + "/new/a/b/up/x");
  // Root's link in root's directory is followed, relative or absolute; in the user's it is not.
  ASSERT_EQ(::symlink("new/a", (d + "/rel").c_str()), 0);
  ASSERT_EQ(::symlink((d + "/new/a").c_str(), (d + "/abs").c_str()), 0);
  EXPECT_EQ(refusal(d + "/rel/b"), "");
  EXPECT_EQ(refusal(d + "/abs/c"), "");
  ASSERT_EQ(::symlink((d + "/new").c_str(), (d + "/new/a/b/rootlink").c_str()), 0);
  EXPECT_NE(refusal(d + "/new/a/b/rootlink/y").find("a directory another user can change"),
            std::string::npos)
      << refusal(d + "/new/a/b/rootlink/y");
  // The images directory itself a link.
  ASSERT_EQ(::symlink((d + "/new/a/b").c_str(), (d + "/new/a/b/self").c_str()), 0);
  ASSERT_EQ(::lchown((d + "/new/a/b/self").c_str(), 4321, 4321), 0);
  EXPECT_NE(refusal(d + "/new/a/b/self").find("symbolic link"), std::string::npos);
  // A third user's directory, on the way or at the end: refused and left as it was.
  ASSERT_EQ(::mkdir((d + "/third").c_str(), 0755), 0);
  ASSERT_EQ(::chown((d + "/third").c_str(), 999, 999), 0);
  EXPECT_NE(refusal(d + "/third").find(d + "/third belongs to uid 999"), std::string::npos);
  EXPECT_NE(refusal(d + "/third/x").find(d + "/third belongs to uid 999"), std::string::npos);
  ASSERT_EQ(::stat((d + "/third").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 999u);
  EXPECT_EQ(::access((d + "/third/x").c_str(), F_OK), -1);
  // Writable by others: group or world, on the way or at the end; a sticky parent is fine.
  for (mode_t m : {0777, 0775}) {
    ASSERT_EQ(::mkdir((d + "/open" + std::to_string(m)).c_str(), 0700), 0);
    ASSERT_EQ(::chmod((d + "/open" + std::to_string(m)).c_str(), m), 0);
    EXPECT_NE(refusal(d + "/open" + std::to_string(m) + "/x").find("is writable by other users"),
              std::string::npos)
        << m;
    EXPECT_NE(refusal(d + "/open" + std::to_string(m)).find("is writable by other users"),
              std::string::npos)
        << m;
  }
  ASSERT_EQ(::mkdir((d + "/sticky").c_str(), 0700), 0);
  ASSERT_EQ(::chmod((d + "/sticky").c_str(), 01777), 0);
  EXPECT_EQ(refusal(d + "/sticky/x"), "");
  // Not a directory, '..', relative.
  { std::ofstream(d + "/file") << "x"; }
  EXPECT_THROW(open_images_dir(d + "/file", 4321, 4321), Error);
  EXPECT_NE(refusal(d + "/new/../new/a/b").find("'..'"), std::string::npos);
  EXPECT_THROW(open_images_dir("rel/x", 4321, 4321), Error);
}

// The pinned path keeps naming the directory opened, whatever its name becomes.
TEST(ImagesDir, ThePinnedPathFollowsTheDirectoryNotItsName) {
  agent_test::TempDir t;
  UniqueFd fd = open_images_dir(t / "u/imgs", 0, 0);
  ASSERT_EQ(::rename((t / "u").c_str(), (t / "v").c_str()), 0);
  ASSERT_EQ(::mkdir((t / "u").c_str(), 0755), 0);
  { std::ofstream(pinned_path(fd) + "/ckpt-000001.h5") << "x"; }
  EXPECT_EQ(::access((t / "v/imgs/ckpt-000001.h5").c_str(), F_OK), 0);
  EXPECT_EQ(::access((t / "u/imgs").c_str(), F_OK), -1);
}

}  // namespace
}  // namespace crest::agent

