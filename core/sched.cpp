// Scheduling of each thread: policy (with SCHED_RESET_ON_FORK), nice, real-time priority,
// deadline parameters, utilization clamps, CPU affinity and I/O priority. Read and set from
// crest itself (root may, for any task); set last, once every process and thread exists, so
// that a real-time or idle policy does not make the restore itself wait. Dump and restore side
// by side.
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "core/context.h"
#include "core/util/error.h"

namespace crest {
namespace {

struct SchedAttr {  // struct sched_attr (Linux 4.13 layout, with utilization clamps)
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime, sched_deadline, sched_period;
  uint32_t sched_util_min, sched_util_max;
};
constexpr uint64_t kSchedFlagKeepAll = 0x08 | 0x10;        // KEEP_POLICY | KEEP_PARAMS
constexpr uint64_t kSchedFlagUtilClamp = 0x20 | 0x40;      // UTIL_CLAMP_MIN | UTIL_CLAMP_MAX
constexpr int kIoprioWhoProcess = 1;
constexpr uint32_t kUtilMax = 1024;

}  // namespace

void dump_sched(DumpContext&, pid_t tid, schema::ThreadRecord& t) {
  SchedAttr a{};
  if (::syscall(SYS_sched_getattr, tid, &a, sizeof a, 0) != 0)
    throw_errno("sched_getattr of thread " + std::to_string(tid), errno, Errc::kernel);
  t.sched_policy = a.sched_policy;
  t.sched_flags = a.sched_flags;
  t.sched_nice = a.sched_nice;
  t.sched_priority = a.sched_priority;
  t.sched_runtime = a.sched_runtime, t.sched_deadline = a.sched_deadline;
  t.sched_period = a.sched_period;
  t.sched_util_min = a.sched_util_min, t.sched_util_max = a.sched_util_max;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(tid, sizeof set, &set) != 0)
    throw_errno("sched_getaffinity of thread " + std::to_string(tid), errno, Errc::kernel);
  t.affinity.assign(sizeof set / 8, 0);
  std::memcpy(t.affinity.data(), &set, sizeof set);
  while (!t.affinity.empty() && t.affinity.back() == 0) t.affinity.pop_back();
  long prio = ::syscall(SYS_ioprio_get, kIoprioWhoProcess, tid);
  if (prio < 0) throw_errno("ioprio_get of thread " + std::to_string(tid), errno, Errc::kernel);
  t.ioprio = static_cast<int32_t>(prio);
}

void restore_sched(RestoreContext&, RestoredProcess& p) {
  for (size_t i = 0; i < p.threads.size(); ++i) {
    const pid_t tid = p.threads[i];
    const auto& t = *p.thread_recs[i];
    const std::string who = "thread " + std::to_string(t.tid);
    cpu_set_t set;
    CPU_ZERO(&set);
    std::memcpy(&set, t.affinity.data(), std::min(sizeof set, t.affinity.size() * 8));
    if (!t.affinity.empty() && ::sched_setaffinity(tid, sizeof set, &set) != 0)
      throw_errno(who + ": cannot give back its CPU affinity (are its CPUs on this node?)", errno,
                  Errc::refused);
    if (::syscall(SYS_ioprio_set, kIoprioWhoProcess, tid, t.ioprio) != 0)
      throw_errno(who + ": cannot give back its I/O priority " + std::to_string(t.ioprio), errno,
                  Errc::kernel);
    SchedAttr a{};
    a.size = sizeof a;
    a.sched_policy = t.sched_policy;
    a.sched_flags = t.sched_flags & ~(kSchedFlagKeepAll | kSchedFlagUtilClamp);
    a.sched_nice = t.sched_nice;
    a.sched_priority = t.sched_priority;
    a.sched_runtime = t.sched_runtime, a.sched_deadline = t.sched_deadline;
    a.sched_period = t.sched_period;
    // Utilization clamps only when they are not the defaults: kernels without them refuse any.
    if (t.sched_util_min != 0 || (t.sched_util_max != kUtilMax && t.sched_util_max != 0)) {
      a.sched_flags |= kSchedFlagUtilClamp;
      a.sched_util_min = t.sched_util_min;
      a.sched_util_max = t.sched_util_max;
    }
    if (::syscall(SYS_sched_setattr, tid, &a, 0) != 0)
      throw_errno(who + ": cannot give back its scheduling policy " +
                      std::to_string(t.sched_policy) + " (priority " +
                      std::to_string(t.sched_priority) + ", nice " + std::to_string(t.sched_nice) + ")",
                  errno, Errc::kernel);
  }
}

}  // namespace crest
