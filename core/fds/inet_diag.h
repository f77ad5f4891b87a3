// TCP sockets no process holds any more, through NETLINK_SOCK_DIAG (linux/inet_diag.h).
#ifndef CREST_CORE_FDS_INET_DIAG_H
#define CREST_CORE_FDS_INET_DIAG_H

#include <cstdint>

namespace crest::fds {

// Ends the TCP sockets of `family` on local port `port` that no process holds: TIME_WAIT and
// orphaned closing connections (what a killed job leaves behind for up to a minute, and what
// keeps its listener's port from being bound again). Returns how many it ended; throws when
// the kernel cannot (no CONFIG_INET_DIAG_DESTROY, or no CAP_NET_ADMIN).
int end_leftover_connections(int family, uint16_t port);

}  // namespace crest::fds

#endif
