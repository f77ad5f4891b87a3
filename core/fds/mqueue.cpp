// POSIX message queues (mq_open). Dump and restore side by side.
//
// Dump: the queue's name (or that it was removed while open), its owner and mode, mq_maxmsg and
// mq_msgsize, and its messages with their priorities, once per queue however many descriptions
// refer to it. A message queue cannot be read without taking its messages, so they are taken in
// mq_receive order (highest priority first, oldest first within one) through a description of
// crest's own, and sent back at once in the same order, which makes the same queue again; the
// tree is frozen meanwhile, so none of its tasks waits in the queue to catch one. A registered
// notification (mq_notify) is refused: its signal value cannot be read, and taking the messages
// would fire it.
//
// Restore (the restorer makes each queue, then opens each description): a queue of the job's
// own that still holds the name (same inode as at the dump: queues outlive their processes) is
// replaced; a queue the job never had holding the name refuses the restore. The queue is made
// with its size limits, given its owner and mode, filled in order, and each description opened
// with its access mode and O_NONBLOCK; a queue removed while open is made under a fresh name
// and removed again.
#include <fcntl.h>
#include <mqueue.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <set>

#include "core/fds/fd_kind.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

constexpr long kMqueueMagic = 0x19800202;

// The queues whose messages this dump has already taken, by inode.
struct DumpedQueues {
  std::set<uint64_t> inos;
};

const timespec kNow{0, 0};  // an absolute time long past: mq_timed* never wait

class MqueueKind : public FdKind {
 public:
  const char* name() const override { return "POSIX message queue"; }
  bool claims(const FdProbe& p) const override {
    return S_ISREG(p.st.st_mode) && fs_magic(p) == kMqueueMagic;
  }

  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::mqueue);
    if (strip_deleted(rec.path)) rec.deleted = 1;
    const std::string where = probe.where + " (POSIX message queue " + rec.path + ")";
    // A description of our own that may read and write, whatever the job's may.
    UniqueFd q(::open(probe.fd_path.c_str(), O_RDWR | O_CLOEXEC));
    if (!q) {
      ctx.refuse(where + ": cannot open it to read its messages: " + std::strerror(errno));
      return false;
    }
    mq_attr a{};
    if (::mq_getattr(q.get(), &a) != 0) {
      ctx.refuse(where + ": mq_getattr: " + std::strerror(errno));
      return false;
    }
    rec.count = static_cast<uint64_t>(a.mq_maxmsg);
    rec.size = static_cast<uint64_t>(a.mq_msgsize);
    // read() of a queue gives "QSIZE:... NOTIFY:... SIGNO:... NOTIFY_PID:...".
    char status[160] = {};
    ssize_t n = ::pread(q.get(), status, sizeof status - 1, 0);
    const char* pid_at = n > 0 ? std::strstr(status, "NOTIFY_PID:") : nullptr;
    if (!pid_at) {
      ctx.refuse(where + ": cannot read its status");
      return false;
    }
    if (std::atoi(pid_at + 11) != 0) {
      ctx.refuse(where + ": a process registered for notification (mq_notify; " +
                 std::string(status, static_cast<size_t>(n)).substr(0, std::strcspn(status, "\n")) +
                 "); not supported (its signal value cannot be read)");
      return false;
    }
    auto& state = ctx.kind_state[this];
    if (!state) state = std::make_shared<DumpedQueues>();
    auto& dumped = static_cast<DumpedQueues*>(state.get())->inos;
    if (!dumped.insert(probe.st.st_ino).second) return true;
    return take_messages(ctx, where, q.get(), a, probe.st.st_ino);
  }

  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    std::map<uint64_t, std::vector<const schema::FileRecord*>> queues;
    for (const auto* f : rows) queues[f->ino].push_back(f);
    for (auto& [ino, descs] : queues) make_queue(ctx, ino, descs);
  }

  std::vector<std::string> restored() const override {
    return {"the name (or a queue removed while open)", "mq_maxmsg and mq_msgsize",
            "every message with its priority, in order",
            "owner and mode", "each description's access mode and O_NONBLOCK",
            "descriptions shared by several descriptors or processes"};
  }
  std::vector<std::string> refused() const override {
    return {"a registered notification (mq_notify)",
            "a name held at restore by a queue the job did not have"};
  }

 private:
  // Takes every message in order and sends each back at once (see the file comment).
  static bool take_messages(DumpContext& ctx, const std::string& where, int q, const mq_attr& a,
                            uint64_t ino) {
    std::vector<schema::MqMessageRecord> msgs;
    std::vector<char> buf(static_cast<size_t>(a.mq_msgsize) + 1);
    for (;;) {
      unsigned prio = 0;
      ssize_t len = ::mq_timedreceive(q, buf.data(), buf.size(), &prio, &kNow);
      if (len < 0) {
        if (errno == EINTR) continue;
        if (errno == ETIMEDOUT || errno == EAGAIN) break;
        put_back(where, q, msgs);
        ctx.refuse(where + ": mq_receive: " + std::strerror(errno));
        return false;
      }
      schema::MqMessageRecord m;
      m.ino = ino;
      m.seq = static_cast<uint32_t>(msgs.size());
      m.priority = prio;
      m.data.assign(buf.begin(), buf.begin() + len);
      msgs.push_back(std::move(m));
    }
    put_back(where, q, msgs);
    for (auto& m : msgs) ctx.meta.mq_messages.push_back(std::move(m));
    return true;
  }

  static void put_back(const std::string& where, int q, const std::vector<schema::MqMessageRecord>& msgs) {
    for (auto& m : msgs) send(q, m, where + ": putting back the messages crest took to read them");
  }

  static void send(int q, const schema::MqMessageRecord& m, const std::string& what) {
    int r;
    do {
      r = ::mq_timedsend(q, reinterpret_cast<const char*>(m.data.data()), m.data.size(), m.priority, &kNow);
    } while (r != 0 && errno == EINTR);
    if (r != 0) throw_errno(what + " (message " + std::to_string(m.seq) + ")", errno, Errc::kernel);
  }

  static void make_queue(RestoreContext& ctx, uint64_t ino, const std::vector<const schema::FileRecord*>& descs) {
    const schema::FileRecord& f = *descs.front();
    const std::string what = "POSIX message queue " + f.path;
    if (f.path.size() < 2 || f.path[0] != '/' || f.path.find('/', 1) != std::string::npos)
      fail(Errc::corrupt, what + ": not a queue name");
    std::string name = f.path;
    if (f.deleted) {
      name = "/crest-" + std::to_string(::getpid()) + "-" + std::to_string(ino);
    } else {
      UniqueFd old(::mq_open(name.c_str(), O_RDONLY | O_CLOEXEC));
      if (old) {
        struct stat st {};
        if (::fstat(old.get(), &st) != 0 || st.st_ino != ino)
          fail(Errc::refused, what + ": another queue holds the name now (the job's was inode " +
                                  std::to_string(ino) + "); remove it (mq_unlink) to restore");
        if (::mq_unlink(name.c_str()) != 0) throw_errno(what + ": removing the job's old queue", errno, Errc::kernel);
      }
    }
    mq_attr a{};
    a.mq_maxmsg = static_cast<long>(f.count);
    a.mq_msgsize = static_cast<long>(f.size);
    const mode_t mask = ::umask(0);
    UniqueFd q(::mq_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, f.mode & 07777, &a));
    const int err = errno;
    ::umask(mask);
    if (!q) throw_errno(what + ": mq_open", err, Errc::kernel);
    struct Unlink {
      const std::string& n;
      bool on;
      ~Unlink() {
        if (on) ::mq_unlink(n.c_str());
      }
    } unlink_after{name, f.deleted != 0};
    if (::fchown(q.get(), f.uid, f.gid) != 0) throw_errno(what + ": fchown", errno, Errc::kernel);
    std::vector<const schema::MqMessageRecord*> msgs;
    for (auto& m : ctx.meta.mq_messages)
      if (m.ino == ino) msgs.push_back(&m);
    std::sort(msgs.begin(), msgs.end(), [](auto* x, auto* y) { return x->seq < y->seq; });
    for (auto* m : msgs) send(q.get(), *m, what + ": sending its messages again");
    for (const auto* d : descs) {
      const int flags = static_cast<int>(d->flags & (O_ACCMODE | O_NONBLOCK));
      UniqueFd desc(::mq_open(name.c_str(), flags | O_CLOEXEC));
      if (!desc) throw_errno(what + ": opening a description of it", errno, Errc::kernel);
      ctx.files[d->id] = std::move(desc);
    }
  }
};

}  // namespace

const FdKind& mqueue_kind() {
  static const MqueueKind kind;
  return kind;
}

}  // namespace crest::fds
