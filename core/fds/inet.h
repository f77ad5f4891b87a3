// What TCP and UDP sockets share: addresses as saved (the raw sockaddr bytes), their printing,
// and the IPv4/IPv6 options.
#ifndef CREST_CORE_FDS_INET_H
#define CREST_CORE_FDS_INET_H

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

namespace crest::fds {

// getsockname / getpeername as bytes (empty: none, ENOTCONN).
std::vector<uint8_t> inet_name(int fd, bool peer);

// "127.0.0.1:80", "[::1]:80", "(none)".
std::string inet_printable(const std::vector<uint8_t>& addr);

// The port of a saved address (0: none, or unbound).
uint16_t inet_port(const std::vector<uint8_t>& addr);

// Appends the IP-level options (and IPv6-level for AF_INET6) this socket shows, before the
// SOL_SOCKET ones: IP_TOS sets SO_PRIORITY, which is set after it. Returns a refusal, or "".
std::string save_inet_options(int fd, int family, int type, std::vector<int64_t>& out);

// Options that must be set before bind(): IPV6_V6ONLY, SO_REUSEADDR/PORT, SO_BINDTOIFINDEX,
// freebind and transparent.
std::vector<int64_t> pre_bind_options(const std::vector<int64_t>& triples);

}  // namespace crest::fds

#endif
