#include "core/fds/inet.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include "core/fds/sockopt.h"

namespace crest::fds {
namespace {

// linux/in.h and linux/in6.h values glibc's headers may lack.
constexpr int kIpRecvFragsize = 25, kIpRecvErrRfc4884 = 26, kIpLocalPortRange = 51;
constexpr int kIpv6RecvFragsize = 77, kIpv6FreeBind = 78, kIpv6RecvErrRfc4884 = 31,
              kIpv6FlowInfo = 11, kIpv6FlowInfoSend = 33;

// Every int IP option getsockopt shows and setsockopt takes for TCP and UDP sockets (IP_OPTIONS,
// a buffer, is checked apart; memberships of multicast groups are not readable at all).
constexpr int kIpOptions[] = {
    IP_TOS,          IP_TTL,           IP_MTU_DISCOVER,  IP_RECVERR,     IP_FREEBIND,
    IP_TRANSPARENT,  IP_BIND_ADDRESS_NO_PORT, IP_NODEFRAG, IP_MINTTL,    IP_PASSSEC,
    IP_RECVTOS,      IP_PKTINFO,       IP_RECVTTL,       IP_RECVOPTS,    IP_RETOPTS,
    IP_RECVORIGDSTADDR, IP_CHECKSUM,   kIpRecvFragsize, kIpRecvErrRfc4884, kIpLocalPortRange};
// Multicast options: datagram sockets only (a stream socket cannot set them, and one accepted
// shows the TTL of the SYN as its IP_MULTICAST_TTL).
constexpr int kIpMulticastOptions[] = {IP_MULTICAST_TTL, IP_MULTICAST_LOOP, IP_MULTICAST_ALL};
constexpr int kIpv6MulticastOptions[] = {IPV6_MULTICAST_HOPS, IPV6_MULTICAST_LOOP, IPV6_MULTICAST_ALL};
constexpr int kIpv6Options[] = {
    IPV6_V6ONLY,       IPV6_TCLASS,        IPV6_UNICAST_HOPS,  IPV6_RECVPKTINFO,
    IPV6_RECVTCLASS,
    IPV6_RECVHOPLIMIT, IPV6_MTU_DISCOVER,  IPV6_RECVERR,       kIpv6FreeBind,
    IPV6_TRANSPARENT,  IPV6_AUTOFLOWLABEL, IPV6_DONTFRAG,      IPV6_RECVORIGDSTADDR,
    IPV6_MINHOPCOUNT,  IPV6_RECVPATHMTU,   IPV6_ADDR_PREFERENCES, kIpv6FlowInfo,
    kIpv6FlowInfoSend, IPV6_RECVRTHDR,    IPV6_RECVHOPOPTS,   IPV6_RECVDSTOPTS,
    kIpv6RecvFragsize, kIpv6RecvErrRfc4884};

bool is_pre_bind(int level, int name) {
  if (level == SOL_SOCKET) return name == SO_REUSEADDR || name == SO_REUSEPORT || name == SO_BINDTOIFINDEX;
  if (level == IPPROTO_IP) return name == IP_FREEBIND || name == IP_TRANSPARENT || name == IP_BIND_ADDRESS_NO_PORT;
  if (level == IPPROTO_IPV6) return name == IPV6_V6ONLY || name == kIpv6FreeBind || name == IPV6_TRANSPARENT;
  return false;
}

}  // namespace

std::vector<uint8_t> inet_name(int fd, bool peer) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  const int rc = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len)
                      : ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  if (rc != 0) return {};
  const auto* p = reinterpret_cast<const uint8_t*>(&a);
  return {p, p + len};
}

std::string inet_printable(const std::vector<uint8_t>& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (addr.size() >= sizeof(sockaddr_in6) && reinterpret_cast<const sockaddr*>(addr.data())->sa_family == AF_INET6) {
    sockaddr_in6 a;
    std::memcpy(&a, addr.data(), sizeof a);
    ::inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(a.sin6_port));
  }
  if (addr.size() >= sizeof(sockaddr_in)) {
    sockaddr_in a;
    std::memcpy(&a, addr.data(), sizeof a);
    ::inet_ntop(AF_INET, &a.sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(ntohs(a.sin_port));
  }
  return "(none)";
}

uint16_t inet_port(const std::vector<uint8_t>& addr) {
  if (addr.size() < sizeof(sockaddr_in)) return 0;
  sockaddr_in a;
  std::memcpy(&a, addr.data(), sizeof a);
  return ntohs(a.sin_port);  // sin6_port is at the same place
}

std::string save_inet_options(int fd, int family, int type, std::vector<int64_t>& out) {
  char opts[64];
  socklen_t len = sizeof opts;
  if (::getsockopt(fd, IPPROTO_IP, IP_OPTIONS, opts, &len) == 0 && len > 0)
    return "IP options are set on it (IP_OPTIONS); not supported yet";
  save_int_options(fd, IPPROTO_IP, kIpOptions, out);
  if (type == SOCK_DGRAM) save_int_options(fd, IPPROTO_IP, kIpMulticastOptions, out);
  if (family == AF_INET6) save_int_options(fd, IPPROTO_IPV6, kIpv6Options, out);
  if (family == AF_INET6 && type == SOCK_DGRAM) save_int_options(fd, IPPROTO_IPV6, kIpv6MulticastOptions, out);
  return "";
}

std::vector<int64_t> pre_bind_options(const std::vector<int64_t>& triples) {
  std::vector<int64_t> out;
  for (size_t i = 0; i + 2 < triples.size(); i += 3)
    if (is_pre_bind(static_cast<int>(triples[i]), static_cast<int>(triples[i + 1])))
      out.insert(out.end(), triples.begin() + static_cast<std::ptrdiff_t>(i),
                 triples.begin() + static_cast<std::ptrdiff_t>(i + 3));
  return out;
}

}  // namespace crest::fds
