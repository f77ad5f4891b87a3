// crest check: the kernel interfaces crest relies on, probed on this machine.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/checkpoint.h"
#include "core/fds/sock_diag.h"
#include "core/fds/unix_diag.h"
#include "core/inject.h"
#include "core/kernel/compat.h"
#include "core/kernel/features.h"
#include "core/pagemap.h"
#include "core/proc.h"
#include "core/netlock.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/unique_fd.h"

namespace crest {
namespace {

// A syscall exists when calling it with bad arguments fails with anything but ENOSYS.
bool syscall_exists(long nr, long a1 = -1, long a2 = 0, long a3 = 0) {
  long r = ::syscall(nr, a1, a2, a3, 0, 0);
  return !(r < 0 && errno == ENOSYS);
}

// The userfaultfd features this kernel offers, for the report.
std::string uffd_features() {
  UniqueFd fd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY)));
  if (!fd) return std::string("userfaultfd: ") + std::strerror(errno);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = 0;
  if (::ioctl(fd.get(), UFFDIO_API, &api) != 0) return std::string("UFFDIO_API: ") + std::strerror(errno);
  char buf[64];
  std::snprintf(buf, sizeof buf, "features 0x%llx", static_cast<unsigned long long>(api.features));
  return buf;
}

bool cgroup2_freeze(std::string& where) {
  std::string mounts = fs::read_file("/proc/self/mounts");
  size_t pos = 0;
  while ((pos = mounts.find(" cgroup2 ", pos)) != std::string::npos) {
    size_t line = mounts.rfind('\n', pos);
    line = line == std::string::npos ? 0 : line + 1;
    std::string mount_point = mounts.substr(mounts.find(' ', line) + 1);
    mount_point = mount_point.substr(0, mount_point.find(' '));
    where = mount_point;
    std::string self = fs::read_file("/proc/self/cgroup");
    // A v2 hierarchy supports cgroup.freeze in every non-root cgroup (Linux 5.2).
    if (::access((mount_point + "/cgroup.procs").c_str(), F_OK) == 0) return true;
    ++pos;
  }
  return false;
}

bool has_cap(int cap) {
  auto st = proc::status(::getpid());
  return (proc::status_hex(st, "CapEff") >> cap) & 1;
}

bool tcp_repair() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int on = 1, off = -1;  // TCP_REPAIR_OFF_NO_WP
  return s && ::setsockopt(s.get(), IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) == 0 &&
         ::setsockopt(s.get(), IPPROTO_TCP, TCP_REPAIR, &off, sizeof off) == 0;
}

bool unix_diag_works() {
  try {
    fds::unix_sockets();
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

std::vector<KernelFeature> kernel_features() {
  std::vector<KernelFeature> out;
  auto add = [&](std::string name, std::string why, bool present, std::string detail = "") {
    out.push_back({std::move(name), std::move(why), present, std::move(detail)});
  };
  // The interfaces core/kernel/features.h knows: as the engine sees them, CREST_DISABLE included.
  auto iface = [&](kernel::Iface id, std::string why, std::string detail = "") {
    const auto& i = kernel::info(id);
    if (!detail.empty()) detail += "; ";
    detail += i.since;
    if (kernel::kernel_has(id) && kernel::disabled(id))
      detail += "; present but switched off by CREST_DISABLE";
    add(i.what, std::move(why), kernel::have(id), std::move(detail));
  };
  add("ptrace PTRACE_SEIZE/INTERRUPT", "freezing without SIGSTOP", true, "Linux 3.4");
  iface(kernel::Iface::rseq_config, "saving rseq registrations");
  iface(kernel::Iface::clone3, "restoring original pids and tids");
  add("pidfd_open", "holding processes", syscall_exists(SYS_pidfd_open, -1), "Linux 5.3");
  iface(kernel::Iface::pidfd_getfd, "copying descriptors to and from tasks");
  add("process_vm_readv/writev", "reading and writing task memory", true, "Linux 3.2");
  add("/proc/PID/map_files", "identifying and opening mapped files",
      ::access(("/proc/" + std::to_string(::getpid()) + "/map_files").c_str(), R_OK) == 0,
      "Linux 3.3");
  add("/proc/PID/task/TID/children", "walking the process tree",
      ::access(("/proc/self/task/" + std::to_string(::getpid()) + "/children").c_str(), R_OK) == 0,
      "CONFIG_PROC_CHILDREN, Linux 4.2");
  add("kcmp", "finding shared open file descriptions",
      ::syscall(SYS_kcmp, ::getpid(), ::getpid(), KCMP_FILE, 0, 0) >= 0, "Linux 3.5");
  int size = 0;
  add("prctl(PR_SET_MM_MAP)", "restoring mm fields, auxv and exe",
      ::prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, &size, 0, 0) == 0, "Linux 3.18");
  unsigned long tid_addr = 0;
  add("prctl(PR_GET_TID_ADDRESS)", "saving clear_child_tid for pthread_join",
      ::prctl(PR_GET_TID_ADDRESS, &tid_addr, 0, 0, 0) == 0, "CONFIG_CHECKPOINT_RESTORE, Linux 3.5");
  iface(kernel::Iface::pagemap_scan, "finding present and written pages");
  iface(kernel::Iface::uffd_wp, "incremental checkpoints (best tracker)", uffd_features());
  iface(kernel::Iface::soft_dirty, "incremental checkpoints (fallback tracker)",
        "untested live: CI's kernel has none; its logic is unit-tested over recorded pagemaps");
  std::string cg;
  bool freeze = cgroup2_freeze(cg);
  add("cgroup v2 freezer", "freezing a job launched by crest", freeze,
      freeze ? "hierarchy at " + cg : "no cgroup2 mount");
  add("CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN", "choosing pids with set_tid",
      has_cap(40) || has_cap(21), "Linux 5.9 for CAP_CHECKPOINT_RESTORE");
  add("[vdso]", "injecting system calls", find_syscall_insn(::getpid()) != 0, "");
  add("TCP_REPAIR (CAP_NET_ADMIN)", "saving and restoring TCP connections", tcp_repair(),
      "Linux 3.5 (windows 4.8)");
  add("sock_diag for Unix sockets", "peers and backlogs of Unix sockets", unix_diag_works(),
      "CONFIG_UNIX_DIAG");
  add("sock_diag for netlink sockets", "queues of netlink sockets", fds::netlink_diag_works(),
      "CONFIG_NETLINK_DIAG");
  add("/proc/sys/kernel/{shm,sem,msg}_next_id", "System V objects made again with their ids",
      ::access("/proc/sys/kernel/shm_next_id", W_OK) == 0 &&
          ::access("/proc/sys/kernel/sem_next_id", W_OK) == 0 &&
          ::access("/proc/sys/kernel/msg_next_id", W_OK) == 0,
      "CONFIG_CHECKPOINT_RESTORE, Linux 3.8");
  {
    long buf[2] = {0, 0};
    errno = 0;
    const bool copy = ::msgrcv(-1, buf, 0, 0, IPC_NOWAIT | 040000 /* MSG_COPY */) < 0 && errno != ENOSYS;
    add("msgrcv(MSG_COPY)", "reading System V messages without taking them", copy,
        "CONFIG_CHECKPOINT_RESTORE, Linux 3.8");
  }
  add("kcmp KCMP_SYSVSEM", "finding System V semaphore undo lists (SEM_UNDO, refused)",
      ::syscall(SYS_kcmp, ::getpid(), ::getpid(), KCMP_SYSVSEM, 0, 0) >= 0, "Linux 3.5");
  const std::string nft = netlock::unavailable();
  add("nftables (nf_tables, CAP_NET_ADMIN)",
      "the network lock of TCP connections to the outside (dump --tcp-established)", nft.empty(),
      nft.empty() ? "CONFIG_NF_TABLES_INET, libnftables" : nft);
  return out;
}

}  // namespace crest
