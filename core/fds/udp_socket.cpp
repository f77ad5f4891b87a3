// UDP sockets, IPv4 and IPv6. Dump and restore side by side.
//
// Dump: the name, the peer of a connected socket, the options, and the datagrams queued to it,
// read without taking them (SO_PEEK_OFF from 0 and MSG_PEEK, the offset put back), each with
// its sender, the address it was sent to, and its IP header's TOS and TTL (the receive options
// that show them are turned on for the reading and back). Datagrams must come from this
// host's loopback to be queued again.
//
// Restore, once every task exists (a deferred kind): each socket is made by a task that holds
// it, its options set (before its datagrams come: some are stamped on arrival), bound; then
// the datagrams are sent again in order from the socket of the tree bound to the sender's
// address, or from one lent that address, with their TOS and TTL; only then does a connected
// socket connect (it would drop datagrams from anyone else).
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "core/fds/fd_kind.h"
#include "core/fds/in_task.h"
#include "core/fds/inet.h"
#include "core/fds/sockopt.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

using schema::SocketQueueRecord;
using schema::SocketRecord;
using schema::SocketState;

constexpr int kUdpOptions[] = {UDP_CORK, UDP_SEGMENT, UDP_GRO, UDP_NO_CHECK6_TX, UDP_NO_CHECK6_RX};

int set_int(int fd, int level, int name, int v) { return ::setsockopt(fd, level, name, &v, sizeof v); }

bool loopback(const std::vector<uint8_t>& addr) {
  if (addr.size() >= sizeof(sockaddr_in6) && reinterpret_cast<const sockaddr*>(addr.data())->sa_family == AF_INET6) {
    sockaddr_in6 a;
    std::memcpy(&a, addr.data(), sizeof a);
    if (IN6_IS_ADDR_LOOPBACK(&a.sin6_addr)) return true;
    if (!IN6_IS_ADDR_V4MAPPED(&a.sin6_addr)) return false;
    return a.sin6_addr.s6_addr[12] == 127;
  }
  if (addr.size() < sizeof(sockaddr_in)) return false;
  sockaddr_in a;
  std::memcpy(&a, addr.data(), sizeof a);
  return (ntohl(a.sin_addr.s_addr) >> 24) == 127;
}

// Receive options turned on while the queue is read, each put back as it was.
class ReadOptions {
 public:
  ReadOptions(int fd, int family) : fd_(fd) {
    add(IPPROTO_IP, IP_RECVTOS);
    add(IPPROTO_IP, IP_RECVTTL);
    add(IPPROTO_IP, IP_RECVORIGDSTADDR);
    if (family == AF_INET6) {
      add(IPPROTO_IPV6, IPV6_RECVTCLASS);
      add(IPPROTO_IPV6, IPV6_RECVHOPLIMIT);
      add(IPPROTO_IPV6, IPV6_RECVORIGDSTADDR);
    }
  }
  ReadOptions(const ReadOptions&) = delete;
  ReadOptions& operator=(const ReadOptions&) = delete;
  ~ReadOptions() {
    for (auto& [level, name, was] : saved_) set_int(fd_, level, name, was);
  }

 private:
  void add(int level, int name) {
    bool ok = false;
    const int was = static_cast<int>(get_int_option(fd_, level, name, ok));
    if (ok && set_int(fd_, level, name, 1) == 0) saved_.push_back({level, name, was});
  }
  int fd_;
  std::vector<std::tuple<int, int, int>> saved_;
};

// The datagrams queued to `s`, not taken. Returns a refusal, or "".
std::string peek_datagrams(int s, int family, int64_t file_id, std::vector<SocketQueueRecord>& out) {
  bool ok = false;
  const int64_t peek_off = get_int_option(s, SOL_SOCKET, SO_PEEK_OFF, ok);
  if (set_int(s, SOL_SOCKET, SO_PEEK_OFF, 0) != 0)
    return std::string("cannot read its queue without taking it (SO_PEEK_OFF: ") + std::strerror(errno) + ")";
  std::string refusal;
  {
    ReadOptions reading(s, family);
    std::vector<uint8_t> buf(1 << 16);
    for (uint32_t seq = 0;; ++seq) {
      alignas(cmsghdr) char control[512];
      sockaddr_storage from{};
      iovec io{buf.data(), buf.size()};
      msghdr m{};
      m.msg_name = &from;
      m.msg_namelen = sizeof from;
      m.msg_iov = &io;
      m.msg_iovlen = 1;
      m.msg_control = control;
      m.msg_controllen = sizeof control;
      const ssize_t n = ::recvmsg(s, &m, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0 && errno == EINTR) {
        --seq;
        continue;
      }
      if (n < 0) break;  // EAGAIN: the end
      SocketQueueRecord q;
      q.file_id = file_id;
      q.seq = seq;
      q.data.assign(buf.begin(), buf.begin() + std::min<ssize_t>(n, static_cast<ssize_t>(buf.size())));
      const auto* f = reinterpret_cast<const uint8_t*>(&from);
      q.sender.assign(f, f + m.msg_namelen);
      for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        const uint8_t* d = CMSG_DATA(c);
        const size_t len = c->cmsg_len - CMSG_LEN(0);
        int v = 0;
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS) q.tos = d[0];
        if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL) ||
            (c->cmsg_level == IPPROTO_IPV6 && (c->cmsg_type == IPV6_HOPLIMIT || c->cmsg_type == IPV6_TCLASS))) {
          std::memcpy(&v, d, std::min(len, sizeof v));
          if (c->cmsg_type == IPV6_TCLASS && c->cmsg_level == IPPROTO_IPV6)
            q.tos = v;
          else
            q.ttl = v;
        }
        if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_ORIGDSTADDR) ||
            (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR))
          q.dest.assign(d, d + len);
      }
      if (m.msg_flags & MSG_TRUNC && static_cast<size_t>(n) > buf.size()) {
        refusal = "a datagram of " + std::to_string(n) + " bytes is queued; crest reads up to 64 KiB";
        break;
      }
      if (!loopback(q.sender)) {
        refusal = "a datagram from " + inet_printable(q.sender) +
                  " is queued; only datagrams from this host's loopback can be queued again";
        break;
      }
      if (q.dest.empty()) {
        refusal = "cannot read where a queued datagram was sent";
        break;
      }
      out.push_back(std::move(q));
    }
  }
  set_int(s, SOL_SOCKET, SO_PEEK_OFF, static_cast<int>(peek_off));
  return refusal;
}

class UdpSocketKind : public FdKind {
 public:
  const char* name() const override { return "UDP socket"; }
  bool claims(const FdProbe& p) const override {
    return (p.sock_domain == AF_INET || p.sock_domain == AF_INET6) && p.sock_type == SOCK_DGRAM &&
           p.sock_protocol == IPPROTO_UDP;
  }

  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::udp_socket);
    UniqueFd s = proc::copy_fd(probe.pidfd, probe.fd);
    if (!s) {
      ctx.refuse(probe.where + ": cannot take a copy of its UDP socket: " + std::strerror(errno));
      return false;
    }
    SocketRecord r;
    r.file_id = static_cast<int64_t>(ctx.meta.files.size());
    r.family = probe.sock_domain;
    r.type = SOCK_DGRAM;
    r.protocol = IPPROTO_UDP;
    r.ino = probe.st.st_ino;
    r.name = inet_name(s.get(), false);
    r.peer_name = inet_name(s.get(), true);
    r.state = static_cast<uint32_t>(r.peer_name.empty() ? SocketState::unconnected : SocketState::connected);
    const std::string where = probe.where + " (UDP socket " + inet_printable(r.name) +
                              (r.peer_name.empty() ? "" : " to " + inet_printable(r.peer_name)) + ")";
    pollfd pf{s.get(), POLLIN, 0};
    if (::poll(&pf, 1, 0) > 0 && (pf.revents & POLLERR)) {
      ctx.refuse(where + ": an error is pending on it (SO_ERROR or its error queue); not supported yet");
      return false;
    }
    socklen_t flen = 0;
    if (::getsockopt(s.get(), SOL_SOCKET, SO_GET_FILTER, nullptr, &flen) == 0 && flen > 0) {
      ctx.refuse(where + ": a socket filter is attached (SO_ATTACH_FILTER); not supported yet");
      return false;
    }
    bool ok = false;
    if (get_int_option(s.get(), IPPROTO_UDP, UDP_ENCAP, ok) != 0 && ok) {
      ctx.refuse(where + ": UDP encapsulation (UDP_ENCAP) is set; not supported yet");
      return false;
    }
    int outq = 0;
    if (::ioctl(s.get(), SIOCOUTQ, &outq) == 0 && outq > 0) {
      ctx.refuse(where + ": " + std::to_string(outq) + " bytes of a corked datagram (UDP_CORK) are "
                 "being built; not supported yet");
      return false;
    }
    std::string refusal = save_inet_options(s.get(), r.family, SOCK_DGRAM, r.options);
    if (refusal.empty()) {
      save_int_options(s.get(), IPPROTO_UDP, kUdpOptions, r.options);
      save_socket_options(s.get(), r.options);
      std::vector<SocketQueueRecord> queue;
      refusal = peek_datagrams(s.get(), r.family, r.file_id, queue);
      if (refusal.empty() && !queue.empty() &&
          (saved_option(r.options, SOL_SOCKET, SO_TIMESTAMP, 0) ||
           saved_option(r.options, SOL_SOCKET, SO_TIMESTAMPNS, 0) ||
           saved_option(r.options, SOL_SOCKET, SO_TIMESTAMPING, 0)))
        refusal = "datagrams are queued with receive timestamps (SO_TIMESTAMP), which cannot be "
                  "given again";
      for (auto& q : queue) ctx.meta.socket_queues.push_back(std::move(q));
    }
    if (!refusal.empty()) {
      ctx.refuse(where + ": " + refusal);
      return false;
    }
    ctx.meta.sockets.push_back(std::move(r));
    return true;
  }

  void open(RestoreContext&, const std::vector<const schema::FileRecord*>&) const override {}
  bool deferred() const override { return true; }
  UniqueFd open_late(RestoreContext& ctx, const schema::FileRecord& f) const override;

  std::vector<std::string> restored() const override {
    return {"IPv4 and IPv6, bound or not, connected or not",
            "queued datagrams in order with their senders, destinations, TOS and TTL",
            "IP, IPv6, UDP and SOL_SOCKET options",
            "O_NONBLOCK, owner, F_SETSIG, O_ASYNC; the socket's owner and mode"};
  }
  std::vector<std::string> refused() const override {
    return {"a queued datagram from another host", "a corked datagram being built",
            "a pending error or error queue", "a socket filter", "UDP_ENCAP", "IP_OPTIONS",
            "timestamps with datagrams queued"};
  }
};

// ---- restore -------------------------------------------------------------------------------

class UdpRestore {
 public:
  explicit UdpRestore(RestoreContext& ctx) : ctx_(ctx) {
    for (auto& r : ctx.meta.sockets)
      if (r.protocol == IPPROTO_UDP) rows_[r.file_id] = &r;
  }

  void run() {
    for (auto& [id, r] : rows_) made_[id] = make_socket(*r);
    for (auto& [id, r] : rows_) refill(*r);
    for (auto& [id, r] : rows_) {
      const int s = fd(id);
      restore_options(s, r->options, who(*r));  // buffers back to their size
      if (!r->peer_name.empty() &&
          ::connect(s, reinterpret_cast<const sockaddr*>(r->peer_name.data()),
                    static_cast<socklen_t>(r->peer_name.size())) != 0)
        throw_errno(who(*r) + ": connect", errno, Errc::kernel);
      if (!r->peer_name.empty() && inet_name(s, false) != r->name)
        fail(Errc::kernel, who(*r) + ": connected from " + inet_printable(inet_name(s, false)) + " instead");
      const auto& f = ctx_.file(id);
      restore_socket_owner(s, f.uid, f.gid, f.mode, who(*r));
      if (::fcntl(s, F_SETFL, static_cast<int>(f.flags & ~O_ASYNC)) != 0)
        throw_errno(who(*r) + ": cannot set its flags", errno, Errc::kernel);
    }
  }
  UniqueFd take(int64_t id) const { return dup_made(made_, id, "UDP socket"); }

 private:
  int fd(int64_t id) const { return made_.at(id).get(); }
  static std::string who(const SocketRecord& r) {
    return "UDP socket " + inet_printable(r.name) +
           (r.peer_name.empty() ? "" : " to " + inet_printable(r.peer_name)) + " (files row " +
           std::to_string(r.file_id) + ")";
  }

  // Made by the first task that holds it; options (receive options stamp datagrams as they
  // come), bound where it was unless it is connected only (connect binds it).
  UniqueFd make_socket(const SocketRecord& r) {
    InTask t(ctx_, first_holder(ctx_, r.file_id, who(r)));
    const int remote = static_cast<int>(
        t.call("socket", SYS_socket, static_cast<uint64_t>(r.family), SOCK_DGRAM, IPPROTO_UDP));
    UniqueFd s = t.take(remote);
    // UDP_CORK waits for the end: a corked sender would hold the datagrams sent again.
    std::vector<int64_t> now;
    for (size_t i = 0; i + 2 < r.options.size(); i += 3)
      if (!(r.options[i] == IPPROTO_UDP && r.options[i + 1] == UDP_CORK))
        now.insert(now.end(), {r.options[i], r.options[i + 1], r.options[i + 2]});
    restore_options(s.get(), now, who(r));
    // A connected IPv6 socket that is not IPv6-only got its address from connect(): bound to
    // the port alone (an address of its own would make it IPv6-only).
    std::vector<uint8_t> local = r.name;
    if (r.family == AF_INET6 && !r.peer_name.empty() &&
        saved_option(r.options, IPPROTO_IPV6, IPV6_V6ONLY, 0) == 0 && local.size() >= sizeof(sockaddr_in6)) {
      sockaddr_in6 a;
      std::memcpy(&a, local.data(), sizeof a);
      a.sin6_addr = in6addr_any;
      std::memcpy(local.data(), &a, sizeof a);
    }
    if (inet_port(r.name) != 0 &&
        ::bind(s.get(), reinterpret_cast<const sockaddr*>(local.data()), static_cast<socklen_t>(local.size())) != 0)
      throw_errno(who(r) + ": bind (its port is taken?)", errno, Errc::kernel);
    return s;
  }

  // Each datagram again, from the sender's socket in the tree or one lent its address.
  void refill(const SocketRecord& r) {
    std::vector<const SocketQueueRecord*> queue;
    for (auto& q : ctx_.meta.socket_queues)
      if (q.file_id == r.file_id) queue.push_back(&q);
    if (queue.empty()) return;
    std::sort(queue.begin(), queue.end(), [](auto* x, auto* y) { return x->seq < y->seq; });
    const int big = 64 << 20;
    ::setsockopt(fd(r.file_id), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    for (auto* q : queue) {
      int from = -1;
      for (auto& [id, o] : rows_)
        if (o->name == q->sender && o->family == r.family) from = fd(id);
      UniqueFd lent;
      if (from < 0) {
        lent.reset(::socket(r.family, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP));
        if (!lent || ::bind(lent.get(), reinterpret_cast<const sockaddr*>(q->sender.data()),
                            static_cast<socklen_t>(q->sender.size())) != 0)
          throw_errno(who(r) + ": cannot send a queued datagram again from " + inet_printable(q->sender),
                      errno, Errc::kernel);
        from = lent.get();
      }
      send_one(from, r.family, *q, who(r));
    }
  }

  static void send_one(int from, int family, const SocketQueueRecord& q, const std::string& what) {
    iovec io{const_cast<uint8_t*>(q.data.data()), q.data.size()};
    msghdr m{};
    m.msg_name = const_cast<uint8_t*>(q.dest.data());
    m.msg_namelen = static_cast<socklen_t>(q.dest.size());
    m.msg_iov = &io;
    m.msg_iovlen = 1;
    alignas(cmsghdr) char control[2 * CMSG_SPACE(sizeof(int))] = {};
    m.msg_control = control;
    m.msg_controllen = 0;
    cmsghdr* c = reinterpret_cast<cmsghdr*>(control);
    auto add = [&](int level, int type, int value) {
      c->cmsg_level = level;
      c->cmsg_type = type;
      c->cmsg_len = CMSG_LEN(sizeof value);
      std::memcpy(CMSG_DATA(c), &value, sizeof value);
      m.msg_controllen += CMSG_SPACE(sizeof value);
      c = reinterpret_cast<cmsghdr*>(reinterpret_cast<char*>(c) + CMSG_SPACE(sizeof value));
    };
    const bool v6 = family == AF_INET6 && q.dest.size() >= sizeof(sockaddr_in6);
    if (q.tos >= 0) add(v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_TCLASS : IP_TOS, q.tos);
    if (q.ttl >= 0) add(v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_HOPLIMIT : IP_TTL, q.ttl);
    if (m.msg_controllen == 0) m.msg_control = nullptr;
    ssize_t n;
    do {
      n = ::sendmsg(from, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(q.data.size()))
      throw_errno(what + ": cannot queue a datagram of " + std::to_string(q.data.size()) + " bytes again",
                  n < 0 ? errno : EMSGSIZE, Errc::kernel);
  }

  RestoreContext& ctx_;
  std::map<int64_t, const SocketRecord*> rows_;
  std::map<int64_t, UniqueFd> made_;
};

UniqueFd UdpSocketKind::open_late(RestoreContext& ctx, const schema::FileRecord& f) const {
  return take_made<UdpRestore>(this, ctx, f);
}

}  // namespace

const FdKind& udp_socket_kind() {
  static const UdpSocketKind kind;
  return kind;
}

}  // namespace crest::fds
