// Namespaces of the tree's processes. crest restores a tree in the restorer's mount, network,
// UTS, user and cgroup namespaces: a process in another one is refused by name. IPC
// namespaces: see sysv_ipc.cpp (a job with System V objects gets a fresh one). Pid
// namespaces: the tree's own (crest run's, whose init is the root) is made again. Time
// namespaces: one a process made for its children (unshare(CLONE_NEWTIME)) is made again with
// its clock offsets before its children are forked into it. Dump and restore side by side
// (restore: restore_time_namespace, called by the process's state restore).
#include <fcntl.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sstream>

#include "core/context.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace crest {
namespace {

std::string ns_of(pid_t pid, const char* kind) {
  try {
    return proc::readlink(pid ? proc::path(pid, std::string("ns/") + kind)
                              : std::string("/proc/self/ns/") + kind);
  } catch (const Error&) {
    return "";  // the kernel lacks this namespace kind
  }
}

}  // namespace

void dump_namespaces(DumpContext& ctx, const ptrace::FrozenProcess& p, schema::ProcessRecord& rec) {
  const pid_t pid = p.pid;
  const bool is_root = pid == ctx.tree.root();
  const std::string who = "process " + std::to_string(pid);
  // IPC: a tree in a namespace of its own is taken with every object in it (sysv_ipc.cpp).
  for (const char* ns : {"mnt", "net", "uts", "user", "cgroup"}) {
    std::string mine = ns_of(0, ns), theirs = ns_of(pid, ns);
    if (!mine.empty() && mine != theirs)
      ctx.refuse(who + " runs in its own " + ns +
                 " namespace; crest restores trees in the restorer's namespaces only");
  }
  std::string mine = ns_of(0, "pid"), theirs = ns_of(pid, "pid");
  if (mine != theirs && !(is_root && ctx.recorded(pid) == 1) && ctx.meta.info.pid_namespace == 0)
    ctx.refuse(who + " is in a pid namespace whose init is not the dumped root");
  if (ns_of(pid, "pid_for_children") != theirs)
    ctx.refuse(who + " made a pid namespace for its children (unshare(CLONE_NEWPID)) that it "
               "has not entered yet; not supported");

  // Its own time namespace: the restorer's for the root; its parent's namespace for children.
  std::string time = ns_of(pid, "time");
  if (!time.empty()) {
    std::string expected = is_root ? ns_of(0, "time") : ns_of(p.ppid, "time_for_children");
    if (time != expected)
      ctx.refuse(who + " runs in a time namespace " +
                 (is_root ? std::string("of its own; the root must share the restorer's")
                          : "its parent did not make for it") + "; not supported");
    if (ns_of(pid, "time_for_children") != time) {
      rec.flags |= schema::kProcessTimeNs;
      std::istringstream in(fs::read_file(proc::path(pid, "timens_offsets")));
      std::string clock;
      int64_t sec = 0, nsec = 0;
      while (in >> clock >> sec >> nsec) {
        int64_t off = sec * 1000000000ll + nsec;
        if (clock == "monotonic") rec.timens_monotonic_ns = off;
        if (clock == "boottime") rec.timens_boottime_ns = off;
      }
    }
  }
}

// Makes the time namespace a process had made for its children, with its offsets; before any
// child is forked into it (offsets can be set only while the namespace is empty).
void restore_time_namespace(RestoreContext& ctx, RestoredProcess& p) {
  const auto& r = *p.rec;
  if (!(r.flags & schema::kProcessTimeNs)) return;
  p.inj->call("unshare(CLONE_NEWTIME)", SYS_unshare, CLONE_NEWTIME);
  auto line = [](const char* clock, int64_t ns) {
    return std::string(clock) + " " + std::to_string(ns / 1000000000ll) + " " +
           std::to_string(ns % 1000000000ll) + "\n";
  };
  const std::string offsets =
      line("monotonic", r.timens_monotonic_ns) + line("boottime", r.timens_boottime_ns);
  const std::string path = proc::path(p.pid, "timens_offsets");
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd || ::write(fd.get(), offsets.data(), offsets.size()) != static_cast<ssize_t>(offsets.size()))
    throw_errno("process " + std::to_string(r.pid) + ": cannot set the offsets of its time "
                "namespace in " + path, errno, Errc::kernel);
  (void)ctx;
}

}  // namespace crest
