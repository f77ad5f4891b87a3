#include "agent/crestd/staging.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"
#include "core/util/unique_fd.h"

namespace crest::agent {
namespace {

using Clock = std::chrono::steady_clock;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Unlinks a path when destroyed, unless disarmed.
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

void write_all(int fd, const char* p, size_t n, const std::string& what) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw_errno("cannot write " + what);
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

uint64_t max_sequence(const std::vector<storage::CheckpointEntry>& entries) {
  uint64_t m = 0;
  for (const auto& e : entries) m = std::max(m, e.sequence);
  return m;
}

PendingFlushes pending_flushes(const std::vector<storage::CheckpointEntry>& local,
                               const std::vector<storage::CheckpointEntry>& shared) {
  PendingFlushes out;
  std::map<std::string, const storage::CheckpointEntry*> on_shared;
  for (const auto& e : shared) on_shared[e.name] = &e;
  const uint64_t shared_max = max_sequence(shared);
  for (const auto& l : local) {
    if (!l.readable) continue;
    auto it = on_shared.find(l.name);
    if (it == on_shared.end()) {
      if (l.sequence > shared_max) out.items.push_back(l);
      continue;
    }
    const storage::CheckpointEntry& s = *it->second;
    if (!s.readable) {
      // Not a checkpoint there (damaged): the copy replaces it.
      out.items.push_back(l);
    } else if (s.uuid != l.uuid) {
      if (out.conflict.empty())
        out.conflict = l.name + " on shared storage is another checkpoint (uuid " + s.uuid +
                       ", the local one is " + l.uuid + ")";
    } else if (s.parent_uuid != l.parent_uuid) {
      out.items.push_back(l);  // compacted locally since it was copied
    }
  }
  std::sort(out.items.begin(), out.items.end(),
            [](const auto& a, const auto& b) { return a.sequence < b.sequence; });
  return out;
}

void point_latest(const std::string& dir, const std::string& name) {
  std::string tmp = dir + "/.latest.tmp";
  std::string latest = dir + "/latest";
  if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) throw_errno("cannot remove " + tmp);
  if (::symlink(name.c_str(), tmp.c_str()) != 0) throw_errno("cannot create " + tmp);
  if (::rename(tmp.c_str(), latest.c_str()) != 0) throw_errno("cannot rename " + tmp);
  fs::fsync_dir(dir);
}

FlushResult flush_checkpoint(storage::ImageStore& shared, const std::string& local_dir,
                             const std::string& shared_dir, const std::string& name,
                             uint64_t bytes_per_s, const std::atomic<bool>& stop) {
  FlushResult r;
  const auto t0 = Clock::now();
  // The source first: a descriptor of the committed file (a compaction that replaces it
  // meanwhile leaves this one whole).
  const std::string src = local_dir + "/" + name;
  UniqueFd in(::open(src.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!in) throw_errno("cannot open " + src);
  // Its parent must be there already: a child is never copied before its parent.
  {
    auto local = storage::ImageStore::open_directory(local_dir);
    std::string parent_file, parent_uuid;
    for (const auto& e : local->list())
      if (e.name == name) parent_file = e.parent_file, parent_uuid = e.parent_uuid;
    if (!parent_file.empty()) {
      bool found = false;
      for (const auto& e : shared.list())
        if (e.readable && e.name == parent_file && e.uuid == parent_uuid) found = true;
      if (!found)
        fail(Errc::missing_ancestor, name + " cannot be copied to " + shared_dir + " before its parent " +
                                         parent_file);
    }
  }

  // The shared directory's writer lock, as its store's writers take it.
  const std::string lock_path = shared_dir + "/.lock";
  UniqueFd lock = fs::open_or_throw(lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK, 0600);
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) fail(Errc::busy, shared_dir + ": another writer holds " + lock_path);
    throw_errno("cannot lock " + lock_path);
  }
  // Only the lock holder writes .tmp files: any there now were abandoned.
  {
    std::vector<std::string> stale;
    if (DIR* d = ::opendir(shared_dir.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n.rfind("ckpt-", 0) == 0 && ends_with(n, ".tmp")) stale.push_back(n);
      }
      ::closedir(d);
    }
    for (const auto& n : stale)
      if (::unlink((shared_dir + "/" + n).c_str()) == 0)
        log::get("agent.flush")->info("removed {}/{} left by an interrupted copy or writer",
                                      shared_dir, n);
  }

  const std::string final_path = shared_dir + "/" + name;
  RemoveOnExit guard{final_path + ".tmp"};
  UniqueFd out(::open(guard.path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!out) throw_errno("cannot create " + guard.path);
  std::vector<char> buf(1 << 20);
  const auto copy_start = Clock::now();
  for (;;) {
    if (stop.load()) fail(Errc::busy, "the copy of " + name + " was interrupted (crestd stopping)");
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("cannot read " + src);
    if (n == 0) break;
    write_all(out.get(), buf.data(), static_cast<size_t>(n), guard.path);
    r.bytes += static_cast<uint64_t>(n);
    if (bytes_per_s > 0) {
      // Paced: never ahead of bytes_per_s since the copy began.
      auto due = copy_start + std::chrono::nanoseconds(static_cast<int64_t>(
                                  static_cast<double>(r.bytes) * 1e9 / static_cast<double>(bytes_per_s)));
      while (Clock::now() < due && !stop.load())
        std::this_thread::sleep_for(std::min<Clock::duration>(due - Clock::now(),
                                                              std::chrono::milliseconds(50)));
    }
  }
  fs::fsync_or_throw(out.get(), guard.path);
  out.reset();
  if (::rename(guard.path.c_str(), final_path.c_str()) != 0)
    throw_errno("cannot rename " + guard.path + " to " + final_path);
  guard.path.clear();
  fs::fsync_dir(shared_dir);
  const auto t1 = Clock::now();
  r.copy_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();

  // Safe only once the copy's chain verifies there.
  storage::VerifyReport report = shared.verify(name);
  if (!report.ok()) {
    ::unlink(final_path.c_str());
    fs::fsync_dir(shared_dir);
    fail(Errc::corrupt, "the copy of " + name + " in " + shared_dir +
                            " does not verify (removed): " + report.errors[0]);
  }
  r.verify_ms = std::chrono::duration<double, std::milli>(Clock::now() - t1).count();
  // `latest` names the newest checkpoint there.
  auto newest = shared.newest();
  if (newest && newest->name == name) point_latest(shared_dir, name);
  return r;
}

std::vector<std::string> drop_flushed_local(storage::ImageStore& local,
                                            const std::vector<storage::CheckpointEntry>& shared,
                                            unsigned keep) {
  std::vector<std::string> removed;
  auto entries = local.list();
  std::map<std::string, const storage::CheckpointEntry*> by_name, on_shared;
  for (const auto& e : entries) by_name[e.name] = &e;
  for (const auto& e : shared)
    if (e.readable) on_shared[e.name] = &e;
  const uint64_t shared_max = max_sequence(shared);
  std::vector<const storage::CheckpointEntry*> complete, current;
  for (const auto& e : entries)
    if (e.readable) {
      complete.push_back(&e);
      // Older than the newest on shared storage: not the job's newest any more.
      if (e.sequence >= shared_max) current.push_back(&e);
    }
  std::set<std::string> kept;
  for (size_t i = current.size() > keep ? current.size() - keep : 0; i < current.size(); ++i) {
    const storage::CheckpointEntry* e = current[i];
    while (e != nullptr && kept.insert(e->name).second) {
      auto it = e->parent_file.empty() ? by_name.end() : by_name.find(e->parent_file);
      e = it == by_name.end() ? nullptr : it->second;
    }
  }
  for (auto it = complete.rbegin(); it != complete.rend(); ++it) {
    const storage::CheckpointEntry& e = **it;
    if (kept.count(e.name)) continue;
    auto s = on_shared.find(e.name);
    const bool copied =
        s != on_shared.end() && s->second->uuid == e.uuid && s->second->parent_uuid == e.parent_uuid;
    // Superseded: older than what shared storage holds and not there (shared retention removed
    // it, or a newer checkpoint went to shared storage directly): it will never be copied.
    const bool superseded = s == on_shared.end() && e.sequence < shared_max;
    if (!copied && !superseded) continue;
    try {
      local.remove(e.name);
      removed.push_back(e.name);
    } catch (const Error&) {
      // A local checkpoint still depends on it.
    }
  }
  return removed;
}

}  // namespace crest::agent
