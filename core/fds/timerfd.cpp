// timerfd: clock, interval, time left, expirations not read yet, and the settime flags (fdinfo).
// A periodic timer that expired is not moved on by the kernel until someone reads it or asks for
// its time: fdinfo then says 1 expiration and no time left. The dump asks (timerfd_gettime on its
// own copy of the descriptor, which counts the missed periods exactly as a read would, without
// consuming them) before it reads fdinfo.
// Made again in the restorer. A timer armed relative to now gets the time that was left (a timer
// does not run while its job is checkpointed). One armed at an absolute time (TFD_TIMER_ABSTIME)
// stays absolute: on the real-time clocks it keeps its deadline, whatever the wall clock says by
// then (it fires at once if that has passed); on the others it is as far away as it was. Unread
// expirations are set with TFD_IOC_SET_TICKS. Dump and restore side by side.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "core/fds/fd_kind.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

// linux/timerfd.h (whose other definitions clash with glibc's): set a timerfd's expirations.
constexpr unsigned long kTfdIocSetTicks = _IOW('T', 0, uint64_t);

// "(4, 996950801)" -> nanoseconds
bool parse_pair(const std::string& text, int64_t& ns) {
  long long sec = 0, nsec = 0;
  if (std::sscanf(text.c_str(), " ( %lld , %lld )", &sec, &nsec) != 2) return false;
  ns = sec * 1000000000ll + nsec;
  return true;
}

timespec ts(int64_t ns) {
  return {static_cast<time_t>(ns / 1000000000ll), static_cast<long>(ns % 1000000000ll)};
}

int64_t now_ns(clockid_t clock) {
  timespec now{};
  ::clock_gettime(clock, &now);
  return now.tv_sec * 1000000000ll + now.tv_nsec;
}

// An absolute deadline on these clocks is a moment of wall-clock time, kept as such.
bool wall_clock(int clock) { return clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_ALARM; }

class TimerfdKind : public FdKind {
 public:
  const char* name() const override { return "timerfd"; }
  bool claims(const FdProbe& p) const override { return p.link == "anon_inode:[timerfd]"; }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::timerfd);
    // Bring a periodic timer's count up to date, then read fdinfo as it now is.
    UniqueFd copy = proc::copy_fd(probe.pidfd, probe.fd);
    itimerspec cur{};
    if (!copy || ::timerfd_gettime(copy.get(), &cur) != 0) {
      ctx.refuse(probe.where + ": cannot read the timerfd's time left (" + std::strerror(errno) + ")");
      return false;
    }
    std::vector<std::string> no_locks;
    const auto info = read_fdinfo(probe.pid, probe.fd, no_locks);
    auto get = [&](const char* key) {
      auto it = info.find(key);
      return it == info.end() ? std::string() : it->second;
    };
    int64_t value = 0, interval = 0;
    if (get("clockid").empty() || !parse_pair(get("it_value"), value) ||
        !parse_pair(get("it_interval"), interval)) {
      ctx.refuse(probe.where + ": a timerfd whose fdinfo crest cannot read");
      return false;
    }
    rec.clock = std::stoi(get("clockid"));
    rec.count = std::stoull(get("ticks").empty() ? "0" : get("ticks"));
    rec.kind_flags = static_cast<uint32_t>(
        std::stoul(get("settime flags").empty() ? "0" : get("settime flags"), nullptr, 8));
    // A clock change marks such a timer cancelled (its next read fails with ECANCELED) and
    // counts an expiration; nothing shows which of the two an expiration is.
    if ((rec.kind_flags & TFD_TIMER_CANCEL_ON_SET) && rec.count != 0) {
      ctx.refuse(probe.where + ": a TFD_TIMER_CANCEL_ON_SET timerfd with an expiration not read "
                 "(crest cannot tell whether a clock change cancelled it)");
      return false;
    }
    rec.interval_ns = interval;
    rec.value_ns = value;
    // schema: value_ns is the absolute deadline for an absolute timer on a wall clock
    if (value != 0 && (rec.kind_flags & TFD_TIMER_ABSTIME) && wall_clock(rec.clock))
      rec.value_ns = now_ns(rec.clock) + value;
    return true;
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      UniqueFd fd(::timerfd_create(f->clock, TFD_CLOEXEC));
      if (!fd) throw_errno("timerfd_create on clock " + std::to_string(f->clock), errno, Errc::kernel);
      if (f->value_ns != 0) {
        itimerspec its{ts(f->interval_ns), ts(f->value_ns)};
        const int flags = static_cast<int>(f->kind_flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET));
        if ((flags & TFD_TIMER_ABSTIME) && !wall_clock(f->clock))
          its.it_value = ts(now_ns(f->clock) + f->value_ns);
        if (::timerfd_settime(fd.get(), flags, &its, nullptr) != 0)
          throw_errno("timerfd_settime", errno, Errc::kernel);
      } else if (f->kind_flags != 0) {
        // Disarmed (or fired once) after being armed with flags: fdinfo still shows them.
        itimerspec zero{};
        if (::timerfd_settime(fd.get(), static_cast<int>(f->kind_flags), &zero, nullptr) != 0)
          throw_errno("timerfd_settime (settime flags only)", errno, Errc::kernel);
      }
      if (f->count != 0) {
        uint64_t ticks = f->count;
        if (::ioctl(fd.get(), kTfdIocSetTicks, &ticks) != 0)
          throw_errno("cannot give a timerfd its " + std::to_string(ticks) + " unread expirations",
                      errno, Errc::kernel);
      }
      if (::fcntl(fd.get(), F_SETFL, static_cast<int>(f->flags & ~O_ASYNC)) != 0)
        throw_errno("cannot set a timerfd's flags", errno, Errc::kernel);
      ctx.files[f->id] = std::move(fd);
    }
  }
  std::vector<std::string> restored() const override {
    return {"clock", "interval",
            "time left (absolute deadlines on the real-time clocks are kept as such)",
            "expirations not read, counting periods missed before the dump",
            "settime flags (TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET)", "O_NONBLOCK",
            "owner, F_SETSIG, O_ASYNC"};
  }
  std::vector<std::string> refused() const override {
    return {"a TFD_TIMER_CANCEL_ON_SET timer with an expiration not read"};
  }
};

}  // namespace

const FdKind& timerfd_kind() {
  static const TimerfdKind kind;
  return kind;
}

}  // namespace crest::fds
