// crestd's node-local staging ([storage] local): a checkpoint is committed in the local directory,
// copied to the job's images directory (shared storage) in the background, and reported safe only
// once that copy is committed and verifies; a crestd killed in the middle of a copy leaves a .tmp
// that is never taken for a checkpoint and copies again after its restart; restores prefer the
// local copy, else the shared one; the local footprint stays bounded.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "storage/image_store.h"
#include "tests/agent/harness.h"

namespace crest::agent_test {
namespace {

std::vector<std::string> names_in(const std::string& dir, const std::string& suffix) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::string n = e.path().filename();
    if (n.rfind("ckpt-", 0) == 0 && n.ends_with(suffix)) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

int verify(const TempDir& dir, const std::string& images, std::string* text = nullptr) {
  std::string out = dir / "verify.out";
  pid_t p = spawn({crest_bin(), "verify", images}, output_to(out));
  auto st = wait_child(p, 60s);
  if (text) *text = read_text(out);
  return st && WIFEXITED(*st) ? WEXITSTATUS(*st) : -1;
}

json checkpoint(const Daemon& d, const std::string& id) {
  return d.call({{"op", "checkpoint"}, {"job", id}});
}

bool safe(const Daemon& d, const std::string& id) {
  json st = d.status(id);
  return !st["last_checkpoint"].is_null() && st["last_checkpoint"].value("safe", false);
}

// A job (8 MiB of incompressible memory: its full checkpoint is about 8 MiB) registered with
// crestd with no timer: checkpoints only when the test asks.
struct Job {
  pid_t pid = 0;
  std::string id, out;
};
Job start_job(const TempDir& dir, Reaper& reaper, const Daemon& d, const std::string& images,
              json extra = json::object()) {
  Job j;
  j.out = dir / "job.out";
  j.pid = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "8", "-z"}, output_to(j.out));
  reaper.add(j.pid);
  EXPECT_TRUE(wait_until([&] { return file_contains(j.out, "step 1\n"); }, 10s));
  json req = {{"op", "register"}, {"pid", j.pid}, {"every", "never"}, {"dir", images}};
  for (auto& [k, v] : extra.items()) req[k] = v;
  j.id = d.call(req)["job"]["id"];
  return j;
}

TEST(Staging, CommittedLocallyThenFlushedAndOnlyThenSafe) {
  TempDir dir;
  Reaper reaper;
  const std::string local = dir / "local", shared = dir / "shared";
  // 4 MB/s: the copy of the 8 MiB checkpoint takes about 2 s.
  Daemon d(dir, {"--storage-local", local, "--flush-bandwidth", "4MB/s"});
  d.start();
  Job j = start_job(dir, reaper, d, shared);

  json reply = checkpoint(d, j.id);
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump(2);
  EXPECT_EQ(reply["location"], "local") << reply.dump(2);
  const std::string name = reply["checkpoint"];
  const std::string local_dir = reply["local_dir"];
  EXPECT_EQ(local_dir, local + "/0/" + j.id);
  // Committed locally; not safe yet (the copy is throttled).
  ASSERT_TRUE(std::filesystem::exists(local_dir + "/" + name));
  json st = d.status(j.id);
  EXPECT_FALSE(st["last_checkpoint"]["safe"].get<bool>()) << st.dump(2);
  EXPECT_EQ(st["last_checkpoint"]["location"], "local");
  EXPECT_TRUE(names_in(shared, ".h5").empty()) << "on shared storage before the copy ended";

  ASSERT_TRUE(wait_until([&] { return safe(d, j.id); }, 30s)) << d.status(j.id).dump(2)
                                                               << read_text(d.log);
  st = d.status(j.id);
  EXPECT_EQ(st["staging"]["last_safe"], name);
  EXPECT_EQ(st["staging"]["unflushed"], 0);
  EXPECT_EQ(st["staging"]["flush_error"], "");
  // The copy took its time: at most 4 MB/s.
  const auto size = std::filesystem::file_size(local_dir + "/" + name);
  EXPECT_GT(size, 7u << 20);
  EXPECT_GE(st["staging"]["last_flush_ms"].get<double>(), static_cast<double>(size) / 4e6 * 1e3 * 0.9)
      << st.dump(2);
  // The same bytes on both sides; the shared copy verifies and `latest` names it.
  EXPECT_EQ(read_text(local_dir + "/" + name), read_text(shared + "/" + name));
  std::string text;
  EXPECT_EQ(verify(dir, shared, &text), 0) << text;
  EXPECT_EQ(std::filesystem::read_symlink(shared + "/latest"), name);
  EXPECT_TRUE(names_in(shared, ".tmp").empty());
  std::string metrics = d.call({{"op", "metrics"}})["text"];
  EXPECT_NE(metrics.find("crest_flushes_total 1\n"), std::string::npos) << metrics;

  // An incremental one: copied after its parent, the chain whole on shared storage.
  reply = checkpoint(d, j.id);
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump(2);
  EXPECT_EQ(reply["parent"], name);
  ASSERT_TRUE(wait_until([&] { return safe(d, j.id); }, 30s)) << d.status(j.id).dump(2);
  auto store = storage::ImageStore::open_directory(shared);
  auto entries = store->list();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[1].parent_file, entries[0].name);
  EXPECT_TRUE(store->verify().ok());

  // crest restore given both directories: the local copy while it verifies, else the shared one.
  auto check_only = [&](std::string* text) {
    std::string o = dir / "restore.out";
    pid_t p = spawn({crest_bin(), "restore", "--check-only", "--local", local_dir, "-D", shared},
                    output_to(o));
    auto rc = wait_child(p, 60s);
    *text = read_text(o);
    return rc && WIFEXITED(*rc) ? WEXITSTATUS(*rc) : -1;
  };
  EXPECT_EQ(check_only(&text), 0) << text;
  EXPECT_NE(text.find("from its local copy"), std::string::npos) << text;
  for (const auto& n : names_in(local_dir, ".h5")) ::unlink((local_dir + "/" + n).c_str());
  EXPECT_EQ(check_only(&text), 0) << text;
  EXPECT_EQ(text.find("from its local copy"), std::string::npos) << text;
}

TEST(Staging, CrestdKilledMidFlushCopiesAgainAndNoHalfFileIsACheckpoint) {
  TempDir dir;
  Reaper reaper;
  const std::string local = dir / "local", shared = dir / "shared";
  // 3 MB/s: the copy of the 8 MiB checkpoint takes about 3 s.
  Daemon d(dir, {"--storage-local", local, "--flush-bandwidth", "3MB/s"});
  d.start();
  Job j = start_job(dir, reaper, d, shared);
  json reply = checkpoint(d, j.id);
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump(2);
  const std::string name = reply["checkpoint"];
  const std::string tmp = shared + "/" + name + ".tmp";
  ASSERT_TRUE(wait_until([&] {
    std::error_code ec;
    return std::filesystem::file_size(tmp, ec) > (1u << 20) && !ec;
  }, 20s)) << read_text(d.log);
  d.kill9();

  // Half a file, under a name no reader takes for a checkpoint.
  ASSERT_TRUE(std::filesystem::exists(tmp));
  EXPECT_TRUE(names_in(shared, ".h5").empty());
  EXPECT_TRUE(storage::ImageStore::open_directory(shared)->list().empty());
  EXPECT_NE(verify(dir, shared), 0) << "a half copy verified";

  // Restarted: the copy is done again, whole, and the job is safe.
  d.start();
  ASSERT_TRUE(wait_until([&] { return d.status(j.id)["staging"]["last_safe"] == name; }, 30s))
      << d.status(j.id).dump(2) << read_text(d.log);
  EXPECT_FALSE(std::filesystem::exists(tmp));
  EXPECT_EQ(read_text(local + "/0/" + j.id + "/" + name), read_text(shared + "/" + name));
  std::string text;
  EXPECT_EQ(verify(dir, shared, &text), 0) << text;
  EXPECT_TRUE(alive(j.pid));
}

TEST(Staging, RestoresFromTheLocalCopyElseTheSharedOne) {
  TempDir dir;
  Reaper reaper;
  const std::string local = dir / "local", shared = dir / "shared";
  Daemon d(dir, {"--storage-local", local, "--restore-backoff", "100ms"});
  d.start();
  // A job crestd launches (so that it restores it when it is killed).
  int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const std::string out = dir / "job.out";
  int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  json req = {{"op", "run"},
              {"argv", {testjob_bin(), "-n", "1000000", "-m", "50", "-M", "8"}},
              {"cwd", "/"},
              {"env", {"PATH=/usr/bin:/bin"}},
              {"watch", false},
              {"transient", false},
              {"every", "never"},
              {"dir", shared}};
  std::string id = d.call(req, {in, fo, fo})["job"]["id"];
  ::close(in);
  ::close(fo);
  reaper.add(d.status(id)["pid"].get<pid_t>());
  ASSERT_TRUE(wait_until([&] { return file_contains(out, "step 1\n"); }, 10s));
  auto victim = [&] {
    auto kids = children_of(d.status(id).value("pid", 0));
    return kids.empty() ? 0 : kids.front();
  };

  json reply = checkpoint(d, id);
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump(2);
  ASSERT_TRUE(wait_until([&] { return safe(d, id); }, 30s)) << d.status(id).dump(2);
  pid_t v = victim();
  ASSERT_GT(v, 0);
  ASSERT_EQ(::kill(v, SIGKILL), 0);
  ASSERT_TRUE(wait_until([&] { return d.status(id).value("restores", 0) == 1; }, 30s))
      << d.status(id).dump(2) << read_text(d.log);
  json st = d.status(id);
  EXPECT_EQ(st["last_restore"]["from"], "local") << st.dump(2);
  EXPECT_EQ(st["last_restore"]["checkpoint"], reply["checkpoint"]);
  reaper.add(st["pid"].get<pid_t>());

  // Its local copy gone (a wiped node-local disk): restored from shared storage.
  reply = checkpoint(d, id);
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump(2);
  ASSERT_TRUE(wait_until([&] { return safe(d, id); }, 30s)) << d.status(id).dump(2);
  const std::string local_dir = reply["local_dir"];
  for (const auto& n : names_in(local_dir, ".h5")) ::unlink((local_dir + "/" + n).c_str());
  ASSERT_TRUE(wait_until([&] { return file_contains(out, "step "); }, 10s));
  v = victim();
  ASSERT_GT(v, 0);
  ASSERT_EQ(::kill(v, SIGKILL), 0);
  ASSERT_TRUE(wait_until([&] { return d.status(id).value("restores", 0) == 2; }, 30s))
      << d.status(id).dump(2) << read_text(d.log);
  st = d.status(id);
  EXPECT_EQ(st["last_restore"]["from"], "shared") << st.dump(2);
  EXPECT_EQ(st["last_restore"]["checkpoint"], reply["checkpoint"]);
  EXPECT_EQ(st["state"], "running");
  reaper.add(st["pid"].get<pid_t>());
  // It goes on checkpointing: a new chain, locally.
  reply = checkpoint(d, id);
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump(2);
  EXPECT_EQ(reply["location"], "local");
  EXPECT_EQ(reply["parent"], "") << "incremental on a parent that is not local";
  ASSERT_TRUE(wait_until([&] { return safe(d, id); }, 30s)) << d.status(id).dump(2);
  std::string text;
  EXPECT_EQ(verify(dir, shared, &text), 0) << text;
}

TEST(Staging, LocalFootprintIsBounded) {
  TempDir dir;
  Reaper reaper;
  const std::string local = dir / "local", shared = dir / "shared";
  // Compaction every 2 files: locally, the newest checkpoint and at most one ancestor stay.
  Daemon d(dir, {"--storage-local", local, "--compact-after", "2"});
  d.start();
  Job j = start_job(dir, reaper, d, shared, {{"keep", 2}});
  for (int i = 0; i < 5; ++i) {
    json reply = checkpoint(d, j.id);
    ASSERT_TRUE(reply.value("ok", false)) << reply.dump(2);
  }
  ASSERT_TRUE(wait_until([&] { return safe(d, j.id) && d.status(j.id)["staging"]["unflushed"] == 0; },
                         30s))
      << d.status(j.id).dump(2);
  const std::string local_dir = d.status(j.id)["staging"]["local_dir"];
  ASSERT_TRUE(wait_until([&] { return names_in(local_dir, ".h5").size() <= 2; }, 10s))
      << names_in(local_dir, ".h5").size() << " local files\n" << read_text(d.log);
  std::string text;
  EXPECT_EQ(verify(dir, shared, &text), 0) << text;

  // A local budget with no room: the checkpoints go to shared storage directly, their names
  // never colliding with the local ones, the chain on shared storage whole.
  d.stop();
  d.extra = {"--storage-local", local, "--compact-after", "0", "--local-max-bytes", "1"};
  d.start();
  for (int i = 0; i < 3; ++i) {
    json reply = checkpoint(d, j.id);
    ASSERT_TRUE(reply.value("ok", false)) << reply.dump(2);
    EXPECT_EQ(reply["location"], "shared") << reply.dump(2);
  }
  // Safe once verified there (just after the reply).
  ASSERT_TRUE(wait_until([&] { return safe(d, j.id); }, 10s)) << d.status(j.id).dump(2);
  json st = d.status(j.id);
  EXPECT_GE(st["staging"]["direct_writes"].get<int>(), 3) << st.dump(2);
  EXPECT_EQ(st["staging"]["flushes"], 0) << st.dump(2);
  ASSERT_TRUE(wait_until([&] { return names_in(local_dir, ".h5").empty(); }, 10s))
      << "local copies superseded by direct writes stay";
  auto entries = storage::ImageStore::open_directory(shared)->list();
  for (size_t i = 1; i < entries.size(); ++i) EXPECT_LT(entries[i - 1].sequence, entries[i].sequence);
  EXPECT_EQ(verify(dir, shared, &text), 0) << text;
}

}  // namespace
}  // namespace crest::agent_test
