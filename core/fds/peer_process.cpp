// Naming the process at the other end of a connection out of the tree (peer_process.h).
#include "core/fds/peer_process.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

namespace crest::fds {
namespace {

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};
using Dir = std::unique_ptr<DIR, DirCloser>;

std::string comm_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
  std::string comm;
  std::getline(in, comm);
  return comm;
}

}  // namespace

std::map<uint64_t, PeerProcess> socket_holders(const std::set<uint64_t>& inodes,
                                               const std::vector<pid_t>& tree) {
  std::map<uint64_t, PeerProcess> found;
  if (inodes.empty()) return found;
  Dir proc(::opendir("/proc"));
  if (!proc) return found;
  char buf[64];
  while (dirent* e = ::readdir(proc.get())) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    if (std::find(tree.begin(), tree.end(), static_cast<pid_t>(pid)) != tree.end()) continue;
    const std::string fds = "/proc/" + std::to_string(pid) + "/fd";
    Dir dir(::opendir(fds.c_str()));
    if (!dir) continue;  // gone, or another user's (crest not root)
    while (dirent* f = ::readdir(dir.get())) {
      if (f->d_name[0] < '0' || f->d_name[0] > '9') continue;
      ssize_t n = ::readlink((fds + "/" + f->d_name).c_str(), buf, sizeof buf - 1);
      if (n <= 8) continue;
      buf[n] = '\0';
      unsigned long long ino = 0;
      if (std::sscanf(buf, "socket:[%llu]", &ino) != 1 || !inodes.count(ino) || found.count(ino)) continue;
      found[ino] = PeerProcess{static_cast<pid_t>(pid), comm_of(static_cast<pid_t>(pid))};
    }
    if (found.size() == inodes.size()) break;
  }
  return found;
}

PeerProcess socket_holder(uint64_t inode, const std::vector<pid_t>& tree) {
  auto found = socket_holders({inode}, tree);
  auto it = found.find(inode);
  return it == found.end() ? PeerProcess{} : it->second;
}

std::string peer_label(const PeerProcess& p) {
  if (p.pid == 0) return "";
  return " (its peer is held by process " + std::to_string(p.pid) + ", " + p.comm + ")";
}

std::string launcher_peer_reason(const PeerProcess& p) {
  if (p.pid == 0 || p.comm != "slurmstepd") return "";
  return "slurmstepd (process " + std::to_string(p.pid) +
         ") is the PMIx server of ranks started by srun --mpi=pmix: it lives outside the job and "
         "holds the job's PMIx state (its namespace, every rank's connection), which no "
         "checkpoint of the ranks can take or bring back, so such ranks cannot be checkpointed, "
         "with or without --tcp-established or --ext-unix-sk; launch the ranks with "
         "mpirun inside the allocation (salloc or sbatch, then crest run -- mpirun -np N ./app), "
         "whose PMIx server is in the job's tree";
}

}  // namespace crest::fds
