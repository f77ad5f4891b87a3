// inotify: every watch, with its descriptor number and mask (fdinfo "inotify wd:" lines). The
// watched inode is found by its file handle (open_by_handle_at on a mount of its file system)
// and named by its path; restore adds the watches again in order of their numbers, filling holes
// with watches it removes at once (draining the IN_IGNORED each leaves), so each gets its number
// back. Events not read yet cannot be read without taking them from the job, nor put back into a
// new instance: a dump of an instance holding some is refused (the next one, once the job has
// read them, goes through).
// Dump and restore side by side.
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <sstream>

#include "core/fds/fd_kind.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace crest::fds {
namespace {

// A field "key:value" of an inotify fdinfo line.
std::string field(const std::string& line, const std::string& key) {
  auto at = line.find(" " + key + ":");
  if (at == std::string::npos) return "";
  at += key.size() + 2;
  return line.substr(at, line.find(' ', at) - at);
}

// The path of the inode a file handle names, on the file system of device `sdev` (the kernel's
// internal encoding, major << 20 | minor); empty if it cannot be found.
std::string path_of_handle(uint64_t sdev, int type, const std::string& hex) {
  const unsigned major = static_cast<unsigned>(sdev >> 20), minor = static_cast<unsigned>(sdev & 0xfffff);
  const std::string dev = std::to_string(major) + ":" + std::to_string(minor);
  std::istringstream mounts(fs::read_file("/proc/self/mountinfo"));
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream f(line);
    std::string id, parent, majmin, root, point;
    f >> id >> parent >> majmin >> root >> point;
    if (majmin != dev) continue;
    // open_by_handle_at wants a descriptor it can read through (EBADF for an O_PATH one here)
    UniqueFd mount(::open(point.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!mount) continue;
    std::vector<unsigned char> buf(sizeof(file_handle) + hex.size() / 2);
    auto* h = reinterpret_cast<file_handle*>(buf.data());
    h->handle_bytes = static_cast<unsigned>(hex.size() / 2);
    h->handle_type = type;
    for (size_t i = 0; i < h->handle_bytes; ++i)
      h->f_handle[i] = static_cast<unsigned char>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
    UniqueFd file(::open_by_handle_at(mount.get(), h, O_PATH | O_CLOEXEC));
    if (!file) continue;
    try {
      return proc::readlink("/proc/self/fd/" + std::to_string(file.get()));
    } catch (const Error&) {
      continue;
    }
  }
  return "";
}

class InotifyKind : public FdKind {
 public:
  const char* name() const override { return "inotify"; }
  bool claims(const FdProbe& p) const override { return p.link == "anon_inode:inotify"; }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::inotify);
    const int64_t id = static_cast<int64_t>(ctx.meta.files.size());  // add_file's next row
    std::istringstream in(fs::read_file(proc::path(probe.pid, "fdinfo/" + std::to_string(probe.fd))));
    std::string line;
    std::vector<schema::InotifyRecord> watches;
    while (std::getline(in, line)) {
      if (line.rfind("inotify wd:", 0) != 0) continue;
      line = " " + line.substr(8);
      schema::InotifyRecord w;
      w.file_id = id;
      w.wd = std::stoi(field(line, "wd"));
      w.mask = static_cast<uint32_t>(std::stoul(field(line, "mask"), nullptr, 16));
      w.ino = std::stoull(field(line, "ino"), nullptr, 16);
      w.dev = std::stoull(field(line, "sdev"), nullptr, 16);
      w.path = path_of_handle(w.dev, std::stoi(field(line, "fhandle-type")), field(line, "f_handle"));
      if (w.path.empty()) {
        ctx.refuse(probe.where + ": inotify watch " + std::to_string(w.wd) + " is on an inode crest "
                   "cannot name by path (no file handle for it, or not reachable)");
        return false;
      }
      std::string bare = w.path;
      if (strip_deleted(bare)) {
        ctx.refuse(probe.where + ": inotify watch " + std::to_string(w.wd) + " is on " + bare +
                   ", which was removed");
        return false;
      }
      watches.push_back(std::move(w));
    }
    // Events waiting to be read: refused (reading them would take them from the job).
    UniqueFd copy = proc::copy_fd(probe.pidfd, probe.fd);
    int pending = 0;
    if (!copy || ::ioctl(copy.get(), FIONREAD, &pending) != 0) {
      ctx.refuse(probe.where + ": cannot see whether the inotify instance has events queued (" +
                 std::strerror(errno) + ")");
      return false;
    }
    if (pending > 0) {
      ctx.refuse(probe.where + ": an inotify instance with " + std::to_string(pending) +
                 " bytes of events not read yet (crest cannot put them back); a checkpoint taken "
                 "once the job has read them will go through");
      return false;
    }
    for (auto& w : watches) ctx.meta.inotify.push_back(std::move(w));
    return true;
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      UniqueFd fd(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
      if (!fd) throw_errno("inotify_init1", errno, Errc::kernel);
      std::vector<const schema::InotifyRecord*> watches;
      for (auto& w : ctx.meta.inotify)
        if (w.file_id == f->id) watches.push_back(&w);
      std::sort(watches.begin(), watches.end(), [](auto* a, auto* b) { return a->wd < b->wd; });
      int next = 1;  // numbers are handed out in order from 1
      // Holes are watches on an inode of our own that no watch of the job can be on.
      UniqueFd spare;
      std::string spare_path;
      for (auto* w : watches) {
        while (next < w->wd) {  // a hole: a watch taken and removed at once
          if (!spare) {
            spare = UniqueFd(::memfd_create("crest-inotify-hole", MFD_CLOEXEC));
            if (!spare) throw_errno("memfd_create", errno, Errc::kernel);
            spare_path = "/proc/self/fd/" + std::to_string(spare.get());
          }
          int hole = ::inotify_add_watch(fd.get(), spare_path.c_str(), IN_ATTRIB);
          if (hole < 0) throw_errno("inotify_add_watch (a hole)", errno, Errc::kernel);
          ::inotify_rm_watch(fd.get(), hole);
          next = hole + 1;
        }
        int wd = ::inotify_add_watch(fd.get(), w->path.c_str(), w->mask);
        if (wd != w->wd)
          throw_errno("inotify watch " + std::to_string(w->wd) + " on " + w->path + " came back as " +
                          std::to_string(wd),
                      wd < 0 ? errno : EINVAL, Errc::kernel);
        next = wd + 1;
      }
      // The holes' IN_IGNORED events: read, so the job finds its queue as empty as it was.
      alignas(inotify_event) char drain[4096];
      while (::read(fd.get(), drain, sizeof drain) > 0) {
      }      if (::fcntl(fd.get(), F_SETFL, static_cast<int>(f->flags & ~O_ASYNC)) != 0)
        throw_errno("cannot set an inotify's flags", errno, Errc::kernel);
      ctx.files[f->id] = std::move(fd);
    }
  }
  std::vector<std::string> restored() const override {
    return {"every watch: its number, mask and inode (by path)", "O_NONBLOCK"};
  }
  std::vector<std::string> refused() const override {
    return {"an instance with events not read yet",
            "a watch on a removed inode, or one crest cannot name by path"};
  }
};

}  // namespace

const FdKind& inotify_kind() {
  static const InotifyKind kind;
  return kind;
}

}  // namespace crest::fds
