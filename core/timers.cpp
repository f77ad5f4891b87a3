// POSIX timers (timer_create): id, clock, how they notify (signal to the process or a thread,
// or nothing), the signal and its value, interval and time left. Dump and restore side by side.
//
// Dump: /proc/PID/timers lists every timer; timer_gettime and timer_getoverrun injected in the
// task give its state. Restore: the timers are made again in the task with the ids the program
// holds (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.13; before it, ids are handed out in order and
// holes are filled and freed again), then armed with the time that was left. A signal a timer
// had queued is in the signals table and queued again with its overrun count (si_overrun);
// timer_getoverrun() after the restore counts from there.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <sstream>

#include "core/context.h"
#include "core/inject.h"
#include "core/kernel/compat.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace crest {
namespace {

int64_t ns_of(const timespec& t) { return t.tv_sec * 1000000000ll + t.tv_nsec; }
timespec ts_of(int64_t ns) { return {static_cast<time_t>(ns / 1000000000ll), static_cast<long>(ns % 1000000000ll)}; }

// The pid or tid a CPU-time clock id names (0: the calling process or thread itself).
pid_t cpu_clock_owner(int32_t clock) { return static_cast<pid_t>(~(clock >> 3)); }

}  // namespace

void dump_timers(DumpContext& ctx, const ptrace::FrozenProcess& p, Injector& inj, uint64_t scratch) {
  const std::string who = "process " + std::to_string(p.pid);
  std::istringstream in(fs::read_file(proc::path(p.pid, "timers")));
  std::string line;
  std::vector<schema::TimerRecord> timers;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon), value = line.substr(colon + 2);
    if (key == "ID") {
      timers.emplace_back();
      timers.back().pid = ctx.recorded(p.pid);
      timers.back().id = std::stoi(value);
      continue;
    }
    if (timers.empty()) continue;
    auto& t = timers.back();
    if (key == "signal") {  // "34/00000000deadbeef"
      t.signo = std::stoi(value.substr(0, value.find('/')));
      t.sigval = std::stoull(value.substr(value.find('/') + 1), nullptr, 16);
    } else if (key == "notify") {  // "signal/tid.4177", "signal/pid.4177", "none/pid.4177"
      const std::string how = value.substr(0, value.find('/'));
      const bool thread = value.find("/tid.") != std::string::npos;
      t.notify = how == "none" ? SIGEV_NONE : SIGEV_SIGNAL;
      if (thread) {
        t.notify |= SIGEV_THREAD_ID;
        pid_t tid = static_cast<pid_t>(std::stol(value.substr(value.find('.') + 1)));
        t.notify_tid = ctx.recorded(tid);
        if (t.notify_tid == 0)
          ctx.refuse(who + ": POSIX timer " + std::to_string(t.id) + " signals thread " +
                     std::to_string(tid) + ", which is not in the tree");
      }
    } else if (key == "ClockID") {
      t.clock = std::stoi(value);
    }
  }
  for (auto& t : timers) {
    if (t.clock < 0 && cpu_clock_owner(t.clock) != 0 &&
        ctx.tree.processes().size() > 0 && ctx.recorded(cpu_clock_owner(t.clock)) == 0)
      ctx.refuse(who + ": POSIX timer " + std::to_string(t.id) + " measures the CPU time of task " +
                 std::to_string(cpu_clock_owner(t.clock)) + ", which is not in the tree");
    itimerspec its{};
    inj.call("timer_gettime", SYS_timer_gettime, static_cast<uint64_t>(t.id), scratch);
    remote_read(p.pid, scratch, &its, sizeof its);
    t.interval_ns = ns_of(its.it_interval);
    t.value_ns = ns_of(its.it_value);
    t.overrun = static_cast<int32_t>(inj.call("timer_getoverrun", SYS_timer_getoverrun, static_cast<uint64_t>(t.id)));
    ctx.meta.timers.push_back(t);
  }
}

void restore_timers(RestoreContext& ctx, RestoredProcess& p) {
  std::vector<const schema::TimerRecord*> mine = ctx.rows_of(ctx.meta.timers, p.rec->pid);
  if (mine.empty()) return;
  std::sort(mine.begin(), mine.end(), [](auto* a, auto* b) { return a->id < b->id; });
  Injector& inj = *p.inj;
  const std::string who = "process " + std::to_string(p.rec->pid);
  const uint64_t sev_at = p.scratch + 3072, id_at = p.scratch + 3072 + 128;
  auto create = [&](const schema::TimerRecord& t, int32_t want) -> int32_t {
    sigevent sev{};
    sev.sigev_value.sival_ptr = reinterpret_cast<void*>(t.sigval);
    sev.sigev_signo = t.signo;
    sev.sigev_notify = t.notify;
    sev._sigev_un._tid = t.notify_tid;
    remote_write(p.pid, sev_at, &sev, sizeof sev);
    int32_t id = want;
    remote_write(p.pid, id_at, &id, sizeof id);
    inj.call("timer_create", SYS_timer_create, static_cast<uint64_t>(static_cast<int64_t>(t.clock)),
             sev_at, id_at);
    remote_read(p.pid, id_at, &id, sizeof id);
    return id;
  };
  const bool by_id =
      inj.raw(SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0) == 0;
  std::vector<int32_t> fillers;
  for (auto* t : mine) {
    int32_t got = create(*t, t->id);
    // Without ids to ask for, the kernel hands them out in order: fill the holes, free them after.
    while (!by_id && got < t->id) {
      fillers.push_back(got);
      got = create(*t, t->id);
    }
    if (got != t->id)
      fail(Errc::kernel, who + ": POSIX timer " + std::to_string(t->id) + " came back as " +
                             std::to_string(got));
  }
  if (by_id)
    inj.call("prctl(PR_TIMER_CREATE_RESTORE_IDS)", SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS,
             PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0);
  for (int32_t id : fillers) inj.call("timer_delete", SYS_timer_delete, static_cast<uint64_t>(id));
}

// Arms the timers with the time that was left, as the last thing before the process runs (what
// fires earlier belongs to the restore's own time; task.cpp calls it once signals are queued).
void arm_timers(RestoreContext& ctx, RestoredProcess& p) {
  for (auto* tp : ctx.rows_of(ctx.meta.timers, p.rec->pid)) {
    const schema::TimerRecord& t = *tp;
    if (t.value_ns == 0) continue;  // disarmed
    itimerspec its{ts_of(t.interval_ns), ts_of(t.value_ns)};
    p.inj->call("timer_settime", SYS_timer_settime, static_cast<uint64_t>(t.id), 0,
                ctx.put(p, &its, sizeof its, 3072), 0);
  }
  const auto& r = *p.rec;
  for (int which = 0; which < 3 && r.itimers.size() >= 12; ++which) {
    itimerval it{};
    it.it_interval.tv_sec = static_cast<time_t>(r.itimers[which * 4]);
    it.it_interval.tv_usec = static_cast<suseconds_t>(r.itimers[which * 4 + 1]);
    it.it_value.tv_sec = static_cast<time_t>(r.itimers[which * 4 + 2]);
    it.it_value.tv_usec = static_cast<suseconds_t>(r.itimers[which * 4 + 3]);
    // A periodic ITIMER_REAL that fired while its SIGALRM is still pending reads as value 0:
    // the kernel re-arms it only when the signal is taken. Armed to fire at once, it sends a
    // SIGALRM that merges with the one queued again above, and is left in that same state once
    // it has fired (waited for here, while no thread can take the signal: a SIGALRM of its own
    // after the queued one was taken would be one alarm too many).
    const bool fired = which == ITIMER_REAL && !it.it_value.tv_sec && !it.it_value.tv_usec &&
                       (it.it_interval.tv_sec || it.it_interval.tv_usec);
    if (fired) it.it_value.tv_usec = 1;
    if (it.it_value.tv_sec || it.it_value.tv_usec)
      p.inj->call("setitimer", SYS_setitimer, static_cast<uint64_t>(which),
                  ctx.put(p, &it, sizeof it, 3072), 0);
    for (int spins = 0; fired; ++spins) {
      itimerval now{};
      const uint64_t at = ctx.put(p, &now, sizeof now, 3072);
      p.inj->call("getitimer", SYS_getitimer, ITIMER_REAL, at);
      remote_read(p.pid, at, &now, sizeof now);
      if (!now.it_value.tv_sec && !now.it_value.tv_usec) break;
      if (spins > 10000) fail(Errc::kernel, "process " + std::to_string(r.pid) + ": its ITIMER_REAL did not fire");
      ::usleep(10);
    }
  }
}

}  // namespace crest
