// Pipes and FIFOs: which descriptions are the ends of which pipe, the pipe's capacity and the
// bytes buffered in it; a FIFO removed while open is made again, opened and removed. Dump and
// restore side by side.
//
// Buffered bytes are copied without consuming them: we open the pipe's inode afresh through
// /proc/PID/fd/N (a new read-side description of the same pipe), tee() its buffers into a pipe of
// our own, and read ours. The job's reader later reads the same bytes (or, after a restore, the
// bytes we put back).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>

#include "core/fds/fd_kind.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace crest::fds {
namespace {

using schema::FileKind;

bool reads(uint32_t flags) { return (flags & O_ACCMODE) != O_WRONLY; }
bool writes(uint32_t flags) { return (flags & O_ACCMODE) != O_RDONLY; }

std::vector<uint8_t> buffered_bytes(DumpContext& ctx, const std::string& via, uint32_t& capacity) {
  UniqueFd src(::open(via.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!src) throw_errno("cannot open " + via + " to copy its buffered bytes", errno, Errc::kernel);
  int cap = ::fcntl(src.get(), F_GETPIPE_SZ);
  if (cap < 0) throw_errno("F_GETPIPE_SZ of " + via, errno, Errc::kernel);
  capacity = static_cast<uint32_t>(cap);
  int avail = 0;
  if (::ioctl(src.get(), FIONREAD, &avail) != 0) throw_errno("FIONREAD of " + via, errno, Errc::kernel);
  std::vector<uint8_t> data;
  if (avail == 0) return data;
  int ends[2];
  if (::pipe2(ends, O_NONBLOCK | O_CLOEXEC) != 0) throw_errno("pipe2", errno, Errc::kernel);
  UniqueFd rd(ends[0]), wr(ends[1]);
  if (::fcntl(wr.get(), F_SETPIPE_SZ, cap) < 0) throw_errno("F_SETPIPE_SZ", errno, Errc::kernel);
  ssize_t n = ::tee(src.get(), wr.get(), static_cast<size_t>(avail), SPLICE_F_NONBLOCK);
  if (n != avail) {
    ctx.refuse(via + ": could copy only " + std::to_string(n < 0 ? 0 : n) + " of the " +
               std::to_string(avail) + " bytes buffered in the pipe");
    return data;
  }
  data.resize(static_cast<size_t>(avail));
  size_t got = 0;
  while (got < data.size()) {
    ssize_t r = ::read(rd.get(), data.data() + got, data.size() - got);
    if (r <= 0) throw_errno("reading the copy of " + via, r < 0 ? errno : EIO, Errc::kernel);
    got += static_cast<size_t>(r);
  }
  return data;
}

// Pairs the ends of every pipe seen in the tree: a pipe on the root's stdio whose other end is
// not in the tree is the launcher's; the others get their buffered bytes saved.
void pair_pipes(DumpContext& ctx) {
  // Ends of each pipe inode present in the tree, and one (pid, fd) through which to reach it.
  struct Ends {
    bool read = false, write = false;
    std::vector<int64_t> rows;
    pid_t pid = 0;
    int fd = -1;
  };
  std::map<uint64_t, Ends> by_ino;
  for (auto& [key, list] : ctx.descriptions)
    for (auto& [id, pid, fd] : list) {
      auto& f = ctx.meta.files[static_cast<size_t>(id)];
      if (f.kind != static_cast<uint32_t>(FileKind::pipe) &&
          f.kind != static_cast<uint32_t>(FileKind::fifo))
        continue;
      auto& e = by_ino[f.ino];
      e.read |= reads(f.flags);
      e.write |= writes(f.flags);
      e.rows.push_back(id);
      if (e.fd < 0) e.pid = pid, e.fd = fd;
    }

  for (auto& [ino, e] : by_ino) {
    // A pipe on the root's stdio whose other end is not in the tree comes from the launcher
    // (a shell pipeline, srun): the restored job gets the restorer's descriptor instead.
    bool outside = !(e.read && e.write);
    bool any_data_row = false;
    for (int64_t id : e.rows) {
      auto& f = ctx.meta.files[static_cast<size_t>(id)];
      if (f.inherited_fd >= 0 && outside && f.kind == static_cast<uint32_t>(FileKind::pipe))
        f.kind = static_cast<uint32_t>(FileKind::inherited);
      else {
        f.inherited_fd = -1;
        any_data_row = true;
      }
    }
    if (!any_data_row) continue;

    schema::PipeRecord pipe;
    pipe.id = static_cast<int64_t>(ctx.meta.pipes.size());
    pipe.ino = ino;
    try {
      pipe.data = buffered_bytes(ctx, proc::path(e.pid, "fd/" + std::to_string(e.fd)),
                                 pipe.capacity);
    } catch (const Error& err) {
      ctx.refuse("pipe " + std::to_string(ino) + ": " + err.what());
      continue;
    }
    for (int64_t id : e.rows) {
      auto& f = ctx.meta.files[static_cast<size_t>(id)];
      if (f.kind != static_cast<uint32_t>(FileKind::inherited)) f.pipe_id = pipe.id;
    }
    ctx.meta.pipes.push_back(std::move(pipe));
  }
}

void write_all_nonblock(int fd, const std::vector<uint8_t>& data, const std::string& what) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) throw_errno("cannot put the buffered bytes back into " + what, errno, Errc::kernel);
    done += static_cast<size_t>(n);
  }
}

// F_SETFL changes only the status flags (O_APPEND, O_NONBLOCK, ...), which is what differs
// between our freshly opened end and the recorded description.
void set_status_flags(int fd, uint32_t flags, const std::string& what) {
  if (::fcntl(fd, F_SETFL, static_cast<int>(flags & ~O_ASYNC)) != 0)
    throw_errno("cannot set the flags of " + what, errno, Errc::kernel);
}

UniqueFd reopen(int fd, uint32_t flags, const std::string& what) {
  std::string self = "/proc/self/fd/" + std::to_string(fd);
  int r = ::open(self.c_str(),
                 static_cast<int>((flags & ~(O_CREAT | O_ASYNC)) | O_NONBLOCK | O_CLOEXEC));
  if (r < 0) throw_errno("cannot open another end of " + what, errno, Errc::kernel);
  UniqueFd out(r);
  set_status_flags(out.get(), flags, what);
  return out;
}

// A FIFO that is gone from its path at restore (removed with the job's session directory by a
// launcher that saw the job die, as mpirun does) is made again there, with its mode and owner and
// the directories missing on the way; the pipe behind it is the saved one either way.
void make_missing_fifo(const schema::FileRecord& f) {
  struct stat st {};
  if (::lstat(f.path.c_str(), &st) == 0 || errno != ENOENT) return;
  make_parent_dirs(f.path, f.uid, f.gid);
  if (::mkfifo(f.path.c_str(), f.mode & 07777) != 0 && errno != EEXIST)
    throw_errno("cannot make the FIFO " + f.path + " again", errno, Errc::io);
  if (::chown(f.path.c_str(), f.uid, f.gid) != 0 || ::chmod(f.path.c_str(), f.mode & 07777) != 0)
    throw_errno("cannot give the FIFO " + f.path + " (made again) its owner and mode", errno, Errc::io);
}

void restore_pipes(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& opened) {
  for (auto& pipe : ctx.meta.pipes) {
    std::vector<const schema::FileRecord*> rows;
    for (const auto* f : opened)
      if (f->pipe_id == pipe.id) rows.push_back(f);
    if (rows.empty()) continue;
    bool fifo = rows.front()->kind == static_cast<uint32_t>(FileKind::fifo);
    std::string what = fifo ? "FIFO " + rows.front()->path : "pipe " + std::to_string(pipe.ino);
    if (pipe.data.size() > pipe.capacity && pipe.capacity)
      fail(Errc::corrupt, what + ": more buffered bytes than the pipe's capacity");

    if (fifo) {
      // A FIFO removed while open exists again while its ends are opened.
      std::unique_ptr<Recreated> again;
      if (rows.front()->deleted) again = std::make_unique<Recreated>(*rows.front(), "FIFO");
      else
        make_missing_fifo(*rows.front());
      const std::string& path = again ? again->path() : rows.front()->path;
      // An O_RDWR open of a FIFO never blocks and keeps the buffer alive while we set up.
      UniqueFd keeper(::open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
      if (!keeper) throw_errno("cannot open the FIFO " + path, errno, Errc::not_found);
      if (pipe.capacity) ::fcntl(keeper.get(), F_SETPIPE_SZ, static_cast<int>(pipe.capacity));
      write_all_nonblock(keeper.get(), pipe.data, what);
      for (auto* f : rows) {
        int fd = ::open(path.c_str(),
                        static_cast<int>((f->flags & ~(O_CREAT | O_ASYNC)) | O_NONBLOCK | O_CLOEXEC));
        if (fd < 0) throw_errno("cannot open the FIFO " + path, errno, Errc::kernel);
        UniqueFd end(fd);
        set_status_flags(end.get(), f->flags, what);
        ctx.files[f->id] = std::move(end);
      }
      ctx.keepers.push_back(std::move(keeper));
      continue;
    }

    int ends[2];
    if (::pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) throw_errno("pipe2", errno, Errc::kernel);
    UniqueFd rd(ends[0]), wr(ends[1]);
    if (pipe.capacity && ::fcntl(wr.get(), F_SETPIPE_SZ, static_cast<int>(pipe.capacity)) < 0)
      throw_errno(what + ": cannot set the capacity to " + std::to_string(pipe.capacity), errno,
                  Errc::kernel);
    write_all_nonblock(wr.get(), pipe.data, what);
    bool used_rd = false, used_wr = false;
    for (auto* f : rows) {
      bool write_end = (f->flags & O_ACCMODE) == O_WRONLY;
      UniqueFd& end = write_end ? wr : rd;
      bool& used = write_end ? used_wr : used_rd;
      if (!used) {
        set_status_flags(end.get(), f->flags, what);
        ctx.files[f->id] = UniqueFd(::fcntl(end.get(), F_DUPFD_CLOEXEC, 0));
        used = true;
      } else {
        // A second description of the same end (opened anew through /proc at some point).
        ctx.files[f->id] = reopen(end.get(), f->flags, what);
      }
    }
    // Ends nobody in the tree held are closed here, as they were: a reader sees EOF after the
    // buffered bytes, a writer EPIPE.
  }
}

class PipeKind : public FdKind {
 public:
  const char* name() const override { return "pipe or FIFO"; }
  bool claims(const FdProbe& p) const override {
    return p.link.rfind("pipe:", 0) == 0 || S_ISFIFO(p.st.st_mode);
  }
  bool dump(DumpContext&, const FdProbe& probe, schema::FileRecord& rec) const override {
    if (probe.link.rfind("pipe:", 0) == 0) {
      rec.kind = static_cast<uint32_t>(FileKind::pipe);
      if (probe.root_stdio) rec.inherited_fd = probe.fd;  // decided in pair_pipes
    } else {
      rec.kind = static_cast<uint32_t>(FileKind::fifo);
      if (strip_deleted(rec.path) || probe.st.st_nlink == 0) rec.deleted = 1;
    }
    return true;
  }
  void finish_dump(DumpContext& ctx) const override { pair_pipes(ctx); }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    restore_pipes(ctx, rows);
  }
  std::vector<std::string> restored() const override {
    return {"both ends and which descriptions are which end", "buffered bytes (in order)",
            "capacity (F_SETPIPE_SZ)", "status flags", "FIFO path", "FIFO removed while open",
            "owner (F_SETOWN_EX), F_SETSIG, O_ASYNC"};
  }
};

}  // namespace

const FdKind& pipe_kind() {
  static const PipeKind kind;
  return kind;
}

}  // namespace crest::fds
