// epoll: every registered target, with the descriptor number it was registered under, its
// events (EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE, EPOLLWAKEUP included) and its data (fdinfo "tfd:"
// lines). A target is identified by the descriptor of that number in the process whose fdinfo
// listed it, checked with kcmp(KCMP_EPOLL_TFD); a target whose descriptor was closed (still
// registered through a dup) is refused. Restore: the instance is made in the restorer (stage 1);
// once every descriptor of every process is in place, each target is added again under the
// registered number (stage 4), so the kernel's key (file, number) is the same: from a thread of
// the restorer with a descriptor table of its own, or by the process itself (an injected call)
// where that cannot be. Readiness is recomputed by the kernel when a target is added,
// which is exact except for one case: an edge-triggered target that is ready may or may not have
// been reported already, and nothing shows which without taking the event from the job. Such a
// target is refused (a checkpoint a moment later, once the job has drained it, goes through).
// A one-shot watch that fired is left spent: it reports nothing until EPOLL_CTL_MOD, not even
// EPOLLERR | EPOLLHUP; restore makes it fire once more to get there (its target must be ready).
// Busy-polling parameters (EPIOCSPARAMS) other than the defaults are refused.
// Dump and restore side by side.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <map>
#include <sstream>
#include <thread>
#include <vector>

#include "core/fds/fd_kind.h"
#include "core/kernel/features.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/proc.h"

namespace crest::fds {
namespace {

struct KcmpEpollSlot {
  uint32_t efd, tfd, toff;
};

// linux/eventpoll.h of Linux 6.9 (newer than the build's headers): busy-polling parameters.
struct EpollParams {
  uint32_t busy_poll_usecs;
  uint16_t busy_poll_budget;
  uint8_t prefer_busy_poll;
  uint8_t pad;
};
constexpr unsigned long kEpiocGparams = _IOR(0x8A, 0x02, EpollParams);

constexpr uint32_t kPollBits = EPOLLIN | EPOLLOUT | EPOLLPRI | EPOLLERR | EPOLLHUP | EPOLLRDHUP |
                               EPOLLRDNORM | EPOLLRDBAND | EPOLLWRNORM | EPOLLWRBAND | EPOLLMSG;

// A one-shot watch that fired keeps only these bits (the kernel's EP_PRIVATE_BITS): it reports
// nothing, not even the EPOLLERR | EPOLLHUP that every EPOLL_CTL_ADD adds.
bool spent(uint32_t events) { return (events & EPOLLONESHOT) && !(events & kPollBits); }

// Whether the target is ready for any of `bits` now (polled through our own copy of it);
// -1 if there is no copy to poll.
int ready_for(pid_t pid, int tfd, uint32_t bits) {
  UniqueFd pidfd = proc::open_pidfd(pid);
  UniqueFd copy = pidfd ? proc::copy_fd(pidfd.get(), tfd) : UniqueFd();
  if (!copy) return -1;
  pollfd p{copy.get(), static_cast<short>(bits), 0};
  return ::poll(&p, 1, 0) > 0 ? 1 : 0;
}

class EpollKind : public FdKind {
 public:
  const char* name() const override { return "epoll"; }
  bool claims(const FdProbe& p) const override { return p.link == "anon_inode:[eventpoll]"; }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::epoll);
    {
      UniqueFd copy = proc::copy_fd(probe.pidfd, probe.fd);
      EpollParams params{};
      if (copy && ::ioctl(copy.get(), kEpiocGparams, &params) == 0 &&
          (params.busy_poll_usecs || params.busy_poll_budget || params.prefer_busy_poll)) {
        ctx.refuse(probe.where + ": an epoll with busy polling set (EPIOCSPARAMS); not supported");
        return false;
      }
    }
    // The targets: "tfd: 5 events: 80000019 data: 1122 pos:0 ino:12 sdev:10", resolved once
    // every descriptor of the tree is known (finish_dump).
    std::istringstream in(fs::read_file(proc::path(probe.pid, "fdinfo/" + std::to_string(probe.fd))));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("tfd:", 0) != 0) continue;
      std::istringstream f(line);
      std::string k1, k2, k3, events, data;
      int tfd = -1;
      f >> k1 >> tfd >> k2 >> events >> k3 >> data;
      schema::EpollRecord e;
      e.tfd = tfd;
      e.events = static_cast<uint32_t>(std::stoul(events, nullptr, 16));
      e.data = std::stoull(data, nullptr, 16);
      e.target_id = -1;
      ctx.epoll_targets.push_back({e, probe.pid, probe.fd});
    }
    return true;
  }
  void finish_dump(DumpContext& ctx) const override {
    if (ctx.epoll_targets.empty()) return;
    std::map<std::pair<pid_t, int>, const schema::FdRecord*> at;  // (recorded pid, fd)
    for (auto& fd : ctx.meta.fds) at[{fd.pid, fd.fd}] = &fd;
    auto find = [&](pid_t rpid, int fd) -> const schema::FdRecord* {
      auto it = at.find({rpid, fd});
      return it == at.end() ? nullptr : it->second;
    };
    for (auto& [e, pid, epfd] : ctx.epoll_targets) {
      const pid_t rpid = ctx.recorded(pid);
      const schema::FdRecord* target = find(rpid, e.tfd);
      const schema::FdRecord* self = find(rpid, epfd);
      if (!self) continue;  // the epoll itself was refused
      KcmpEpollSlot slot{static_cast<uint32_t>(epfd), static_cast<uint32_t>(e.tfd), 0};
      if (!target || ::syscall(SYS_kcmp, pid, pid, KCMP_EPOLL_TFD, e.tfd, &slot) != 0) {
        ctx.refuse("process " + std::to_string(pid) + ": fd " + std::to_string(epfd) +
                   " (epoll) watches a file registered as fd " + std::to_string(e.tfd) +
                   ", which is closed or now another file (the target lives on through a dup); "
                   "not supported");
        continue;
      }
      const std::string watch = "process " + std::to_string(pid) + ": fd " + std::to_string(epfd) +
                                " (epoll) watches fd " + std::to_string(e.tfd);
      if ((e.events & EPOLLET) && !spent(e.events) && ready_for(pid, e.tfd, e.events & kPollBits)) {
        ctx.refuse(watch + " edge-triggered, and it is ready: whether the job was told already "
                   "cannot be seen without taking the event (try again once the job has drained it)");
        continue;
      }
      // A spent one-shot watch is made again by letting it fire once more at restore, which
      // needs a target that is ready for something and is not itself an epoll.
      if (spent(e.events) && (static_cast<schema::FileKind>(ctx.meta.files[static_cast<size_t>(target->file_id)].kind) ==
                                  schema::FileKind::epoll ||
                              ready_for(pid, e.tfd, kPollBits) != 1)) {
        ctx.refuse(watch + " one-shot, spent, and it is not ready for anything (or is an epoll): "
                   "crest cannot make it spent again");
        continue;
      }
      auto rec = e;
      rec.file_id = self->file_id;
      rec.target_id = target->file_id;
      ctx.meta.epoll.push_back(rec);
    }
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      UniqueFd fd(::epoll_create1(EPOLL_CLOEXEC));
      if (!fd) throw_errno("epoll_create1", errno, Errc::kernel);
      if (::fcntl(fd.get(), F_SETFL, static_cast<int>(f->flags & ~O_ASYNC)) != 0)
        throw_errno("cannot set an epoll's flags", errno, Errc::kernel);
      ctx.files[f->id] = std::move(fd);
    }
  }
  std::vector<std::string> restored() const override {
    return {"every target with its registered number, events (EPOLLET, EPOLLONESHOT, "
            "EPOLLEXCLUSIVE, EPOLLWAKEUP) and data", "spent one-shot watches, spent",
            "targets that are epolls themselves", "O_NONBLOCK"};
  }
  std::vector<std::string> refused() const override {
    return {"a target whose registered descriptor was closed (alive through a dup)",
            "an edge-triggered target that is ready at the dump",
            "a spent one-shot watch whose file is not ready for anything, or is an epoll",
            "busy polling (EPIOCSPARAMS)"};
  }
};

}  // namespace

const FdKind& epoll_kind() {
  static const EpollKind kind;
  return kind;
}

namespace {

// One watch to add again: by the restored process `by`, which holds the instance at `epfd`
// and the target at the registered number.
struct Watch {
  const schema::EpollRecord* e;
  RestoredProcess* by;
  int epfd;
  std::string what() const {
    return "process " + std::to_string(by->rec->pid) + ": fd " + std::to_string(e->tfd) +
           " in epoll fd " + std::to_string(epfd);
  }
};

epoll_event armed(const Watch& w, bool spent_pass) {
  epoll_event ev{};
  ev.events = spent_pass ? w.e->events | kPollBits : w.e->events;
  ev.data.u64 = w.e->data;
  return ev;
}

// Adds a watch by injecting epoll_ctl (and epoll_wait, for a spent one) into its process.
void add_injected(RestoreContext& ctx, const Watch& w, bool spent_pass) {
  epoll_event ev = armed(w, spent_pass);
  long r = w.by->inj->raw(SYS_epoll_ctl, static_cast<uint64_t>(w.epfd), EPOLL_CTL_ADD,
                          static_cast<uint64_t>(w.e->tfd), ctx.put(*w.by, &ev, sizeof ev, 3072));
  if (r < 0) throw Error(Errc::kernel, w.what() + ": cannot register it again", static_cast<int>(-r));
  if (!spent_pass) return;
  epoll_event got{};
  const uint64_t out = ctx.put(*w.by, &got, sizeof got, 3072);
  r = w.by->inj->raw(SYS_epoll_wait, static_cast<uint64_t>(w.epfd), out, 1, 0);
  if (r != 1)
    throw Error(Errc::kernel, w.what() + ": the spent one-shot watch did not fire to be spent again"
                              " (its file is not ready for anything now)",
                r < 0 ? static_cast<int>(-r) : 0);
}

// Adds watches from here instead, about fifty times cheaper than an injected call: the kernel
// keys a watch by (file, number) and does not look at whose table the number is in, so a thread
// of ours with a private descriptor table puts a copy of the target at the registered number
// and registers it on a copy of the instance. Our own descriptors (copies of the instances and
// the processes' pidfds) are kept above every registered number. False, before anything is
// done, when that cannot be (a registered number beyond our descriptor limit).
bool add_here(const std::vector<Watch>& watches, size_t nspent) {
  // Its copies come from pidfd_getfd in a thread that is not the tracer: without pidfd_getfd,
  // which hands descriptors over by injection from the tracer, each watch is injected instead.
  if (!kernel::have(kernel::Iface::pidfd_getfd)) return false;
  int high = 0;
  for (auto& w : watches) high = std::max(high, w.e->tfd + 1);
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0 ||
      nofile.rlim_cur < static_cast<rlim_t>(high) + 2 * watches.size() + 64)
    return false;
  bool placed = true;
  std::exception_ptr failed;
  std::thread([&] {
    try {
      if (::unshare(CLONE_FILES) != 0) {
        placed = false;
        return;
      }
      auto lift = [&](UniqueFd fd, const std::string& what) {
        if (!fd) throw_errno(what, errno, Errc::kernel);
        if (fd.get() >= high) return fd;
        UniqueFd up(::fcntl(fd.get(), F_DUPFD_CLOEXEC, high));
        if (!up) throw_errno(what + " (moving it above fd " + std::to_string(high) + ")", errno, Errc::kernel);
        return up;
      };
      std::map<pid_t, UniqueFd> pidfds;
      std::map<std::pair<pid_t, int>, UniqueFd> instances;
      for (size_t i = 0; i < watches.size(); ++i) {
        const Watch& w = watches[i];
        const pid_t pid = w.by->pid;
        UniqueFd& pidfd = pidfds[pid];
        if (!pidfd) pidfd = lift(proc::open_pidfd(pid), "pidfd of process " + std::to_string(pid));
        UniqueFd& ep = instances[{pid, w.epfd}];
        if (!ep) ep = lift(proc::copy_fd(pidfd.get(), w.epfd), w.what() + ": taking the epoll");
        UniqueFd target = proc::copy_fd(pidfd.get(), w.e->tfd);
        if (!target) throw_errno(w.what() + ": taking the target", errno, Errc::kernel);
        if (target.get() != w.e->tfd && ::dup3(target.get(), w.e->tfd, O_CLOEXEC) < 0)
          throw_errno(w.what() + ": placing the target at its number", errno, Errc::kernel);
        const bool spent_pass = i < nspent;
        epoll_event ev = armed(w, spent_pass);
        if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, w.e->tfd, &ev) != 0)
          throw_errno(w.what() + ": cannot register it again", errno, Errc::kernel);
        if (!spent_pass) continue;
        epoll_event got{};
        const int r = ::epoll_wait(ep.get(), &got, 1, 0);
        if (r != 1)
          throw Error(Errc::kernel, w.what() + ": the spent one-shot watch did not fire to be spent "
                                    "again (its file is not ready for anything now)",
                      r < 0 ? errno : 0);
      }
    } catch (...) {
      failed = std::current_exception();
    }
  }).join();  // the private table, and every copy in it, goes with the thread
  if (failed) std::rethrow_exception(failed);
  return placed;
}

}  // namespace

// Stage 4: each target added again, under the registered number, once every process holds its
// descriptors. Spent one-shot watches first: each is added armed for everything and fired once
// (an epoll_wait that can only find it, as every watch added before it is spent), which leaves it
// exactly as it was; then the others.
void restore_epoll_targets(RestoreContext& ctx) {
  if (ctx.meta.epoll.empty()) return;
  std::map<std::pair<pid_t, int>, int64_t> at;                    // (pid, fd) -> files row
  std::map<int64_t, std::vector<const schema::FdRecord*>> holders;  // files row -> its fds
  for (auto& fd : ctx.meta.fds) {
    at[{fd.pid, fd.fd}] = fd.file_id;
    holders[fd.file_id].push_back(&fd);
  }
  std::vector<Watch> watches;
  size_t nspent = 0;
  for (const bool spent_pass : {true, false}) {
    for (auto& e : ctx.meta.epoll) {
      if (spent(e.events) != spent_pass) continue;
      const Watch* found = nullptr;
      for (const schema::FdRecord* ep : holders[e.file_id]) {
        auto by = ctx.by_pid.find(ep->pid);
        auto t = at.find({ep->pid, e.tfd});
        if (by == ctx.by_pid.end() || t == at.end() || t->second != e.target_id) continue;
        watches.push_back({&e, by->second, ep->fd});
        found = &watches.back();
        break;
      }
      if (!found)
        fail(Errc::corrupt, "no process holds epoll row " + std::to_string(e.file_id) +
                                " and its target as fd " + std::to_string(e.tfd));
      if (spent_pass) ++nspent;
    }
  }
  if (add_here(watches, nspent)) return;
  for (size_t i = 0; i < watches.size(); ++i) add_injected(ctx, watches[i], i < nspent);
}

}  // namespace crest::fds
