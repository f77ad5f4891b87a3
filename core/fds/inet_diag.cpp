#include "core/fds/inet_diag.h"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "core/util/error.h"
#include "core/util/unique_fd.h"

namespace crest::fds {
namespace {

struct Request {
  nlmsghdr h;
  inet_diag_req_v2 r;
};

// Sends one request; calls `each` for every inet_diag_msg of the answer; returns the error of
// an NLMSG_ERROR answer (0: none).
template <typename Each>
int ask(int nl, const Request& req, Each each) {
  if (::send(nl, &req, sizeof req, 0) != static_cast<ssize_t>(sizeof req))
    throw_errno("NETLINK_SOCK_DIAG send", errno, Errc::kernel);
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t got = ::recv(nl, buf.data(), buf.size(), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw_errno("NETLINK_SOCK_DIAG recv", errno, Errc::kernel);
    size_t n = static_cast<size_t>(got);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) return -reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
      each(*reinterpret_cast<const inet_diag_msg*>(NLMSG_DATA(h)), *h);
    }
    if (!(req.h.nlmsg_flags & NLM_F_DUMP)) return 0;
  }
}

}  // namespace

int end_leftover_connections(int family, uint16_t port) {
  UniqueFd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) throw_errno("socket(NETLINK_SOCK_DIAG)", errno, Errc::kernel);
  Request req{};
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.r.sdiag_family = static_cast<uint8_t>(family);
  req.r.sdiag_protocol = IPPROTO_TCP;
  req.r.idiag_states = (1u << TCP_TIME_WAIT) | (1u << TCP_FIN_WAIT1) | (1u << TCP_FIN_WAIT2) |
                       (1u << TCP_CLOSING) | (1u << TCP_LAST_ACK);
  std::vector<inet_diag_sockid> leftovers;
  const int err = ask(nl.get(), req, [&](const inet_diag_msg& m, const nlmsghdr&) {
    // Held by nobody: a TIME_WAIT, or a closing connection whose socket has no inode.
    if (ntohs(m.id.idiag_sport) == port && (m.idiag_state == TCP_TIME_WAIT || m.idiag_inode == 0))
      leftovers.push_back(m.id);
  });
  if (err) throw_errno("listing TCP sockets (NETLINK_SOCK_DIAG)", err, Errc::kernel);
  int ended = 0;
  for (auto& id : leftovers) {
    Request kill{};
    kill.h.nlmsg_len = sizeof kill;
    kill.h.nlmsg_type = SOCK_DESTROY;
    kill.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    kill.r.sdiag_family = static_cast<uint8_t>(family);
    kill.r.sdiag_protocol = IPPROTO_TCP;
    kill.r.idiag_states = ~0u;
    kill.r.id = id;
    const int e = ask(nl.get(), kill, [](const inet_diag_msg&, const nlmsghdr&) {});
    if (e == ENOENT) continue;  // it ended by itself meanwhile
    if (e) throw_errno("ending a TCP socket left on port " + std::to_string(port) + " (SOCK_DESTROY)",
                       e, Errc::kernel);
    ++ended;
  }
  return ended;
}

namespace {

std::vector<uint8_t> diag_end(int family, const uint32_t* addr, uint16_t port_be) {
  if (family == AF_INET) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = port_be;
    std::memcpy(&a.sin_addr, addr, sizeof a.sin_addr);
    const auto* p = reinterpret_cast<const uint8_t*>(&a);
    return {p, p + sizeof a};
  }
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = port_be;
  std::memcpy(&a.sin6_addr, addr, sizeof a.sin6_addr);
  const auto* p = reinterpret_cast<const uint8_t*>(&a);
  return {p, p + sizeof a};
}

}  // namespace

std::vector<TcpDiagEntry> list_tcp_sockets(int family, uint32_t states) {
  UniqueFd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) throw_errno("socket(NETLINK_SOCK_DIAG)", errno, Errc::kernel);
  Request req{};
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.r.sdiag_family = static_cast<uint8_t>(family);
  req.r.sdiag_protocol = IPPROTO_TCP;
  req.r.idiag_states = states;
  req.r.idiag_ext = 1 << (INET_DIAG_INFO - 1);
  std::vector<TcpDiagEntry> out;
  const int err = ask(nl.get(), req, [&](const inet_diag_msg& m, const nlmsghdr& h) {
    TcpDiagEntry e;
    e.family = m.idiag_family;
    e.state = m.idiag_state;
    e.inode = m.idiag_inode;
    e.rqueue = m.idiag_rqueue;
    e.wqueue = m.idiag_wqueue;
    e.local = diag_end(m.idiag_family, m.id.idiag_src, m.id.idiag_sport);
    e.remote = diag_end(m.idiag_family, m.id.idiag_dst, m.id.idiag_dport);
    // Its TCP_INFO (a request socket has none), as long as this kernel's.
    const auto* a = reinterpret_cast<const rtattr*>(&m + 1);
    int left = static_cast<int>(h.nlmsg_len) - static_cast<int>(NLMSG_LENGTH(sizeof m));
    for (; RTA_OK(a, left); a = RTA_NEXT(a, left))
      if (a->rta_type == INET_DIAG_INFO) {
        std::memcpy(&e.info, RTA_DATA(a), std::min<size_t>(RTA_PAYLOAD(a), sizeof e.info));
        e.has_info = true;
      }
    out.push_back(std::move(e));
  });
  if (err) throw_errno("listing TCP sockets (NETLINK_SOCK_DIAG)", err, Errc::kernel);
  return out;
}

}  // namespace crest::fds
