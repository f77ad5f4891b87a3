// Acceptance tests of incremental checkpoints (issue 4), driving the engine in-process so that
// one Tracker follows a job across its checkpoints, as the agent does.
//
//   Incremental/Chain.<tracker>_<mode>
//     The `incr` workload (tests/workloads/incr.c, script in incr_model.h) goes through six
//     states: rewritten pages, pages written only by read(2), MADV_DONTNEED, a new mmap, an
//     mremap, a fork, a shared mapping written by the child. After each state the test checks the
//     live job against the model, then dumps it (leave running, one tracker, each checkpoint the
//     parent of the next). Every checkpoint must record exactly, for every page of the regions
//     under test: absent / zero / stored in this file / kept in an ancestor / shared copy-on-write
//     with the parent process. Then every point of the chain is restored (in a fresh pid
//     namespace) and the restored memory is compared byte for byte with the model of that
//     moment, absent pages must not be present; the restored job then verifies itself too.
//     Run for every tracker this machine has and for stop-copy and copy-on-write snapshots.
//   Incremental/Parent.*
//     `crest dump --parent`: with no usable parent a full checkpoint that says so; a missing or
//     corrupt ancestor, or an unreadable newest checkpoint, is named, never silently skipped.
//
// Environment: as tests/e2e (CREST_E2E_CREST, CREST_E2E_WORKLOADS, CREST_E2E_TMPDIR,
// CREST_E2E_KEEP).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/checkpoint.h"
#include "core/tracker.h"
#include "core/util/error.h"
#include "storage/image_store.h"
#include "tests/e2e/harness.h"

extern "C" {
#include "incr_model.h"
#include "workload.h"
}

namespace crest::incremental {
namespace {

using e2e::Seconds;
using e2e::WorkloadRun;
using testing::AssertionFailure;
using testing::AssertionResult;
using testing::AssertionSuccess;

constexpr uint64_t kPage = 4096;
const Seconds kReady(60), kStep(30), kCrest(60), kCheck(30);

void note(const std::string& what) { fprintf(stderr, "[incremental] %s\n", what.c_str()); }

// Number of verdict lines in out.log so far (PASS or FAIL...); FAIL lines counted in *fails.
size_t verdicts(const WorkloadRun& run, size_t* fails) {
  std::istringstream in(run.log());
  std::string line;
  size_t n = 0;
  *fails = 0;
  while (std::getline(in, line)) {
    if (line == "PASS") n++;
    if (line.rfind("FAIL", 0) == 0) n++, (*fails)++;
  }
  return n;
}

// SIGTERM: the job verifies itself, prints one verdict and exits 0; nothing is left behind.
void terminate_and_check(WorkloadRun& run, pid_t root, const std::string& what) {
  size_t fails_before = 0;
  size_t before = verdicts(run, &fails_before);
  ASSERT_EQ(kill(root, SIGTERM), 0) << what << " is gone before its check";
  auto st = e2e::wait_child(root, kCheck);
  if (!st) {
    e2e::kill_descendants();
    FAIL() << what << " did not finish its self-check within " << kCheck.count() << " s\n"
           << run.diagnostics();
  }
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
      << what << ": " << e2e::describe_wait_status(*st) << "\n"
      << run.diagnostics();
  EXPECT_TRUE(e2e::wait_no_children(kCheck)) << what << ": processes left behind";
  size_t fails = 0;
  size_t after = verdicts(run, &fails);
  EXPECT_EQ(after, before + 1) << what << " printed no verdict\n" << run.diagnostics();
  EXPECT_EQ(fails, fails_before) << what << " failed its self-check\n" << run.diagnostics();
}

std::string hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool contains(const std::string& text, const std::string& word) {
  return lower(text).find(lower(word)) != std::string::npos;
}

// "key=0x... key=0x..." fields of a status line.
std::map<std::string, uint64_t> fields_of(const std::string& line) {
  std::map<std::string, uint64_t> out;
  std::istringstream in(line);
  std::string tok;
  while (in >> tok) {
    auto eq = tok.find('=');
    if (eq == std::string::npos) continue;
    out[tok.substr(0, eq)] = std::stoull(tok.substr(eq + 1), nullptr, 0);
  }
  return out;
}

// ---- Memory of a live process, from outside --------------------------------------------------

// /proc/PID/pagemap entries of npages pages from addr (bit 63: present). Reading pagemap never
// faults anything in.
std::vector<uint64_t> pagemap(pid_t pid, uint64_t addr, size_t npages) {
  std::vector<uint64_t> out(npages, 0);
  int fd = ::open(("/proc/" + std::to_string(pid) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("open pagemap of " + std::to_string(pid));
  ssize_t want = static_cast<ssize_t>(npages * 8);
  ssize_t n = ::pread(fd, out.data(), static_cast<size_t>(want), static_cast<off_t>(addr / kPage * 8));
  ::close(fd);
  if (n != want) throw std::runtime_error("short read of the pagemap of " + std::to_string(pid));
  return out;
}

bool present(uint64_t entry) { return (entry >> 63) & 1; }

// Reads [addr, addr+len) of a process through /proc/PID/mem, only ever on present pages of the
// live job (reading a hole would map the zero page and change what the next checkpoint sees).
// Not process_vm_readv: it pins pages for reading, and since Linux 5.19 a read-only pin of an
// anonymous page still shared copy-on-write with another process makes the kernel copy it
// ("unshare") — the test would break the very sharing it checks. /proc/PID/mem does not pin.
bool read_remote(pid_t pid, uint64_t addr, void* dst, size_t len) {
  int fd = ::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, static_cast<char*>(dst) + got, len - got,
                        static_cast<off_t>(addr + got));
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  int err = errno;
  ::close(fd);
  errno = err;
  return got == len;
}

std::vector<unsigned char> model_bytes(incr_page m, int region, unsigned page) {
  std::vector<unsigned char> b(kPage, 0);
  if (m.kind == INCR_DATA) wl_fill(b.data(), kPage, incr_seed(region, page, m.version));
  return b;
}

// AnonHugePages of the VMA starting at `start` (/proc/PID/smaps), as text.
std::string anon_huge_kib(pid_t pid, uint64_t start) {
  std::istringstream in(e2e::read_text_file("/proc/" + std::to_string(pid) + "/smaps"));
  std::string line;
  bool in_vma = false;
  char want[32];
  snprintf(want, sizeof want, "%llx-", static_cast<unsigned long long>(start));
  while (std::getline(in, line)) {
    if (line.find('-') != std::string::npos && line.find(' ') > line.find('-') &&
        std::isxdigit(static_cast<unsigned char>(line[0])))
      in_vma = line.rfind(want, 0) == 0;
    if (in_vma && line.rfind("AnonHugePages:", 0) == 0) {
      std::istringstream f(line.substr(14));
      std::string kb;
      f >> kb;
      return kb;
    }
  }
  return "?";
}

// ---- What a checkpoint records ---------------------------------------------------------------

enum class Cls { absent, zero, stored, kept, cow };

const char* cls_name(Cls c) {
  switch (c) {
    case Cls::absent: return "absent";
    case Cls::zero: return "zero";
    case Cls::stored: return "stored in this file";
    case Cls::kept: return "kept in an ancestor";
    case Cls::cow: return "shared copy-on-write with the parent";
  }
  return "?";
}

Cls recorded(const std::vector<schema::PageRun>& index, uint64_t owner, uint64_t addr) {
  auto it = std::upper_bound(index.begin(), index.end(), std::make_pair(owner, addr),
                             [](const std::pair<uint64_t, uint64_t>& key, const schema::PageRun& r) {
                               return key.first != r.owner ? key.first < r.owner
                                                           : key.second < r.addr;
                             });
  if (it == index.begin()) return Cls::absent;
  --it;
  if (it->owner != owner || addr >= it->addr + it->npages * kPage) return Cls::absent;
  switch (static_cast<schema::PageKind>(it->kind)) {
    case schema::PageKind::zero: return Cls::zero;
    case schema::PageKind::cow_parent: return Cls::cow;
    case schema::PageKind::data: return it->depth == 0 ? Cls::stored : Cls::kept;
  }
  return Cls::absent;
}

// ---- The chain test --------------------------------------------------------------------------

struct ChainParam {
  TrackerKind tracker;
  SnapshotMode mode;
  // Stop-copy only: pages read into memory while frozen and written after the thaw (the
  // default for what fits DumpOptions::buffer_bytes), or written while frozen.
  bool buffered = false;
};

std::string mode_name(SnapshotMode m) { return m == SnapshotMode::cow ? "cow" : "stop_copy"; }

std::string param_name(const ChainParam& p) {
  std::string t = Tracker::kind_name(p.tracker);
  std::replace(t.begin(), t.end(), '-', '_');
  std::string name = t + "_" + mode_name(p.mode);
  if (p.mode == SnapshotMode::stop_copy) name += p.buffered ? "_buffered" : "_unbuffered";
  return name;
}

class ChainTest : public testing::Test {
 public:
  explicit ChainTest(ChainParam p) : param_(p) {}

  void TestBody() override;

 private:
  static constexpr int kRoot = 0, kChild = 1;

  // Base address of a region in a state (M moves in INCR_MOVE_STATE).
  uint64_t base(int region, int state) const {
    if (region == INCR_M) return state >= INCR_MOVE_STATE ? m_new_ : base_[INCR_M];
    return base_[region];
  }

  void send_step(int expect_state);
  void check_live(int state);
  void check_index(int k, storage::CheckpointReader& reader);
  void check_restored(int k, storage::CheckpointReader& reader);
  void terminate_checked(pid_t root, const std::string& what);

  ChainParam param_;
  std::unique_ptr<WorkloadRun> run_;
  int cmd_ = -1, status_ = -1;
  std::array<uint64_t, INCR_NREGIONS> base_{};
  uint64_t m_new_ = 0;
  pid_t child_ = -1;  // the live job's child (host pid)
  // Expected class of every (proc, region, page) in the previous checkpoint, and its address.
  std::map<std::tuple<int, int, unsigned>, std::pair<uint64_t, Cls>> prev_;
};

void ChainTest::send_step(int expect_state) {
  ASSERT_EQ(::write(cmd_, "s", 1), 1) << strerror(errno);
  auto line = e2e::read_line(status_, kStep);
  ASSERT_TRUE(line.complete) << "the workload did not answer the step to state " << expect_state
                             << " (got '" << line.line << "')\n"
                             << run_->diagnostics();
  std::istringstream in(line.line);
  std::string word;
  int state = -1;
  in >> word >> state;
  ASSERT_EQ(word, "state") << line.line;
  ASSERT_EQ(state, expect_state) << line.line;
  auto f = fields_of(line.line);
  if (state == INCR_MOVE_STATE) {
    ASSERT_TRUE(f.count("N") && f.count("M") && f.count("Mold")) << line.line;
    base_[INCR_N] = f["N"];
    m_new_ = f["M"];
    ASSERT_EQ(f["Mold"], base_[INCR_M]);
    ASSERT_NE(m_new_, base_[INCR_M]) << "mremap did not move M";
  }
  if (state == INCR_FORK_STATE) {
    ASSERT_TRUE(f.count("child")) << line.line;
    child_ = static_cast<pid_t>(f["child"]);
  }
}

// The live job matches the model: every page the model has is present with its bytes, every
// page it has not is absent. Validates the workload before the engine is judged on it.
void ChainTest::check_live(int state) {
  std::vector<std::string> bad;
  for (int proc : {kRoot, kChild}) {
    if (proc == kChild && state < INCR_FORK_STATE) continue;
    pid_t pid = proc == kRoot ? run_->root() : child_;
    for (int r = 0; r < INCR_NREGIONS; r++) {
      if (!incr_region_exists(proc, r, state)) continue;
      unsigned n = incr_region_pages(r);
      auto pm = pagemap(pid, base(r, state), n);
      for (unsigned p = 0; p < n; p++) {
        incr_page m = incr_model(proc, r, p, state);
        bool want_present = m.kind != INCR_ABSENT;
        std::string where = std::string(proc == kRoot ? "root" : "child") + " " +
                            incr_region_name(r) + "[" + std::to_string(p) + "]";
        // A shared mapping's pages live in the object: a process maps them in on first touch
        // (fork copies no page table entries for them), so only the root, which wrote them
        // all, must have them present.
        bool check_presence = !(r == INCR_S && proc == kChild);
        if (check_presence && present(pm[p]) != want_present) {
          bad.push_back(where + (want_present ? " is not present" : " is present"));
          continue;
        }
        if (!want_present || !present(pm[p])) continue;
        std::vector<unsigned char> got(kPage);
        if (!read_remote(pid, base(r, state) + p * kPage, got.data(), kPage)) {
          bad.push_back(where + ": cannot read /proc/PID/mem: " + strerror(errno));
          continue;
        }
        if (got != model_bytes(m, r, p)) bad.push_back(where + " differs from the model");
      }
    }
  }
  if (state >= INCR_MOVE_STATE) {
    auto pm = pagemap(run_->root(), base_[INCR_M], incr_region_pages(INCR_M));
    for (unsigned p = 0; p < pm.size(); p++)
      if (present(pm[p])) bad.push_back("root: old M[" + std::to_string(p) + "] is present");
  }
  std::string msg;
  for (size_t i = 0; i < bad.size() && i < 20; i++) msg += "\n  " + bad[i];
  ASSERT_TRUE(bad.empty()) << "the live workload does not match its model in state " << state
                           << " (a test or workload bug, not the engine's):" << msg;
}

void ChainTest::check_index(int k, storage::CheckpointReader& reader) {
  const int state = k - 1;
  const auto& meta = reader.meta();
  const auto& index = reader.page_index();
  // Owners: the processes by their recorded pids, the shared region by its VMA.
  const schema::ProcessRecord* root = nullptr;
  for (auto& p : meta.processes)
    if (p.flags & schema::kProcessRoot) root = &p;
  ASSERT_NE(root, nullptr);
  const schema::ProcessRecord* child = nullptr;
  for (auto& p : meta.processes)
    if (p.ppid == root->pid && !(p.flags & schema::kProcessRoot)) child = &p;
  if (state >= INCR_FORK_STATE) {
    ASSERT_NE(child, nullptr) << "checkpoint " << k << " has no child process";
  } else {
    ASSERT_EQ(meta.processes.size(), 1u) << "checkpoint " << k;
  }
  uint64_t shared_owner = 0;
  for (auto& v : meta.vmas)
    if (v.pid == root->pid && v.start == base_[INCR_S]) shared_owner = v.owner;
  ASSERT_NE(shared_owner, 0u) << "no VMA of the root at S " << hex(base_[INCR_S]);
  ASSERT_NE(shared_owner, root->mem_owner);

  std::vector<std::string> bad;
  auto judge = [&](int proc, int region, unsigned page, uint64_t owner, uint64_t key, Cls want) {
    Cls got = recorded(index, owner, key);
    if (got != want)
      bad.push_back(std::string(proc == kRoot ? "root" : "child") + " " + incr_region_name(region) +
                    "[" + std::to_string(page) + "] (owner " + std::to_string(owner) + " key " +
                    hex(key) + "): expected " + cls_name(want) + ", recorded " + cls_name(got));
  };
  decltype(prev_) now;
  for (int proc : {kRoot, kChild}) {
    if (proc == kChild && !child) continue;
    uint64_t owner = proc == kRoot ? root->mem_owner : child->mem_owner;
    for (int r = 0; r < INCR_NREGIONS; r++) {
      if (!incr_region_exists(proc, r, state)) continue;
      if (r == INCR_S && proc == kChild) continue;  // one object, judged once
      for (unsigned p = 0; p < incr_region_pages(r); p++) {
        incr_page m = incr_model(proc, r, p, state);
        uint64_t key = r == INCR_S ? p * kPage : base(r, state) + p * kPage;
        uint64_t o = r == INCR_S ? shared_owner : owner;
        Cls want;
        if (m.kind == INCR_ABSENT) {
          want = Cls::absent;
        } else if (proc == kChild && incr_shared_with_parent(r, p, state)) {
          want = Cls::cow;
        } else if (m.kind == INCR_ZERO) {
          want = Cls::zero;
        } else {
          // Kept only if the previous checkpoint had the same bytes under the same key.
          want = Cls::stored;
          auto it = prev_.find({proc, r, p});
          if (k > 1 && it != prev_.end() && it->second.first == key &&
              (it->second.second == Cls::stored || it->second.second == Cls::kept) &&
              incr_same(incr_model(proc, r, p, state - 1), m))
            want = Cls::kept;
        }
        judge(proc, r, p, o, key, want);
        now[{proc, r, p}] = {key, want};
      }
    }
  }
  // Where M was: nothing of the root's any more.
  if (state >= INCR_MOVE_STATE)
    for (unsigned p = 0; p < incr_region_pages(INCR_M); p++)
      judge(kRoot, INCR_M, p, root->mem_owner, base_[INCR_M] + p * kPage, Cls::absent);
  prev_ = std::move(now);

  std::string msg;
  for (size_t i = 0; i < bad.size() && i < 40; i++) msg += "\n  " + bad[i];
  if (bad.size() > 40) msg += "\n  ... " + std::to_string(bad.size() - 40) + " more";
  EXPECT_TRUE(bad.empty()) << "checkpoint " << k << " (" << reader.name() << ", state " << state
                           << ", tracker " << Tracker::kind_name(param_.tracker) << ", "
                           << mode_name(param_.mode) << ") records " << bad.size()
                           << " page(s) of the regions under test wrongly:" << msg;
}

// Every restored page of the regions equals the model of that moment; absent pages are not
// present. Then the restored job checks itself (SIGTERM) and must exit 0 with PASS.
void ChainTest::check_restored(int k, storage::CheckpointReader& reader) {
  const int state = k - 1;
  RestoreOptions ro;
  ro.pid_namespace = true;  // the original pids may be taken
  ro.file_changes = FileChangePolicy::ignore;  // out.log grows with every verdict
  RestoreResult rr;
  try {
    rr = restore(reader, ro);
  } catch (const Error& e) {
    FAIL() << "restore of checkpoint " << k << " (" << reader.name() << ") failed: "
           << kind_name(e.kind()) << ": " << e.what();
  }
  const pid_t root = rr.root_pid;
  e2e::forget_pid(root);
  pid_t child = -1;
  if (state >= INCR_FORK_STATE) {
    auto kids = e2e::children_of(root);
    if (kids.size() != 1) {
      kill(root, SIGKILL);
      e2e::kill_descendants();
      FAIL() << "the restored root of checkpoint " << k << " has " << kids.size()
             << " children, expected 1";
    }
    child = kids[0];
  }

  std::vector<std::string> bad;
  for (int proc : {kRoot, kChild}) {
    if (proc == kChild && child < 0) continue;
    pid_t pid = proc == kRoot ? root : child;
    for (int r = 0; r < INCR_NREGIONS; r++) {
      if (!incr_region_exists(proc, r, state)) continue;
      unsigned n = incr_region_pages(r);
      std::vector<uint64_t> pm;
      try {
        pm = pagemap(pid, base(r, state), n);
      } catch (const std::exception& e) {
        bad.push_back(e.what());
        continue;
      }
      std::vector<unsigned char> got(n * kPage);
      // Presence first: reading an absent page would map the zero page. (The shared region's
      // pages are in the object, mapped in on first touch: nothing to say about its PTEs.)
      for (unsigned p = 0; p < n && r != INCR_S; p++) {
        incr_page m = incr_model(proc, r, p, state);
        std::string where = std::string(proc == kRoot ? "root" : "child") + " " +
                            incr_region_name(r) + "[" + std::to_string(p) + "]";
        if (m.kind == INCR_ABSENT && present(pm[p]))
          bad.push_back(where + " is present after restore; it was absent (freed or never touched)");
        if (m.kind == INCR_DATA && !present(pm[p]))
          bad.push_back(where + " is not present after restore");
      }
      if (!read_remote(pid, base(r, state), got.data(), got.size())) {
        bad.push_back(std::string(incr_region_name(r)) + ": cannot read the restored process " +
                      std::to_string(pid) + ": " + strerror(errno));
        continue;
      }
      for (unsigned p = 0; p < n; p++) {
        incr_page m = incr_model(proc, r, p, state);
        auto want = model_bytes(m, r, p);
        if (std::memcmp(got.data() + p * kPage, want.data(), kPage) != 0) {
          // Name whose bytes it holds, when they are another version of the same page.
          std::string seen = "unknown bytes";
          for (unsigned v : {0u, 1u, 2u, 3u, INCR_CHILD_VERSION}) {
            auto other = model_bytes({v ? INCR_DATA : INCR_ZERO, v}, r, p);
            if (std::memcmp(got.data() + p * kPage, other.data(), kPage) == 0)
              seen = v ? "version " + std::to_string(v) : std::string("zeros");
          }
          bad.push_back(std::string(proc == kRoot ? "root" : "child") + " " +
                        incr_region_name(r) + "[" + std::to_string(p) + "] at " +
                        hex(base(r, state) + p * kPage) + ": expected " +
                        (m.kind == INCR_DATA ? "version " + std::to_string(m.version)
                                             : std::string("zeros")) +
                        ", restored " + seen);
        }
      }
    }
  }
  std::string msg;
  for (size_t i = 0; i < bad.size() && i < 40; i++) msg += "\n  " + bad[i];
  EXPECT_TRUE(bad.empty()) << "restore of checkpoint " << k << " (" << reader.name()
                           << ", state " << state << ", tracker "
                           << Tracker::kind_name(param_.tracker) << ", " << mode_name(param_.mode)
                           << ") differs from the memory of that moment:" << msg;
  terminate_checked(root, "the job restored from checkpoint " + std::to_string(k));
}

void ChainTest::terminate_checked(pid_t root, const std::string& what) {
  terminate_and_check(*run_, root, what);
}

void ChainTest::TestBody() {
  std::unique_ptr<Tracker> tracker;
  try {
    tracker = Tracker::create(param_.tracker);
  } catch (const Error& e) {
    FAIL() << "Tracker::create(" << Tracker::kind_name(param_.tracker) << "): " << e.what();
  }
  run_ = std::make_unique<WorkloadRun>("incr", "Chain-" + param_name(param_));
  ASSERT_TRUE(run_->start(kReady));
  cmd_ = ::open((run_->dir() + "/cmd").c_str(), O_RDWR | O_CLOEXEC);
  status_ = ::open((run_->dir() + "/status").c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK);
  ASSERT_GE(cmd_, 0) << strerror(errno);
  ASSERT_GE(status_, 0) << strerror(errno);
  struct Closer {
    int& a;
    int& b;
    ~Closer() {
      if (a >= 0) ::close(a);
      if (b >= 0) ::close(b);
    }
  } closer{cmd_, status_};
  auto setup = e2e::read_line(status_, kStep);
  ASSERT_TRUE(setup.complete) << "no setup line\n" << run_->diagnostics();
  auto f = fields_of(setup.line);
  for (int r : {INCR_A, INCR_B, INCR_S, INCR_M, INCR_H}) {
    ASSERT_TRUE(f.count(incr_region_name(r))) << setup.line;
    base_[r] = f[incr_region_name(r)];
  }
  // Whether H is one transparent huge page here (it is tested either way; say which).
  std::string thp = e2e::read_text_file("/sys/kernel/mm/transparent_hugepage/enabled");
  if (!thp.empty() && thp.back() == '\n') thp.pop_back();
  note(param_name(param_) + ": region H (MADV_HUGEPAGE; THP '" + thp + "'): AnonHugePages " +
       anon_huge_kib(run_->root(), base_[INCR_H]) + " kB");

  auto store = storage::ImageStore::open_directory(run_->images(), /*create=*/true);
  std::vector<std::string> names;
  std::vector<std::string> uuids;
  for (int k = 1; k <= INCR_STATES; k++) {
    const int state = k - 1;
    if (k > 1) {
      ASSERT_NO_FATAL_FAILURE(send_step(state));
    }
    ASSERT_NO_FATAL_FAILURE(check_live(state));

    DumpResult res;
    try {
      auto writer = store->begin(names.empty() ? "" : names.back());
      DumpOptions opts;
      opts.pid = run_->root();
      opts.leave_running = true;
      opts.tracker = tracker.get();
      opts.mode = param_.mode;
      // A pre-copy leaves too little to read for a snapshot to be worth taking (dump then stays
      // in stop-copy): the copy-on-write runs test the snapshot path, without pre-copy.
      opts.precopy = param_.mode != SnapshotMode::cow;
      if (!param_.buffered) opts.buffer_bytes = 0;
      res = dump(*writer, opts);
    } catch (const Error& e) {
      FAIL() << "dump " << k << " (state " << state << ") failed: " << kind_name(e.kind()) << ": "
             << e.what() << "\n"
             << run_->diagnostics();
    }
    names.push_back(res.checkpoint);

    // The job runs on, untraced, with exactly its own processes (no snapshot copy left).
    ASSERT_TRUE(e2e::process_exists(run_->root()));
    std::vector<pid_t> tree = e2e::tree_of(run_->root());
    ASSERT_EQ(tree.size(), state >= INCR_FORK_STATE ? 2u : 1u)
        << "the job's tree after checkpoint " << k << " has " << tree.size() << " processes";
    for (pid_t p : tree) ASSERT_EQ(e2e::proc_status(p, "TracerPid"), "0") << "pid " << p;

    auto reader = store->open(res.checkpoint);
    const auto& info = reader->info();
    EXPECT_EQ(info.tracker, Tracker::kind_name(param_.tracker));
    EXPECT_EQ(info.mode, param_.mode == SnapshotMode::cow ? "cow" : "stop-copy");
    const int64_t read_frozen =
        res.stats["pages_read"] - res.stats["pages_precopied"];  // what the freeze read
    EXPECT_EQ(res.stats["pages_buffered"], param_.buffered ? read_frozen : 0)
        << "checkpoint " << k;
    EXPECT_EQ(info.parent_uuid, uuids.empty() ? "" : uuids.back()) << "checkpoint " << k;
    uuids.push_back(info.uuid);
    auto stat = [&](const char* key) {
      auto it = reader->meta().stats.find(key);
      return it == reader->meta().stats.end() ? std::string("-") : std::to_string(it->second);
    };
    note(param_name(param_) + " checkpoint " + std::to_string(k) + " (" + res.checkpoint +
         "): frozen " + std::to_string(static_cast<double>(res.stats["frozen_ns"]) / 1e6) +
         " ms, pages read " + stat("pages_read") + ", dirty " + stat("pages_dirty") +
         ", kept " + stat("pages_kept") + ", same " + stat("pages_same") + ", stored " +
         stat("pages_stored"));
    check_index(k, *reader);
  }

  // The original ends its life checking itself; then every point of the chain comes back.
  ASSERT_NO_FATAL_FAILURE(terminate_checked(run_->root(), "the original job"));
  for (int k = 1; k <= INCR_STATES; k++) {
    std::unique_ptr<storage::CheckpointReader> reader;
    try {
      reader = store->open(names[static_cast<size_t>(k - 1)]);
    } catch (const Error& e) {
      FAIL() << "open " << names[static_cast<size_t>(k - 1)] << ": " << e.what();
    }
    EXPECT_EQ(reader->chain().size(), static_cast<size_t>(k)) << "checkpoint " << k;
    check_restored(k, *reader);
  }
}

// ---- pre-copy against a job that never stops writing ------------------------------------------

// The `racer` workload rewrites all of its 32 MiB, page after page, without a pause. Each
// incremental checkpoint with the uffd-wp tracker reads the pages written since the previous one
// while the job runs (pre-copy), then, frozen, those written meanwhile. Every checkpoint must be
// the memory of one instant: each is restored and the job checks its own pages against its own
// registers. One checkpoint in copy-on-write mode, the others stop-copy; the last one, after
// pre-copies that never paid, must skip it.
class PrecopyTest : public testing::Test {
 public:
  void TestBody() override;

};

void PrecopyTest::TestBody() {
  auto tracker = Tracker::create(TrackerKind::uffd_wp);
  WorkloadRun run("racer", "Precopy");
  ASSERT_TRUE(run.start(kReady));
  auto store = storage::ImageStore::open_directory(run.images(), /*create=*/true);
  std::vector<std::string> names;
  uint64_t precopied = 0, refetched = 0;
  for (int k = 1; k <= 6; k++) {
    DumpResult res;
    try {
      auto writer = store->begin(names.empty() ? "" : names.back());
      DumpOptions opts;
      opts.pid = run.root();
      opts.leave_running = true;
      opts.tracker = tracker.get();
      opts.mode = k == 3 ? SnapshotMode::cow : SnapshotMode::stop_copy;
      // This job makes every pre-copy useless: test it anyway, but for the last checkpoint,
      // which must see that and skip it.
      opts.precopy_always = k < 6;
      res = dump(*writer, opts);
    } catch (const Error& e) {
      FAIL() << "dump " << k << " failed: " << kind_name(e.kind()) << ": " << e.what();
    }
    names.push_back(res.checkpoint);
    auto stat = [&](const char* key) {
      auto it = res.stats.find(key);
      return it == res.stats.end() ? int64_t{0} : it->second;
    };
    if (k == 6) {
      EXPECT_EQ(stat("pages_precopied"), 0) << "a pre-copy that never pays was not given up";
    } else if (k > 1) {
      EXPECT_GT(stat("pages_precopied"), 0) << "checkpoint " << k << " made no pre-copy";
      precopied += static_cast<uint64_t>(stat("pages_precopied"));
      refetched += static_cast<uint64_t>(stat("pages_dirty"));
    }
    note("precopy checkpoint " + std::to_string(k) + ": pre-copied " +
         std::to_string(stat("pages_precopied")) + " pages, written again meanwhile " +
         std::to_string(stat("pages_dirty")) + ", frozen " +
         std::to_string(static_cast<double>(stat("frozen_ns")) / 1e6) + " ms");
  }
  // The job wrote all the time: some pages must have been written again during a pre-copy, or
  // this test did not test the race at all.
  EXPECT_GT(refetched, 0u) << "no page was written during a pre-copy (" << precopied
                           << " pre-copied)";
  ASSERT_NO_FATAL_FAILURE(terminate_and_check(run, run.root(), "the original job"));
  for (size_t k = 0; k < names.size(); k++) {
    auto reader = store->open(names[k]);
    RestoreOptions ro;
    ro.pid_namespace = true;
    ro.file_changes = FileChangePolicy::ignore;  // out.log grows with every verdict
    RestoreResult rr;
    try {
      rr = restore(*reader, ro);
    } catch (const Error& e) {
      FAIL() << "restore of " << names[k] << " failed: " << e.what();
    }
    e2e::forget_pid(rr.root_pid);
    ASSERT_NO_FATAL_FAILURE(terminate_and_check(run, rr.root_pid, "the job restored from " + names[k]));
  }
}

// ---- crest dump --parent (the CLI) -----------------------------------------------------------

enum class ParentCase { none_makes_full, unreadable_newest, missing_ancestor, corrupt_ancestor };

const char* parent_case_name(ParentCase c) {
  switch (c) {
    case ParentCase::none_makes_full: return "none_makes_full";
    case ParentCase::unreadable_newest: return "unreadable_newest_named";
    case ParentCase::missing_ancestor: return "missing_ancestor_named";
    case ParentCase::corrupt_ancestor: return "corrupt_ancestor_named";
  }
  return "?";
}

// Flips bytes in the middle of the stored bytes of chunk `chunk` of /pages/data.
AssertionResult corrupt_chunk(const std::string& path, uint64_t chunk) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return AssertionFailure() << "H5Fopen " << path;
  hid_t d = H5Dopen2(f, "pages/data", H5P_DEFAULT);
  hsize_t offset[2] = {chunk * schema::kChunkPages, 0};
  unsigned mask = 0;
  haddr_t addr = 0;
  hsize_t size = 0;
  herr_t rc = d >= 0 ? H5Dget_chunk_info_by_coord(d, offset, &mask, &addr, &size) : -1;
  if (d >= 0) H5Dclose(d);
  H5Fclose(f);
  if (rc < 0 || size < 64) return AssertionFailure() << "no chunk " << chunk << " in " << path;
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return AssertionFailure() << "open " << path << ": " << strerror(errno);
  for (off_t at : {static_cast<off_t>(addr + size / 2), static_cast<off_t>(addr + size / 3)}) {
    unsigned char b = 0;
    if (::pread(fd, &b, 1, at) != 1) return AssertionFailure() << "pread";
    b ^= 0x5a;
    if (::pwrite(fd, &b, 1, at) != 1) return AssertionFailure() << "pwrite";
  }
  ::close(fd);
  return AssertionSuccess();
}

class ParentTest : public testing::Test {
 public:
  explicit ParentTest(ParentCase c) : case_(c) {}
  void TestBody() override;

 private:
  e2e::CommandResult dump_parent(WorkloadRun& w) {
    return w.crest({"dump", "-t", std::to_string(w.root()), "-D", w.images(), "-R", "--parent"},
                   kCrest);
  }
  // `crest restore` of checkpoint `seq` must fail, name `file`, and leave no process behind.
  void expect_restore_refused(WorkloadRun& w, const std::string& seq, const std::string& file);
  ParentCase case_;
};

void ParentTest::expect_restore_refused(WorkloadRun& w, const std::string& seq,
                                        const std::string& file) {
  auto r = w.crest({"restore", "-D", w.images(), "--checkpoint", seq, "-d", "--pidns"}, kCrest);
  EXPECT_FALSE(r.timed_out) << w.diagnostics();
  EXPECT_TRUE(WIFEXITED(r.wstatus) && WEXITSTATUS(r.wstatus) != 0)
      << "crest restore of checkpoint " << seq << " must fail\n"
      << w.diagnostics();
  EXPECT_TRUE(contains(r.err, file)) << "crest restore does not name " << file << "\n"
                                     << r.describe();
  // Nothing of a half-restored job: the workload is our only child.
  std::vector<pid_t> kids = e2e::children_of(getpid());
  EXPECT_EQ(kids, std::vector<pid_t>{w.root()}) << "processes left by a refused restore";
}

void ParentTest::TestBody() {
  WorkloadRun w("incr", std::string("Parent-") + parent_case_name(case_));
  ASSERT_TRUE(w.start(kReady));
  namespace fs = std::filesystem;
  const std::string c1 = "ckpt-000001.h5", c2 = "ckpt-000002.h5";

  switch (case_) {
    case ParentCase::none_makes_full: {
      auto r = dump_parent(w);
      ASSERT_TRUE(r.exited(0)) << r.describe();
      EXPECT_TRUE(contains(r.err, "full")) << "no word that the checkpoint is a full one\n"
                                           << r.describe();
      auto store = storage::ImageStore::open_directory(w.images());
      auto first = store->open("latest");
      EXPECT_EQ(first->info().parent_uuid, "") << "the first checkpoint must be full";
      auto r2 = dump_parent(w);
      ASSERT_TRUE(r2.exited(0)) << r2.describe();
      auto second = store->open("latest");
      EXPECT_EQ(second->info().parent_uuid, first->info().uuid)
          << "with a usable parent the checkpoint must be incremental";
      EXPECT_EQ(second->chain().size(), 2u);
      break;
    }

    case ParentCase::unreadable_newest: {
      auto r = dump_parent(w);
      ASSERT_TRUE(r.exited(0)) << r.describe();
      {
        std::FILE* f = std::fopen((w.images() + "/" + c2).c_str(), "wb");
        ASSERT_NE(f, nullptr);
        std::string junk(8192, '\x5a');
        std::fwrite(junk.data(), 1, junk.size(), f);
        std::fclose(f);
      }
      auto r2 = dump_parent(w);
      ASSERT_FALSE(r2.timed_out);
      EXPECT_TRUE(contains(r2.err, c2))
          << "the newest checkpoint " << c2 << " is unreadable; `crest dump --parent` must name "
          << "it rather than silently take an older parent or none\n"
          << r2.describe();
      if (r2.exited(0)) {
        auto store = storage::ImageStore::open_directory(w.images());
        auto newest = store->open("latest");
        EXPECT_NE(newest->name(), c2);
      }
      break;
    }

    case ParentCase::missing_ancestor: {
      ASSERT_TRUE(dump_parent(w).exited(0)) << w.diagnostics();
      ASSERT_TRUE(dump_parent(w).exited(0)) << w.diagnostics();
      fs::rename(w.images() + "/" + c1, w.dir() + "/" + c1 + ".away");
      auto r = dump_parent(w);
      ASSERT_FALSE(r.timed_out);
      EXPECT_TRUE(contains(r.err, c1)) << "the missing ancestor " << c1 << " is not named\n"
                                       << r.describe();
      if (r.exited(0)) {
        // Went on without it: the new checkpoint must then stand on its own.
        auto store = storage::ImageStore::open_directory(w.images());
        EXPECT_NO_THROW(store->open("latest")) << "the new checkpoint depends on a missing file";
      }
      expect_restore_refused(w, "2", c1);
      break;
    }

    case ParentCase::corrupt_ancestor: {
      ASSERT_TRUE(dump_parent(w).exited(0)) << w.diagnostics();
      ASSERT_TRUE(dump_parent(w).exited(0)) << w.diagnostics();
      {
        auto store = storage::ImageStore::open_directory(w.images());
        auto second = store->open(c2);
        uint64_t kept = 0;
        for (auto& run : second->page_index())
          if (run.kind == static_cast<uint32_t>(schema::PageKind::data) && run.depth == 1)
            kept += run.npages;
        ASSERT_GT(kept, 0u) << c2 << " keeps nothing in " << c1;
      }
      // Bytes inside a data chunk: only the chunk checksum can tell.
      ASSERT_TRUE(corrupt_chunk(w.images() + "/" + c1, 0));
      expect_restore_refused(w, "2", c1);
      // A truncated ancestor: even opening the chain fails, so must an incremental dump on it.
      std::error_code ec;
      auto size = fs::file_size(w.images() + "/" + c1, ec);
      ASSERT_FALSE(ec);
      fs::resize_file(w.images() + "/" + c1, size / 2);
      auto r = dump_parent(w);
      ASSERT_FALSE(r.timed_out);
      EXPECT_TRUE(contains(r.err, c1)) << "the truncated ancestor " << c1 << " is not named\n"
                                       << r.describe();
      if (r.exited(0)) {
        auto store = storage::ImageStore::open_directory(w.images());
        EXPECT_NO_THROW(store->open("latest")) << "the new checkpoint depends on a corrupt file";
      }
      expect_restore_refused(w, "2", c1);
      break;
    }
  }
}

// ---- Registration ----------------------------------------------------------------------------

std::vector<TrackerKind> available_trackers() {
  std::vector<TrackerKind> out;
  for (TrackerKind k : {TrackerKind::uffd_wp, TrackerKind::soft_dirty, TrackerKind::hash}) {
    try {
      Tracker::create(k);
      out.push_back(k);
    } catch (const Error& e) {
      fprintf(stderr, "[incremental] note: no tests for the %s tracker on this machine: %s\n",
              Tracker::kind_name(k), e.what());
    }
  }
  return out;
}

// The same racing writer, checkpointed as crestd would (no precopy_always): the first
// incremental's pre-copy reads a slice of the job's pages, finds them written again already, and
// leaves the rest to the freeze instead of reading the whole 32 MiB twice. The checkpoint is
// still the memory of one instant.
class PrecopyProbeTest : public testing::Test {
 public:
  void TestBody() override;
};

void PrecopyProbeTest::TestBody() {
  WorkloadRun run("racer", "PrecopyProbe");
  ASSERT_TRUE(run.start(kReady));
  auto store = storage::ImageStore::open_directory(run.images(), /*create=*/true);
  std::vector<std::string> names;
  DumpResult res;
  auto stat = [&](const char* key) {
    auto it = res.stats.find(key);
    return it == res.stats.end() ? int64_t{0} : it->second;
  };
  // The racer may be off the CPU for the few milliseconds the slice takes to read (a loaded
  // machine): the pre-copy then rightly goes on. A new chain is tried then, up to three.
  for (int attempt = 1; attempt <= 3 && stat("precopy_abandoned") == 0; ++attempt) {
    auto tracker = Tracker::create(TrackerKind::uffd_wp);
    for (int k = 1; k <= 2; k++) {
      try {
        auto writer = store->begin(k == 1 ? "" : names.back());
        DumpOptions opts;
        opts.pid = run.root();
        opts.leave_running = true;
        opts.tracker = tracker.get();
        opts.mode = SnapshotMode::stop_copy;
        res = dump(*writer, opts);
      } catch (const Error& e) {
        FAIL() << "dump " << k << " failed: " << kind_name(e.kind()) << ": " << e.what();
      }
      names.push_back(res.checkpoint);
    }
    note("probe, attempt " + std::to_string(attempt) + ": pre-copied " +
         std::to_string(stat("pages_precopied")) + " pages, read frozen " +
         std::to_string(stat("pages_dirty")) + ", stored " + std::to_string(stat("pages_stored")));
  }
  EXPECT_EQ(stat("precopy_abandoned"), 1) << "the racer rewrites its pages all the time";
  EXPECT_GT(stat("pages_precopied"), 0);
  EXPECT_LE(stat("pages_precopied"), 8192 / 8 + 256) << "more than the slice was read running";
  // 8192 pages of the racer, plus the rest of its memory that it wrote: not all of it twice.
  EXPECT_LT(stat("pages_stored"), 8192 + 8192 / 4);
  ASSERT_NO_FATAL_FAILURE(terminate_and_check(run, run.root(), "the original job"));
  auto reader = store->open(names.back());
  RestoreOptions ro;
  ro.pid_namespace = true;
  ro.file_changes = FileChangePolicy::ignore;
  RestoreResult rr;
  try {
    rr = restore(*reader, ro);
  } catch (const Error& e) {
    FAIL() << "restore of " << names.back() << " failed: " << e.what();
  }
  e2e::forget_pid(rr.root_pid);
  ASSERT_NO_FATAL_FAILURE(terminate_and_check(run, rr.root_pid, "the job restored from " + names.back()));
}

void register_tests() {
  for (TrackerKind t : available_trackers())
    for (ChainParam p : {ChainParam{t, SnapshotMode::stop_copy, true},
                         ChainParam{t, SnapshotMode::stop_copy, false},
                         ChainParam{t, SnapshotMode::cow}}) {
      testing::RegisterTest("Incremental/Chain", param_name(p).c_str(), nullptr, nullptr,
                            __FILE__, __LINE__, [p]() -> testing::Test* { return new ChainTest(p); });
    }
  for (TrackerKind t : available_trackers())
    if (t == TrackerKind::uffd_wp)
      testing::RegisterTest("Incremental/Precopy", "racing_writer_captured_at_one_instant", nullptr,
                            nullptr, __FILE__, __LINE__,
                            []() -> testing::Test* { return new PrecopyTest(); });
  for (TrackerKind t : available_trackers())
    if (t == TrackerKind::uffd_wp)
      testing::RegisterTest("Incremental/Precopy", "rewritten_slice_leaves_the_rest_to_the_freeze",
                            nullptr, nullptr, __FILE__, __LINE__,
                            []() -> testing::Test* { return new PrecopyProbeTest(); });
  for (ParentCase c : {ParentCase::none_makes_full, ParentCase::unreadable_newest,
                       ParentCase::missing_ancestor, ParentCase::corrupt_ancestor})
    testing::RegisterTest("Incremental/Parent", parent_case_name(c), nullptr, nullptr, __FILE__,
                          __LINE__, [c]() -> testing::Test* { return new ParentTest(c); });
}

}  // namespace
}  // namespace crest::incremental

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  crest::e2e::init_harness();
  crest::incremental::register_tests();
  return RUN_ALL_TESTS();
}
