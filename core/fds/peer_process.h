// Who holds the other end of a connection that leaves the tree: the process outside it that has
// the peer socket open (found by its inode in /proc/PID/fd), so that a refusal can name it, and
// what crest knows about such a peer: slurmstepd is the PMIx server of the ranks srun starts
// (srun --mpi=pmix), which no checkpoint of the ranks alone can hold.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace crest::fds {

struct PeerProcess {
  pid_t pid = 0;     // 0: no process found (or not visible to crest)
  std::string comm;  // its /proc/PID/comm
};

// The process (outside `tree`, the host pids of the dumped processes) that holds socket inode
// `inode`: the first found, scanning /proc. {0, ""} if none.
PeerProcess socket_holder(uint64_t inode, const std::vector<pid_t>& tree);

// The same for several inodes in one scan of /proc: inode -> holder (missing: none found).
std::map<uint64_t, PeerProcess> socket_holders(const std::set<uint64_t>& inodes,
                                               const std::vector<pid_t>& tree);

// " (its peer is held by process 1234, slurmstepd)", or "" when unknown.
std::string peer_label(const PeerProcess& p);

// Why a connection to this peer can never be saved, whatever the options: for slurmstepd, that
// it is the PMIx server of ranks launched by srun and what to do instead. "" for other peers.
std::string launcher_peer_reason(const PeerProcess& p);

}  // namespace crest::fds
