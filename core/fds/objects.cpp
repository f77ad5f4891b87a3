// Memory objects whose contents live nowhere else: memfds, anonymous shared memory ("/dev/zero
// (deleted)"), regular files unlinked while open, and named files on tmpfs that the tree maps
// shared or holds open (made again at their path, with their modification time). Their contents are saved (once per object,
// under the object's page-store owner, whether descriptors or only mappings hold it), with the
// object's mode, owner and seals; restore makes the object again, fills it, and hands out
// descriptions with the recorded access modes. Seals are added last, when every mapping of the
// object exists (a seal against writing forbids making writable mappings). Dump and restore side
// by side.
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/mount.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "core/fds/fd_kind.h"
#include "core/kernel/compat.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace crest::fds {
namespace {

using schema::FileKind;

bool is_shmem_link(const std::string& link) { return link.rfind("/dev/zero (deleted)", 0) == 0; }

// Writes a file object's saved contents at their offsets.
class FileSink : public storage::PageSink {
 public:
  FileSink(int fd, uint64_t size, std::string what) : fd_(fd), size_(size), what_(std::move(what)) {}
  void on_pages(const storage::PageExtent& run, schema::PageKind kind, const std::byte* data) override {
    if (kind != schema::PageKind::data) return;  // holes and zero pages read as zeros
    uint64_t end = std::min(size_, run.addr + run.npages * 4096);
    if (end <= run.addr) return;
    size_t len = end - run.addr, done = 0;
    while (done < len) {
      ssize_t n = ::pwrite(fd_, data + done, len - done, static_cast<off_t>(run.addr + done));
      if (n < 0) throw_errno("cannot write the contents of " + what_);
      done += static_cast<size_t>(n);
    }
  }

 private:
  int fd_;
  uint64_t size_;
  std::string what_;
};

// Anonymous shared memory made here the way the job's was (mmap MAP_SHARED|MAP_ANONYMOUS), so
// that it is named "/dev/zero (deleted)" again, and opened through /proc/self/map_files.
UniqueFd make_shmem(uint64_t size) {
  const size_t len = size ? size : 4096;
  void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw_errno("cannot make shared memory", errno, Errc::kernel);
  char name[64];
  std::snprintf(name, sizeof name, "/proc/self/map_files/%lx-%lx",
                reinterpret_cast<unsigned long>(m), reinterpret_cast<unsigned long>(m) + len);
  UniqueFd fd(::open(name, O_RDWR | O_CLOEXEC));
  int err = errno;
  ::munmap(m, len);
  if (!fd) throw_errno("cannot open " + std::string(name), err, Errc::kernel);
  return fd;
}

// A memory object being made: `fd` is written to; `keep` (when set) is the descriptor the
// object is kept by, opened once the contents are in; `done` runs after that.
struct MadeObject {
  UniqueFd fd, keep;
  bool keep_by_path = false;  // keep: the path opened read-only once the contents are in
  bool named = false;         // fd was made under the file's own path, still there until done
  std::function<void()> done;
};

// Descriptions opened with O_NOFOLLOW keep it in their flags, but a magic link of /proc cannot
// be opened with it: they are opened by the object's path while it has one (made under it),
// before an unlinked object loses its name, and handed out by ObjectKind::open.
using NoFollowOpens = std::map<int64_t, UniqueFd>;
std::shared_ptr<NoFollowOpens> nofollow_opens(RestoreContext& ctx) {
  static const int key = 0;
  auto& state = ctx.kind_state[&key];
  if (!state) state = std::make_shared<NoFollowOpens>();
  return std::static_pointer_cast<NoFollowOpens>(state);
}

void open_nofollow_rows(RestoreContext& ctx, const schema::FileRecord& object, int fd) {
  struct stat want {};
  if (::fstat(fd, &want) != 0) throw_errno("fstat of " + object.path, errno, Errc::io);
  auto opens = nofollow_opens(ctx);
  for (const auto& f : ctx.meta.files) {
    if (f.contents_owner != object.contents_owner || !(f.flags & O_NOFOLLOW) || opens->count(f.id))
      continue;
    UniqueFd d = reopen_path(object.path, f.flags, "made again");
    struct stat got {};
    if (::fstat(d.get(), &got) != 0 || got.st_dev != want.st_dev || got.st_ino != want.st_ino)
      fail(Errc::io, object.path + " changed while it was made again");
    (*opens)[f.id] = std::move(d);
  }
}

// An unlinked file is made again in its directory, under its name when free (so the program
// sees the same "<path> (deleted)"), else unnamed there. On a mount that is read-only (its file
// system is not), it is made through a writable clone of the mount that only crest holds, then
// opened for reading through the job's own mount, and removed again: same file system, same
// path. Where even that fails (a read-only file system), unnamed in /dev/shm: its contents and
// attributes are the same, its device and path not, and the restore says so.
MadeObject make_unlinked(RestoreContext& ctx, const schema::FileRecord& f) {
  const std::string dir = f.path.substr(0, f.path.find_last_of('/') + 1);
  MadeObject out;
  int fd = ::open(f.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    out.fd.reset(fd);
    out.named = true;
    out.done = [path = f.path] { ::unlink(path.c_str()); };
    return out;
  }
  fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
  if (fd >= 0) {
    out.fd.reset(fd);
    return out;
  }
  if (errno != EROFS)
    throw_errno("cannot recreate the unlinked file " + f.path + " in " + dir, errno, Errc::io);
  auto tree = std::make_shared<UniqueFd>(static_cast<int>(
      ::syscall(SYS_open_tree, AT_FDCWD, dir.c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)));
  mount_attr rw{};
  rw.attr_clr = MOUNT_ATTR_RDONLY;
  if (*tree && ::syscall(SYS_mount_setattr, tree->get(), "", AT_EMPTY_PATH, &rw, sizeof rw) == 0) {
    const std::string name = f.path.substr(f.path.find_last_of('/') + 1);
    fd = ::openat(tree->get(), name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      out.fd.reset(fd);
      out.keep_by_path = true;
      out.done = [tree, name] { ::unlinkat(tree->get(), name.c_str(), 0); };
      return out;
    }
  }
  fd = ::open("/dev/shm", O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
  if (fd < 0) throw_errno("cannot recreate the unlinked file " + f.path + " (its directory is on a "
                          "read-only mount) in /dev/shm", errno, Errc::io);
  ctx.warnings.push_back(f.path + " was unlinked on a read-only file system: made again in "
                         "/dev/shm (same contents, another device)");
  out.fd.reset(fd);
  return out;
}

// A named file on tmpfs mapped shared by the job is made again at its path: whatever is there now
// (the file of a later moment of the job, or of another) is replaced, unlinked first so that a
// process still holding that one keeps it; directories missing on the way are made (mode 0700,
// the file's owner), as the launcher that removed them had made them for the job.
MadeObject make_named(const schema::FileRecord& f) {
  make_parent_dirs(f.path, f.uid, f.gid);
  if (::unlink(f.path.c_str()) != 0 && errno != ENOENT)
    throw_errno("cannot replace " + f.path + " by its saved contents", errno, Errc::io);
  MadeObject out;
  out.named = true;
  out.fd.reset(::open(f.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!out.fd) throw_errno("cannot make " + f.path + " again", errno, Errc::io);
  struct statfs sfs {};
  if (::fstatfs(out.fd.get(), &sfs) != 0 || sfs.f_type != TMPFS_MAGIC)
    fail(Errc::unsupported, f.path + " was a file on tmpfs, mapped shared by the job; here it is "
                            "not on tmpfs (another mount at that path)");
  return out;
}

// Makes the object of row `f`, empty but of its size.
MadeObject make_object(RestoreContext& ctx, const schema::FileRecord& f) {
  auto kind = static_cast<FileKind>(f.kind);
  MadeObject made;
  if (kind == FileKind::memfd) {
    std::string name = f.path;
    if (name.rfind("/memfd:", 0) == 0) name = name.substr(7);
    strip_deleted(name);
    // A memfd made without MFD_ALLOW_SEALING has exactly F_SEAL_SEAL; any other seals were
    // added to one that allowed sealing.
    unsigned flags = MFD_CLOEXEC | (f.seals == F_SEAL_SEAL ? 0 : MFD_ALLOW_SEALING);
    made.fd.reset(static_cast<int>(::syscall(SYS_memfd_create, name.substr(0, 249).c_str(), flags)));
    if (!made.fd) throw_errno("memfd_create for " + f.path, errno, Errc::kernel);
  } else if (kind == FileKind::shmem) {
    made.fd = make_shmem(f.size);
  } else if (kind == FileKind::shm_file) {
    made = make_named(f);
  } else {
    made = make_unlinked(ctx, f);
  }
  if (::ftruncate(made.fd.get(), static_cast<off_t>(f.size)) != 0)
    throw_errno("cannot size " + f.path, errno, Errc::io);
  return made;
}

// Gives a filled object its owner and mode, and returns the descriptor it is kept by.
UniqueFd finish_object(RestoreContext& ctx, MadeObject& made, const schema::FileRecord& f) {
  const int fd = made.fd.get();
  // Its owner and mode, as they were (fchown first: it may clear set-id bits).
  if (f.mode != 0) {
    if (::fchown(fd, f.uid, f.gid) != 0)
      throw_errno("cannot give " + f.path + " its owner " + std::to_string(f.uid) + ":" +
                      std::to_string(f.gid),
                  errno, Errc::io);
    if (::fchmod(fd, f.mode & 07777) != 0)
      throw_errno("cannot give " + f.path + " its mode", errno, Errc::io);
  }
  // A file of tmpfs made again keeps its modification time.
  if (static_cast<FileKind>(f.kind) == FileKind::shm_file) {
    const timespec times[2] = {{0, UTIME_OMIT},
                               {static_cast<time_t>(f.mtime_ns / 1000000000),
                                static_cast<long>(f.mtime_ns % 1000000000)}};
    if (::futimens(fd, times) != 0) throw_errno("cannot give " + f.path + " its modification time", errno, Errc::io);
  }
  if (made.named) open_nofollow_rows(ctx, f, fd);
  if (made.keep_by_path)
    made.keep = reopen_path(f.path, O_RDONLY, "made again through a writable clone of its mount");
  return made.keep ? std::move(made.keep) : std::move(made.fd);
}

// Hands each object's pages to its own FileSink, from the reader's threads.
class ObjectsSink : public storage::PageSink {
 public:
  void add(uint64_t owner, int fd, uint64_t size, const std::string& what) {
    sinks_.emplace(owner, std::make_unique<FileSink>(fd, size, what));
  }
  void on_pages(const storage::PageExtent& run, schema::PageKind kind, const std::byte* data) override {
    sinks_.at(run.owner)->on_pages(run, kind, data);
  }
  bool concurrent() const override { return true; }  // pwrite, each page to one place

 private:
  std::map<uint64_t, std::unique_ptr<FileSink>> sinks_;
};

class ObjectKind : public FdKind {
 public:
  const char* name() const override { return "memfd, shared memory or unlinked file"; }
  bool claims(const FdProbe& p) const override {
    return S_ISREG(p.st.st_mode) &&
           (p.link.rfind("/memfd:", 0) == 0 || p.st.st_nlink == 0 || is_shmem_link(p.link));
  }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    if (fs_magic(probe) == HUGETLBFS_MAGIC) {
      ctx.refuse(probe.where + " (" + probe.link + ") is on hugetlbfs; not supported yet");
      return false;
    }
    if (probe.link.rfind("/secretmem", 0) == 0) {
      ctx.refuse(probe.where + " is a secret memory area (memfd_secret); its contents cannot be "
                 "read, by design");
      return false;
    }
    if (is_shmem_link(probe.link)) {
      rec.kind = static_cast<uint32_t>(FileKind::shmem);
    } else if (probe.link.rfind("/memfd:", 0) == 0) {
      rec.kind = static_cast<uint32_t>(FileKind::memfd);
    } else {
      rec.kind = static_cast<uint32_t>(FileKind::unlinked);
      strip_deleted(rec.path);
    }
    rec.seals = read_seals(probe.fd_path);
    rec.contents_owner = file_owner(rec.dev, rec.ino);
    return true;
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      // A description of its own on the recreated object, with the recorded access mode.
      auto obj = ctx.objects.find(f->contents_owner);
      if (obj == ctx.objects.end()) fail(Errc::internal, "object of " + f->path + " not created");
      UniqueFd fd;
      if (f->flags & O_NOFOLLOW) {
        auto opens = nofollow_opens(ctx);
        auto it = opens->find(f->id);
        if (it == opens->end())
          fail(Errc::unsupported, f->path + " was opened with O_NOFOLLOW and could not be made "
                                  "again under its own name here (the name is taken), through "
                                  "which alone such a description can be opened");
        fd = std::move(it->second);
        opens->erase(it);
      } else {
        std::string self = "/proc/self/fd/" + std::to_string(obj->second.get());
        fd = reopen_path(self, f->flags, "recreated");
      }
      seek_to(fd.get(), f->pos, f->path);
      ctx.files[f->id] = std::move(fd);
    }
  }
  std::vector<std::string> restored() const override {
    return {"contents (holes kept)", "size", "name", "mode, owner and group", "seals",
            "access mode, status flags and offset of each description",
            "named files on tmpfs (mapped shared or open): made again at their path with their "
            "contents and modification time, replacing what is there"};
  }
  std::vector<std::string> refused() const override {
    return {"memfds on hugetlbfs", "memfd_secret areas"};
  }
};

}  // namespace

void make_parent_dirs(const std::string& path, uint32_t uid, uint32_t gid) {
  if (path.empty() || path[0] != '/')
    fail(Errc::corrupt, "a file to make again with a path that is not absolute: '" + path + "'");
  for (size_t at = path.find('/', 1); at != std::string::npos; at = path.find('/', at + 1)) {
    const std::string dir = path.substr(0, at);
    if (::mkdir(dir.c_str(), 0700) == 0) {
      if (::chown(dir.c_str(), uid, gid) != 0)
        throw_errno("cannot give the directory " + dir + " (made again for " + path + ") its owner",
                    errno, Errc::io);
    } else if (errno != EEXIST) {
      throw_errno("cannot make the directory " + dir + " again for " + path, errno, Errc::io);
    }
  }
}

uint32_t read_seals(const std::string& path) {
  UniqueFd own(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!own) return 0;
  int seals = ::fcntl(own.get(), F_GET_SEALS);
  return seals > 0 ? static_cast<uint32_t>(seals) : 0;
}

const FdKind& object_kind() {
  static const ObjectKind kind;
  return kind;
}

// Every object is made first, then the contents of all of them are read in one pass over the
// image (a chunk holds the pages of many small objects: it is decompressed once, not once per
// object), then each is finished.
void create_objects(RestoreContext& ctx) {
  struct Pending {
    const schema::FileRecord* row;
    MadeObject made;
  };
  std::vector<Pending> pending;
  // The clean-ups of the objects made (a name to remove again) run however this ends.
  struct RunDone {
    std::vector<Pending>& made;
    void run() {
      for (auto& o : made)
        if (o.made.done) std::exchange(o.made.done, nullptr)();
    }
    ~RunDone() { run(); }
  } run_done{pending};
  std::set<std::string> named;  // paths held by objects made under their own name meanwhile
  auto fill_and_finish = [&] {
    if (pending.empty()) return;
    ObjectsSink sink;
    std::vector<uint64_t> owners;
    for (auto& o : pending) {
      sink.add(o.row->contents_owner, o.made.fd.get(), o.row->size, o.row->path);
      owners.push_back(o.row->contents_owner);
    }
    ctx.reader.read_pages(owners, sink);
    for (auto& o : pending) ctx.objects[o.row->contents_owner] = finish_object(ctx, o.made, *o.row);
    run_done.run();
    pending.clear();
    named.clear();
  };
  std::set<uint64_t> seen;
  for (auto& f : ctx.meta.files) {
    if (!f.contents_owner || ctx.objects.count(f.contents_owner) || !seen.insert(f.contents_owner).second)
      continue;
    // Two objects of one name (files unlinked at different times, say each rank's
    // /dev/shm/open_mpi.0000) are made one after the other: the first gives its name back first.
    if (named.count(f.path)) fill_and_finish();
    pending.push_back({&f, make_object(ctx, f)});
    if (pending.back().made.named) named.insert(f.path);
  }
  fill_and_finish();
}

void seal_for_mapping(RestoreContext& ctx, const schema::FileRecord& f, bool may_write) {
  if (f.kind != static_cast<uint32_t>(FileKind::memfd)) return;
  const uint32_t write_seals = f.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE);
  const bool sealed = ctx.write_sealed.count(f.contents_owner) > 0;
  if (may_write) {
    if (sealed)
      fail(Errc::unsupported, f.path + ": a writable shared mapping of it is to be made after "
                              "one that its seal kept from writing; that order cannot be made "
                              "again");
    return;
  }
  if (sealed || write_seals == 0) return;
  if (::fcntl(ctx.objects.at(f.contents_owner).get(), F_ADD_SEALS, static_cast<int>(write_seals)) != 0)
    throw_errno("cannot seal " + f.path + " against writing", errno, Errc::kernel);
  ctx.write_sealed.insert(f.contents_owner);
}

void seal_objects(RestoreContext& ctx) {
  std::set<uint64_t> done;
  for (auto& f : ctx.meta.files) {
    if (!f.contents_owner || !done.insert(f.contents_owner).second) continue;
    const uint32_t add = f.seals & ~static_cast<uint32_t>(f.seals == F_SEAL_SEAL ? F_SEAL_SEAL : 0);
    if (add == 0 || f.kind != static_cast<uint32_t>(FileKind::memfd)) continue;
    if (::fcntl(ctx.objects.at(f.contents_owner).get(), F_ADD_SEALS, static_cast<int>(add)) != 0)
      throw_errno("cannot seal " + f.path + " again", errno, Errc::kernel);
  }
}

}  // namespace crest::fds
