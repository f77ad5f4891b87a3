// Descriptor kinds as a table of handlers: one file per kind in core/fds/, each with the same
// small interface, registered in fd_kinds(). Adding a kind is one new file and one table entry.
//
// Dump: dump_fds() (table.cpp) reads each descriptor of each process once (its /proc/PID/fd
// link, a stat of it and its fdinfo), asks the kinds in order which one claims it, and lets that
// kind fill the description's row (or refuse it, naming why). Descriptions shared by several
// descriptors or processes are found with kcmp and recorded once.
//
// Restore, in stages shared by all kinds:
//   1. open: every kind creates the descriptions of its rows in the restorer (ctx.files), each
//      from its own row (and the kind's own tables: pipes' buffered bytes...);
//   2. (kinds that refer to each other connect here: nothing yet)
//   3. hand each descriptor to its task at its number (restore_fds, table.cpp);
//   4. per-task settings injected in the tasks once every process exists: locks (locks.cpp),
//      owners and O_ASYNC (table.cpp), seals of memory objects (objects.cpp).
#pragma once

#include <sys/stat.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/util/error.h"

namespace crest::fds {

// What dump_fds learned about one descriptor, for the kinds to decide on.
struct FdProbe {
  pid_t pid = 0;        // host pid of the process
  int fd = -1;
  std::string fd_path;  // /proc/PID/fd/N
  std::string link;     // readlink of fd_path
  struct stat st {};    // stat of fd_path (the file the descriptor refers to)
  uint32_t flags = 0;   // fdinfo flags, O_CLOEXEC removed
  uint64_t pos = 0;
  std::map<std::string, std::string> info;  // fdinfo fields
  bool root_stdio = false;  // fd 0-2 of the tree's root: may come from outside the tree
  int pidfd = -1;           // the process's pidfd (ours), to take copies of its descriptors
  int sock_domain = -1;     // a socket's SO_DOMAIN (AF_UNIX, AF_INET...)
  int sock_type = -1;       // SO_TYPE (SOCK_STREAM...)
  int sock_protocol = -1;   // SO_PROTOCOL (IPPROTO_TCP...)
  std::string where;        // "process P: fd N", for messages
  // The type of the file system it is on (statfs f_type), asked once: fs_magic().
  mutable long fs_type = 0;
  mutable bool fs_known = false;
};

// The statfs f_type of the probed file's file system (0 when statfs fails).
long fs_magic(const FdProbe& p);

// /proc/PID/fdinfo/FD as fields, and its "lock:" lines (a key that repeats) apart.
std::map<std::string, std::string> read_fdinfo(pid_t pid, int fd, std::vector<std::string>& locks);

// Strips a trailing " (deleted)" from a /proc link; says whether there was one.
bool strip_deleted(std::string& path);

class FdKind {
 public:
  virtual ~FdKind() = default;
  virtual const char* name() const = 0;
  // Whether this kind handles the descriptor. Kinds are asked in table order.
  virtual bool claims(const FdProbe& probe) const = 0;
  // Fills the row of a description seen for the first time (path, flags, pos, dev/ino... are
  // set already). Returns false after ctx.refuse() if it cannot be restored.
  virtual bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const = 0;
  // After every descriptor of every process was seen (pipes pair their ends here).
  virtual void finish_dump(DumpContext&) const {}
  // Stage 1: the descriptions of the rows of this kind, in ctx.files.
  virtual void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const = 0;
  // Kinds whose descriptions can only be made once the tree exists (a task's /proc files) leave
  // some rows out of open(); their descriptors are handed to the tasks at the end (stage 4).
  virtual bool deferred() const { return false; }
  virtual UniqueFd open_late(RestoreContext&, const schema::FileRecord& f) const {
    fail(Errc::internal, "file row " + std::to_string(f.id) + " cannot be opened late");
  }
  // What of such a description is saved and restored, and what makes it refused: for
  // `crest check` and the audit.
  virtual std::vector<std::string> restored() const = 0;
  virtual std::vector<std::string> refused() const { return {}; }
};

// The table, in the order kinds are asked. Each kind's file defines its entry.
const std::vector<const FdKind*>& fd_kinds();
const FdKind& regular_kind();
const FdKind& object_kind();
const FdKind& pipe_kind();
const FdKind& chardev_kind();
const FdKind& pty_kind();
const FdKind& dev_tty_kind();
const FdKind& inherited_kind();
const FdKind& procfs_kind();
const FdKind& path_kind();
const FdKind& unsupported_kind();
const FdKind& eventfd_kind();
const FdKind& timerfd_kind();
const FdKind& signalfd_kind();
const FdKind& pidfd_kind();
const FdKind& epoll_kind();
const FdKind& inotify_kind();
const FdKind& unix_socket_kind();
const FdKind& tcp_socket_kind();
const FdKind& udp_socket_kind();
const FdKind& netlink_socket_kind();
const FdKind& mqueue_kind();
// pty.cpp: a session leader takes the slave of its pair as controlling terminal (right after
// its setsid, before it makes its children); once every process exists, the foreground group.
void acquire_controlling_tty(RestoreContext& ctx, RestoredProcess& p);
void restore_tty_foreground(RestoreContext& ctx);
// Stage 4 of epoll: the targets registered again (fds/epoll.cpp).
void restore_epoll_targets(RestoreContext& ctx);

// The kind that restores a row of the files table.
const FdKind* kind_of_row(const schema::FileRecord& f);
// Stage 0 (before open): files changed since the checkpoint (per --file-changes); memory
// objects made and filled (objects.cpp).
void check_changed_files(RestoreContext& ctx);
void create_objects(RestoreContext& ctx);
// After every mapping of every process exists: seals of memory objects (objects.cpp).
void seal_objects(RestoreContext& ctx);
// Before making a shared mapping of a memory object: its seal against writing must be in force
// for a mapping that may never be written (mw false), and not yet for one that may.
void seal_for_mapping(RestoreContext& ctx, const schema::FileRecord& f, bool may_write);
uint32_t read_seals(const std::string& path);

// Deferred kinds whose descriptions are all made at once, the first time a task asks for one
// (sockets that refer to each other, or need every task to exist): `Restore` is built from the
// context, run(), kept in ctx.kind_state, and asked for each row's description with take().
template <class Restore>
UniqueFd take_made(const FdKind* kind, RestoreContext& ctx, const schema::FileRecord& f) {
  auto& state = ctx.kind_state[kind];
  if (!state) {
    auto all = std::make_shared<Restore>(ctx);
    all->run();
    state = all;
  }
  return static_cast<Restore*>(state.get())->take(f.id);
}

// The description of a deferred kind's files row, made once (open_late) for every task that
// holds it and every message that carries it; ours, kept in ctx.late_files.
int late_description(RestoreContext& ctx, int64_t id);
// Our description of files row `id` for a message queued in flight (SCM_RIGHTS) to carry: the
// one made for the tasks that hold it (stage 1, or late_description), or for no task at all.
int in_flight_description(RestoreContext& ctx, int64_t id);

// A copy of the description made for files row `id` (of `made`), for the task that gets it.
UniqueFd dup_made(const std::map<int64_t, UniqueFd>& made, int64_t id, const std::string& what);

// Shared restore helpers.
// Makes the directories missing on the way to `path` (mode 0700, owner uid:gid): for a file of
// the job on tmpfs that its launcher removed with its directory (objects.cpp).
void make_parent_dirs(const std::string& path, uint32_t uid, uint32_t gid);
UniqueFd reopen_path(const std::string& path, uint32_t flags, const std::string& why);
void seek_to(int fd, uint64_t pos, const std::string& what);
// A path that exists for the restore of a file removed while open (a directory, a FIFO, a
// device node): made under the original name if that is free, else under a fresh name in the
// same directory; removed again by the Remover once the description is open.
class Recreated {
 public:
  Recreated(const schema::FileRecord& f, const char* what);
  ~Recreated();
  Recreated(const Recreated&) = delete;
  Recreated& operator=(const Recreated&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool dir_ = false;
};

}  // namespace crest::fds
