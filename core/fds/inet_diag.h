// TCP sockets no process holds any more, through NETLINK_SOCK_DIAG (linux/inet_diag.h).
#ifndef CREST_CORE_FDS_INET_DIAG_H
#define CREST_CORE_FDS_INET_DIAG_H

#include <netinet/tcp.h>

#include <cstdint>
#include <vector>

namespace crest::fds {

// Ends the TCP sockets of `family` on local port `port` that no process holds: TIME_WAIT and
// orphaned closing connections (what a killed job leaves behind for up to a minute, and what
// keeps its listener's port from being bound again). Returns how many it ended; throws when
// the kernel cannot (no CONFIG_INET_DIAG_DESTROY, or no CAP_NET_ADMIN).
int end_leftover_connections(int family, uint16_t port);

// One TCP socket as inet_diag shows it: its ends as sockaddr bytes (sockaddr_in, or sockaddr_in6
// for AF_INET6, IPv4-mapped when it carries IPv4), its state, its inode (0: no process holds it,
// as a connection waiting in a listener's queue) and its queues (a connection: bytes received
// and not read, bytes not acknowledged; a listener: connections waiting and its backlog) and
// its TCP_INFO.
struct TcpDiagEntry {
  int family = 0;
  int state = 0;
  uint32_t inode = 0;
  uint32_t rqueue = 0, wqueue = 0;
  std::vector<uint8_t> local, remote;
  bool has_info = false;  // INET_DIAG_INFO: its TCP_INFO (not for a request socket)
  tcp_info info{};
};

// The TCP sockets of `family` in crest's network namespace whose state is in the `states` mask
// (1 << TCP_ESTABLISHED ...; TCP_SYN_RECV also lists the half-open requests of listeners).
std::vector<TcpDiagEntry> list_tcp_sockets(int family, uint32_t states);

}  // namespace crest::fds

#endif
