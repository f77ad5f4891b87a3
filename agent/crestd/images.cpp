#include "agent/crestd/images.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <deque>
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

namespace {

// The components of an absolute path; "." dropped, ".." refused (crestd never climbs).
std::deque<std::string> components(const std::string& path, const std::string& what) {
  std::deque<std::string> out;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string c = path.substr(i, j - i);
    if (c == "..") fail(Errc::refused, what + " may not contain '..'");
    if (!c.empty() && c != ".") out.push_back(std::move(c));
    i = j + 1;
  }
  return out;
}

std::string mode_text(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

}  // namespace

UniqueFd open_images_dir(const std::string& dir, uid_t uid, gid_t gid) {
  if (dir.empty() || dir[0] != '/')
    fail(Errc::usage, "the images directory must be an absolute path, not '" + dir + "'");
  std::deque<std::string> rest = components(dir, "the images directory " + dir);
  UniqueFd cur(::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cur) throw_errno("cannot open /");
  std::string at;              // the real path walked so far, for messages
  bool cur_root_owned = true;  // only root can change the entries of `cur`
  int links = 0;
  auto refuse = [&](const std::string& why) {
    fail(Errc::refused, "images directory " + dir + ": " + why +
                            " (crestd writes a job's images only where no other user can "
                            "redirect or change them)");
  };
  while (!rest.empty()) {
    const std::string name = rest.front();
    rest.pop_front();
    const bool last = rest.empty();
    const std::string path = at + "/" + name;
    UniqueFd next(
        ::openat(cur.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next && errno == ENOENT) {
      // Made by root: parents traversable, the images directory the job's user's alone.
      if (::mkdirat(cur.get(), name.c_str(), last ? 0700 : 0755) != 0 && errno != EEXIST)
        throw_errno("cannot create " + path);
      next.reset(
          ::openat(cur.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    }
    if (!next) {
      int err = errno;
      struct stat st {};
      if ((err == ELOOP || err == ENOTDIR) &&
          ::fstatat(cur.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          S_ISLNK(st.st_mode)) {
        // A link only root could have made and only root can change is followed; any other
        // could send root's writes anywhere.
        if (st.st_uid != 0)
          refuse(path + " is a symbolic link owned by uid " + std::to_string(st.st_uid));
        if (!cur_root_owned)
          refuse(path + " is a symbolic link in " + (at.empty() ? "/" : at) +
                 ", a directory another user can change");
        if (++links > 40) refuse("too many symbolic links");
        std::string target(PATH_MAX, '\0');
        ssize_t n = ::readlinkat(cur.get(), name.c_str(), target.data(), target.size());
        if (n <= 0) throw_errno("cannot read the link " + path);
        target.resize(static_cast<size_t>(n));
        auto more = components(target, "the link " + path);
        rest.insert(rest.begin(), more.begin(), more.end());
        if (target[0] == '/') {
          cur.reset(::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
          if (!cur) throw_errno("cannot open /");
          at.clear();
          cur_root_owned = true;
        }
        continue;
      }
      if (err == ENOTDIR || err == ELOOP)
        fail(Errc::io, "cannot create " + dir + ": " + path + " is not a directory");
      throw_errno("cannot open " + path, err);
    }
    struct stat st {};
    if (::fstat(next.get(), &st) != 0) throw_errno("cannot stat " + path);
    if (st.st_uid != 0 && st.st_uid != uid)
      refuse(path + " belongs to uid " + std::to_string(st.st_uid) +
             ", neither root nor the job's user (uid " + std::to_string(uid) + ")");
    const bool others_write = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0;
    // A sticky directory (/tmp) lets others add entries but not rename or remove ours.
    if (others_write && (last || (st.st_mode & S_ISVTX) == 0))
      refuse(path + " is writable by other users (mode " + mode_text(st.st_mode) + ")");
    if (last) {
      if ((st.st_uid != uid || st.st_gid != gid) && ::fchown(next.get(), uid, gid) != 0)
        throw_errno("cannot give " + path + " to uid " + std::to_string(uid));
      if ((st.st_mode & 07777) != 0700 && ::fchmod(next.get(), 0700) != 0)
        throw_errno("cannot chmod " + path);
    }
    cur_root_owned = st.st_uid == 0;
    cur = std::move(next);
    at = path;
  }
  if (at.empty()) refuse("/ cannot hold a job's images");
  return cur;
}

std::string pinned_path(const UniqueFd& dir) {
  // "/." keeps the magic link an inner component: openers with O_NOFOLLOW go through it.
  return "/proc/self/fd/" + std::to_string(dir.get()) + "/.";
}

void prepare_images_dir(const std::string& dir, uid_t uid, gid_t gid) {
  (void)open_images_dir(dir, uid, gid);
}

void own_images(const std::string& dir, uid_t uid, gid_t gid) {
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd) throw_errno("cannot open " + dir);
  for_each_entry(dir, [&](const std::string& name) {
    if (!is_image_entry(name)) return;
    struct stat st {};
    if (::fstatat(dfd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return;  // gone
    if (S_ISLNK(st.st_mode)) {
      // latest: the link itself (never what it points to).
      if (st.st_uid == 0 && uid != 0 &&
          ::fchownat(dfd.get(), name.c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) != 0 &&
          errno != ENOENT)
        throw_errno("cannot give " + dir + "/" + name + " to uid " + std::to_string(uid));
      return;
    }
    if (!S_ISREG(st.st_mode)) return;
    // Through a descriptor of the file itself: a name swapped for a link meanwhile is not
    // followed, and only a file crestd made (root's, one link) is given away; a hard link the
    // user made to someone else's file never is.
    UniqueFd fd(::openat(dfd.get(), name.c_str(),
                         O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (!fd) {
      if (errno == ENOENT) return;
      throw_errno("cannot open " + dir + "/" + name);
    }
    if (::fstat(fd.get(), &st) != 0) throw_errno("cannot stat " + dir + "/" + name);
    if (!S_ISREG(st.st_mode) || st.st_nlink != 1) return;
    if (st.st_uid != uid && st.st_uid != 0) return;  // someone else's: not ours to give
    if ((st.st_uid != uid || st.st_gid != gid) && ::fchown(fd.get(), uid, gid) != 0)
      throw_errno("cannot give " + dir + "/" + name + " to uid " + std::to_string(uid));
    if ((st.st_mode & 07777) != 0600 && ::fchmod(fd.get(), 0600) != 0)
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

void remove_images(const std::string& at, const std::string& dir) {
  if (at.empty()) return;  // the directory was refused: crestd wrote nothing there
  for_each_entry(at, [&](const std::string& name) {
    if (is_image_entry(name)) ::unlink((at + "/" + name).c_str());
  });
  // The directory itself, only when nothing else is in it and `dir` still names it.
  struct stat pinned {
  }, named{};
  if (::stat(at.c_str(), &pinned) == 0 && ::lstat(dir.c_str(), &named) == 0 &&
      pinned.st_dev == named.st_dev && pinned.st_ino == named.st_ino)
    ::rmdir(dir.c_str());
}

}  // namespace crest::agent
