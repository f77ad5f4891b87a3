#include "agent/crestd/images.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>

#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/unique_fd.h"

namespace crest::agent {
namespace {

bool is_image_entry(const std::string& name) {
  return name.rfind("ckpt-", 0) == 0 || name == "latest" || name == ".lock" ||
         name == ".latest.tmp" || name == "run-end";
}

template <class F>
void for_each_entry(const std::string& dir, F f) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw_errno("cannot list " + dir);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  for (auto& n : names) f(n);
}

}  // namespace

void prepare_images_dir(const std::string& dir, uid_t uid, gid_t gid) {
  if (dir.empty()) fail(Errc::usage, "empty images directory");
  // Parents first (root-owned, traversable), then the job's own directory.
  std::string partial;
  size_t pos = 0;
  while ((pos = dir.find('/', pos + 1)) != std::string::npos) {
    partial = dir.substr(0, pos);
    if (!partial.empty() && ::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
      throw_errno("cannot create " + partial);
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) throw_errno("cannot create " + dir);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) throw_errno("cannot stat " + dir);
  if (!S_ISDIR(st.st_mode)) fail(Errc::usage, dir + " is not a directory");
  if ((st.st_uid != uid || st.st_gid != gid) && ::lchown(dir.c_str(), uid, gid) != 0)
    throw_errno("cannot give " + dir + " to uid " + std::to_string(uid));
  if ((st.st_mode & 0777) != 0700 && ::chmod(dir.c_str(), 0700) != 0)
    throw_errno("cannot chmod " + dir);
}

void own_images(const std::string& dir, uid_t uid, gid_t gid) {
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd) throw_errno("cannot open " + dir);
  for_each_entry(dir, [&](const std::string& name) {
    if (!is_image_entry(name)) return;
    struct stat st {};
    if (::fstatat(dfd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return;  // gone
    if ((st.st_uid != uid || st.st_gid != gid) &&
        ::fchownat(dfd.get(), name.c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) != 0 && errno != ENOENT)
      throw_errno("cannot give " + dir + "/" + name + " to uid " + std::to_string(uid));
    if (S_ISREG(st.st_mode) && (st.st_mode & 0777) != 0600 &&
        ::fchmodat(dfd.get(), name.c_str(), 0600, 0) != 0 && errno != ENOENT)
      throw_errno("cannot chmod " + dir + "/" + name);
  });
}

Retention apply_retention(storage::ImageStore& store, unsigned keep) {
  Retention out;
  if (keep == 0) keep = 1;
  auto complete_of = [](const std::vector<storage::CheckpointEntry>& entries) {
    std::vector<const storage::CheckpointEntry*> complete;
    for (auto& e : entries)
      if (e.readable) complete.push_back(&e);
    return complete;
  };
  auto entries = store.list();
  auto complete = complete_of(entries);
  if (complete.size() <= keep) return out;

  std::map<std::string, const storage::CheckpointEntry*> by_name;
  for (auto& e : entries) by_name[e.name] = &e;
  std::set<std::string> kept;
  for (size_t i = complete.size() - keep; i < complete.size(); ++i) {
    // The checkpoint and its ancestors.
    const storage::CheckpointEntry* e = complete[i];
    while (e != nullptr && kept.insert(e->name).second) {
      auto it = e->parent_file.empty() ? by_name.end() : by_name.find(e->parent_file);
      e = it == by_name.end() ? nullptr : it->second;
    }
  }
  for (auto it = complete.rbegin(); it != complete.rend(); ++it) {
    if (kept.count((*it)->name)) continue;
    try {
      store.remove((*it)->name);
      out.removed.push_back((*it)->name);
    } catch (const Error&) {
      // Something still depends on it (a file we could not read names it as parent): keep it.
    }
  }
  return out;
}

std::string snapshot_parent(storage::ImageStore& store, std::string& why) {
  why.clear();
  auto entries = store.list();
  if (entries.empty()) return "";
  const auto& newest = entries.back();
  if (!newest.readable) {
    why = store.location() + "/" + newest.name + " cannot be built on: " + newest.error;
    return "";
  }
  auto report = store.verify(newest.name);
  if (!report.ok()) {
    why = store.location() + "/" + newest.name + " cannot be built on: " + report.errors[0];
    return "";
  }
  return newest.name;
}

Retention snapshot_retention(storage::ImageStore& store, const std::string& newest, unsigned keep) {
  if (keep == 0) keep = 1;
  Retention out = apply_retention(store, keep);
  if (chain_length(store.list(), newest) >= std::max(2u, keep)) {
    store.compact(newest, {}, /*remove_ancestors=*/false);  // retention decides
    Retention more = apply_retention(store, keep);
    out.removed.insert(out.removed.end(), more.removed.begin(), more.removed.end());
  }
  return out;
}

unsigned chain_length(const std::vector<storage::CheckpointEntry>& entries,
                      const std::string& name) {
  std::map<std::string, const storage::CheckpointEntry*> by_name;
  for (auto& e : entries) by_name[e.name] = &e;
  unsigned n = 0;
  std::string cur = name;
  while (!cur.empty() && n < 100000) {
    auto it = by_name.find(cur);
    if (it == by_name.end()) break;
    ++n;
    cur = it->second->parent_file;
  }
  return n;
}

uint64_t images_bytes(const std::string& dir) {
  uint64_t total = 0;
  try {
    for_each_entry(dir, [&](const std::string& name) {
      if (name.rfind("ckpt-", 0) != 0) return;
      struct stat st {};
      if (::lstat((dir + "/" + name).c_str(), &st) == 0 && S_ISREG(st.st_mode))
        total += static_cast<uint64_t>(st.st_size);
    });
  } catch (const Error&) {
  }
  return total;
}

unsigned images_count(const std::string& dir) {
  unsigned n = 0;
  try {
    for_each_entry(dir, [&](const std::string& name) {
      if (name.rfind("ckpt-", 0) == 0 && name.size() > 3 &&
          name.compare(name.size() - 3, 3, ".h5") == 0)
        ++n;
    });
  } catch (const Error&) {
  }
  return n;
}

void remove_images(const std::string& dir) {
  for_each_entry(dir, [&](const std::string& name) {
    if (is_image_entry(name)) ::unlink((dir + "/" + name).c_str());
  });
  ::rmdir(dir.c_str());  // only when nothing else is in it
}

}  // namespace crest::agent
