// What the kernel's socket diagnostics (NETLINK_SOCK_DIAG, unix_diag) tell about the Unix
// sockets of this network namespace: what no getsockopt shows (the peer's inode, connections
// waiting in a listener's backlog, the bytes queued, the shutdown state).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace crest::fds {

struct UnixDiag {
  uint32_t ino = 0;
  uint8_t type = 0;   // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
  uint8_t state = 0;  // TCP_ESTABLISHED, TCP_LISTEN, TCP_CLOSE
  std::string name;   // sun_path as bound (abstract names start with '\0'); empty if unbound
  bool has_vfs = false;
  uint32_t vfs_dev = 0, vfs_ino = 0;  // the socket file made by bind() (kernel dev encoding)
  uint32_t peer = 0;                  // the peer's inode (0: none)
  std::vector<uint32_t> waiting;      // listening: clients of connections not yet accepted, in order
  uint32_t rqueue = 0, wqueue = 0;    // listening: backlog used / max; else bytes queued in / out
  uint8_t shutdown = 0;               // RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2
};

// Every Unix socket of the caller's network namespace, by inode. Throws on a netlink failure.
std::map<uint32_t, UnixDiag> unix_sockets();

}  // namespace crest::fds
