// epoll: every registered target, with the descriptor number it was registered under, its
// events (EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE, EPOLLWAKEUP included) and its data (fdinfo "tfd:"
// lines). A target is identified by the descriptor of that number in the process whose fdinfo
// listed it, checked with kcmp(KCMP_EPOLL_TFD); a target whose descriptor was closed (still
// registered through a dup) is refused. Restore: the instance is made in the restorer (stage 1);
// once every descriptor of every process is in place, each target is added again by a process
// holding the instance and the target under the registered number (stage 4), so the kernel's
// key (file, number) is the same. Readiness is recomputed by the kernel when a target is added,
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
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sstream>

#include "core/fds/fd_kind.h"
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
      UniqueFd pidfd = proc::open_pidfd(probe.pid);
      UniqueFd copy = pidfd ? proc::copy_fd(pidfd.get(), probe.fd) : UniqueFd();
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
    for (auto& [e, pid, epfd] : ctx.epoll_targets) {
      const pid_t rpid = ctx.recorded(pid);
      const schema::FdRecord* target = nullptr;
      const schema::FdRecord* self = nullptr;
      for (auto& fd : ctx.meta.fds) {
        if (fd.pid == rpid && fd.fd == e.tfd) target = &fd;
        if (fd.pid == rpid && fd.fd == epfd) self = &fd;
      }
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

// Stage 4: each target added again, by a process holding the epoll and the target at the
// registered number, before credentials change (EPOLLWAKEUP needs CAP_BLOCK_SUSPEND). Spent
// one-shot watches first: each is added armed for everything and fired once (an injected
// epoll_wait that can only find it, as every watch added before it is spent), which leaves it
// exactly as it was; then the others.
void restore_epoll_targets(RestoreContext& ctx) {
  for (const bool spent_pass : {true, false}) {
    for (auto& e : ctx.meta.epoll) {
      if (spent(e.events) != spent_pass) continue;
      RestoredProcess* by = nullptr;
      int epfd = -1;
      for (auto& ep : ctx.meta.fds) {
        if (ep.file_id != e.file_id || !ctx.by_pid.count(ep.pid)) continue;
        for (auto& t : ctx.meta.fds)
          if (t.pid == ep.pid && t.fd == e.tfd && t.file_id == e.target_id) {
            by = ctx.by_pid.at(ep.pid);
            epfd = ep.fd;
          }
        if (by) break;
      }
      if (!by)
        fail(Errc::corrupt, "no process holds epoll row " + std::to_string(e.file_id) +
                                " and its target as fd " + std::to_string(e.tfd));
      const std::string what = "process " + std::to_string(by->rec->pid) + ": fd " +
                               std::to_string(e.tfd) + " in epoll fd " + std::to_string(epfd);
      epoll_event ev{};
      ev.events = spent_pass ? e.events | kPollBits : e.events;
      ev.data.u64 = e.data;
      long r = by->inj->raw(SYS_epoll_ctl, static_cast<uint64_t>(epfd), EPOLL_CTL_ADD,
                            static_cast<uint64_t>(e.tfd), ctx.put(*by, &ev, sizeof ev, 3072));
      if (r < 0) throw Error(Errc::kernel, what + ": cannot register it again", static_cast<int>(-r));
      if (!spent_pass) continue;
      epoll_event got{};
      const uint64_t out = ctx.put(*by, &got, sizeof got, 3072);
      r = by->inj->raw(SYS_epoll_wait, static_cast<uint64_t>(epfd), out, 1, 0);
      if (r != 1)
        throw Error(Errc::kernel, what + ": the spent one-shot watch did not fire to be spent again"
                                  " (its file is not ready for anything now)",
                    r < 0 ? static_cast<int>(-r) : 0);
    }
  }
}

}  // namespace crest::fds
