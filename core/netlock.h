// The network lock: an nftables table of crest's own (family inet, one per checkpoint) that
// drops, in the kernel, every packet of a set of TCP connections, both ways. Taken while a tree
// whose connections reach outside it is frozen for a dump, and kept from the kill of that tree
// until its restored connections are back, so that the peers outside see neither a reset nor a
// byte lost: what they send meanwhile is dropped before any socket sees it, and sent again by
// their TCP once the lock is gone.
//
// While the dump runs, the table belongs to the dump's own netlink socket (nftables' owner flag,
// Linux 5.12): if crest dies at any instant, the kernel removes it with the socket, and the
// job's connections flow again. Only right before the kill is the lock made to outlive crest,
// as a second table, named by the checkpoint, that says which tree it was kept for.
//
// Through libnftables (the library the nft command is built on): no command is run.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

struct nft_ctx;

namespace crest::netlock {

// A connection as its end in the tree sees it: its own address and its peer's (raw sockaddr
// bytes, as getsockname/getpeername give them).
using Connection = std::pair<std::vector<uint8_t>, std::vector<uint8_t>>;

// The table of a checkpoint, from its uuid: "crest_" and the uuid's hex digits. The lock a
// restore removes.
std::string table_for(const std::string& uuid);

// A context of libnftables, with its netlink socket.
struct CtxFree {
  void operator()(nft_ctx* c) const;
};
using Ctx = std::unique_ptr<nft_ctx, CtxFree>;

// A lock held by this process.
class Lock {
 public:
  Lock();
  ~Lock();  // releases what is still held (never throws)
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;

  // Drops the packets of every connection both ways at the input and output hooks (before
  // connection tracking), in a table owned by this process. `table` (table_for) is the name
  // the lock takes if kept. Throws Errc::kernel naming what nftables said; nothing is left.
  void take(const std::string& table, const std::vector<Connection>& connections);
  bool held() const { return !table_.empty(); }

  // The tree is about to be killed: the lock is made again as `table`, owned by no one, its
  // comment naming the tree's root (pid and start time), and ours goes. Throws Errc::kernel.
  void keep(pid_t root, uint64_t root_starttime);

  // The tree goes on: its connections flow again. Throws Errc::kernel.
  void release();

 private:
  Ctx ctx_;            // its socket owns the held table
  std::string table_;  // the lock's name once kept; "" when nothing is held
  std::vector<Connection> connections_;
};

// Deletes a kept lock. False when there was none (already removed).
bool unlock(const std::string& table);

// The kept locks present now (tables named "crest_…"), with the tree each was kept for.
struct Kept {
  std::string table;
  pid_t root = 0;              // 0: the table does not say (made by an older crest)
  uint64_t root_starttime = 0;
  // The tree it was kept for still runs: the dump that kept it died before its kill, and the
  // lock only holds the running job's connections. Such a lock is removed by `crest unlock
  // --stale` and by crestd when it starts.
  bool stale = false;
};
std::vector<Kept> kept();

// Removes the stale locks; returns their names. Never throws (what fails is logged).
std::vector<std::string> remove_stale();

// "" when nftables can be used here, else why not (for `crest check`).
std::string unavailable();

}  // namespace crest::netlock
