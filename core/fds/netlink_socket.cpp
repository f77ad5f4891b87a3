// Netlink sockets (route, generic, audit, netfilter, uevents, ... and sockets that talk to each
// other by port id). Dump and restore side by side.
//
// Dump: type and protocol; the port id and the first 32 groups (getsockname), every multicast
// group (NETLINK_LIST_MEMBERSHIPS), the destination port and group of a connected socket
// (getpeername); the netlink options and every settable SOL_SOCKET option. netlink_diag tells
// what no getsockopt shows: bytes queued and a multi-part answer the kernel is still producing
// (its dump callback). Messages queued to a netlink socket cannot be read without taking them
// (no SO_PEEK_OFF), and a dump in progress is state inside the kernel that no call makes again:
// both are refused by name, as is a socket filter.
//
// Restore, once every task exists (a deferred kind): made by a task that holds it (the port id
// is bound explicitly, so it does not depend on who makes it), options set, bound to its port id,
// joined to its groups, connected; then its owner, mode and status flags.
#include <linux/netlink.h>
#include <linux/netlink_diag.h>
#include <linux/sock_diag.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <cerrno>
#include <cstring>
#include <map>

#include "core/fds/fd_kind.h"
#include "core/fds/in_task.h"
#include "core/fds/sock_diag.h"
#include "core/fds/sockopt.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

using schema::SocketRecord;
using schema::SocketState;

// Options read with getsockopt and set again with setsockopt (NETLINK_LIST_MEMBERSHIPS is the
// groups, kept apart).
constexpr int kNetlinkOptions[] = {NETLINK_PKTINFO,        NETLINK_BROADCAST_ERROR,
                                   NETLINK_NO_ENOBUFS,     NETLINK_LISTEN_ALL_NSID,
                                   NETLINK_CAP_ACK,        NETLINK_EXT_ACK,
                                   NETLINK_GET_STRICT_CHK};

std::string protocol_name(int p) {
  static const std::map<int, const char*> names = {
      {NETLINK_ROUTE, "route"},         {NETLINK_USERSOCK, "usersock"},
      {NETLINK_FIREWALL, "firewall"},   {NETLINK_SOCK_DIAG, "sock_diag"},
      {NETLINK_NFLOG, "nflog"},         {NETLINK_XFRM, "xfrm"},
      {NETLINK_SELINUX, "selinux"},     {NETLINK_ISCSI, "iscsi"},
      {NETLINK_AUDIT, "audit"},         {NETLINK_FIB_LOOKUP, "fib_lookup"},
      {NETLINK_CONNECTOR, "connector"}, {NETLINK_NETFILTER, "netfilter"},
      {NETLINK_IP6_FW, "ip6_fw"},       {NETLINK_DNRTMSG, "dnrtmsg"},
      {NETLINK_KOBJECT_UEVENT, "kobject_uevent"}, {NETLINK_GENERIC, "generic"},
      {NETLINK_SCSITRANSPORT, "scsitransport"},   {NETLINK_ECRYPTFS, "ecryptfs"},
      {NETLINK_RDMA, "rdma"},           {NETLINK_CRYPTO, "crypto"},
      {NETLINK_SMC, "smc"}};
  auto it = names.find(p);
  return it != names.end() ? it->second : "protocol " + std::to_string(p);
}

sockaddr_nl nl_addr(const std::vector<uint8_t>& bytes) {
  sockaddr_nl a{};
  std::memcpy(&a, bytes.data(), std::min(bytes.size(), sizeof a));
  return a;
}

std::string describe(const SocketRecord& r) {
  std::string s = "netlink " + protocol_name(r.protocol) + " socket";
  if (!r.name.empty()) s += " port " + std::to_string(nl_addr(r.name).nl_pid);
  if (!r.peer_name.empty()) {
    const sockaddr_nl p = nl_addr(r.peer_name);
    s += " to port " + std::to_string(p.nl_pid);
    if (p.nl_groups) s += " groups " + std::to_string(p.nl_groups);
  }
  return s;
}

std::vector<uint8_t> nl_name(int fd, bool peer) {
  sockaddr_nl a{};
  socklen_t len = sizeof a;
  const int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len)
                     : ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  if (r != 0 || len < sizeof a || (peer && a.nl_pid == 0 && a.nl_groups == 0)) return {};
  std::vector<uint8_t> out(sizeof a);
  std::memcpy(out.data(), &a, sizeof a);
  return out;
}

// Every multicast group the socket is in, as group numbers (1-based).
std::vector<uint32_t> memberships(int fd) {
  std::vector<uint32_t> words(8);
  for (;;) {
    socklen_t len = static_cast<socklen_t>(words.size() * sizeof(uint32_t));
    if (::getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, words.data(), &len) != 0) return {};
    if (len <= words.size() * sizeof(uint32_t)) {
      words.resize(len / sizeof(uint32_t));
      break;
    }
    words.resize(len / sizeof(uint32_t));
  }
  std::vector<uint32_t> groups;
  for (size_t w = 0; w < words.size(); ++w)
    for (uint32_t b = 0; b < 32; ++b)
      if (words[w] & (1u << b)) groups.push_back(static_cast<uint32_t>(w * 32 + b + 1));
  return groups;
}

// What netlink_diag says of the socket with inode `ino`: bytes queued to it and whether a dump
// answer is being produced. Found by a dump of the protocol's sockets.
struct NetlinkDiag {
  bool found = false;
  uint32_t rmem = 0;
  uint32_t flags = 0;
};

NetlinkDiag netlink_diag(int protocol, uint64_t ino) {
  UniqueFd nl = sock_diag_socket("netlink_diag");
  struct {
    nlmsghdr h;
    netlink_diag_req r;
  } req{};
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.r.sdiag_family = AF_NETLINK;
  req.r.sdiag_protocol = static_cast<uint8_t>(protocol);
  req.r.ndiag_show = NDIAG_SHOW_MEMINFO | NDIAG_SHOW_FLAGS;
  NetlinkDiag out;
  const int err = sock_diag_ask(nl.get(), &req, sizeof req, "netlink_diag", [&](const void* m, size_t len) {
    if (len < sizeof(netlink_diag_msg)) return;
    auto* msg = static_cast<const netlink_diag_msg*>(m);
    if (msg->ndiag_ino != ino) return;
    out.found = true;
    size_t off = NLMSG_ALIGN(sizeof *msg);
    const char* base = static_cast<const char*>(m);
    while (off + sizeof(nlattr) <= len) {
      auto* a = reinterpret_cast<const nlattr*>(base + off);
      if (a->nla_len < sizeof(nlattr) || off + a->nla_len > len) break;
      const char* data = base + off + NLA_HDRLEN;
      const size_t n = a->nla_len - NLA_HDRLEN;
      if (a->nla_type == NETLINK_DIAG_MEMINFO && n >= (SK_MEMINFO_RMEM_ALLOC + 1) * sizeof(uint32_t))
        std::memcpy(&out.rmem, data + SK_MEMINFO_RMEM_ALLOC * sizeof(uint32_t), sizeof(uint32_t));
      if (a->nla_type == NETLINK_DIAG_FLAGS && n >= sizeof(uint32_t)) std::memcpy(&out.flags, data, sizeof(uint32_t));
      off += NLA_ALIGN(a->nla_len);
    }
  });
  if (err) throw Error(Errc::kernel, "netlink_diag: the kernel refused the dump", err);
  return out;
}

class NetlinkSocketKind : public FdKind {
 public:
  const char* name() const override { return "netlink socket"; }
  bool claims(const FdProbe& p) const override { return p.sock_domain == AF_NETLINK; }

  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::netlink_socket);
    UniqueFd s = proc::copy_fd(probe.pidfd, probe.fd);
    if (!s) {
      ctx.refuse(probe.where + ": cannot take a copy of its netlink socket: " + std::strerror(errno));
      return false;
    }
    SocketRecord r;
    r.file_id = static_cast<int64_t>(ctx.meta.files.size());
    r.family = AF_NETLINK;
    r.type = probe.sock_type;
    r.protocol = probe.sock_protocol;
    r.ino = probe.st.st_ino;
    r.name = nl_name(s.get(), false);
    if (!r.name.empty() && nl_addr(r.name).nl_pid == 0) r.name.clear();  // not bound yet
    r.peer_name = nl_name(s.get(), true);
    r.state = static_cast<uint32_t>(r.peer_name.empty() ? SocketState::unconnected : SocketState::connected);
    r.nl_groups = memberships(s.get());
    const std::string where = probe.where + " (" + describe(r) + ")";
    if (r.type != SOCK_RAW && r.type != SOCK_DGRAM) {
      ctx.refuse(where + ": a netlink socket of type " + std::to_string(r.type) + "; not supported");
      return false;
    }
    socklen_t flen = 0;
    if (::getsockopt(s.get(), SOL_SOCKET, SO_GET_FILTER, nullptr, &flen) == 0 && flen > 0) {
      ctx.refuse(where + ": a socket filter is attached (SO_ATTACH_FILTER); not supported yet");
      return false;
    }
    int err = 0;
    socklen_t elen = sizeof err;
    if (::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err != 0) {
      ctx.refuse(where + ": an error is pending on it (" + std::strerror(err) +
                 ", e.g. ENOBUFS after lost messages); a restore cannot raise it again");
      return false;
    }
    // A socket never bound and in no group is in none of the kernel's tables (netlink_diag
    // lists only those): nothing can have been sent to it, nor can it be producing a dump.
    const bool unreachable = r.name.empty() && r.nl_groups.empty();
    const NetlinkDiag d = unreachable ? NetlinkDiag{true, 0, 0} : netlink_diag(r.protocol, r.ino);
    if (!d.found) {
      ctx.refuse(where + ": netlink_diag does not list it (a socket of another network namespace?)");
      return false;
    }
    if (d.flags & NDIAG_FLAG_CB_RUNNING) {
      ctx.refuse(where + ": the kernel is still producing a multi-part answer to a dump request "
                 "on it; that state lives in the kernel and cannot be made again (try again "
                 "once the program has read the answer)");
      return false;
    }
    if (d.rmem > 0) {
      ctx.refuse(where + ": messages are queued to it (" + std::to_string(d.rmem) + " bytes of "
                 "receive buffer) and netlink queues cannot be read without taking them; not "
                 "supported (try again once the program has read them)");
      return false;
    }
    save_int_options(s.get(), SOL_NETLINK, kNetlinkOptions, r.options);
    save_socket_options(s.get(), r.options);
    ctx.meta.sockets.push_back(std::move(r));
    return true;
  }

  void open(RestoreContext&, const std::vector<const schema::FileRecord*>&) const override {}
  bool deferred() const override { return true; }
  UniqueFd open_late(RestoreContext& ctx, const schema::FileRecord& f) const override;

  std::vector<std::string> restored() const override {
    return {"every protocol (route, generic, audit, netfilter, uevent, ...), raw and datagram",
            "the port id, bound or not yet bound", "every multicast group it is in",
            "the destination port and group of a connected socket",
            "NETLINK_PKTINFO, BROADCAST_ERROR, NO_ENOBUFS, LISTEN_ALL_NSID, CAP_ACK, EXT_ACK, "
            "GET_STRICT_CHK and SOL_SOCKET options",
            "O_NONBLOCK, owner, F_SETSIG, O_ASYNC; the socket's owner and mode"};
  }
  std::vector<std::string> refused() const override {
    return {"messages queued to it (they cannot be read without taking them)",
            "a dump answer the kernel is still producing", "a pending error (ENOBUFS...)",
            "a socket filter"};
  }
};

// ---- restore -------------------------------------------------------------------------------

class NetlinkRestore {
 public:
  explicit NetlinkRestore(RestoreContext& ctx) : ctx_(ctx) {
    for (auto& r : ctx.meta.sockets)
      if (r.family == AF_NETLINK) rows_[r.file_id] = &r;
  }

  void run() {
    for (auto& [id, r] : rows_) made_[id] = make_socket(*r);
  }
  UniqueFd take(int64_t id) const { return dup_made(made_, id, "netlink socket"); }

 private:
  static std::string who(const SocketRecord& r) {
    return describe(r) + " (files row " + std::to_string(r.file_id) + ")";
  }

  UniqueFd make_socket(const SocketRecord& r) {
    InTask t(ctx_, first_holder(ctx_, r.file_id, who(r)));
    const int remote = static_cast<int>(t.call("socket(AF_NETLINK, " + protocol_name(r.protocol) + ")",
                                               SYS_socket, AF_NETLINK, static_cast<uint64_t>(r.type),
                                               static_cast<uint64_t>(r.protocol)));
    UniqueFd s = t.take(remote);
    const std::string what = who(r);
    restore_options(s.get(), r.options, what);
    if (!r.name.empty()) {
      sockaddr_nl a = nl_addr(r.name);
      a.nl_groups = 0;  // every group is joined below, the first 32 included
      if (::bind(s.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
        throw_errno(what + ": bind to its port id (another socket of this network namespace "
                    "holds it?)", errno, Errc::kernel);
    }
    for (uint32_t g : r.nl_groups)
      if (::setsockopt(s.get(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g) != 0)
        throw_errno(what + ": joining group " + std::to_string(g), errno, Errc::kernel);
    if (!r.peer_name.empty()) {
      const sockaddr_nl p = nl_addr(r.peer_name);
      if (::connect(s.get(), reinterpret_cast<const sockaddr*>(&p), sizeof p) != 0)
        throw_errno(what + ": connect", errno, Errc::kernel);
    }
    if (nl_name(s.get(), false) != r.name && !r.name.empty())
      fail(Errc::kernel, what + ": bound to another port id");
    if (memberships(s.get()) != r.nl_groups) fail(Errc::kernel, what + ": its groups differ after joining them");
    const auto& f = ctx_.file(r.file_id);
    restore_socket_owner(s.get(), f.uid, f.gid, f.mode, what);
    if (::fcntl(s.get(), F_SETFL, static_cast<int>(f.flags & ~O_ASYNC)) != 0)
      throw_errno(what + ": cannot set its flags", errno, Errc::kernel);
    return s;
  }

  RestoreContext& ctx_;
  std::map<int64_t, const SocketRecord*> rows_;
  std::map<int64_t, UniqueFd> made_;
};

UniqueFd NetlinkSocketKind::open_late(RestoreContext& ctx, const schema::FileRecord& f) const {
  return take_made<NetlinkRestore>(this, ctx, f);
}

}  // namespace

bool netlink_diag_works() {
  try {
    netlink_diag(NETLINK_ROUTE, 0);
    return true;
  } catch (const Error&) {
    return false;
  }
}

const FdKind& netlink_socket_kind() {
  static const NetlinkSocketKind kind;
  return kind;
}

}  // namespace crest::fds
